"""The roaf examples: a --quick smoke run of each in the default suite; the full runs behind
the README's figures under the ``experiment`` marker (python -m pytest -m experiment)."""

from __future__ import annotations

import statistics

import pytest
import roaf_deep_mlp
import roaf_sequence


def test_deep_mlp_quick(capsys):
    plain, roaf = roaf_deep_mlp.main(["--quick"])
    out = capsys.readouterr().out
    assert "early/late gradient ratio" in out and "test accuracy" in out
    assert 0.1 <= roaf["ratio"] <= 10  # depth 200: early and late gradients within one order of magnitude
    assert plain["early"] < 1e-6 * roaf["early"]  # the plain net's early gradients are gone
    assert roaf["losses"][-1] < roaf["losses"][0]
    assert roaf["stats"]["blocks"] == 200


def test_sequence_quick(capsys):
    summary = roaf_sequence.main(["--quick"])
    out = capsys.readouterr().out
    assert "| roaf |" in out and "| 40 | lstm |" in out
    for model in roaf_sequence.MODELS:
        runs = summary["digits"]["results"][model][3e-3]
        assert len(runs[0]["test"]) == 2 and all(0 <= a <= 1 for a in runs[0]["test"])


@pytest.mark.experiment
def test_deep_mlp_10000_layers_trains_and_plain_does_not():
    plain, roaf = roaf_deep_mlp.main([])
    assert 0.1 <= roaf["ratio"] <= 10
    assert plain["early"] == 0.0 or plain["ratio"] < 1e-6
    tenth = len(roaf["losses"]) // 10
    assert statistics.mean(roaf["losses"][-tenth:]) < statistics.mean(roaf["losses"][:tenth]) - 0.5
    assert roaf["test_acc"] > 0.5 and plain["test_acc"] < 0.2


@pytest.mark.experiment
def test_deep_mlp_50000_layers_compiles_and_steps():
    (roaf,) = roaf_deep_mlp.main(["--depth", "50000"])
    assert roaf["stats"]["blocks"] == 50_000 and len(roaf["losses"]) == 1


def _final(out: dict) -> dict[str, float]:
    """Mean final test accuracy per model at its chosen learning rate."""
    return {m: statistics.mean(r["test"][-1] for r in out["results"][m][out["lr"][m]]) for m in out["lr"]}


@pytest.mark.experiment
def test_sequence_digits_roaf_beats_rnn_and_lstm_after_ten_epochs():
    acc = _final(roaf_sequence.main(["--task", "digits"])["digits"])
    assert acc["roaf"] > 0.9 and acc["roaf"] > max(acc["rnn"], acc["lstm"]) + 0.05


@pytest.mark.experiment
def test_sequence_recall_roaf_remembers_where_rnn_and_lstm_forget():
    for T, out in roaf_sequence.main(["--task", "recall"])["recall"].items():
        acc = _final(out)
        assert acc["roaf"] > 0.95 and acc["roaf"] > acc["rnn"] + 0.1 and acc["lstm"] < 0.7, (T, acc)
