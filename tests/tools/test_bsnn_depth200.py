"""examples/bsnn_depth200.py: BSNN's synthetic experiment through diagnose (seed 004)."""

import math

import bsnn_depth200
import matplotlib.image
import pytest


def _by_arm(rows):
    return {r["arm"]: r for r in rows}


def test_quick_run_writes_the_figures_and_the_ratio_table(tmp_path):
    rows = _by_arm(bsnn_depth200.main(["--quick", "--out", str(tmp_path)]))
    assert list(rows) == [
        "tanh xavier",
        "tanh orthogonal x gain",
        "tanh orthogonal",
        "tanh-GPN orthogonal",
        "selu lecun",
        "selu orthogonal x gain",
        "selu orthogonal",
        "selu-GPN orthogonal",
    ]
    for act in ("tanh", "selu"):
        for kind in ("gradients", "saturation"):
            assert matplotlib.image.imread(tmp_path / f"{act}_{kind}.png").shape[0] > 300
    assert (tmp_path / "ratios.md").read_text().count("\n") == 10
    assert rows["tanh-GPN orthogonal"]["grad_ratio"] < 3 and 0.5 < rows["tanh-GPN orthogonal"]["signal_last"] < 2


@pytest.mark.experiment
def test_full_depth_200_width_500_reproduces_the_seed_figure(tmp_path):
    """research/bsnn.md §4.2, protocol A: SELU ratio ~1e3 with the largest gradient at layer 1;
    SELU-GPN and tanh-GPN ratios ~1.5; plain tanh with orthogonal weights: flat ratio, dying signal."""
    rows = _by_arm(bsnn_depth200.main(["--out", str(tmp_path)]))
    assert rows["selu orthogonal"]["grad_ratio"] > 100 and rows["selu orthogonal"]["verdict"] == "exploding_gradients"
    for arm in ("selu-GPN orthogonal", "tanh-GPN orthogonal"):
        assert rows[arm]["grad_ratio"] < 5 and rows[arm]["verdict"] == "ok"
        assert 0.5 < rows[arm]["signal_last"] < 2
    tanh = rows["tanh orthogonal"]
    assert tanh["grad_ratio"] < 5 and tanh["signal_last"] < 0.01 and tanh["verdict"] == "collapsing_signal"
    assert all(math.isfinite(r["grad_ratio"]) for r in rows.values())
