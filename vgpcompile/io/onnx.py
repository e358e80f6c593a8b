"""ONNX export of the frozen model, checked in onnxruntime at several shapes.

``export_onnx`` freezes first (no vgpcompile op, parametrization or linalg call reaches the
file), exports with torch.onnx, runs ``onnx.checker`` with the full check, then runs the
file in onnxruntime at batch sizes 1, 2 and 7 (and two sequence lengths for recurrent
models) against the frozen torch model.

The file: one self-contained ``.onnx`` (weights inside) whenever it fits protobuf's 2 GB
limit, so it can be copied alone. Above that, the weights go to one side file with a
stable name beside it, ``<name>.data`` (``m.onnx`` -> ``m.onnx.data``); copy both. Nothing
else is left behind: the export is staged in a hidden directory beside the target and
published with a rename, so a failed export leaves the previous file untouched and the
final path holds either the old file or a new, checked one. Replacing a file that had a
side file by a self-contained one removes the stale ``<name>.data``. (Above 2 GB the side
file and the model are renamed one after the other.)

Parity: for each output, ``max |onnxruntime - torch| <= atol + rtol * max |torch|``: the
tolerance is relative to the output's scale (an output of size 370 allows 370x the error
of an output of size 1, as float32 rounding does), plus ``atol`` for outputs near zero;
NaN/Inf must appear in the same places. A parity failure raises ParityError and keeps the
new file for inspection under a name that says so, ``<stem>.parity-failed.onnx``, never
over the previous good file. Export failures (the exporter, the checker, onnxruntime
unable to load or run the file on the example inputs) raise ExportError naming the cause
in one line; the exporter's full output is on the error's ``log`` (CLI: ``--debug``).

Exporter: "dynamo" (torch's default since 2.9, the one torch maintains; cleaner graphs, no
Constant nodes, about 3 s per export here) or "torchscript" (deprecated but 0.1-0.2 s
per export; the property tests use it to afford many exports).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..errors import ExportError, ParityError, UsageError
from . import files

# Protobuf cannot serialize a message of 2 GiB or more; keep a margin for the graph itself.
SINGLE_FILE_LIMIT = 2**31 - 2**26
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.+)')


@dataclass
class ExportReport:
    path: str
    exporter: str
    nodes: int
    op_types: dict[str, int]
    checks: list[dict] = field(default_factory=list)  # shape, output, max_abs, max_rel, ref_max
    data_file: str | None = None  # the side file, for models above the 2 GB limit

    @property
    def max_abs(self) -> float:
        return max((c["max_abs"] for c in self.checks), default=0.0)

    def __str__(self) -> str:
        side = f", weights in {self.data_file}" if self.data_file else ", self-contained"
        lines = [
            f"ONNX {self.path}: {self.nodes} nodes ({self.exporter} exporter{side}), onnx.checker full check passed"
        ]
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
    """Freeze ``model``, export it to ``path``, check it, and compare onnxruntime with torch.

    ``example_inputs`` is a tuple of tensors, or one tensor. ``path`` is replaced only by a
    file that passed every check (see the module docstring for tolerances and file layout).
    """
    from ..freeze import freeze

    onnx, ort = _require_onnx()
    _check_options(exporter, opset, atol, rtol)
    target = files.output_path(path, "export_onnx(path)", "file")
    inputs = _inputs(example_inputs)
    frozen = freeze(model).eval()
    _check_outputs(check_runs(frozen, inputs))
    seq_dim = _sequence_dim(frozen) if seq_dim is None else seq_dim
    stage = files.stage_for(target)
    try:
        staged = stage / target.name
        _export(frozen, inputs, stage / "export.onnx", exporter, opset, dynamic_batch, seq_dim)
        proto = _normalize(onnx, stage / "export.onnx", staged)
        session = _session(ort, staged)
        ops: dict[str, int] = {}
        for node in proto.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        side = str(target) + ".data" if _data_file(staged) else None
        report = ExportReport(str(target), exporter, len(proto.graph.node), ops, data_file=side)
        try:
            for i, probe in enumerate(_probes(inputs, dynamic_batch, seq_dim)):
                report.checks += _compare(frozen, session, probe, atol, rtol, first=i == 0)
        except ParityError as err:
            kept = _publish(onnx, staged, _failed_name(target))
            raise ParityError(f"{err}; the new file is kept for inspection as {kept} ({target} not written)") from None
        _publish(onnx, staged, target)
    finally:
        files.remove(stage)
    return report


def _check_options(exporter: str, opset, atol: float, rtol: float) -> None:
    if exporter not in ("dynamo", "torchscript"):
        raise UsageError(f"export_onnx(exporter={exporter!r}): use 'dynamo' or 'torchscript'")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 1):
        raise UsageError(f"export_onnx(opset={opset!r}): an ONNX opset is a positive integer, e.g. 18")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UsageError(f"export_onnx({name}={value!r}): a tolerance is a finite number >= 0")


def _inputs(example_inputs) -> tuple[torch.Tensor, ...]:
    """The example inputs as a tuple of non-empty tensors (a bare tensor is one input)."""
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    for i, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor):
            raise UsageError(
                f"export_onnx(example_inputs=...): input {i} is {type(t).__name__}; ONNX inputs are tensors "
                "(give a tuple of tensors, or one tensor)"
            )
        if t.numel() == 0:
            raise ExportError(
                f"example input {i} has shape {tuple(t.shape)}, with no elements: an empty batch cannot be "
                "exported and checked; give at least one sample"
            )
    return tuple(inputs)


def check_runs(model: nn.Module, inputs: tuple):
    """Run ``model`` once in eval mode (its mode is restored) and return its output; a failure
    is a UsageError naming the shapes."""
    was_training = model.training
    try:
        with torch.no_grad():
            return model.eval()(*inputs)
    except Exception as err:
        shapes = [tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)]
        raise UsageError(f"the model does not run on example inputs of shape {shapes}: {_first_line(err)}") from None
    finally:
        model.train(was_training)


def _check_outputs(output) -> None:
    leaves = pytree.tree_leaves(output)
    if not any(isinstance(leaf, torch.Tensor) for leaf in leaves):
        raise ExportError(f"the model returns {_kind(output)}, no tensor: an ONNX model's outputs are tensors")
    other = next((leaf for leaf in leaves if not isinstance(leaf, torch.Tensor)), None)
    if other is not None:
        raise ExportError(
            f"the model's output holds a {type(other).__name__} ({other!r:.40}) besides tensors: an ONNX "
            "model's outputs are tensors; return only tensors (a tensor, tuple, list or dict of tensors)"
        )


def _kind(value) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


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
    with _captured() as log:
        try:
            _run_exporter(model, inputs, file, exporter, opset, dynamic_batch, seq_dim)
            failure = None
        except Exception as err:
            failure = err
    if failure is not None:
        error = ExportError(f"torch.onnx ({exporter} exporter) failed: {describe_failure(failure)}")
        error.log = log.getvalue()
        raise error from failure


def _run_exporter(model, inputs, file, exporter, opset, dynamic_batch, seq_dim) -> None:
    names = [f"input_{i}" for i in range(len(inputs))]
    batch_dim = 0 if seq_dim != 0 else 1
    axes = {}
    if dynamic_batch:
        axes[batch_dim] = "batch"
    if seq_dim is not None:
        axes[seq_dim] = "sequence"
    if exporter == "dynamo":
        dims = {d: torch.export.Dim.AUTO for d in axes}
        torch.onnx.export(
            model, inputs, str(file), dynamo=True, opset_version=opset, input_names=names,
            dynamic_shapes=tuple(dict(dims) for _ in inputs), verbose=False,
        )  # fmt: skip
    else:
        bare = _Bare(model).eval()  # the exporter restores the wrapper's mode onto the model afterwards
        torch.onnx.export(
            bare, inputs, str(file), dynamo=False, opset_version=opset, input_names=names,
            dynamic_axes={n: dict(axes) for n in names},
        )  # fmt: skip


@contextlib.contextmanager
def _captured():
    """Everything the exporter prints, from Python (warnings, logging, print) or C++, goes to the
    yielded buffer instead of the terminal: its graph dumps are kept for ``--debug``."""
    log = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                warnings.simplefilter("ignore")
                yield log
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            log.write(sink.read().decode(errors="replace"))


def describe_failure(err: BaseException) -> str:
    """One line naming the root cause of an exporter failure and, when known, the user's file:line."""
    chain = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    root = chain[-1]
    text = " ".join(_ANSI.sub("", str(e)) for e in chain)
    line = f"{type(root).__name__}: {_first_line(root)}"
    frames = _USER_FRAME.findall(text)
    if frames:
        file, lineno, func, code = frames[-1]
        line += f" (at {file}:{lineno} in {func}: {code.strip()[:80]})"
    if type(root).__name__.startswith("GuardOnDataDependent"):
        line += " - a branch on tensor values cannot be exported: use torch.where/torch.cond there"
    return line


def _first_line(err: BaseException) -> str:
    text = _ANSI.sub("", str(err)).strip()
    return (text.splitlines() or [type(err).__name__])[0][:300]


def _normalize(onnx, exported: Path, staged: Path):
    """Re-save the exporter's output as one self-contained file (or with ``<name>.data`` above
    2 GB), run the full checker on it and return the proto (without external weights)."""
    try:
        proto = onnx.load(str(exported))  # reads any side files the exporter wrote beside it
        big = _too_big(proto)
        if big:
            onnx.save_model(
                proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                location=staged.name + ".data", size_threshold=0,
            )  # fmt: skip
        else:
            onnx.save_model(proto, str(staged))
        onnx.checker.check_model(str(staged), full_check=True)
    except Exception as err:
        raise ExportError(f"the exported file is not valid ONNX: {type(err).__name__}: {_first_line(err)}") from err
    return onnx.load(str(staged), load_external_data=False)


def _too_big(proto) -> bool:
    try:
        return proto.ByteSize() >= SINGLE_FILE_LIMIT
    except Exception:  # a message protobuf cannot even measure is too big for one file
        return True


def _data_file(staged: Path) -> Path | None:
    data = staged.with_name(staged.name + ".data")
    return data if data.exists() else None


def _session(ort, staged: Path):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would break the one-line contract
    try:
        return ort.InferenceSession(str(staged), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ExportError(f"onnxruntime cannot load the exported file: {_first_line(err)}") from err


def _failed_name(target: Path) -> Path:
    stem = target.name[: -len(".onnx")] if target.name.endswith(".onnx") else target.name
    return target.with_name(stem + ".parity-failed.onnx")


def _publish(onnx, staged: Path, target: Path) -> Path:
    """Move the staged file (and its side file, if any) to ``target``; remove a stale side file."""
    data = _data_file(staged)
    side = target.with_name(target.name + ".data")
    if data is not None:
        if staged.name != target.name:  # the proto names its side file: point it at the new name
            proto = onnx.load(str(staged), load_external_data=False)
            for tensor in _external_tensors(proto):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = side.name
            onnx.save_model(proto, str(staged))
        files.fsync(data)
        os.replace(data, side)
    files.fsync(staged)
    os.replace(staged, target)
    if data is None:
        files.remove(side)
    return target


def _external_tensors(proto):
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(proto) if t.data_location == 1]  # TensorProto.EXTERNAL


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
    if batch is not None and batch_dim < len(shape):
        shape[batch_dim] = batch
    if seq is not None and seq_dim is not None and seq_dim < len(shape):
        shape[seq_dim] = seq
    if t.dtype.is_floating_point:
        return torch.randn(shape, generator=g, dtype=t.dtype)
    if t.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    return torch.randint(int(t.min()), int(t.max()) + 1, shape, generator=g, dtype=t.dtype)


def _compare(model, session, probe: tuple, atol: float, rtol: float, first: bool = False) -> list[dict]:
    """Per output: shapes equal, NaN/Inf in the same places, max |ort - torch| <= atol + rtol * max |torch|."""
    shape = [tuple(t.shape) for t in probe]
    with torch.no_grad():
        refs = [t for t in pytree.tree_leaves(model(*probe)) if isinstance(t, torch.Tensor)]
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), probe)}
    try:
        outs = session.run(None, feed)
    except Exception as err:
        if first:
            raise ExportError(
                f"onnxruntime cannot run the exported file on the example inputs: {_first_line(err)}"
            ) from err
        raise ParityError(f"onnxruntime fails at input {shape}, where torch runs: {_first_line(err)}") from None
    if len(outs) != len(refs):
        raise ParityError(f"onnxruntime returns {len(outs)} outputs, torch {len(refs)}, at input {shape}")
    checks = []
    for k, (ref, out) in enumerate(zip(refs, outs)):
        r, o = ref.double().numpy() if ref.dtype != torch.bool else ref.numpy(), np.asarray(out)
        if r.shape != o.shape:
            raise ParityError(
                f"output {k} has shape {o.shape} in onnxruntime but {r.shape} in torch at input {shape}: the "
                "exported graph fixed a size that varies (the dynamo exporter may have specialised it; "
                "exporter='torchscript' may keep it dynamic)"
            )
        r, o = r.astype(np.float64), o.astype(np.float64)
        same = (r == o) | (np.isnan(r) & np.isnan(o))
        if not np.array_equal(np.isfinite(r), np.isfinite(o)) or not same[~np.isfinite(r)].all():
            raise ParityError(f"output {k} has NaN/Inf in other places in onnxruntime than in torch at input {shape}")
        err = np.where(same, 0.0, np.abs(r - o))
        finite = np.abs(r[np.isfinite(r)])
        scale = float(finite.max()) if finite.size else 0.0
        max_err = float(err.max()) if err.size else 0.0
        rel = max_err / scale if scale > 0 else (0.0 if max_err == 0 else math.inf)
        checks.append({"shape": shape, "output": k, "max_abs": max_err, "max_rel": rel, "ref_max": scale})
        if max_err > atol + rtol * scale:
            raise ParityError(
                f"onnxruntime output {k} differs from torch at input {shape}: max abs error {max_err:.3e} > "
                f"tolerance {atol:g} + {rtol:g} * max|output| ({scale:.3g})"
            )
    return checks
