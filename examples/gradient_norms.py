"""Hidden-layer gradient norms at step 0, like with like, for several activations.

    python examples/gradient_norms.py --json docs/results/gradient_norms.json   # ~2 CPU-minutes

For each activation, a deep MLP (Linear(2, width) + act, ``depth`` x (Linear(width, width) +
act), Linear(width, 2)) on a batch of 256 two-moons points, cross-entropy, float64 (so that
vanished gradients are measured rather than flushed to 0), 3 seeds. Rows: every standard
init of the plain ladder; ``orthogonal1``, the init the compiled arm starts from (orthogonal
gain 1, the input layer scaled to the thin shell), without the pass: the like-with-like
reference; and that init compiled with ``gpn``. Columns: the max/min ratio over the hidden
layers and the smallest and largest norm, since a flat ratio can hide vanishing (every
layer equally near zero).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from vgpcompile.tools.baselines import write_json
from vgpcompile.tools.demo import DemoConfig, format_gradients, gradient_table

ACTIVATIONS = ("tanh", "relu", "gelu", "selu")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--activations", type=lambda s: s.split(","), default=list(ACTIVATIONS))
    ap.add_argument("--json", type=Path, help="write the tables to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    tables = {}
    for act in args.activations:
        tables[act] = gradient_table(DemoConfig(activation=act, depth=args.depth, width=args.width))
        print(f"\n{act}, depth {args.depth}, width {args.width}\n{format_gradients(tables[act])}", flush=True)
    seconds = time.perf_counter() - start
    if args.json:
        config = {"depth": args.depth, "width": args.width, "activations": args.activations, "threads": 1}
        write_json(args.json, {"example": "gradient_norms", "config": config, "seconds": round(seconds, 1),
                               "tables": tables})  # fmt: skip
    return tables


if __name__ == "__main__":
    main(sys.argv[1:])
