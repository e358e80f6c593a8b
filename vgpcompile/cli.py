"""The ``vgpcompile`` command line.

Exit codes: 0 success; 1 internal error; 2 bad arguments or options; 3 selector error;
4 load failure; 5 trace failure; 6 parity failure; 7 a pass failed; 8 ONNX export failed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .errors import LoadError, UsageError, VgpError

EPILOG = """selector grammar (--select / --ignore / --leaf, repeatable):
  fc1 | encoder.block3   exact module name; also matches everything inside it
  re:<regex>            full match on a site, module or producer name
  type:<Class>          class (or base class) of the activation module or its producer
  act:<kind>            activation kind: tanh, sigmoid, relu, gelu, ...
pass options: --passes "gpn{root=paper,learnable=true}" or --option gpn.root=paper

exit codes: 0 ok, 2 bad arguments, 3 selector error, 4 load failure, 5 trace failure,
6 parity failure, 7 pass failure, 8 ONNX export failure
"""


def load_factory(spec: str) -> nn.Module:
    """Build a model from ``pkg.module:callable`` or ``path/to/file.py:callable``."""
    if ":" not in spec:
        raise UsageError(f"--model {spec!r}: expected 'pkg.module:factory' or 'path/file.py:factory'")
    where, name = spec.rsplit(":", 1)
    try:
        module = _import(where)
    except LoadError:
        raise
    except Exception as err:
        raise LoadError(f"--model {spec!r}: cannot import {where!r}: {type(err).__name__}: {err}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise LoadError(f"--model {spec!r}: {where!r} has no callable {name!r}")
    try:
        model = factory()
    except Exception as err:
        raise LoadError(f"--model {spec!r}: {name}() raised {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise LoadError(f"--model {spec!r}: {name}() returned {type(model).__name__}, not an nn.Module")
    return model


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


def parse_passes(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """``"gpn{root=paper},arp"`` -> (["gpn", "arp"], {"gpn": {"root": "paper"}})."""
    names, options, depth, token = [], {}, 0, ""
    for ch in text + ",":
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            token = token.strip()
            if token:
                name, _, body = token.partition("{")
                names.append(name.strip())
                if body:
                    options[name.strip()] = dict(_kv(kv, name) for kv in body.rstrip("}").split(",") if kv.strip())
            token = ""
        else:
            token += ch
    if depth != 0:
        raise UsageError(f"--passes {text!r}: unbalanced braces")
    return names, options


def _kv(text: str, where: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise UsageError(f"option {text.strip()!r} for {where!r} must be key=value")
    return key.strip(), value.strip()


def _compile_args(args: argparse.Namespace) -> dict[str, Any]:
    names, options = parse_passes(args.passes or "")
    for item in args.option or []:
        head, value = _kv(item, "--option")
        pass_name, dot, key = head.partition(".")
        if not dot:
            raise UsageError(f"--option {item!r} must be pass.key=value")
        options.setdefault(pass_name, {})[key] = value
    return {"passes": names, "options": options, "select": args.select, "ignore": args.ignore, "leaf": args.leaf}


def load_model(args: argparse.Namespace) -> nn.Module:
    """The model from --model (a factory) plus --weights, or a whole pickled module with --allow-pickle."""
    from .checkpoint import fit_state_dict, read_state_dict

    weights = getattr(args, "weights", None)
    allow = getattr(args, "allow_pickle", False)
    state = read_state_dict(weights, allow_pickle=allow) if weights else None
    if args.model is None:
        if isinstance(state, nn.Module):
            return state
        raise UsageError("--model is required (a factory pkg.module:callable or path/file.py:callable)")
    model = load_factory(args.model)
    if state is not None:
        fit_state_dict(model, state.state_dict() if isinstance(state, nn.Module) else state, weights)
    return model


def example_input(text: str | None):
    """``--input-shape 1,3,32,32`` -> a seeded standard normal tensor of that shape."""
    import torch

    if not text:
        return None
    try:
        shape = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--input-shape {text!r}: expected comma-separated integers, e.g. 1,3,32,32") from None
    if not shape or any(v <= 0 for v in shape):
        raise UsageError(f"--input-shape {text!r}: every size must be positive")
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _input_range(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--input-range {text!r}: expected LO,HI, e.g. 0,1") from None
    return lo, hi


def cmd_inspect(args: argparse.Namespace) -> int:
    from .api import plan

    model = load_model(args)
    kinds: dict[str, int] = {}
    for m in model.modules():
        kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    print(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters())} parameters")
    print("  modules: " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    print(plan(model))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .api import vgpcompile
    from .checkpoint import save
    from .export import check_runs, export_onnx
    from .freeze import freeze

    model = load_model(args)
    example = example_input(args.input_shape)
    if args.onnx and example is None:
        raise UsageError("--onnx needs --input-shape (the example input for export and parity checks)")
    kw = _compile_args(args)
    compiled = vgpcompile(
        model,
        **kw,
        example_inputs=(example,) if example is not None else None,
        input_range=_input_range(args.input_range),
    )
    print(compiled.vgp_report)
    if example is not None:  # fail before anything is written
        check_runs(compiled, (example,))
    out = freeze(compiled) if args.freeze else compiled
    save(out, args.output, format=args.format)
    print(f"wrote {'frozen' if args.freeze else 'training'}-form checkpoint to {args.output}")
    if args.onnx:
        print(export_onnx(out, args.onnx, (example,), exporter=args.exporter, opset=args.opset))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load
    from .export import export_onnx

    if args.model is None:
        raise UsageError("--model is required: the checkpoint holds weights and the recipe, not the architecture")
    model = load(lambda: load_factory(args.model), args.checkpoint)
    example = example_input(args.input_shape)
    report = export_onnx(
        model, args.onnx, (example,), exporter=args.exporter, opset=args.opset, dynamic_batch=not args.static_batch
    )
    print(report)
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from .passes import PRESETS, list_passes

    for name, summary in list_passes():
        print(f"{name:12s} {summary}")
    for name, parts in PRESETS.items():
        print(f"{name:12s} preset: {' + '.join(parts)}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .api import plan

    report = plan(load_factory(args.model), **_compile_args(args), input_range=_input_range(args.input_range))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(args.activation, args.depth, args.width, args.steps, args.lr, seed=args.seed)
    run_demo(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vgpcompile",
        description="Compile PyTorch models against vanishing/exploding gradients.",
        epilog="examples:\n  vgpcompile demo\n  vgpcompile passes\n"
        "  vgpcompile plan --model examples/models.py:deep_tanh_mlp --passes gpn\n"
        "  vgpcompile convert --model examples/models.py:small_cnn --passes gpn -o out/ --onnx cnn.onnx "
        "--input-shape 1,3,32,32\n\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("passes", help="list the passes, one line each").set_defaults(func=cmd_passes)
    p = sub.add_parser(
        "plan",
        help="show the per-site plan for a model without changing anything",
        epilog="example:\n  vgpcompile plan --model examples/models.py:deep_tanh_mlp --passes gpn \\\n"
        "      --ignore act:sigmoid\n\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_args(p)
    p.add_argument("--input-range", metavar="LO,HI", help="range of the model input (for arp)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_plan)
    i = _sub(sub, "inspect", "modules, activation sites, traceability and nonlinear depth of a model",
             "vgpcompile inspect --model examples/models.py:small_cnn --weights cnn.pt")  # fmt: skip
    _source_args(i)
    i.set_defaults(func=cmd_inspect)
    c = _sub(sub, "convert", "compile a model and write its training-form (or frozen) checkpoint",
             "vgpcompile convert --model examples/models.py:small_cnn --weights in.pt --passes gpn -o out_dir/\n"
             "  vgpcompile convert --model examples/models.py:small_cnn --passes gpn -o out_dir/ \\\n"
             "      --onnx cnn.onnx --input-shape 1,3,32,32")  # fmt: skip
    _model_args(c, source=True)
    c.add_argument("-o", "--output", required=True, help="checkpoint directory to write (weights + recipe.json)")
    c.add_argument("--freeze", action="store_true", help="write the inference form instead of the training form")
    c.add_argument("--format", choices=["safetensors", "pt"], default="safetensors", help="weights file format")
    c.add_argument("--input-range", metavar="LO,HI", help="range of the model input (for arp)")
    _onnx_args(c, required=False)
    c.set_defaults(func=cmd_convert)
    e = _sub(sub, "export", "export a converted checkpoint to ONNX and check it in onnxruntime",
             "vgpcompile export --model examples/models.py:small_cnn --checkpoint out_dir/ --onnx model.onnx \\\n"
             "      --input-shape 1,3,32,32")  # fmt: skip
    e.add_argument("--model", help="model factory: pkg.module:callable or path/file.py:callable")
    e.add_argument("--checkpoint", required=True, help="directory written by convert or vgpcompile.save()")
    e.add_argument("--static-batch", action="store_true", help="do not make the batch dimension dynamic")
    _onnx_args(e, required=True)
    e.set_defaults(func=cmd_export)
    d = sub.add_parser("demo", help="train a deep MLP plain vs compiled and compare (about 15 s on 2 cores)")
    d.add_argument("--activation", default="relu", help="activation kind (default relu)")
    d.add_argument("--depth", type=int, default=50, help="hidden layers (default 50)")
    d.add_argument("--width", type=int, default=128)
    d.add_argument("--steps", type=int, default=400)
    d.add_argument("--lr", type=float, default=1e-4, help="SGD learning rate (default 1e-4, the BSNN code's)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)
    return parser


def _sub(sub, name: str, help_: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help_, description=help_, epilog=f"example:\n  {example}\n\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model factory: pkg.module:callable or path/file.py:callable")
    p.add_argument("--weights", help="state_dict: .safetensors, or .pt/.pth (loaded with weights_only=True)")
    p.add_argument(
        "--allow-pickle", action="store_true",
        help="allow --weights to be a whole pickled module. Dangerous: unpickling runs arbitrary code "
        "from the file; use only for files you trust",
    )  # fmt: skip


def _onnx_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--onnx", required=required, metavar="FILE", help="also export the frozen model to this ONNX file")
    p.add_argument("--input-shape", required=required, metavar="N,C,...", help="example input shape, e.g. 1,3,32,32")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo", help="torch.onnx exporter")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")


def _model_args(p: argparse.ArgumentParser, source: bool = False) -> None:
    if source:
        _source_args(p)
    else:
        p.add_argument("--model", required=True, help="model factory: pkg.module:callable or path/file.py:callable")
    p.add_argument("--passes", default="", help='comma-separated passes, e.g. "gpn" or "gpn{root=paper}"')
    p.add_argument("--option", action="append", metavar="PASS.KEY=VALUE", help="a pass option (repeatable)")
    p.add_argument("--select", action="append", metavar="RULE", help="rewrite only sites matching RULE")
    p.add_argument("--ignore", action="append", metavar="RULE", help="leave sites matching RULE alone")
    p.add_argument("--leaf", action="append", metavar="RULE", help="keep matching modules opaque")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VgpError as err:
        print(f"vgpcompile {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"vgpcompile {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
