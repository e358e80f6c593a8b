"""``vgpcompile diagnose``: measure vanishing/exploding gradients, before and after passes."""

from __future__ import annotations

import argparse

from .common import compile_args, example_input, load_model, model_args

HELP = "measure per-layer gradient and signal norms and saturation; verdict and recommended passes"
EXAMPLE = "vgpcompile diagnose --model examples/models.py:deep_tanh_mlp --input-shape 64,16 --passes bsnn --out report/"


def add_arguments(p: argparse.ArgumentParser) -> None:
    model_args(p, source=True)
    p.add_argument("--input-shape", required=True, metavar="N,...", help="shape of a generated N(0, 1) input batch")
    p.add_argument(
        "--out", metavar="DIR", help="write report.json, report.md and the PNGs here (the directory is replaced whole)"
    )
    p.add_argument("--batches", type=int, default=1, help="random input batches to average over (default 1)")
    p.add_argument("--seeds", type=int, default=1, help="top errors per batch (default 1; batches x seeds <= 1000)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="measure in this precision (deep nets: float64)")
    p.add_argument("--rows", type=int, default=24, help="layers shown in the printed table (default 24; 0: all)")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="list the candidate passes for the problems found without compiling and re-measuring them "
        "(nothing is then recommended)",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        metavar="N",
        help="re-measure at most N candidate passes per side (default 3; each costs one compile and the runs)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import UsageError
    from ..tools.diagnose import MAX_CANDIDATES, MAX_RUNS, check_out_dir, diagnose

    # every argument is checked before the model is loaded and measured
    if args.batches < 1 or args.seeds < 1:
        raise UsageError("--batches and --seeds must be positive")
    if args.batches * args.seeds > MAX_RUNS:
        raise UsageError(
            f"--batches {args.batches} x --seeds {args.seeds}: more than {MAX_RUNS} forward and backward passes "
            "per side; the averaged figures settle within a few runs"
        )
    if args.candidates is not None and args.candidates < 0:
        raise UsageError(f"--candidates {args.candidates}: a number of candidate passes >= 0")
    if args.out is not None:
        check_out_dir(args.out, "--out")
    first = example_input(args.input_shape)
    kwargs = compile_args(args)
    model = load_model(args)
    batches = [(first if i == 0 else _batch(args.input_shape, i), None) for i in range(args.batches)]
    report = diagnose(
        model,
        passes=kwargs["passes"] or None,
        options=kwargs["options"],
        select=kwargs["select"],
        ignore=kwargs["ignore"],
        leaf=kwargs["leaf"],
        batches=batches,
        seeds=args.seeds,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        verify=not args.no_verify,
        max_candidates=MAX_CANDIDATES if args.candidates is None else args.candidates,
    )
    print(report.to_markdown(max_rows=args.rows or None))
    if args.out is not None:
        for path in report.write(args.out):
            print(f"wrote {path}")
    print(f"verdict: {report.verdict}")
    return 0


def _batch(shape: str, seed: int):
    import torch

    sizes = [int(v) for v in shape.split(",")]
    return torch.randn(sizes, generator=torch.Generator().manual_seed(seed))
