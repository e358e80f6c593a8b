"""Training-step time of compiled models over plain ones, measured interleaved in one process.

gpn: a depth-20 width-256 MLP, compiled with gpn vs plain (target <= 1.05x), and vs a
hand-written a * tanh(x) + b net, which is the least the arithmetic itself costs.
Then the per-pass sections in step_overhead_arp.py, step_overhead_orthogonal.py and step_overhead_roaf.py run,
when present. Run: python benchmarks/step_overhead.py [--steps 40] [--only gpn]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from timing import interleaved
from torch import nn

from vgpcompile import vgpcompile

A_TANH, B_TANH = 1.4674135916307953, 0.38854167006712753


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.5)

    def step() -> None:
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


class HandGPNTanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return A_TANH * torch.tanh(x) + B_TANH


def mlp(depth: int, width: int, act: Callable[[], nn.Module]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), act())], nn.Linear(width, 1))


def gpn_section(steps: int, batch: int = 128, depth: int = 20, width: int = 256) -> None:
    x, y = torch.randn(batch, width), torch.randn(batch, 1)
    plain = mlp(depth, width, nn.Tanh)
    compiled = vgpcompile(mlp(depth, width, nn.Tanh), passes=["gpn"])
    hand = mlp(depth, width, HandGPNTanh)
    t = interleaved(
        {"plain": train_step(plain, x, y), "gpn": train_step(compiled, x, y), "hand": train_step(hand, x, y)}, steps
    )
    print(f"gpn, depth {depth} width {width} tanh MLP, batch {batch}, median of {steps} training steps:")
    print(f"  plain {1e3 * t['plain']:.3f} ms   gpn-compiled {1e3 * t['gpn']:.3f} ms   hand {1e3 * t['hand']:.3f} ms")
    print(f"  gpn / plain = {t['gpn'] / t['plain']:.3f}x (target <= 1.05x)   gpn / hand = {t['gpn'] / t['hand']:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--only", choices=["gpn", "arp", "orthogonal", "roaf"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.only in (None, "gpn"):
        gpn_section(args.steps)
    sys.path.insert(0, str(Path(__file__).parent))
    for name in ("arp", "orthogonal", "roaf"):
        if args.only in (None, name) and (Path(__file__).parent / f"step_overhead_{name}.py").exists():
            print()
            importlib.import_module(f"step_overhead_{name}").main([])


if __name__ == "__main__":
    main()
