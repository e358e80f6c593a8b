"""Training-step and inference cost of each pass against the plain model, eager and under
``torch.compile(fullgraph=True)``, side by side in one process.

    python benchmarks/compiled_step.py [--backend inductor|aot_eager|none] [--widths 256] [--batches 32,128]
                                       [--depth 8] [--steps 20] [--arms "gpn;orthogonal{every=4};..."] [--onnx]
                                       [--json out.json]
                                       [--device cpu|cuda]

For each (width, batch): a depth-``--depth`` tanh MLP (square Linear layers, a readout), one
training step (forward, cross-entropy, backward, SGD momentum 0.5) of every arm, eager and
(unless ``--backend none``) compiled whole with ``fullgraph=True``. Every arm's step runs
interleaved with the others (load drift hits them alike); medians of ``--steps`` steps
after warm-up, CPU time (``time.process_time``: the shared machine's other load does not
count) and wall time. Ratios: eager arm / eager plain, compiled arm / compiled plain.
``--onnx``: the frozen model's onnxruntime inference time over the plain model's.

Importable: ``step_ratios(...)`` and ``inference_ratios(...)`` return the figures, ``ARMS``
names the arms (``benchmarks/suite.py`` may reuse them). rai's lifted training form does
not compile whole yet (tests/test_torch_compile.py), so it is not an arm here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import vgpcompile

ARMS: dict[str, tuple[list[str], dict]] = {
    "gpn": (["gpn"], {}),
    "arp": (["arp"], {}),
    "arp+gpn": (["arp", "gpn"], {}),
    "orthogonal": (["orthogonal"], {}),
    "bsnn": (["bsnn"], {}),
    "roaf": (["roaf"], {}),
    "roaf hadamard": (["roaf"], {"roaf": {"filter": "hadamard"}}),
}


def mlp(depth: int, width: int, out: int = 10) -> nn.Sequential:
    torch.manual_seed(0)
    blocks = [m for _ in range(depth) for m in (nn.Linear(width, width), nn.Tanh())]
    return nn.Sequential(*blocks, nn.Linear(width, out))


def build(arm: str, depth: int, width: int, batch: int, device: str) -> nn.Module:
    if arm == "plain":
        return mlp(depth, width).to(device)
    passes, options = ARMS.get(arm, (arm.split("+"), {}))  # other arms: pipeline strings, "orthogonal{every=4}"
    example = (torch.randn(batch, width),)
    return vgpcompile.vgpcompile(mlp(depth, width), passes=passes, options=options, example_inputs=example).to(device)


def trainer(model: nn.Module, forward: Callable, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.5)

    def step() -> None:
        loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def medians(fns: dict[str, Callable[[], None]], steps: int, warmup: int = 3, sync=lambda: None) -> dict:
    """{name: (CPU-time median, wall median, CPU-time mean)} in seconds; the calls alternate
    between the functions. The mean is the figure for work done every k-th call only
    (orthogonal's ``every``), which a median skips."""
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            sync()
            c, w = time.process_time(), time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                cpu[name].append(time.process_time() - c)
                wall[name].append(time.perf_counter() - w)
    return {k: (statistics.median(cpu[k]), statistics.median(wall[k]), statistics.mean(cpu[k])) for k in fns}


def step_ratios(
    arms: list[str],
    width: int,
    batch: int,
    depth: int = 8,
    backend: str | None = "inductor",
    steps: int = 20,
    device: str = "cpu",
) -> dict[str, dict[str, float]]:
    """{arm: {"eager": CPU-time median ratio to eager plain, "eager_wall", "eager_mean" (the
    ratio of means), "compiled", ...}} (compiled: to compiled plain; absent with backend None)."""
    x = torch.randn(batch, width, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    fns: dict[str, Callable[[], None]] = {}
    for arm in ["plain", *arms]:
        eager = build(arm, depth, width, batch, device)
        fns[f"{arm}|eager"] = trainer(eager, eager, x, y)
        if backend:
            model = build(arm, depth, width, batch, device)
            fns[f"{arm}|compiled"] = trainer(model, torch.compile(model, fullgraph=True, backend=backend), x, y)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t = medians(fns, steps, sync=sync)
    out: dict[str, dict[str, float]] = {}
    for arm in arms:
        row = {}
        for form in ("eager", "compiled") if backend else ("eager",):
            (c, w, m), (pc, pw, pm) = t[f"{arm}|{form}"], t[f"plain|{form}"]
            row[form], row[f"{form}_wall"], row[f"{form}_mean"] = c / pc, w / pw, m / pm
        out[arm] = row
    out["plain"] = {
        "eager_ms": 1e3 * t["plain|eager"][0],
        **({"compiled_ms": 1e3 * t["plain|compiled"][0]} if backend else {}),
    }
    return out


def inference_ratios(arms: list[str], width: int, batch: int, depth: int = 8, steps: int = 50) -> dict[str, float]:
    """{arm: onnxruntime CPU time of the frozen arm / the plain model's} (one thread each)."""
    import onnxruntime as ort

    x = torch.randn(batch, width)
    runs: dict[str, Callable[[], None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in ["plain", *arms]:
            model = build(arm, depth, width, batch, "cpu").eval()
            path = Path(tmp) / f"{arm.replace(' ', '_')}.onnx"
            if arm == "plain":
                torch.onnx.export(model, (x,), path, dynamo=False)
            else:
                vgpcompile.export_onnx(model, path, (x,), exporter="torchscript")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x.numpy()}
            runs[arm] = lambda s=sess, f=feed: s.run(None, f)
        t = medians(runs, steps)
    return {arm: t[arm][0] / t["plain"][0] for arm in arms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="inductor", help="torch.compile backend, or 'none' for eager only")
    ap.add_argument("--widths", default="256")
    ap.add_argument("--batches", default="32,128")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--arms", default=";".join(ARMS), help="';'-separated: names of ARMS or pipeline strings")
    ap.add_argument("--onnx", action="store_true", help="also onnxruntime inference of the frozen models")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backend = None if args.backend == "none" else args.backend
    arms = [a for a in args.arms.split(";") if a]
    results = []
    for width in map(int, args.widths.split(",")):
        for batch in map(int, args.batches.split(",")):
            row = {"width": width, "batch": batch, "depth": args.depth, "backend": backend}
            row["step"] = step_ratios(arms, width, batch, args.depth, backend, args.steps, args.device)
            if args.onnx:
                row["onnx"] = inference_ratios(arms, width, batch, args.depth)
            results.append(row)
            print(f"width {width}, batch {batch}, depth {args.depth} ({args.device}, backend {backend}):")
            for arm in arms:
                r = row["step"][arm]
                text = f"  {arm:<16} eager {r['eager']:5.2f}x (mean {r['eager_mean']:5.2f}x)"
                text += f"  compiled {r['compiled']:5.2f}x" if backend else ""
                text += f"  onnx {row['onnx'][arm]:5.2f}x" if args.onnx else ""
                print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
