"""``vgpcompile plan``: the per-site plan for a model, changing nothing."""

from __future__ import annotations

import argparse
import json

from .common import compile_args, input_range, load_factory, model_args

HELP = "show the per-site plan for a model without changing anything"
EXAMPLE = "vgpcompile plan --model examples/models.py:deep_tanh_mlp --passes gpn --ignore act:sigmoid"


def add_arguments(p: argparse.ArgumentParser) -> None:
    model_args(p)
    p.add_argument("--input-range", metavar="LO,HI", help="range of the model input (for arp)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from ..api import plan

    value_range = input_range(args.input_range)
    report = plan(load_factory(args.model), **compile_args(args), input_range=value_range)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0
