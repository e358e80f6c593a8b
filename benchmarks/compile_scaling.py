"""Compile time against depth: bare ``torch.fx.symbolic_trace`` vs full ``vgpcompile(passes=["gpn"])``.

Target: vgpcompile / symbolic_trace <= 1.5x, growing linearly with depth.
Run: python benchmarks/compile_scaling.py [--depths 200 1000 5000] [--repeats 3] [--passes gpn]
(``--passes roaf --depths 1000 10000 50000 --repeats 1``: roaf's per-block filters, 50 000 layers.)
(``--passes arp,gpn --activation relu --example --depths 25 100 1000``: arp calibrating every site on
example inputs, against symbolic_trace + deepcopy; issue 19's figures.)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import fx, nn

from vgpcompile import vgpcompile


def mlp(pairs: int, width: int = 16, act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    return nn.Sequential(*[m for _ in range(pairs) for m in (nn.Linear(width, width), act())], nn.Linear(width, 1))


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[200, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passes", default="gpn", help="a pipeline string, e.g. roaf")
    parser.add_argument("--activation", choices=["tanh", "relu"], default="tanh")
    parser.add_argument("--example", action="store_true", help="give example_inputs (a batch of 8); arp calibrates")
    args = parser.parse_args()
    if args.example:
        return with_examples(args)
    torch.manual_seed(0)
    print(f"passes {args.passes}; vgpcompile copies the model first (it never mutates its input); inplace skips it.")
    head = f"{'pairs':>6} {'symbolic_trace s':>17} {'vgpcompile s':>13} {'ratio':>6} {'inplace s':>10} {'ratio':>6}"
    print(head + f" {'vgp s/1k pairs':>15}")
    for pairs in args.depths:
        model = mlp(pairs)
        bare = timed(lambda m=model: fx.symbolic_trace(m), args.repeats)
        full = timed(lambda m=model: vgpcompile(m, passes=args.passes), args.repeats)
        inplace = timed(lambda n=pairs: vgpcompile(mlp(n), passes=args.passes, inplace=True), args.repeats)
        inplace -= timed(lambda n=pairs: mlp(n), args.repeats)  # building the fresh model is not ours
        row = f"{pairs:>6} {bare:>17.3f} {full:>13.3f} {full / bare:>6.2f} {inplace:>10.3f} {inplace / bare:>6.2f}"
        print(row + f" {1000 * full / pairs:>15.3f}")


def with_examples(args: argparse.Namespace) -> None:
    """vgpcompile with example inputs against symbolic_trace + deepcopy (what any capture costs)."""
    act = nn.ReLU if args.activation == "relu" else nn.Tanh
    x = torch.randn(8, 16)
    vgpcompile(mlp(3, act=act), passes=args.passes, example_inputs=(x,))  # imports and first-call costs
    print(f"passes {args.passes}, {args.activation} MLP of width 16, example_inputs a batch of 8")
    print(f"{'pairs':>6} {'trace+copy s':>13} {'vgpcompile s':>13} {'ratio':>6} {'ms/layer':>9}")
    for pairs in args.depths:
        model = mlp(pairs, act=act)
        bare = timed(lambda m=model: fx.symbolic_trace(copy.deepcopy(m)), args.repeats)
        full = timed(lambda m=model: vgpcompile(m, passes=args.passes, example_inputs=(x,)), args.repeats)
        print(f"{pairs:>6} {bare:>13.3f} {full:>13.3f} {full / bare:>6.2f} {1000 * full / pairs:>9.2f}")


if __name__ == "__main__":
    main()
