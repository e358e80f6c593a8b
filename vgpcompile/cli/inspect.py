"""``vgpcompile inspect``: modules, activation sites, traceability and depth of a model."""

from __future__ import annotations

import argparse

from .common import load_model, source_args

HELP = "modules, activation sites, traceability and nonlinear depth of a model"
EXAMPLE = "vgpcompile inspect --model examples/models.py:small_cnn --weights cnn.pt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    source_args(p)


def run(args: argparse.Namespace) -> int:
    from ..api import plan

    model = load_model(args)
    kinds: dict[str, int] = {}
    for m in model.modules():
        kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    print(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters())} parameters")
    print("  modules: " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    print(plan(model))
    return 0
