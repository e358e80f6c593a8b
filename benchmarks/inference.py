"""onnxruntime latency of the exported compiled model vs the exported plain model.

Same architecture (a depth-20 width-256 tanh MLP by default), compiled with the given passes,
frozen and exported; median of >= 200 runs at batch 1 and 64, interleaved so drift hits both
alike. Target: compiled / plain <= 1.02x. Also prints both graphs' node counts.
Run: python benchmarks/inference.py [--passes gpn arp] [--runs 300]

The model and the input are seeded, so every run exports the same model. With arp's default
pivot floor (0.25) every rotated weight row has norm <= L / (0.25 |q|), and the exported model
matches the training form within the default 1e-4; with ``floor=0`` (the reference formula)
folded weights reach 1e2-1e3 at this depth and parity needs a looser ``--atol``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from vgpcompile import export_onnx, vgpcompile


def mlp(depth: int = 20, width: int = 256) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.Tanh())], nn.Linear(width, 1))


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", nargs="+", default=["gpn"])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--atol", type=float, default=1e-4, help="ONNX parity tolerance")
    args = parser.parse_args()
    x = torch.rand(2, 256, generator=torch.Generator().manual_seed(0))  # seeded: the same model and input every run
    with tempfile.TemporaryDirectory() as tmp:
        plain = export_onnx(vgpcompile(mlp()), Path(tmp) / "plain.onnx", (x,))
        compiled = vgpcompile(mlp(), passes=args.passes, example_inputs=(x,))
        comp = export_onnx(compiled, Path(tmp) / "comp.onnx", (x,), atol=args.atol)
        sessions = {"plain": session(Path(plain.path)), "compiled": session(Path(comp.path))}
        print(f"passes {args.passes}: ONNX nodes plain {plain.nodes} {plain.op_types}")
        print(f"{'':>{len(str(args.passes)) + 8}}compiled {comp.nodes} {comp.op_types}")
        for batch in (1, 64):
            feed = np.random.default_rng(0).random((batch, 256), dtype=np.float32)
            times: dict[str, list[float]] = {k: [] for k in sessions}
            for i in range(args.runs + 20):
                for name, s in sessions.items():
                    start = time.perf_counter()
                    s.run(None, {s.get_inputs()[0].name: feed})
                    if i >= 20:
                        times[name].append(time.perf_counter() - start)
            p, c = (statistics.median(times[k]) for k in ("plain", "compiled"))
            row = f"batch {batch:>3}: plain {1e6 * p:8.1f} us  compiled {1e6 * c:8.1f} us"
            print(row + f"  ratio {c / p:.3f}x (target <= 1.02x)")


if __name__ == "__main__":
    main()
