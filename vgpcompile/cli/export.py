"""``vgpcompile export``: a converted checkpoint to ONNX, checked in onnxruntime."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .common import example_input, load_factory, onnx_args, output_paths

HELP = "export a converted checkpoint to ONNX and check it in onnxruntime"
EXAMPLE = (
    "vgpcompile export --model examples/models.py:small_cnn --checkpoint out_dir/ --onnx model.onnx \\\n"
    "      --input-shape 1,3,32,32"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model factory: pkg.module:callable or path/file.py:callable")
    p.add_argument("--checkpoint", required=True, help="directory written by convert or vgpcompile.save()")
    p.add_argument("--static-batch", action="store_true", help="do not make the batch dimension dynamic")
    onnx_args(p, required=True)


def run(args: argparse.Namespace) -> int:
    from ..io.checkpoint import load
    from ..io.onnx import export_onnx

    if args.model is None:
        raise UsageError("--model is required: the checkpoint holds weights and the recipe, not the architecture")
    output_paths(args)
    example = example_input(args.input_shape)
    model = load(lambda: load_factory(args.model), args.checkpoint)
    report = export_onnx(
        model, args.onnx, (example,), exporter=args.exporter, opset=args.opset, dynamic_batch=not args.static_batch
    )
    print(report)
    return 0
