"""Golden graph tests: the code of a rewritten graph compared with a reviewed file.

Each pass keeps its files in ``tests/passes/<name>/golden/<case>.py.txt``: the rewritten
``GraphModule.code`` of a small model. A change in a pass that changes what it produces
fails here with a diff, to be reviewed. Regenerate after a reviewed change with

    VGPCOMPILE_ACCEPT_GOLDEN=1 python -m pytest tests/passes -k golden

(the torch.fx ``assertExpectedInline`` / xDSL FileCheck idea), then read the git diff.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from torch import fx

ACCEPT = "VGPCOMPILE_ACCEPT_GOLDEN"


def graph_text(gm: fx.GraphModule) -> str:
    """The graph's code (without fx's leading blank lines and trailing spaces), then the class
    of each module it calls (a layer swapped under its own name shows only there)."""
    lines = [line.rstrip() for line in gm.code.strip("\n").splitlines()]
    targets = dict.fromkeys(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    lines += ["", "# modules called:"] + [f"#   {t}: {type(gm.get_submodule(t)).__name__}" for t in targets]
    return "\n".join(lines) + "\n"


def check(test_file: str, case: str, gm: fx.GraphModule) -> None:
    path = Path(test_file).parent / "golden" / f"{case}.py.txt"
    text = graph_text(gm)
    if os.environ.get(ACCEPT):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"no golden file {path}; create it with {ACCEPT}=1 and review it")
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "now"))
        pytest.fail(f"the rewritten graph differs from {path} (review; regenerate with {ACCEPT}=1):\n{diff}")
