"""The ``vgpcompile`` command line: one module per command, listed in ``COMMANDS``.

Each command module has ``HELP`` (one line), ``EXAMPLE``, ``add_arguments(parser)`` and
``run(args) -> exit code``; a new command is a new module plus one line below.

Exit codes: 0 success; 1 internal error; 2 bad arguments or options; 3 selector error;
4 load failure; 5 trace failure; 6 parity failure; 7 a pass failed; 8 ONNX export failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import VgpError
from . import convert, demo, diagnose, export, inspect, passes, plan
from .common import EPILOG, load_factory

COMMANDS = {
    "passes": passes,
    "plan": plan,
    "inspect": inspect,
    "convert": convert,
    "export": export,
    "demo": demo,
    "diagnose": diagnose,
}


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
    for name, module in COMMANDS.items():
        p = sub.add_parser(
            name, help=module.HELP, description=module.HELP, epilog=f"example:\n  {module.EXAMPLE}\n\n" + EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


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


__all__ = ["COMMANDS", "build_parser", "load_factory", "main"]
