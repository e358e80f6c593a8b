"""The whole workflow on a small model: compile, train, freeze, save, load, export to ONNX.

Run: python examples/quickstart.py [--out quickstart_out]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from vgpcompile import export_onnx, freeze, load, save, vgpcompile


def model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(8, 64), nn.Tanh(), *[m for _ in range(10) for m in (nn.Linear(64, 64), nn.Tanh())], nn.Linear(64, 1)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="quickstart_out", help="directory for the checkpoint and the ONNX file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = torch.sin(x.sum(1, keepdim=True))

    compiled = vgpcompile(model(), passes=["gpn"])
    print(compiled.vgp_report)
    opt = torch.optim.Adam(compiled.parameters(), lr=1e-3)
    for _ in range(200):
        loss = nn.functional.mse_loss(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained 200 steps, loss {loss.item():.4f}")

    frozen = freeze(compiled)
    print(f"freeze: max abs difference {(frozen(x) - compiled(x)).abs().max().item():.2e}")
    save(compiled, out / "checkpoint")
    again = load(model, out / "checkpoint")
    print(f"save -> load: outputs equal: {torch.equal(again(x), compiled(x))}")
    print(export_onnx(compiled, out / "model.onnx", (x[:2],)))


if __name__ == "__main__":
    main()
