"""examples/rai_moons.py: a smoke run of every arm (--quick), and the reference behind the marker."""

import json

import pytest
import rai_moons


def test_quick_run_covers_every_arm_and_logs(tmp_path, capsys):
    log = tmp_path / "runs.jsonl"
    rows = rai_moons.main(["all", "--quick", "--log", str(log)])
    assert [(r["experiment"], r["arm"]) for r in rows] == [("full", "plain"), ("full", "rai")] + [
        ("minibatch", v) for v in rai_moons.MINIBATCH_VARIANTS
    ]
    assert all(0 <= r["test_acc"] <= 1 and 0 <= r["train_acc"] <= 1 for r in rows)
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert len([r for r in logged if not r.get("progress")]) == len(rows)
    points = {r["at"] for r in logged if r.get("progress") and r["arm"] == "rai"}
    assert points == {3, 6, 9, 12, 15, 18, 21, 24, 27, 30} | {1, 2}  # full: every 3 of 30 steps; mini-batch: 2 epochs
    out = capsys.readouterr().out
    assert "| rai | 1 |" in out and "| every10 | 1 |" in out
    rai_moons.main(["table", "--log", str(log)])
    assert "| lam-growth | 1 |" in capsys.readouterr().out


@pytest.mark.experiment
def test_reference_full_batch_rai_separates_the_moons():
    """One seed of the notebook's 101-layer run (about 20 minutes on one core)."""
    rows = rai_moons.main(["full", "--arms", "rai,plain", "--seeds", "0"])
    got = {r["arm"]: r["test_acc"] for r in rows}
    assert got["rai"] >= 0.9 and got["plain"] <= 0.6
