"""vgpcompile.diagnose: the verdicts the issue asks for, recurrent and untraceable models,
the JSON schema and the plots."""

from __future__ import annotations

import json
import math
import os

import matplotlib.image
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vgpcompile
from vgpcompile.core.catalogue import DEFAULT
from vgpcompile.errors import UsageError
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
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    return vgpcompile.diagnose(tanh_mlp(200, 128), x, passes=["bsnn"], dtype=torch.float64)


def test_deep_plain_tanh_vanishes_and_bsnn_fixes_it(deep_report):
    before, after = deep_report.before, deep_report.after
    ratios = before.figures.grad_ratio, after.figures.grad_ratio
    print("\ndepth 200 width 128 tanh: ratio before {:.3g}, after {:.3g}".format(*ratios))
    assert before.figures.grad_ratio > 1e6
    assert before.verdict.status == "problem" and "vanishing_gradients" in before.verdict.problems
    assert before.verdict.recommended == ["bsnn"]
    assert before.figures.grad_min < 1e-20  # the absolute norms, next to the ratio
    assert after.figures.grad_ratio * 100 <= before.figures.grad_ratio
    assert after.figures.grad_ratio < 10 and after.figures.grad_min > 1e-2
    assert after.verdict.status == "ok" and after.verdict.recommended == []
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
    report = vgpcompile.diagnose(net, torch.randn(64, 64), dtype=torch.float64)
    f = report.before.figures
    assert f.grad_ratio < 10 and f.signal_ratio > 100
    assert report.before.verdict.problems == ["collapsing_signal"]
    assert report.before.verdict.recommended == ["bsnn"]


def test_saturated_tanh_recommends_arp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(30)
    report = vgpcompile.diagnose(net, torch.randn(64, 16))
    acts = report.before.measurement.activations
    assert all(a.saturation > 0.5 and a.region == (-1.82, 1.82) for a in acts)
    assert "saturation" in report.before.verdict.problems and "arp" in report.before.verdict.recommended


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
    assert "vanishing_in_time" in report.before.verdict.problems and "arp" in report.before.verdict.recommended
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
    assert doc["schema"] == "vgpcompile.diagnose/1" and doc["after"]["verdict"]["status"] == "ok"
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
