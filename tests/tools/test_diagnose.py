"""vgpcompile.diagnose: the verdicts the issue asks for, recurrent and untraceable models,
the recommendations re-measured before they are made (issue 22), the JSON schema and the plots."""

from __future__ import annotations

import json
import math
import os
import sys

import matplotlib.image
import pytest
import torch
import torch.nn.functional as F
from models import LSTMStack
from torch import nn

import vgpcompile
from vgpcompile.core.catalogue import DEFAULT
from vgpcompile.errors import UsageError
from vgpcompile.tools import recommend as rec
from vgpcompile.tools.baselines import Arm, plain_mlp
from vgpcompile.tools.diagnose import SCHEMA, validate
from vgpcompile.tools.plots import layer_figure, saturation_figure, save_figure, time_figure, write_text
from vgpcompile.tools.probes import dynamic_region, measure


def tanh_mlp(depth: int, width: int) -> nn.Sequential:
    """Plain tanh MLP, PyTorch's default init (with biases)."""
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.Tanh())], nn.Linear(width, 1))


@pytest.fixture(scope="module")
def deep_report():
    # verify=False: the candidates are listed, not compiled (tat's constants alone take ~45 s at
    # depth 200); the re-measurement is tested on smaller models below
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    return vgpcompile.diagnose(tanh_mlp(200, 128), x, passes=["bsnn"], dtype=torch.float64, verify=False)


def test_deep_plain_tanh_vanishes_and_bsnn_fixes_it(deep_report):
    before, after = deep_report.before, deep_report.after
    ratios = before.figures.grad_ratio, after.figures.grad_ratio
    print("\ndepth 200 width 128 tanh: ratio before {:.3g}, after {:.3g}".format(*ratios))
    assert before.figures.grad_ratio > 1e6
    assert before.verdict.status == "problem" and "vanishing_gradients" in before.verdict.problems
    # candidates from the evidence, in its order, each with the figure that drives it; none
    # recommended without the re-measurement
    cands = before.verdict.candidates
    assert [c.passes for c in cands if c.status == "unverified"][:2] == ["tat", "bsnn"]
    assert before.verdict.recommended == []
    assert cands[0].drivers[0]["figure"] == "grad_ratio" and cands[0].drivers[0]["value"] == before.figures.grad_ratio
    assert cands[0].drivers[0]["threshold"] == 100 and "docs/results.md" in cands[0].evidence
    assert "candidates, not re-measured: ['tat', 'bsnn'" in deep_report.verdict
    assert before.figures.grad_min < 1e-20  # the absolute norms, next to the ratio
    assert after.figures.grad_ratio * 100 <= before.figures.grad_ratio
    assert after.figures.grad_ratio < 10 and after.figures.grad_min > 1e-2
    assert after.verdict.status == "ok" and after.verdict.recommended == [] and after.verdict.candidates == []
    assert deep_report.passes == ["gpn", "orthogonal"]
    assert before.figures.depth == after.figures.depth == 200
    assert len(before.measurement.layers) == 201 and len(before.measurement.activations) == 200
    assert deep_report.verdict.startswith("before: vanishing_gradients")


@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_shallow_kaiming_relu_mlp_reports_no_problem(activation):
    net = plain_mlp(activation, depth=3, width=64, d_in=8, d_out=4, arm=Arm("kaiming"))
    for seed in range(3):
        x = torch.randn(64, 8, generator=torch.Generator().manual_seed(seed))
        report = vgpcompile.diagnose(net, x)
        assert report.before.verdict.status == "ok", report.verdict
        assert report.before.verdict.recommended == [] and report.after is None
        assert report.before.figures.grad_ratio < 100


def test_flat_ratio_with_a_collapsing_signal_is_still_flagged():
    """research/bsnn.md §4.2: orthogonal weights, no biases: the ratio stays flat while the
    forward signal and every gradient shrink together; the signal rule catches it."""
    torch.manual_seed(0)
    net = nn.Sequential(*[m for _ in range(150) for m in (nn.Linear(64, 64, bias=False), nn.Tanh())])
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight)
    report = vgpcompile.diagnose(net, torch.randn(64, 64), dtype=torch.float64, verify=False)
    f = report.before.figures
    assert f.grad_ratio < 10 and f.signal_ratio > 100
    assert report.before.verdict.problems == ["collapsing_signal"]
    (drive,) = report.before.verdict.candidates[0].drivers
    assert drive["figure"] == "signal_ratio" and drive["value"] == f.signal_ratio


def saturated_tanh() -> nn.Sequential:
    """Two tanh layers with weights x30: both saturate."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(30)
    return net


def test_saturated_tanh_proposes_arp():
    net = saturated_tanh()
    report = vgpcompile.diagnose(net, torch.randn(64, 16), verify=False)
    acts = report.before.measurement.activations
    assert all(a.saturation > 0.5 and a.region == (-1.82, 1.82) for a in acts)
    assert "saturation" in report.before.verdict.problems
    arp = next(c for c in report.before.verdict.candidates if c.passes == "arp")
    assert arp.targets == ["saturation"] and arp.drivers[0]["figure"] == "saturation_max"
    assert arp.drivers[0]["value"] == max(a.saturation for a in acts) and arp.drivers[0]["threshold"] == 0.5


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def test_rnn_over_50_steps_reports_per_step_input_gradients(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 50, 4)
    report = vgpcompile.diagnose(Recurrent(), x, dtype=torch.float64)
    (row,) = report.before.measurement.recurrent
    assert row.name == "rnn" and len(row.steps) == 50 and all(v > 0 for v in row.steps)
    assert row.steps[-1] > row.steps[0]  # the loss reads the last step: early steps get less
    assert "vanishing_in_time" in report.before.verdict.problems
    cands = {c.passes: c for c in report.before.verdict.candidates}
    # arp rotates the recurrent gates: measured better (not healed); roaf swaps nn.RNN for a
    # module the probes do not step through, so its effect cannot be re-measured: not "gone"
    assert report.before.verdict.recommended == ["arp"] and "improved (time_ratio" in cands["arp"].why
    assert cands["arp"].figures_after["time_ratio"] * 1e3 < report.before.figures.time_ratio
    assert cands["roaf"].status == "rejected" and "cannot be re-measured" in cands["roaf"].why
    assert set(cands) == {"arp", "roaf"}  # tat/bsnn's rows do not target problems in time
    doc = json.loads(report.to_json())
    validate(doc)
    assert len(doc["before"]["recurrent"][0]["steps"]) == 50
    names = [p.name for p in report.plot(tmp_path)]
    assert names == ["gradients.png"] + ["time_steps.png"]  # nn.RNN's tanh is inside the fused kernel


def test_per_step_gradients_equal_autograd():
    torch.manual_seed(0)
    model = Recurrent().double()
    x = torch.randn(3, 50, 4, dtype=torch.float64)
    target = torch.randn(3, 1, dtype=torch.float64)
    m = measure(model, x, target)
    xr = x.clone().requires_grad_(True)
    F.mse_loss(model(xr), target).backward()
    expected = xr.grad.transpose(0, 1).reshape(50, -1).norm(dim=1)
    assert torch.allclose(torch.tensor(m.recurrent[0].steps, dtype=torch.float64), expected, rtol=1e-10)


# ---- recommendations: drawn from the evidence, re-measured before they are made (issue 22) ----


def _lstm():
    torch.manual_seed(0)
    return LSTMStack(), torch.randint(0, 50, (8, 20), generator=torch.Generator().manual_seed(0))


def test_lstm_whose_signal_collapses_gets_a_remeasured_recommendation():
    net, x = _lstm()
    report = vgpcompile.diagnose(net, x, dtype=torch.float64)
    v, f = report.before.verdict, report.before.figures
    assert v.problems == ["vanishing_gradients", "collapsing_signal"] and f.signal_ratio > 300
    cands = {c.passes: c for c in v.candidates}
    for name in ("tat", "tat{method=DKS}", "bsnn", "roaf"):  # nothing of theirs is in this model
        assert cands[name].status == "not_applicable" and cands[name].seconds == 0
    arp = cands["arp"]
    assert v.recommended[0] == "arp" and arp.status == "recommended"
    assert arp.problems_after == ["vanishing_gradients"] and "collapsing_signal gone (signal_ratio" in arp.why
    assert [(d["figure"], d["value"], d["threshold"]) for d in arp.drivers] == [
        ("grad_ratio", f.grad_ratio, 100),
        ("signal_ratio", f.signal_ratio, 100),
    ]
    # the re-measurement is diagnose's own measurement of the model compiled with the pass
    applied = vgpcompile.diagnose(net, x, passes=["arp"], dtype=torch.float64, verify=False).after.figures
    assert arp.figures_after["signal_ratio"] == pytest.approx(applied.signal_ratio, rel=1e-9)
    assert arp.figures_after["grad_ratio"] == pytest.approx(applied.grad_ratio, rel=1e-9)
    assert applied.signal_ratio < 100 and applied.grad_ratio < f.grad_ratio / 2
    assert "| before | `arp` | vanishing_gradients: grad_ratio" in report.to_markdown()
    assert "try passes=['arp'" in report.verdict and "(re-measured)" in report.verdict


def _saturating_mlp():
    torch.manual_seed(0)
    net = tanh_mlp(20, 64)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight, gain=3.0)  # too large: saturating and exploding
    return net, torch.randn(64, 64, generator=torch.Generator().manual_seed(0))


def test_a_deep_saturating_mlp_gets_a_pass_the_remeasurement_confirms(monkeypatch):
    # without tat's rows: its constants take ~10 s to solve (the full flow is the slow test below)
    monkeypatch.setattr(rec, "EVIDENCE", tuple(e for e in rec.EVIDENCE if not e.passes.startswith("tat")))
    net, x = _saturating_mlp()
    report = vgpcompile.diagnose(net, x, dtype=torch.float64)
    v = report.before.verdict
    assert v.problems == ["exploding_gradients", "saturation"]
    assert v.recommended[0] == "bsnn"
    bsnn = v.candidates[0]
    assert bsnn.problems_after == [] and bsnn.figures_after["grad_ratio"] < 10
    assert bsnn.figures_after["saturation_max"] < 0.2 < 0.5 < bsnn.drivers[1]["value"]
    assert "exploding_gradients gone (grad_ratio" in bsnn.why and "saturation gone (saturation_max" in bsnn.why
    assert [(c.passes, c.status) for c in v.candidates[1:]] == [("arp", "recommended"), ("orthogonal", "recommended")]
    assert sorted(v.recommended) == ["arp", "bsnn", "orthogonal"] and report.settings["max_candidates"] == 3
    after = vgpcompile.diagnose(net, x, passes=[v.recommended[0]], dtype=torch.float64, verify=False).after
    assert after.verdict.status == "ok"


@pytest.mark.slow
def test_a_deep_saturating_mlp_every_candidate():
    net, x = _saturating_mlp()
    v = vgpcompile.diagnose(net, x, dtype=torch.float64).before.verdict
    assert v.recommended[:2] == ["tat", "bsnn"]  # both measured healthy; evidence order breaks the tie
    tat = v.candidates[0]
    assert tat.problems_after == [] and tat.figures_after["grad_ratio"] < 10


def test_a_candidate_that_breaks_a_healthy_figure_is_tried_and_not_recommended(monkeypatch):
    """arp on a bias-free deep tanh net whose every gradient is below the floor: it lifts
    them, but turns the healthy max/min ratio into exploding gradients; orthogonal lifts them
    and keeps the ratio."""
    monkeypatch.setattr(rec, "EVIDENCE", tuple(e for e in rec.EVIDENCE if e.passes in ("arp", "orthogonal")))
    torch.manual_seed(0)
    net = nn.Sequential(*[m for _ in range(60) for m in (nn.Linear(64, 64, bias=False), nn.Tanh())], nn.Linear(64, 1))
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    report = vgpcompile.diagnose(net, x, dtype=torch.float64)
    v = report.before.verdict
    assert v.problems == ["vanishing_gradients", "collapsing_signal"] and report.before.figures.grad_ratio < 100
    arp, ortho = v.candidates
    assert arp.status == "rejected" and "exploding_gradients" in arp.problems_after
    assert arp.why.startswith("turns a healthy figure into exploding_gradients (grad_ratio ")
    assert ortho.status == "recommended" and ortho.drivers[0]["figure"] == "grad_max"
    assert v.recommended == ["orthogonal"] and "vanishing_gradients gone (grad_max" in ortho.why


class DenseBlockNet(nn.Module):
    """DenseNet in small: BN-ReLU-conv layers whose outputs are concatenated, a transition."""

    def __init__(self, growth: int = 8, layers: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        chans = [16 + growth * i for i in range(layers)]
        self.dense = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, padding=1)) for c in chans
        )
        width = 16 + growth * layers
        self.trans = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for layer in self.dense:
            h = torch.cat([h, layer(h)], 1)
        return self.fc(self.trans(h).mean((2, 3)))


class FireNet(nn.Module):
    """SqueezeNet in small: fire modules (squeeze 1x1, expand 1x1 and 3x3, concatenated)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2), nn.ReLU())
        self.fires = nn.ModuleList(self._fire(32, 8, 16) for _ in range(3))
        self.head = nn.Sequential(nn.Conv2d(32, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        for m in self.modules():  # torchvision's squeezenet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _fire(c: int, squeeze: int, expand: int) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                "s": nn.Sequential(nn.Conv2d(c, squeeze, 1), nn.ReLU()),
                "e1": nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU()),
                "e3": nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU()),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for fire in self.fires:
            s = fire["s"](h)
            h = torch.cat([fire["e1"](s), fire["e3"](s)], 1)
        return self.head(h)


@pytest.mark.parametrize("factory", [DenseBlockNet, FireNet])
def test_a_healthy_densenet_or_squeezenet_gets_no_recommendation(factory):
    """torchvision's densenet121 and squeezenet1_0 measure healthy (examples/diagnose_sweep.py);
    a healthy verdict proposes nothing, so nothing is compiled that could make it worse."""
    for seed in range(2):
        torch.manual_seed(seed)
        x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        report = vgpcompile.diagnose(factory(), x)
        v = report.before.verdict
        assert v.status == "ok" and v.candidates == [] and v.recommended == [], report.verdict


def test_candidates_are_bounded_and_a_failing_compile_is_reported(monkeypatch):
    net, x = _lstm()
    report = vgpcompile.diagnose(net, x, dtype=torch.float64, max_candidates=1)
    statuses = {c.passes: c.status for c in report.before.verdict.candidates}
    assert statuses["arp"] == "recommended" and statuses["orthogonal"] == "not_tried"
    assert report.settings["max_candidates"] == 1 and report.settings["verify"] is True
    # with passes=, the compiled side's candidates are compiled on top of them
    after = vgpcompile.diagnose(net, x, passes=["orthogonal"], dtype=torch.float64).after.verdict
    assert "orthogonal" not in [c.passes for c in after.candidates] and after.recommended == ["arp"]
    bad = rec.Evidence("orthogonal{keep=sometimes}", ("vanishing_gradients",), "layers", "a test row")
    monkeypatch.setattr(rec, "EVIDENCE", (bad,))
    (cand,) = vgpcompile.diagnose(net, x, dtype=torch.float64).before.verdict.candidates
    assert cand.status == "failed" and cand.why.startswith("compile failed: UsageError:") and "keep" in cand.why
    with pytest.raises(UsageError, match="max_candidates"):
        vgpcompile.diagnose(net, x, max_candidates=-1)


def test_a_candidate_whose_extra_is_missing_fails_with_the_reason_and_the_next_is_tried(monkeypatch):
    """A plain install has no dks: tat is reported as failed, naming the extra; bsnn is tried."""
    monkeypatch.setitem(sys.modules, "dks.base", None)
    net = saturated_tanh()
    report = vgpcompile.diagnose(net, torch.randn(64, 16), max_candidates=2)
    tat, bsnn, arp = report.before.verdict.candidates
    assert tat.status == "failed" and "needs the dks package" in tat.why and "vgpcompile[tat]" in tat.why
    assert bsnn.status == "recommended" and arp.status == "not_tried"  # a failed compile counts against the limit
    assert report.before.verdict.recommended == ["bsnn"]


_BEFORE = {"grad_ratio": 1e4, "grad_max": 1.0, "signal_ratio": 5.0, "time_ratio": None, "saturation_max": 0.8,
           "dead_max": None, "nonfinite": 0.0}  # fmt: skip


@pytest.mark.parametrize(
    "after,problems_after,ok,why",
    [
        ({"grad_ratio": 3.0, "saturation_max": 0.1}, [], True, "vanishing_gradients gone (grad_ratio 1e+04 -> 3"),
        ({"grad_ratio": 4e3, "saturation_max": 0.1}, ["vanishing_gradients"], True, "vanishing_gradients improved"),
        ({"grad_ratio": 6e3, "saturation_max": 0.1}, ["vanishing_gradients"], False, "not improved (grad_ratio"),
        ({"grad_ratio": 3.0, "saturation_max": 0.75}, ["saturation"], False, "saturation not improved"),
        ({"grad_ratio": 3.0, "signal_ratio": 500.0}, ["collapsing_signal"], False,
         "turns a healthy figure into collapsing_signal (signal_ratio 5 -> 500"),
        ({"grad_ratio": 200.0, "saturation_max": 0.1}, ["exploding_gradients"], False,
         "turns vanishing_gradients into exploding_gradients"),
        ({"grad_ratio": None, "saturation_max": 0.1}, [], False, "vanishing_gradients cannot be re-measured"),
    ],
)  # fmt: skip
def test_judge_rules(after, problems_after, ok, why):
    cand = rec.Candidate("x", ["vanishing_gradients", "saturation"], [], "")
    figs = {**_BEFORE, **after}
    got, text = rec.judge(cand, ["vanishing_gradients", "saturation"], problems_after, _BEFORE, figs)
    assert got is ok and why in text, text


def test_judge_refuses_a_pass_that_worsens_a_problem_it_does_not_target():
    cand = rec.Candidate("x", ["saturation"], [], "")
    figs = {**_BEFORE, "grad_ratio": 1e6, "saturation_max": 0.1}
    ok, why = rec.judge(cand, ["vanishing_gradients", "saturation"], ["vanishing_gradients"], _BEFORE, figs)
    assert not ok and why == "makes vanishing_gradients worse (grad_ratio 1e+04 -> 1e+06, threshold 100)"


class Cells(nn.Module):
    """An LSTM (time-major) feeding an RNNCell stepped in Python: one step per call."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 8)
        self.cell = nn.RNNCell(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.lstm(x)
        h = torch.zeros(x.shape[1], 8, dtype=x.dtype)
        for t in range(seq.shape[0]):
            h = self.cell(seq[t], h)
        return h


def test_lstm_and_a_stepped_cell_report_one_value_per_time_step():
    torch.manual_seed(0)
    m = measure(Cells().double(), torch.randn(12, 5, 3, dtype=torch.float64))
    rows = {r.name: r for r in m.recurrent}
    assert len(rows["lstm"].steps) == 12 and len(rows["cell"].steps) == 12
    assert all(v > 0 for r in rows.values() for v in r.steps)
    assert rows["cell"].steps[-1] > rows["cell"].steps[0]


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, capture leaves it eager."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = torch.tanh(h) if h.sum() > 0 else h.tanh()
        return F.gelu(self.b(h))


def test_model_with_an_untraceable_submodule_is_measured():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), Untraceable(), nn.Linear(16, 2))
    report = vgpcompile.diagnose(net, torch.randn(32, 8), passes=["gpn"])
    before = report.before
    assert [e["name"] for e in before.eager] == ["2"]
    rows = {r.name: r for r in before.measurement.layers}
    assert list(rows) == ["0", "2.a", "2.b", "3"]
    assert all(r.grad_norm is not None and r.grad_norm > 0 and r.signal > 0 for r in rows.values())
    acts = {a.name: a.kind for a in before.measurement.activations}
    # module and function spellings, under compile's site names
    planned = {r.kind: r.name for r in vgpcompile.plan(net, example_inputs=torch.randn(32, 8)).sites}
    assert acts == {planned["relu"]: "relu", planned["tanh"]: "tanh", planned["gelu"]: "gelu"}
    assert planned["tanh"].startswith("2.tanh@L") and planned["gelu"].startswith("2.gelu@L")
    assert rows["2.a"].activation == planned["tanh"] and rows["2.b"].activation == planned["gelu"]
    # after: gpn rewrote the eager module's function calls too (intercepted at run time); the
    # probes see the same sites, now at the inputs of the GPN modules that compute them
    assert {a.name: a.kind for a in report.after.measurement.activations} == acts
    assert len(report.after.measurement.layers) == 4


def test_compiled_with_parametrized_weights_still_reports_every_gradient():
    net = plain_mlp("tanh", depth=4, width=32, d_in=32, d_out=32, arm=Arm("xavier"))
    report = vgpcompile.diagnose(net, torch.randn(16, 32), passes=["bsnn"], options={"orthogonal": {"keep": "rownorm"}})
    rows = report.after.measurement.layers
    assert len(rows) == 6 and all(r.grad_norm is not None and r.grad_norm > 0 for r in rows)


def test_json_validates_against_the_documented_schema(deep_report):
    doc = json.loads(deep_report.to_json())
    validate(doc)
    assert doc["schema"] == "vgpcompile.diagnose/2" and doc["after"]["verdict"]["status"] == "ok"
    assert doc["before"]["verdict"]["candidates"][0]["status"] == "unverified"
    layer = doc["before"]["layers"][0]
    assert set(layer) == set(SCHEMA["properties"]["before"]["properties"]["layers"]["items"]["properties"])
    broken = json.loads(deep_report.to_json())
    del broken["before"]["figures"]["grad_ratio"]
    with pytest.raises(ValueError, match=r"\$\.before\.figures: missing field\(s\) \['grad_ratio'\]"):
        validate(broken)
    broken = json.loads(deep_report.to_json())
    broken["after"]["layers"][3]["grad_norm"] = "big"
    with pytest.raises(ValueError, match=r"\$\.after\.layers\[3\]\.grad_norm"):
        validate(broken)
    broken = json.loads(deep_report.to_json())
    broken["before"]["verdict"]["problems"] = ["vanishing"]
    with pytest.raises(ValueError, match="not one of"):
        validate(broken)
    broken = json.loads(deep_report.to_json())
    broken["before"]["verdict"]["candidates"][0]["status"] = "maybe"
    with pytest.raises(ValueError, match=r"\$\.before\.verdict\.candidates\[0\]\.status"):
        validate(broken)


def test_nonfinite_values_are_strings_in_json():
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    with torch.no_grad():
        net[0].weight.fill_(math.inf)
    report = vgpcompile.diagnose(net, torch.randn(8, 4))
    assert report.before.verdict.problems[0] == "nonfinite"
    doc = json.loads(report.to_json())  # allow_nan=False: would raise on a bare inf or nan
    validate(doc)


def test_plots_are_written_with_the_expected_axes(deep_report, tmp_path):
    paths = deep_report.plot(tmp_path)
    assert [p.name for p in paths] == ["gradients.png", "saturation.png"]
    for p in paths:
        image = matplotlib.image.imread(p)
        assert p.stat().st_size > 10_000 and image.shape[0] > 300 and image.shape[1] > 600
    named = {s.label: s.measurement for s in deep_report.sides}
    assert len(layer_figure(named).axes) == 2
    assert len(saturation_figure(named).axes) == 2
    assert len(time_figure(named).axes) == 1
    axes = layer_figure(named).axes
    assert [len(ax.get_lines()) for ax in axes] == [2, 2] and axes[0].get_yscale() == "log"
    written = deep_report.write(tmp_path / "report")
    assert [p.name for p in written] == ["report.json", "report.md", "gradients.png", "saturation.png"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| weight-gradient norm max/min (BSNN figure of merit) |" in md and md.count("| Linear |") == 201


def test_batches_and_seeds_are_averaged_with_a_progress_bar(capsys):
    net = plain_mlp("tanh", depth=2, width=16, d_in=4, d_out=2, arm=Arm("xavier"))
    batches = [(torch.randn(8, 4), None), (torch.randn(8, 4), None)]
    report = vgpcompile.diagnose(net, batches=batches, seeds=3, progress=True)
    assert "diagnose before" in capsys.readouterr().err  # tqdm
    assert report.settings["runs"] == 6 and report.before.measurement.runs == 6
    single = [measure(net, x, seed=s).layers[0].grad_norm for x, _ in batches for s in range(3)]
    assert math.isclose(report.before.measurement.layers[0].grad_norm, sum(single) / 6, rel_tol=1e-9)
    assert sum(report.before.measurement.activations[0].hist) == 6 * 8 * 16


def test_measure_leaves_the_model_gradients_alone():
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    net[0].weight.grad = torch.ones(4, 4)
    measure(net, torch.randn(8, 4))
    assert torch.equal(net[0].weight.grad, torch.ones(4, 4)) and net[2].weight.grad is None


def test_dynamic_regions():
    lo, hi, top = dynamic_region(DEFAULT.get("tanh"))
    assert hi == -lo == 1.82 and math.isclose(1 / math.cosh(1.82) ** 2, 0.1, rel_tol=0.02) and top == 1.0
    assert dynamic_region(DEFAULT.get("sigmoid"))[:2] == (-3.64, 3.64)
    assert dynamic_region(DEFAULT.get("relu"))[:2] == (0.0, math.inf)
    assert dynamic_region(DEFAULT.get("leaky_relu"), {"negative_slope": 0.2})[:2] == (-math.inf, math.inf)
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    m = measure(net, torch.randn(8, 4), regions={"tanh": (-0.0, 0.0)})
    assert m.activations[0].region == (0.0, 0.0) and m.activations[0].saturation > 0.9


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, "needs example_inputs"),
        ({"example_inputs": torch.randn(2, 4), "seeds": 0}, "positive number of seeds"),
        ({"example_inputs": torch.randn(2, 4), "dtype": torch.int64}, "floating torch dtype"),
        ({"example_inputs": torch.randn(2, 4), "loss": lambda out, t: out}, "must be a scalar"),
        ({"example_inputs": torch.randn(2, 4), "targets": torch.randn(3)}, "no default loss"),
        ({"batches": [torch.randn(2, 4)]}, "must be a pair"),
    ],
)
def test_bad_arguments_are_usage_errors(kwargs, message):
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    with pytest.raises(UsageError, match=message):
        vgpcompile.diagnose(net, **kwargs)


def test_outputs_are_written_whole_or_not_at_all(tmp_path):
    class Broken:
        def savefig(self, path, **kw):
            open(path, "wb").write(b"half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(Broken(), tmp_path / "g.png")
    assert list(tmp_path.iterdir()) == []
    path = write_text(tmp_path / "r.md", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_text() == "x" and path.stat().st_mode & 0o777 == 0o666 & ~umask


# ---- a site in the diagnose report is a site in the compile report (issue 19) ----------------


class _GeluFormula(nn.Module):  # GELU written out (GPT-2's NewGELU)
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(0.5 * h * (1.0 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0)))))


class _QuickGelu(nn.Module):  # CLIP's quick-GELU z * sigmoid(1.702 z)
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        z = self.a(x)
        return self.b(z * torch.sigmoid(1.702 * z))


def _mlp_modules():
    return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("factory", [_mlp_modules, _GeluFormula, _QuickGelu], ids=["modules", "gelu", "quick"])
def test_diagnose_measures_the_sites_compile_reports(factory):
    torch.manual_seed(0)
    net, x = factory(), torch.randn(4, 8)
    report = vgpcompile.vgpcompile(net, [], example_inputs=(x,)).vgp_report
    measured = sorted(a.kind for a in measure(net, x).activations)
    assert measured == sorted(r.kind for r in report.sites), (measured, [r.name for r in report.sites])


def test_gpt2s_written_out_gelu_is_measured_as_the_gelu_site_compile_reports():
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    net = T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, use_cache=False))
    ids = torch.randint(0, 100, (2, 8))
    m = measure(net, ids)
    sites = vgpcompile.plan(net, example_inputs=(ids,)).sites
    assert [(a.name, a.kind) for a in m.activations] == [(s.name, s.kind) for s in sites]
    assert [a.kind for a in m.activations] == ["gelu(approximate='tanh')"] * 2  # not the tanh inside the formula
    # every weight layer (Conv1D is a declared affine layer, a module call) still has its figures
    assert len(m.layers) == 11 and all(r.grad_norm is not None and r.grad_norm > 0 for r in m.layers)


def test_diagnose_taps_the_sites_once_per_side_and_measures_each_run_alone(monkeypatch):
    from vgpcompile.tools import diagnose as diagnose_module
    from vgpcompile.tools import probes

    made = []
    original = probes.sited_copy
    monkeypatch.setattr(diagnose_module, "sited_copy", lambda *a: made.append(1) or original(*a))
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(8, 4)
    report = vgpcompile.diagnose(net, x, seeds=3, passes=["gpn"])
    assert len(made) == 2  # before and after, not once per run
    single = [measure(net, x, seed=s).layers[0].grad_norm for s in range(3)]  # each with its own copy
    assert math.isclose(report.before.measurement.layers[0].grad_norm, sum(single) / 3, rel_tol=1e-9)
