"""``vgpcompile convert``: compile a model and write its checkpoint (and optionally ONNX)."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .common import compile_args, example_input, input_range, load_model, model_args, onnx_args, output_paths

HELP = "compile a model and write its training-form (or frozen) checkpoint"
EXAMPLE = (
    "vgpcompile convert --model examples/models.py:small_cnn --weights in.pt --passes gpn -o out_dir/\n"
    "  vgpcompile convert --model examples/models.py:small_cnn --passes gpn -o out_dir/ \\\n"
    "      --onnx cnn.onnx --input-shape 1,3,32,32"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    model_args(p, source=True)
    p.add_argument("-o", "--output", required=True, help="checkpoint directory to write (weights + recipe.json)")
    p.add_argument("--freeze", action="store_true", help="write the inference form instead of the training form")
    p.add_argument("--format", choices=["safetensors", "pt"], default="safetensors", help="weights file format")
    p.add_argument("--input-range", metavar="LO,HI", help="range of the model input (for arp)")
    onnx_args(p, required=False)


def run(args: argparse.Namespace) -> int:
    from ..api import vgpcompile
    from ..freeze import freeze
    from ..io.checkpoint import save
    from ..io.onnx import check_runs, export_onnx

    output_paths(args)  # every argument is checked before the model is loaded
    example = example_input(args.input_shape)
    value_range = input_range(args.input_range)
    if args.onnx and example is None:
        raise UsageError("--onnx needs --input-shape (the example input for export and parity checks)")
    model = load_model(args)
    compiled = vgpcompile(
        model,
        **compile_args(args),
        example_inputs=(example,) if example is not None else None,
        input_range=value_range,
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
