"""ONNX export of the frozen model, checked in onnxruntime at several shapes.

``export_onnx`` freezes first (no vgpcompile op, parametrization or linalg call reaches the
file), exports with torch.onnx, runs ``onnx.checker`` with the full check, then runs the
file in onnxruntime at batch sizes 1, 2 and 7 (and two sequence lengths for recurrent
models) against the frozen torch model. A parity failure raises ParityError; the file is
still written, and the error says so (users need the artifact to debug it).

Exporter: "dynamo" (torch's default since 2.9, the one torch maintains; cleaner graphs, no
Constant nodes, about 3 s per export here) or "torchscript" (deprecated but 0.1-0.2 s
per export; the property tests use it to afford many exports).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ExportError, ParityError, UsageError


@dataclass
class ExportReport:
    path: str
    exporter: str
    nodes: int
    op_types: dict[str, int]
    checks: list[dict] = field(default_factory=list)  # shape, output, max_abs, max_rel

    @property
    def max_abs(self) -> float:
        return max((c["max_abs"] for c in self.checks), default=0.0)

    def __str__(self) -> str:
        lines = [f"ONNX {self.path}: {self.nodes} nodes ({self.exporter} exporter), onnx.checker full check passed"]
        lines += [
            f"  onnxruntime vs torch at input {c['shape']}: output {c['output']} max abs {c['max_abs']:.2e}, "
            f"max rel {c['max_rel']:.2e}"
            for c in self.checks
        ]
        return "\n".join(lines)


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise UsageError(f"ONNX export needs the onnx extra: pip install 'vgpcompile[onnx]' ({err})") from None
    return onnx, onnxruntime


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor,
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    exporter: str = "dynamo",
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seq_dim: int | None = None,
) -> ExportReport:
    """Freeze ``model``, export it to ``path``, check it, and compare onnxruntime with torch."""
    from ..freeze import freeze

    onnx, ort = _require_onnx()
    if exporter not in ("dynamo", "torchscript"):
        raise UsageError(f"export_onnx(exporter={exporter!r}): use 'dynamo' or 'torchscript'")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    frozen = freeze(model).eval()
    check_runs(frozen, inputs)
    seq_dim = _sequence_dim(frozen) if seq_dim is None else seq_dim
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".onnx", dir=target.parent)
    os.close(fd)
    try:
        _export(frozen, inputs, tmp, exporter, opset, dynamic_batch, seq_dim)
        proto = onnx.load(tmp)
        onnx.checker.check_model(proto, full_check=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    report = ExportReport(str(target), exporter, len(proto.graph.node), ops)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    for probe in _probes(inputs, dynamic_batch, seq_dim):
        report.checks += _compare(frozen, session, probe, atol, rtol, target)
    return report


def check_runs(model: nn.Module, inputs: tuple) -> None:
    """Run ``model`` once in eval mode (its mode is restored); a failure is a UsageError naming the shapes."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(*inputs)
    except Exception as err:
        shapes = [tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)]
        msg = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"the model does not run on example inputs of shape {shapes}: {msg}") from None
    finally:
        model.train(was_training)


def _sequence_dim(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.RNNBase):
            return 1 if m.batch_first else 0
    return None


class _Bare(nn.Module):
    """Hides GraphModule.graph, which the TorchScript exporter mistakes for its own graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model(*args)


def _export(model, inputs, file, exporter, opset, dynamic_batch, seq_dim) -> None:
    try:
        _run_exporter(model, inputs, file, exporter, opset, dynamic_batch, seq_dim)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(f"torch.onnx ({exporter} exporter) failed: {type(err).__name__}: {first[:300]}") from err


def _run_exporter(model, inputs, file, exporter, opset, dynamic_batch, seq_dim) -> None:
    names = [f"input_{i}" for i in range(len(inputs))]
    batch_dim = 0 if seq_dim != 0 else 1
    axes = {}
    if dynamic_batch:
        axes[batch_dim] = "batch"
    if seq_dim is not None:
        axes[seq_dim] = "sequence"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {d: torch.export.Dim.AUTO for d in axes}
            torch.onnx.export(
                model, inputs, file, dynamo=True, opset_version=opset, input_names=names,
                dynamic_shapes=tuple(dict(dims) for _ in inputs), verbose=False,
            )  # fmt: skip
        else:
            bare = _Bare(model).eval()  # the exporter restores the wrapper's mode onto the model afterwards
            torch.onnx.export(
                bare, inputs, file, dynamo=False, opset_version=opset, input_names=names,
                dynamic_axes={n: dict(axes) for n in names},
            )  # fmt: skip


def _probes(inputs: tuple, dynamic_batch: bool, seq_dim: int | None) -> list[tuple]:
    """The user's inputs, then fresh seeded ones at batch 1, 2, 7 and a second sequence length."""
    g = torch.Generator().manual_seed(0)
    batch_dim = 0 if seq_dim != 0 else 1
    probes = [inputs]
    sizes = [(b, None) for b in (1, 2, 7)] if dynamic_batch else []
    if seq_dim is not None:
        sizes.append((None, inputs[0].shape[seq_dim] + 3))
    for batch, seq in sizes:
        probes.append(tuple(_resized(t, batch_dim, batch, seq_dim, seq, g) for t in inputs))
    return probes


def _resized(t: torch.Tensor, batch_dim: int, batch: int | None, seq_dim: int | None, seq: int | None, g):
    shape = list(t.shape)
    if batch is not None:
        shape[batch_dim] = batch
    if seq is not None and seq_dim is not None:
        shape[seq_dim] = seq
    if t.dtype.is_floating_point:
        return torch.randn(shape, generator=g, dtype=t.dtype)
    return torch.randint(int(t.min()), int(t.max()) + 1, shape, generator=g, dtype=t.dtype)


def _compare(model, session, probe: tuple, atol: float, rtol: float, target: Path) -> list[dict]:
    with torch.no_grad():
        ref = model(*probe)
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), probe)}
    outs = session.run(None, feed)
    checks = []
    for k, (r, o) in enumerate(zip(refs, outs)):
        r = r.numpy()
        err = np.abs(r - o)
        shape = [tuple(t.shape) for t in probe]
        rel = float((err / (np.abs(r) + 1e-12)).max())
        ref_max = float(np.abs(r).max())
        checks.append({"shape": shape, "output": k, "max_abs": float(err.max()), "max_rel": rel, "ref_max": ref_max})
        if not np.all(err <= atol + rtol * np.abs(r)):
            raise ParityError(
                f"onnxruntime output {k} differs from torch at input {shape}: max abs error {err.max():.3e} "
                f"(tolerance {atol} + {rtol}*|ref|); the file {target} was written for inspection"
            )
    return checks
