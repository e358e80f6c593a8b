"""``vgpcompile demo``: a deep MLP compiled with gpn, against the plain baseline ladder."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from ..tools.baselines import write_json
    from ..tools.demo import DemoConfig, run_demo

    if args.threads or not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(args.threads or 1)
    cfg = DemoConfig(args.activation, args.depth, args.width, args.steps, optimizer=args.optimizer, lrs=args.lrs,
                     seeds=args.seeds, full=args.full)  # fmt: skip
    result = run_demo(cfg)
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
        write_json(args.json, {"example": "demo", "config": config, "seconds": round(result.seconds, 1),
                               "threads": torch.get_num_threads(), "comparison": result.comparison.to_dict(),
                               "gradients": result.gradients})  # fmt: skip
    return 0
