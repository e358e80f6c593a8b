"""``vgpcompile passes``: list the passes and presets."""

from __future__ import annotations

import argparse

HELP = "list the passes, one line each"
EXAMPLE = "vgpcompile passes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from ..core.registry import PRESETS, list_passes

    for name, summary in list_passes():
        print(f"{name:12s} {summary}")
    for name, parts in PRESETS.items():
        print(f"{name:12s} preset: {' + '.join(parts)}")
    return 0
