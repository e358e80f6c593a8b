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
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)  # per file input: its symbolic axes

    @property
    def max_abs(self) -> float:
        return max((c["max_abs"] for c in self.checks), default=0.0)

    def __str__(self) -> str:
        side = f", weights in {self.data_file}" if self.data_file else ", self-contained"
        lines = [
            f"ONNX {self.path}: {self.nodes} nodes ({self.exporter} exporter{side}), onnx.checker full check passed"
        ]
        if self.dynamic_axes:
            axes = (f"{k}: " + ", ".join(f"{d} {n}" for d, n in v.items()) for k, v in self.dynamic_axes.items())
            lines.append(f"  dynamic axes: {'; '.join(axes)}")
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
    kwargs: dict | None = None,
) -> ExportReport:
    """Freeze ``model``, export it to ``path``, check it, and compare onnxruntime with torch.

    ``example_inputs`` is a tuple of tensors, or one tensor; a ``None`` in the tuple is passed
    to the model as is and is no input of the file (T5's ``attention_mask=None``). ``path`` is
    replaced only by a file that passed every check (see the module docstring for tolerances
    and file layout).

    Dynamic axes: the batch (``dynamic_batch``), the sequence of a recurrent model or of
    ``seq_dim``, both checked at other sizes; and dim 1 of each integer input of rank 2 (token
    ids, attention masks), which is dynamic where the exporter keeps it so (a model that
    needs a fixed length gets one) and then checked at another length. ``report.dynamic_axes``
    lists what the file has.

    ``kwargs``: constant keyword arguments given to every call, e.g. ``{"use_cache": False}``
    for a transformers model whose cache ONNX cannot return.
    """
    from ..freeze import freeze

    onnx, ort = _require_onnx()
    _check_options(exporter, opset, atol, rtol)
    target = files.output_path(path, "export_onnx(path)", "file")
    inputs = _inputs(example_inputs)
    kwargs = _kwargs(kwargs)
    frozen = freeze(model).eval()
    call = _Bare(frozen, kwargs).eval() if kwargs else frozen  # what the file is compared with
    _check_outputs(check_runs(call, inputs))
    seq_dim = _sequence_dim(frozen) if seq_dim is None else seq_dim
    axes = _axes(inputs, dynamic_batch, seq_dim)
    # A token-id sequence axis is dynamic where the exporter can keep it so: when the export or
    # the check at a second length fails with it (T5's attention reshape in the exporter, a
    # Python loop over the length unrolled at the example's), the length is fixed and it is
    # exported again.
    attempts = [axes, _without_token_sequence(axes, seq_dim)]
    if attempts[1] == axes:
        attempts.pop()
    stage = files.stage_for(target)
    try:
        staged = stage / target.name
        for k, tried in enumerate(attempts):
            try:
                report = _export_checked(onnx, ort, frozen, call, inputs, stage, tried, exporter, opset, kwargs,
                                         seq_dim is not None, atol, rtol, target)  # fmt: skip
                break
            except (ExportError, ParityError) as err:
                if k < len(attempts) - 1:
                    continue
                if isinstance(err, ParityError) and staged.exists():
                    kept = _publish(onnx, staged, _failed_name(target))
                    raise ParityError(
                        f"{err}; the new file is kept for inspection as {kept} ({target} not written)"
                    ) from None
                raise
        _publish(onnx, staged, target)
    finally:
        files.remove(stage)
    return report


def _export_checked(onnx, ort, frozen, call, inputs, stage, axes, exporter, opset, kwargs, strict_sequence: bool,
                    atol: float, rtol: float, target) -> ExportReport:  # fmt: skip
    """Export into ``stage``, normalise to ``stage/<target name>``, check it in onnxruntime."""
    staged = stage / target.name
    _export(frozen, inputs, stage / "export.onnx", exporter, opset, axes, kwargs)
    proto = _normalize(onnx, stage / "export.onnx", staged)
    session = _session(ort, staged)
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    side = str(target) + ".data" if _data_file(staged) else None
    report = ExportReport(str(target), exporter, len(proto.graph.node), ops, data_file=side)
    report.dynamic_axes = _symbolic_axes(proto)
    checked = _checked_axes(axes, report.dynamic_axes, strict_sequence)
    for i, probe in enumerate(_probes(inputs, checked)):
        report.checks += _compare(call, session, probe, atol, rtol, first=i == 0)
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
        if t is None:
            continue  # an optional argument left out (T5's attention_mask=None): no input of the file
        if not isinstance(t, torch.Tensor):
            raise UsageError(
                f"export_onnx(example_inputs=...): input {i} is {type(t).__name__}; ONNX inputs are tensors "
                "(give a tuple of tensors or None, or one tensor)"
            )
        if t.numel() == 0:
            raise ExportError(
                f"example input {i} has shape {tuple(t.shape)}, with no elements: an empty batch cannot be "
                "exported and checked; give at least one sample"
            )
    if all(t is None for t in inputs):
        raise UsageError("export_onnx(example_inputs=...): no tensor among them; ONNX inputs are tensors")
    return tuple(inputs)


Axes = list  # per example input: {dim: "batch" | "sequence"}, or None for a None input


def _axes(inputs: tuple, dynamic_batch: bool, seq_dim: int | None) -> Axes:
    """Per input, the axes to export as dynamic: the batch, and the sequence (``seq_dim`` for
    every input, else dim 1 of integer inputs of rank 2: token ids and masks)."""
    out: Axes = []
    for t in inputs:
        if t is None:
            out.append(None)
            continue
        seq = seq_dim if seq_dim is not None else (1 if _token_ids(t) else None)
        batch_dim = 0 if seq != 0 else 1
        axes: dict[int, str] = {}
        if dynamic_batch and batch_dim < t.dim():
            axes[batch_dim] = "batch"
        if seq is not None and seq < t.dim():
            axes[seq] = "sequence"
        out.append(axes)
    return out


def _without_token_sequence(axes: Axes, seq_dim: int | None) -> Axes:
    if seq_dim is not None:
        return axes
    return [None if ax is None else {d: n for d, n in ax.items() if n != "sequence"} for ax in axes]


def _token_ids(t: torch.Tensor) -> bool:
    return t.dim() == 2 and not t.dtype.is_floating_point and not t.dtype.is_complex


def _symbolic_axes(proto) -> dict[str, dict[int, str]]:
    """The file's inputs and, for each, the axes with a symbolic size."""
    out = {}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        symbolic = {d: dim.dim_param for d, dim in enumerate(dims) if dim.dim_param}
        if symbolic:
            out[value.name] = symbolic
    return out


def _checked_axes(axes: Axes, symbolic: dict[str, dict[int, str]], strict_sequence: bool) -> Axes:
    """The axes to check at other sizes: the batch always (a fixed one fails the check), the
    sequence of an RNN or of ``seq_dim`` always, a token-id sequence where the file kept it."""
    names = _input_names(axes)
    out: Axes = []
    for ax, name in zip(axes, names):
        if ax is None:
            out.append(None)
            continue
        keep = symbolic.get(name, {})
        out.append({d: n for d, n in ax.items() if n == "batch" or strict_sequence or d in keep})
    return out


def _input_names(axes: Axes) -> list[str | None]:
    """The file's input names, one per tensor input (None for a None input)."""
    names, k = [], 0
    for ax in axes:
        names.append(None if ax is None else f"input_{k}")
        k += ax is not None
    return names


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
    if other is not None and type(other).__name__.endswith("Cache"):
        raise ExportError(
            f"the model returns a transformers {type(other).__name__} (its key/value cache) besides tensors, which "
            "ONNX cannot hold: export it without the cache, export_onnx(..., kwargs={'use_cache': False}) (the "
            "logits are the same); for generation with a cache, freeze it, save_pretrained, and export that with "
            "transformers' own ONNX tooling (optimum)"
        )
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
    """Hides GraphModule.graph, which the TorchScript exporter mistakes for its own graph; binds
    the constant keyword arguments of every call."""

    def __init__(self, model: nn.Module, kwargs: dict | None = None) -> None:
        super().__init__()
        self.model = model
        self.kwargs = dict(kwargs or {})

    def forward(self, *args):
        return self.model(*args, **self.kwargs)


def _kwargs(kwargs) -> dict:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise UsageError(f"export_onnx(kwargs={kwargs!r:.60}): give a dict of keywords, e.g. {{'use_cache': False}}")
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            raise UsageError(
                f"export_onnx(kwargs={{{key!r}: tensor}}): kwargs are constants of every call; tensors are inputs "
                "of the file: give them in example_inputs, in the forward's order"
            )
    return kwargs


def _export(model, inputs, file, exporter, opset, axes: Axes, kwargs: dict) -> None:
    with _captured() as log:
        try:
            _run_exporter(model, inputs, file, exporter, opset, axes, kwargs)
            failure = None
        except Exception as err:
            failure = err
    if failure is not None:
        error = ExportError(f"torch.onnx ({exporter} exporter) failed: {describe_failure(failure)}")
        error.log = log.getvalue()
        raise error from failure


def _run_exporter(model, inputs, file, exporter, opset, axes: Axes, kwargs: dict) -> None:
    names = [n for n in _input_names(axes) if n is not None]
    if exporter == "dynamo":
        dims = tuple(None if ax is None else {d: torch.export.Dim.AUTO for d in ax} for ax in axes)
        dims += (None,) * len(kwargs)  # torch.export wants an entry for every argument, constants too
        torch.onnx.export(
            model, inputs, str(file), kwargs=kwargs or None, dynamo=True, opset_version=opset, input_names=names,
            dynamic_shapes=dims, verbose=False, custom_translation_table=_translations(model),
        )  # fmt: skip
    else:
        bare = _Bare(model, kwargs).eval()  # the exporter restores the wrapper's mode onto the model afterwards
        torch.onnx.export(
            bare, inputs, str(file), dynamo=False, opset_version=opset, input_names=names,
            dynamic_axes={n: dict(ax) for n, ax in zip(_input_names(axes), axes) if ax is not None},
        )  # fmt: skip


def _translations(model: nn.Module) -> dict | None:
    """ONNX's RNN op for nn.RNN (io/onnx_rnn.py), which the exporter would unroll at the
    example's length; only for models that have one."""
    if not any(isinstance(m, nn.RNN) for m in model.modules()):
        return None
    from .onnx_rnn import TABLE

    return TABLE


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
    options.log_severity_level = 4  # fatal only: warnings and errors (raised too) would break the one-line contract
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


def _probes(inputs: tuple, axes: Axes) -> list[tuple]:
    """The user's inputs, then fresh seeded ones at batch 1, 2, 7 and a second sequence length
    (3 longer than the first input's), on the axes given."""
    g = torch.Generator().manual_seed(0)
    probes = [inputs]
    found = [n for ax in axes if ax for n in ax.values()]
    lengths = [t.shape[d] for t, ax in zip(inputs, axes) if ax for d, n in ax.items() if n == "sequence"]
    sizes = [{"batch": b} for b in (1, 2, 7)] if "batch" in found else []
    if lengths:
        sizes.append({"sequence": lengths[0] + 3})
    for size in sizes:
        probes.append(tuple(
            t if ax is None else _resized(t, {d: size[n] for d, n in ax.items() if n in size}, g)
            for t, ax in zip(inputs, axes)
        ))  # fmt: skip
    return probes


def _resized(t: torch.Tensor, sizes: dict[int, int], g):
    shape = list(t.shape)
    for d, size in sizes.items():
        shape[d] = size
    if t.dtype.is_floating_point:
        return torch.randn(shape, generator=g, dtype=t.dtype)
    if t.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    return torch.randint(int(t.min()), int(t.max()) + 1, shape, generator=g, dtype=t.dtype)


def _compare(model, session, probe: tuple, atol: float, rtol: float, first: bool = False) -> list[dict]:
    """Per output: shapes equal, NaN/Inf in the same places, max |ort - torch| <= atol + rtol * max |torch|."""
    shape = [None if t is None else tuple(t.shape) for t in probe]
    with torch.no_grad():
        refs = [t for t in pytree.tree_leaves(model(*probe)) if isinstance(t, torch.Tensor)]
    wanted = {i.name for i in session.get_inputs()}  # the exporter drops an input the graph does not use
    names = [f"input_{k}" for k in range(sum(t is not None for t in probe))]
    feed = {n: t.numpy() for n, t in zip(names, [t for t in probe if t is not None]) if n in wanted}
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
