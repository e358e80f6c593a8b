"""docs/results.md and README's results block are what the committed JSON says; the full
runs behind them reproduce (marked ``experiment``: minutes to an hour each)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import make_results
import pytest

from vgpcompile.tools.baselines import Comparison

ROOT = Path(__file__).resolve().parents[2]


def test_results_page_and_readme_block_match_the_json():
    assert make_results.main(["--check"]) == 0, "run: python examples/make_results.py"


def test_every_result_names_its_run_and_has_three_seeds():
    for name in make_results.RUNS:
        data = json.loads((make_results.RESULTS / f"{name}.json").read_text())
        if "tables" in data:  # gradient norms: three seeds per row
            assert all(len(row["seeds"]) == 3 for rows in data["tables"].values() for row in rows)
            continue
        comparisons = data["comparisons"].values() if "comparisons" in data else [data["comparison"]]
        for raw in comparisons:
            comparison = Comparison.from_dict(raw)
            assert len(comparison.sweep.seeds) >= 3 and len(comparison.sweep.lrs) >= 3, name
            assert comparison.reference, name  # chance accuracy or target variance next to every metric
            assert {a.kind for a in comparison.arms} >= {"plain", "architectural", "compiled"}, name


def _without(data: dict, arms: set[str]) -> dict:
    """``data`` without the arms a later command added (``added``, e.g. tat) that ``arms`` lacks."""
    added = set(data.get("added", {})) - arms
    if not added:
        return data
    data = json.loads(json.dumps(data))
    raws = data["comparisons"].values() if "comparisons" in data else [data["comparison"]]
    for raw in raws:
        raw["arms"] = [a for a in raw["arms"] if not any(a["name"].startswith(n) for n in added)]
    return data


def _arm_names(data: dict) -> set[str]:
    raws = data.get("comparisons", {}).values() if "comparisons" in data else [data.get("comparison", {"arms": []})]
    return {a["name"] for raw in raws for a in raw["arms"]}


def _verdicts(data: dict) -> dict:
    if "tables" in data:
        return {act: [(row["arm"], [round(s["ratio"], 6) for s in row["seeds"]]) for row in rows]
                for act, rows in data["tables"].items()}  # fmt: skip
    comparisons = data["comparisons"] if "comparisons" in data else {"": data["comparison"]}
    out = {}
    for key, raw in comparisons.items():
        c = Comparison.from_dict(raw)
        metric = "test_mse" if "test_mse" in c.reported else "test_acc"
        out[key] = [(a.name, a.best_lr) for a in c.arms], [v["word"] for v in c.verdict(metric)]
    return out


@pytest.mark.experiment
@pytest.mark.parametrize("name", list(make_results.RUNS))
def test_full_run_reproduces_the_committed_verdicts(name, tmp_path):
    command = make_results.RUNS[name].replace("docs/results/", f"{tmp_path}/").split()
    if command[0] == "vgpcompile":
        command = [sys.executable, "-m", "vgpcompile.cli", *command[1:]]
    else:
        command[0] = sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # as the committed runs were made
    for log in make_results.RESULTS.glob("*.jsonl"):  # logs some runs read (rai_ladder joins the rai runs)
        shutil.copy(log, tmp_path)
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env=env)
    fresh = json.loads((tmp_path / f"{name}.json").read_text())
    committed = json.loads((make_results.RESULTS / f"{name}.json").read_text())
    assert _verdicts(fresh) == _verdicts(_without(committed, _arm_names(fresh)))
