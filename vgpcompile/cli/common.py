"""What the commands share: loading a model from a factory, parsing shapes, ranges and
pass options, and the argument groups."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

from torch import nn

from ..core.pipeline import merge_option, parse_pipeline, split_option
from ..errors import LoadError, UsageError

EPILOG = """selector grammar (--select / --ignore / --leaf, repeatable):
  fc1 | encoder.block3   exact module name; also matches everything inside it
  re:<regex>            full match on a site, module or producer name
  type:<Class>          class (or base class) of the activation module or its producer
  act:<kind>            activation kind: tanh, sigmoid, relu, gelu, ...
pass options: --passes "gpn{root=paper,learnable=true}" or --option gpn.root=paper
  (one key given both ways with different values is an error)

exit codes: 0 ok, 1 internal error, 2 bad arguments, 3 selector error, 4 load failure,
5 trace failure, 6 parity failure, 7 pass failure, 8 ONNX export failure; errors are one
line on stderr, `vgpcompile --debug COMMAND ...` adds the traceback and its causes
"""


def load_factory(spec: str) -> nn.Module:
    """Build a model from ``pkg.module:callable`` or ``path/to/file.py:callable``.

    Anything the user's code raises, ``sys.exit()`` included, is a LoadError (exit 4): a
    model file that exits has not produced a model.
    """
    if ":" not in spec:
        raise UsageError(f"--model {spec!r}: expected 'pkg.module:factory' or 'path/file.py:factory'")
    where, name = spec.rsplit(":", 1)
    try:
        module = _import(where)
    except LoadError:
        raise
    except (Exception, SystemExit) as err:
        raise LoadError(f"--model {spec!r}: cannot import {where!r}: {_raised(err)}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise LoadError(f"--model {spec!r}: {where!r} has no callable {name!r}")
    try:
        model = factory()
    except (Exception, SystemExit) as err:
        raise LoadError(f"--model {spec!r}: {name}() {_raised(err)}") from None
    if not isinstance(model, nn.Module):
        raise LoadError(f"--model {spec!r}: {name}() returned {type(model).__name__}, not an nn.Module")
    return model


def _raised(err: BaseException) -> str:
    if isinstance(err, SystemExit):
        return f"called sys.exit({err.code!r}) instead of returning a model"
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return f"raised {type(err).__name__}: {first}"


def _import(where: str):
    if where.endswith(".py") or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise LoadError(f"--model: no such file {where!r}")
        spec = importlib.util.spec_from_file_location(f"_vgp_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(where)


def compile_args(args: argparse.Namespace) -> dict[str, Any]:
    """The vgpcompile keyword arguments given by --passes, --option, --select, --ignore, --leaf."""
    names, options = parse_pipeline(args.passes or "")
    for item in args.option or []:
        head, value = split_option(item, "--option")
        pass_name, dot, key = head.partition(".")
        if not dot:
            raise UsageError(f"--option {item!r} must be pass.key=value")
        merge_option(options, pass_name, key, value, f"--option {item!r}", "--passes")
    return {"passes": names, "options": options, "select": args.select, "ignore": args.ignore, "leaf": args.leaf}


def load_model(args: argparse.Namespace) -> nn.Module:
    """The model from --model (a factory) plus --weights, or a whole pickled module with --allow-pickle."""
    from ..io.checkpoint import fit_state_dict, read_state_dict

    weights = getattr(args, "weights", None)
    allow = getattr(args, "allow_pickle", False)
    limit = getattr(args, "max_unzipped_gb", None)
    limit = None if limit is None else int(limit * 2**30)
    state = read_state_dict(weights, allow_pickle=allow, max_unzipped_bytes=limit) if weights else None
    if args.model is None:
        if isinstance(state, nn.Module):
            return state
        raise UsageError("--model is required (a factory pkg.module:callable or path/file.py:callable)")
    model = load_factory(args.model)
    if state is not None:
        fit_state_dict(model, state.state_dict() if isinstance(state, nn.Module) else state, weights)
    return model


# An example input is for tracing and parity checks: 2**28 elements (1 GiB of float32) is far
# beyond any useful one, and refusing early beats an out-of-memory kill.
MAX_INPUT_ELEMENTS = 2**28


def example_input(text: str | None):
    """``--input-shape 1,3,32,32`` -> a seeded standard normal tensor of that shape."""
    import torch

    shape = input_shape(text)
    return None if shape is None else torch.randn(shape, generator=torch.Generator().manual_seed(0))


def input_shape(text: str | None) -> list[int] | None:
    """The sizes of ``--input-shape``, checked before any work: positive, and a sane total."""
    if not text:
        return None
    try:
        shape = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--input-shape {text!r}: expected comma-separated integers, e.g. 1,3,32,32") from None
    if not shape or any(v <= 0 for v in shape):
        raise UsageError(f"--input-shape {text!r}: every size must be positive")
    total = math.prod(shape)
    if total > MAX_INPUT_ELEMENTS:
        raise UsageError(
            f"--input-shape {text!r}: {total:.3g} elements ({4 * total / 2**30:.3g} GiB); an example input only "
            f"needs one small batch (at most {MAX_INPUT_ELEMENTS} elements)"
        )
    return shape


def input_range(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--input-range {text!r}: expected LO,HI, e.g. 0,1") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise UsageError(f"--input-range {text!r}: expected finite LO <= HI, e.g. 0,1")
    return lo, hi


def output_paths(args: argparse.Namespace) -> None:
    """Check -o/--output and --onnx before any work (exit 2), so a bad path costs nothing."""
    from ..io.checkpoint import check_replaceable
    from ..io.files import output_path

    out = getattr(args, "output", None)
    if out is not None:
        check_replaceable(output_path(out, "-o/--output", "dir"), "-o/--output")
    onnx = getattr(args, "onnx", None)
    if onnx is None:
        return
    target = output_path(onnx, "--onnx", "file").absolute()
    from ..io.onnx import _require_onnx

    _require_onnx()  # a missing extra costs nothing either: fail before the checkpoint is written
    for flag in ("output", "checkpoint"):
        folder = getattr(args, flag, None)
        if folder and Path(folder).absolute() in target.parents:
            raise UsageError(
                f"--onnx {onnx!r} is inside the checkpoint directory {folder!r}, which holds exactly its weights "
                "and recipe: write the ONNX file elsewhere"
            )


def source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model factory: pkg.module:callable or path/file.py:callable")
    p.add_argument("--weights", help="state_dict: .safetensors, or .pt/.pth (loaded with weights_only=True)")
    p.add_argument(
        "--allow-pickle", action="store_true",
        help="allow --weights to be a whole pickled module. Dangerous: unpickling runs arbitrary code "
        "from the file; use only for files you trust",
    )  # fmt: skip
    p.add_argument(
        "--max-unzipped-gb", type=_positive_float, metavar="GB",
        help="refuse a .pt whose zip entries would inflate to more (default: 1, or 4x the file's size)",
    )  # fmt: skip


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def onnx_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--onnx", required=required, metavar="FILE", help="also export the frozen model to this ONNX file")
    p.add_argument("--input-shape", required=required, metavar="N,C,...", help="example input shape, e.g. 1,3,32,32")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo", help="torch.onnx exporter")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")


def model_args(p: argparse.ArgumentParser, source: bool = False) -> None:
    if source:
        source_args(p)
    else:
        p.add_argument("--model", required=True, help="model factory: pkg.module:callable or path/file.py:callable")
    p.add_argument("--passes", default="", help='comma-separated passes, e.g. "gpn" or "gpn{root=paper}"')
    p.add_argument("--option", action="append", metavar="PASS.KEY=VALUE", help="a pass option (repeatable)")
    p.add_argument("--select", action="append", metavar="RULE", help="rewrite only sites matching RULE")
    p.add_argument("--ignore", action="append", metavar="RULE", help="leave sites matching RULE alone")
    p.add_argument("--leaf", action="append", metavar="RULE", help="keep matching modules opaque")
