"""onnxruntime latency and node count of a small CNN, plain vs compiled with ``gpn`` and frozen.

A 3-conv CNN (3x3 zero-padded convs, ReLU / GELU / tanh, a max pool, global average pool,
Linear). Frozen gpn folds a into each next conv; before a zero-padded conv b/a cannot go
into its bias (zero padding and a shift do not commute): after ReLU it goes into the first
conv's bias and ReLU becomes Clip(min=b/a), after GELU it stays one Add of b/a. The last
GPN folds through the pool into the Linear: the plain ops (ReLU as Clip) plus 1 Add.
Median of >= 200 interleaved runs per batch size, one onnxruntime thread.
Run: python benchmarks/inference_cnn.py [--runs 300] [--size 32]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from timing import interleaved
from torch import nn

from vgpcompile import export_onnx, vgpcompile


def cnn(channels: int = 32) -> nn.Sequential:
    torch.manual_seed(0)
    c = channels
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
        nn.Conv2d(c, c, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10),
    )  # fmt: skip


def session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--size", type=int, default=32, help="image side")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = torch.rand(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        plain = export_onnx(vgpcompile(cnn()), Path(tmp) / "plain.onnx", (x,))
        comp = export_onnx(vgpcompile(cnn(), passes=["gpn"]), Path(tmp) / "gpn.onnx", (x,))
        print(f"ONNX nodes: plain {plain.nodes} {plain.op_types}")
        print(f"            gpn   {comp.nodes} {comp.op_types}")
        sessions = {"plain": session(plain.path), "gpn": session(comp.path)}
        for batch in (1, 16):
            feed = np.random.default_rng(0).random((batch, 3, args.size, args.size), dtype=np.float32)
            t = interleaved({k: _runner(s, feed) for k, s in sessions.items()}, args.runs, warmup=20)
            ratio = t["gpn"] / t["plain"]
            print(f"batch {batch:>3}: plain {1e6 * t['plain']:9.1f} us  gpn {1e6 * t['gpn']:9.1f} us  {ratio:.3f}x")


def _runner(s: ort.InferenceSession, feed: np.ndarray):
    return lambda: s.run(None, {s.get_inputs()[0].name: feed})


if __name__ == "__main__":
    main()
