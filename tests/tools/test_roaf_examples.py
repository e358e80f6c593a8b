"""The roaf examples: a --quick smoke run of each in the default suite; the full runs behind
the README's figures under the ``experiment`` marker (python -m pytest -m experiment)."""

from __future__ import annotations

import json
import statistics

import make_results
import pytest
import roaf_deep_mlp
import roaf_sequence
import torch
from torch import nn

from vgpcompile.tools.baselines import Comparison


def test_deep_mlp_quick(capsys, tmp_path, monkeypatch):
    plain, roaf = roaf_deep_mlp.main(["--quick", "--json", str(tmp_path / "roaf_deep_mlp.json")])
    out = capsys.readouterr().out
    assert "early/late gradient ratio" in out and "test accuracy" in out
    assert 0.1 <= roaf["ratio"] <= 10  # depth 200: early and late gradients within one order of magnitude
    assert plain["early"] < 1e-6 * roaf["early"]  # the plain net's early gradients are gone
    assert roaf["losses"][-1] < roaf["losses"][0]
    assert roaf["stats"]["blocks"] == 200
    data = json.loads((tmp_path / "roaf_deep_mlp.json").read_text())
    assert data["config"]["depth"] == 200 and data["threads"] == 1 and data["seconds"] > 0
    saved = {a["name"]: a for a in data["arms"]}
    assert saved["roaf"]["norm_first"] == pytest.approx(roaf["norms"][0]) and len(saved["roaf"]["losses"]) == 8
    assert saved["roaf"]["norms_blocks"][:3] == [1, 3, 5] and len(saved["roaf"]["norms_every"]) == 100
    monkeypatch.setattr(make_results, "RESULTS", tmp_path)  # the page renders this JSON
    section = "\n".join(make_results.roaf_deep_mlp_section())
    assert (
        "| | plain | roaf |" in section
        and "`plain-xavier`" not in section
        and f"| test accuracy | {plain['test_acc']:.3f} |" in section
    )


def test_deep_mlp_merge_adds_an_arm_and_refuses_another_experiment(tmp_path, monkeypatch):
    path = tmp_path / "roaf_deep_mlp.json"
    roaf_deep_mlp.main(["--quick", "--steps", "2", "--arms", "roaf", "--json", str(path)])
    (hadamard,) = roaf_deep_mlp.main(["--quick", "--steps", "2", "--arms", "roaf-hadamard", "--merge", str(path)])
    data = json.loads(path.read_text())
    assert [a["name"] for a in data["arms"]] == data["config"]["arms"] == ["roaf", "roaf-hadamard"]
    assert data["arms"][1]["norm_first"] == pytest.approx(hadamard["norms"][0])
    assert data["added"]["roaf-hadamard"]["command"].endswith(f"--arms roaf-hadamard --merge {path}")
    monkeypatch.setattr(make_results, "RESULTS", tmp_path)
    section = "\n".join(make_results.roaf_deep_mlp_section())
    assert "| | roaf | roaf-hadamard |" in section and "The `roaf-hadamard` arm was added by" in section
    before = path.read_text()
    with pytest.raises(SystemExit, match="give the same --depth"):  # another step count: not the same run
        roaf_deep_mlp.main(["--quick", "--steps", "3", "--arms", "roaf-hadamard", "--merge", str(path)])
    assert path.read_text() == before


def test_sequence_quick(capsys, tmp_path, monkeypatch):
    path = tmp_path / "roaf_sequence.json"
    tasks = roaf_sequence.main(["--quick", "--json", str(path)])
    out = capsys.readouterr().out
    assert "| roaf |" in out and "| 40 | lstm-fb1 |" in out and "| 40 | gru |" in out
    assert list(tasks) == ["digits", "recall T=20", "recall T=40"]
    for arm in tasks["digits"]["comparison"].arms:
        (run,) = arm.runs[3e-3]
        assert len(run["test_curve"]) == 2 and all(0 <= a <= 1 for a in run["test_curve"])
    data = json.loads(path.read_text())
    for raw in data["comparisons"].values():  # what the results page reads
        comparison = Comparison.from_dict(raw)
        assert [a.name for a in comparison.arms] == list(roaf_sequence.MODELS)
        assert {a.kind for a in comparison.arms} == {"plain", "architectural", "compiled"}
        assert comparison.reference == {"chance accuracy": raw["reference"]["chance accuracy"]}
    assert data["threads"] == 1 and set(data["runs"]) == set(data["comparisons"]) and data["config"]["hidden"] == 16
    monkeypatch.setattr(make_results, "RESULTS", tmp_path)
    monkeypatch.setitem(make_results.ROAF_TASKS, "recall T=20", "Long-delay recall, T = 20")
    section = "\n".join(make_results.roaf_sequence_section())
    assert "| lstm-fb1 | architectural |" in section and "Seeds that solve it" in section
    assert "### Long-delay recall, T = 1000\n\nNot run." in section
    assert len(make_results.roaf_headline_rows()) == 2  # digits and T = 20
    # T = 40 again, at the rates saved for T = 20 (how a T = 1000 run joins a saved T = 100 sweep)
    again = roaf_sequence.main(["--quick", "--task", "recall", "--rates-from", "recall T=20", "--json", str(path)])
    assert (
        list(again) == ["recall T=40"]
        and "rates-from" in json.loads(path.read_text())["runs"]["recall T=40"]["command"]
    )
    for a, b in zip(again["recall T=40"]["comparison"].arms, tasks["recall T=40"]["comparison"].arms):
        assert a.runs[3e-3][0]["test_acc"] == b.runs[3e-3][0]["test_acc"]  # seeded: the same runs


def _model(kind: str, seed: int = 0) -> nn.Module:
    return roaf_sequence.make_model(kind, 1, 8, 3, 5, seed)


def test_sequence_arms_are_what_they_claim():
    default_lstm, fb1 = _model("lstm").rnn, _model("lstm-fb1").rnn
    assert isinstance(fb1, nn.LSTM) and isinstance(_model("gru").rnn, nn.GRU)
    forget = slice(8, 16)  # torch's gate order: input, forget, cell, output
    assert torch.equal(fb1.bias_ih_l0[forget] + fb1.bias_hh_l0[forget], torch.ones(8))  # effective bias 1
    for name, p in default_lstm.named_parameters():  # everything else is the default init of the same seed
        q = getattr(fb1, name)
        assert torch.equal(p[:8], q[:8]) and torch.equal(p[16:], q[16:]), name
    plain, ortho = _model("rnn").rnn, _model("rnn-orthogonal").rnn
    w = ortho.weight_hh_l0.detach()
    torch.testing.assert_close(w.T @ w, torch.eye(8), atol=1e-5, rtol=0)
    assert not torch.allclose(plain.weight_hh_l0.T @ plain.weight_hh_l0, torch.eye(8), atol=0.1)
    assert torch.equal(plain.weight_ih_l0, ortho.weight_ih_l0) and torch.equal(plain.bias_hh_l0, ortho.bias_hh_l0)
    assert _model("roaf").vgp_report.stats["roaf"]["rnn_layers"] == 1
    with pytest.raises(ValueError, match="lstm-fb1"):
        _model("lstm-chrono")


@pytest.mark.parametrize("kind", roaf_sequence.MODELS)
def test_sequence_arm_takes_a_training_step(kind):
    model = _model(kind)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(4, 5, 1), torch.tensor([0, 1, 2, 0])
    loss = roaf_sequence.step(model, opt, x, y)
    assert torch.isfinite(torch.tensor(loss)) and model(x).shape == (4, 3)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()) if p.requires_grad)


@pytest.mark.experiment
def test_deep_mlp_10000_layers_trains_and_plain_does_not():
    plain, roaf = roaf_deep_mlp.main([])
    assert 0.1 <= roaf["ratio"] <= 10
    assert plain["early"] == 0.0 or plain["ratio"] < 1e-6
    tenth = len(roaf["losses"]) // 10
    assert statistics.mean(roaf["losses"][-tenth:]) < statistics.mean(roaf["losses"][:tenth]) - 0.5
    assert roaf["test_acc"] > 0.5 and plain["test_acc"] < 0.2


@pytest.mark.experiment
def test_deep_mlp_10000_layers_trains_with_the_structured_filter_too():
    (hadamard,) = roaf_deep_mlp.main(["--arms", "roaf-hadamard"])
    assert 0.5 <= hadamard["ratio"] <= 2  # 0.955 measured: gradients as even as with the Haar filter (0.957)
    tenth = len(hadamard["losses"]) // 10
    assert statistics.mean(hadamard["losses"][-tenth:]) < statistics.mean(hadamard["losses"][:tenth]) - 0.5
    assert hadamard["test_acc"] > 0.5


@pytest.mark.experiment
def test_deep_mlp_50000_layers_compiles_and_steps():
    (roaf,) = roaf_deep_mlp.main(["--depth", "50000"])
    assert roaf["stats"]["blocks"] == 50_000 and len(roaf["losses"]) == 1


def _final(comparison: Comparison) -> dict[str, float]:
    """Mean final test accuracy per model at its chosen learning rate."""
    return {a.name: a.summary("test_acc")[0] for a in comparison.arms}


@pytest.mark.experiment
def test_sequence_digits_roaf_beats_every_recurrent_baseline_after_ten_epochs():
    acc = _final(roaf_sequence.main(["--task", "digits"])["digits"]["comparison"])
    assert acc["roaf"] > 0.9 and acc["roaf"] > max(v for k, v in acc.items() if k != "roaf") + 0.03, acc


@pytest.mark.experiment
def test_sequence_recall_100_roaf_orthogonal_rnn_and_gru_solve_it_lstms_do_not():
    acc = _final(roaf_sequence.main(["--task", "recall", "--T", "100"])["recall T=100"]["comparison"])
    assert min(acc["roaf"], acc["rnn-orthogonal"], acc["gru"]) > 0.95, acc
    assert max(acc["rnn"], acc["lstm"], acc["lstm-fb1"]) < 0.9, acc
