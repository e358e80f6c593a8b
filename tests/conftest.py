import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The suite's models are small: one intra-op thread is faster and immune to oversubscription.
torch.set_num_threads(1)
# Every compile with example inputs checks that each pass changed only the facts it declares
# (core/facts.py): an undeclared change is an error in the tests.
os.environ.setdefault("VGPCOMPILE_CHECK_FACTS", "1")
sys.path.insert(0, str(ROOT / "examples"))  # model factories shared with the CLI
sys.path.insert(0, str(ROOT / "tests"))  # helpers.py, for tests in subdirectories


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_terminal_summary(terminalreporter):
    """The zoo's model x pass table, when the zoo ran."""
    zoo = sys.modules.get("zoo_models")
    if zoo is not None and zoo.TABLE:
        terminalreporter.section("zoo: model x pass")
        for line in zoo.format_table(zoo.TABLE):
            terminalreporter.write_line(line)
