"""The ``vgpcompile`` command line: one module per command, listed in ``COMMANDS``.

Each command module has ``HELP`` (one line), ``EXAMPLE``, ``add_arguments(parser)`` and
``run(args) -> exit code``; a new command is a new module plus one line below.

Exit codes: 0 success; 1 internal error; 2 bad arguments or options; 3 selector error;
4 load failure; 5 trace failure; 6 parity failure; 7 a pass failed; 8 ONNX export failed.
Every error is one line on stderr; ``--debug`` adds the traceback with its chained causes.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence

from ..core.report import VgpWarning
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
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        p = sub.add_parser(
            name, help=module.HELP, description=module.HELP, epilog=f"example:\n  {module.EXAMPLE}\n\n" + EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        module.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.set_defaults(func=module.run)
    return parser


DEBUG_HELP = "on an error, also print the full traceback with its chained causes (and an exporter's full log)"


def _version() -> str:
    import torch

    from .. import __version__

    return f"vgpcompile {__version__} (torch {torch.__version__})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every error is one line on stderr and an exit code (the full story with --debug)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    where = f"vgpcompile {args.command}"
    with warnings.catch_warnings():
        warnings.simplefilter("default", VgpWarning)  # a command's own warnings always reach the user
        warnings.showwarning = _one_line_warning(where)
        try:
            return args.func(args)
        except VgpError as err:
            _report(where, "error", err, args.debug)
            return err.exit_code
        except KeyboardInterrupt:
            print(f"{where}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # a bug of ours: still one line, the traceback with --debug
            _report(where, f"internal error ({type(err).__name__}; please report it)", err, args.debug)
            return 1


def _report(where: str, label: str, err: BaseException, debug: bool) -> None:
    text = " ".join(str(err).split("\n")).strip() or type(err).__name__
    hint = ""
    if not debug and getattr(err, "log", None):
        hint = " (--debug shows the exporter's full output)"
    elif not debug and label.startswith("internal"):
        hint = " (--debug shows the full traceback)"
    print(f"{where}: {label}: {text}{hint}", file=sys.stderr)
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
        log = getattr(err, "log", None)
        if log:
            print(f"--- the exporter's output ---\n{log}", file=sys.stderr)


def _one_line_warning(where: str):
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split("\n"))
        print(f"{where}: warning: {text}", file=file or sys.stderr)

    return show


__all__ = ["COMMANDS", "build_parser", "load_factory", "main"]
