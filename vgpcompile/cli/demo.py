"""``vgpcompile demo``: a deep MLP trained plain and compiled, side by side."""

from __future__ import annotations

import argparse
import math

from ..errors import UsageError

HELP = "train a deep MLP plain vs compiled and compare (about 15 s on 2 cores)"
EXAMPLE = "vgpcompile demo --activation tanh"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activation", default="relu", help="activation kind (default relu)")
    p.add_argument("--depth", type=int, default=50, help="hidden layers (default 50)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-4, help="SGD learning rate (default 1e-4, the BSNN code's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="FILE.png", help="write the step-0 per-layer gradient and signal plot here")


# Bounds that keep a demo a demo: below them its tables are empty, above them it runs for hours.
LIMITS = {"depth": (1, 1000), "width": (2, 4096), "steps": (8, 100_000)}


def run(args: argparse.Namespace) -> int:
    from ..core.catalogue import DEFAULT
    from ..tools.demo import DemoConfig, run_demo

    for name, (lo, hi) in LIMITS.items():
        value = getattr(args, name)
        if not lo <= value <= hi:
            raise UsageError(f"--{name} {value}: must be between {lo} and {hi}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr {args.lr}: must be a positive number")
    DEFAULT.get(args.activation)  # an unknown activation is a UsageError naming close ones
    run_demo(DemoConfig(args.activation, args.depth, args.width, args.steps, args.lr, seed=args.seed, plot=args.plot))
    return 0
