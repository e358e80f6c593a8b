"""``vgpcompile demo``: a deep MLP compiled with gpn, against the plain baseline ladder."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..errors import UsageError

HELP = "train a deep GELU MLP compiled with gpn against the plain baseline ladder (about 40 s of CPU)"
EXAMPLE = "vgpcompile demo --optimizer adam"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activation", default="gelu", help="activation kind (default gelu)")
    p.add_argument("--depth", type=int, default=50, help="hidden layers (default 50)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="sgd (momentum 0.9, default) or adam")
    p.add_argument("--lrs", type=lambda s: tuple(float(v) for v in s.split(",")),
                   help="learning rates every arm is swept over (default 1e-3,1e-2,1e-1; Adam 3e-4,1e-3,3e-3)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per arm and rate (default 1; 3 for mean ± sd)")
    p.add_argument("--full", action="store_true", help="the whole ladder: every init and architectural fix")
    p.add_argument("--threads", type=int, help="torch threads (default: OMP_NUM_THREADS if set, else 1, the fastest "
                   "for these width-64 layers)")
    p.add_argument("--json", type=Path, help="write every run's metrics and the gradient table to this file")
    p.add_argument("--plot", metavar="FILE.png", help="write the step-0 per-layer gradient and signal plot here")


# Bounds that keep a demo a demo: below them its tables are empty, above them it runs for hours.
LIMITS = {"depth": (1, 1000), "width": (2, 4096), "steps": (8, 100_000), "seeds": (1, 20)}


def _check(args: argparse.Namespace) -> None:
    from ..core.catalogue import DEFAULT

    for name, (lo, hi) in LIMITS.items():
        value = getattr(args, name)
        if not lo <= value <= hi:
            raise UsageError(f"--{name} {value}: must be between {lo} and {hi}")
    if args.lrs is not None and not (args.lrs and all(math.isfinite(v) and v > 0 for v in args.lrs)):
        raise UsageError(f"--lrs {args.lrs}: must be positive numbers")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be at least 1")
    DEFAULT.get(args.activation)  # an unknown activation is a UsageError naming close ones


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from ..tools.baselines import write_json
    from ..tools.demo import DemoConfig, run_demo

    _check(args)
    if args.threads or not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(args.threads or 1)
    cfg = DemoConfig(args.activation, args.depth, args.width, args.steps, optimizer=args.optimizer, lrs=args.lrs,
                     seeds=args.seeds, full=args.full, plot=args.plot)  # fmt: skip
    result = run_demo(cfg)
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
        write_json(args.json, {"example": "demo", "config": config, "seconds": round(result.seconds, 1),
                               "threads": torch.get_num_threads(), "comparison": result.comparison.to_dict(),
                               "gradients": result.gradients})  # fmt: skip
    return 0
