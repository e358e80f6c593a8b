"""examples/diagnose_sweep.py: diagnose over real architectures, every recommendation
re-measured (issue 22). The full sweep (torchvision where importable, HF tiny configs, the
in-repo models) is an experiment; the default run sweeps the two recurrent models."""

import json
from pathlib import Path

import diagnose_sweep
import pytest


def _check(rows):
    """What a recommendation promises: every target better, nothing healthy broken."""
    for row in rows:
        assert "error" not in row, row
        if not row["problems"]:
            assert row["candidates"] == [] and row["recommended"] == []
        for c in row["candidates"]:
            if c["status"] == "recommended":
                assert set(c["problems_after"]) <= set(row["problems"]), (row["model"], c)
                assert c["passes"] in row["recommended"]
            else:
                assert c["passes"] not in row["recommended"]


def test_recurrent_rows_and_the_table(capsys):
    assert diagnose_sweep.main(["--only", "lstm_stack,rnn_50"]) == 0
    text = capsys.readouterr().out
    rows = {r["model"]: r for r in diagnose_sweep.sweep({"lstm_stack", "rnn_50"})}
    _check(rows.values())
    assert rows["lstm_stack"]["problems"] == ["vanishing_gradients", "collapsing_signal"]
    assert rows["lstm_stack"]["recommended"][0] == "arp" and rows["rnn_50"]["recommended"] == ["arp"]
    assert "| repo/lstm_stack | vanishing_gradients (grad_ratio " in text
    assert "`roaf` rejected: vanishing_in_time cannot be re-measured" in text


@pytest.mark.experiment
def test_full_sweep_keeps_every_promise():
    rows = diagnose_sweep.sweep(None)
    _check(rows)
    assert len(rows) >= 10


def test_the_committed_sweep_keeps_every_promise():
    """docs/results/diagnose_sweep.json (30 architectures, torchvision's in the timm venv)."""
    doc = json.loads((Path(__file__).parents[2] / "docs" / "results" / "diagnose_sweep.json").read_text())
    rows = {r["model"]: r for r in doc["rows"]}
    _check(rows.values())
    assert len(rows) == 30 and not rows["densenet121"]["problems"] and not rows["densenet121@224"]["problems"]
    squeeze = {c["passes"]: c for c in rows["squeezenet1_0@224"]["candidates"]}
    assert rows["squeezenet1_0@224"]["recommended"] == ["arp"] and squeeze["bsnn"]["status"] == "rejected"
    recommended = {p for r in rows.values() for p in r["recommended"]}
    assert {"tat", "bsnn", "arp", "orthogonal"} <= recommended  # not only bsnn any more
