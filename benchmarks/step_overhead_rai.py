"""What a lifted (``rai``) training step costs, against the plain step and against RAI written by hand.

    python benchmarks/step_overhead_rai.py [--steps 30] [--batch 32,256] [--depth 20] [--width 256]
                                           [--examples 10000] [--threads N]

A depth-20 width-256 sigmoid MLP (a logit out), one mini-batch training step (forward,
BCE with logits + the local losses, backward, Adam for the weights and SparseAdam for the
tables) of
- plain: the model itself, Adam, BCE only;
- rai: the model compiled with ``passes=["rai"]`` (a table per Linear: 21 cuts), trained
  as ``rai.fit`` does (``rai.optimizers``);
- hand: RAI as a person would write it: one ``nn.Embedding(n, d, sparse=True)`` per Linear,
  ``z = layer(h); loss += mse(E(idx), z); h = sigmoid(E(idx))``, the same optimisers.
All three run interleaved in one process (load drift hits them alike), medians of
``--steps`` steps after 5 warm-up steps, every row visited before timing (the compiled
cuts still check their seen-mask each step: that is part of the feature). A lifted step
does the plain step's matmuls plus, per cut, a row gather, a squared difference and a
sparse row update, so rai / plain > 1 is expected; the target is rai / hand <= 1.1.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import interleaved
from torch import nn

from vgpcompile import rai, vgpcompile


def mlp(depth: int, width: int) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(width, width), nn.Sigmoid()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


class HandRAI(nn.Module):
    """RAI by hand: a sparse embedding table after every Linear of ``net``."""

    def __init__(self, net: nn.Sequential, n: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(m for m in net if isinstance(m, nn.Linear))
        self.tables = nn.ModuleList(nn.Embedding(n, m.out_features, sparse=True) for m in self.layers)
        self.local = torch.zeros(())

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h, local = x, x.new_zeros(())
        for k, (layer, table) in enumerate(zip(self.layers, self.tables)):
            z, row = layer(h), table(idx)
            local = local + F.mse_loss(row, z)
            h = row if k == len(self.layers) - 1 else torch.sigmoid(row)
        self.local = local
        return h


def step_fn(model: nn.Module, loss: Callable, opts: list, x, y, batch: int) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        ids = torch.randint(0, len(x), (batch,), generator=gen)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss(model, x[ids], y[ids], ids).backward()
        for o in opts:
            o.step()

    return step


def section(batch: int, steps: int, depth: int, width: int, n: int) -> dict[str, float]:
    x, y = torch.randn(n, width), torch.randint(0, 2, (n, 1)).float()
    plain = mlp(depth, width)
    lifted = vgpcompile(mlp(depth, width), passes=["rai"], options={"rai": {"num_examples": n}})
    hand = HandRAI(mlp(depth, width), n)
    with torch.no_grad():
        lifted.train()(x, torch.arange(n))  # every row visited: the lazy init is not what is timed
        for cut, table in zip(rai.cuts(lifted), hand.tables):
            table.weight.copy_(cut.table)
        probe = torch.arange(min(n, 64))
        diff = (lifted(x[probe], probe) - hand(x[probe], probe)).abs().max().item()
        diff = max(diff, abs(rai.loss(lifted).item() - hand.local.item()))
    plain_opt = [torch.optim.Adam(plain.parameters(), lr=1e-3, foreach=True)]
    hand_opt = [torch.optim.Adam(hand.layers.parameters(), lr=1e-3, foreach=True),
                torch.optim.SparseAdam(list(hand.tables.parameters()), lr=1e-3)]  # fmt: skip
    bce = F.binary_cross_entropy_with_logits
    arms = {
        "plain": step_fn(plain, lambda m, xb, yb, ids: bce(m(xb), yb), plain_opt, x, y, batch),
        "rai": step_fn(lifted, lambda m, xb, yb, ids: bce(m(xb, ids), yb) + rai.loss(m), rai.optimizers(lifted),
                       x, y, batch),
        "hand": step_fn(hand, lambda m, xb, yb, ids: bce(m(xb, ids), yb) + m.local, hand_opt, x, y, batch),
    }  # fmt: skip
    t = interleaved(arms, steps)
    print(f"rai, depth {depth} width {width} sigmoid MLP ({depth + 1} cuts), n = {n}, batch {batch}, "
          f"median of {steps} training steps (hand vs compiled output and local loss: max abs diff {diff:.1e}):")
    print(f"  plain {1e3 * t['plain']:.2f} ms   rai-compiled {1e3 * t['rai']:.2f} ms   hand {1e3 * t['hand']:.2f} ms")
    print(f"  rai / plain = {t['rai'] / t['plain']:.3f}x   rai / hand = {t['rai'] / t['hand']:.3f}x (target <= 1.1)")
    return {**t, "diff": diff}


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", default="32,256", help="comma-separated batch sizes")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--threads", type=int, help="torch threads (default: as set by the user / OMP_NUM_THREADS)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()}")
    sizes = [int(b) for b in args.batch.split(",")]
    return {b: section(b, args.steps, args.depth, args.width, args.examples) for b in sizes}


if __name__ == "__main__":
    main()
