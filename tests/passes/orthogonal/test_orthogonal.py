"""The ``orthogonal`` pass: layouts, init modes, every keep mode, freeze, state_dicts, options."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from helpers import max_abs
from torch import nn
from torch.nn.utils import parametrize

import vgpcompile
from vgpcompile import UsageError, freeze, plan
from vgpcompile import vgpcompile as compile_
from vgpcompile.orthogonal import (
    Layout,
    drift,
    gram_error,
    layers,
    orthogonality_error,
    polar,
    retract,
    retract_after,
)

TOL = 1e-4


class Zoo(nn.Module):
    """One of each layer kind the pass handles, in a forward that uses them all."""

    def __init__(self) -> None:
        super().__init__()
        self.square = nn.Linear(16, 16)
        self.wide = nn.Linear(16, 8)
        self.tall = nn.Linear(8, 24)
        self.conv1 = nn.Conv1d(3, 4, 3)
        self.conv2 = nn.Conv2d(3, 6, 3, padding=1)
        self.grouped = nn.Conv2d(6, 8, 3, padding=1, groups=2)
        self.conv3 = nn.Conv3d(2, 3, 2)
        self.tconv = nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2)

    def forward(self, v, s, img, vol):
        h = torch.tanh(self.tall(torch.tanh(self.wide(torch.tanh(self.square(v))))))
        a = torch.tanh(self.conv1(s)).mean((1, 2))
        b = torch.tanh(self.tconv(torch.tanh(self.grouped(torch.tanh(self.conv2(img)))))).mean((1, 2, 3))
        c = torch.tanh(self.conv3(vol)).mean((1, 2, 3, 4))
        return h.sum(1) + a + b + c


def zoo_inputs(batch: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    shapes = [(batch, 16), (batch, 3, 10), (batch, 3, 6, 6), (batch, 2, 3, 3, 3)]
    return tuple(torch.randn(*s, generator=g) for s in shapes)


def compiled_zoo(**options) -> nn.Module:
    return compile_(Zoo(), passes=["orthogonal"], options={"orthogonal": options})


def max_error(model: nn.Module) -> float:
    return max(orthogonality_error(m) for m in layers(model))


def train(model: nn.Module, steps: int, lr: float = 1e-2, opt_cls=torch.optim.SGD, **kw) -> None:
    inputs = zoo_inputs()
    opt = opt_cls(model.parameters(), lr=lr, **({"momentum": 0.5} if opt_cls is torch.optim.SGD else {}), **kw)
    for _ in range(steps):
        loss = (model(*inputs) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


# ---- layouts and the math helpers -------------------------------------------------------------


@pytest.mark.parametrize(
    "layer",
    [nn.Linear(5, 7), nn.Conv2d(4, 6, 3, groups=2), nn.Conv3d(2, 4, 2), nn.ConvTranspose2d(6, 4, 3, groups=2)],
    ids=["linear", "grouped-conv2d", "conv3d", "grouped-convtranspose2d"],
)
def test_layout_round_trip(layer):
    layout = Layout.of(layer)
    w = layer.weight.detach()
    assert torch.equal(layout.from_matrix(layout.to_matrix(w)), w)


def test_conv_matrix_maps_an_input_patch_to_the_outputs_at_one_position():
    conv = nn.Conv2d(4, 6, 3, groups=2, bias=False)
    x = torch.randn(1, 4, 3, 3)
    mat = Layout.of(conv).to_matrix(conv.weight.detach())  # (2, 3, 2 * 9)
    patch = x.reshape(2, 2 * 9)  # per group: its 2 input channels x 3 x 3
    expected = torch.einsum("gmn,gn->gm", mat, patch).reshape(6)
    assert max_abs(conv(x).reshape(6), expected) < 1e-5


def test_conv_transpose_matrix_is_each_output_units_fan_in():
    tconv = nn.ConvTranspose1d(4, 6, 3, groups=2, bias=False)  # weight (4, 3, 3)
    x = torch.randn(1, 4, 7)
    t = 4  # an output position whose whole receptive field is inside x
    mat = Layout.of(tconv).to_matrix(tconv.weight.detach())  # (2, 3, 2 * 3)
    # y[o, t] = sum_{i, k} w[i, o, k] x[i, t - k]: the patch is x[i, t - k] in (i, k) order
    patch = torch.stack([x[0, :, t - k] for k in range(3)], 1).reshape(2, 2 * 3)
    expected = torch.einsum("gmn,gn->gm", mat, patch).reshape(6)
    assert max_abs(tconv(x)[0, :, t], expected) < 1e-5


def test_polar_is_the_nearest_orthogonal_matrix_scipy_agrees():
    g = torch.Generator().manual_seed(0)
    for shape in [(6, 6), (4, 9), (9, 4)]:
        a = torch.randn(*shape, generator=g, dtype=torch.float64)
        p = polar(a[None])[0]
        side = "right"
        u, _ = scipy.linalg.polar(a.numpy(), side=side)
        assert np.abs(p.numpy() - u).max() < 1e-10
        # and nothing on the manifold is nearer: compare with random (semi-)orthogonal matrices
        best = torch.linalg.matrix_norm(a - p).item()
        for _ in range(50):
            q = polar(torch.randn(*shape, generator=g, dtype=torch.float64)[None])[0]
            assert torch.linalg.matrix_norm(a - q).item() >= best - 1e-12


# ---- init -------------------------------------------------------------------------------------


def test_haar_init_every_layer_kind_orthogonal_and_reported():
    model = compiled_zoo(keep="init")
    errors = {name: orthogonality_error(m) for name, m in model.named_modules() if m in set(layers(model))}
    print("\n  haar init, ||G - I||_2 per layer:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert set(errors) == {"square", "wide", "tall", "conv1", "conv2", "grouped", "conv3", "tconv"}
    assert max(errors.values()) < 1e-5
    text = str(model.vgp_report)
    assert "16x16 square" in text and "8x16 orthonormal rows" in text and "24x8 orthonormal columns" in text
    assert "4x27 orthonormal rows, 2 groups" in text  # grouped: out/g x (in/g * 3 * 3) per group


def test_haar_is_seeded_per_layer_name():
    a, b = compiled_zoo(keep="init"), compiled_zoo(keep="init")
    c = compiled_zoo(keep="init", seed=1)
    only = compile_(Zoo(), passes=["orthogonal"], options={"orthogonal": {"keep": "init"}}, select=["conv2"])
    assert torch.equal(a.conv2.weight, b.conv2.weight)
    assert torch.equal(a.conv2.weight, only.conv2.weight)  # independent of what else is selected
    assert not torch.equal(a.conv2.weight, c.conv2.weight)


def test_parametrization_seeds_the_cpu_generator_only_and_leaves_the_caller_stream(monkeypatch):
    """torch completes a non-square Q (wide, tall) with torch.randn: that draw is seeded per layer
    on the CPU generator, without torch.manual_seed (which queues a seed, with a stack trace, for
    every accelerator backend); compiles repeat, and the caller's random stream goes on."""
    seeded = []
    monkeypatch.setattr(torch, "manual_seed", lambda s: seeded.append(s))
    options = {"orthogonal": {"keep": "parametrization", "map": "cayley"}}
    compiled = []
    for state in (7, 8):  # the same model, the global generator in another state at each compile
        torch.random.default_generator.manual_seed(123)
        model = Zoo()
        torch.random.default_generator.manual_seed(state)
        compiled.append(compile_(model, passes=["orthogonal"], options=options))
        after = torch.rand(3)
        torch.random.default_generator.manual_seed(state)
        assert torch.equal(after, torch.rand(3))  # the pass's draws come from a forked state
    assert seeded == []
    for name in ("wide", "tall"):  # the completed Q holds the torch.randn draw
        a, b = (getattr(m, name).parametrizations.weight[0].base for m in compiled)
        assert a.shape[-1] == a.shape[-2] and torch.equal(a, b), name


def test_haar_is_haar_distributed():
    # For Haar Q (n x n) the trace has mean 0 and variance 1 (Diaconis-Shahshahani); QR without
    # the sign fix is not Haar (here: trace mean -1.6, variance 0.45).
    from vgpcompile.orthogonal import haar

    draws = [haar(Layout((8, 8)), torch.Generator().manual_seed(s), torch.float64) for s in range(400)]
    traces = [torch.trace(q).item() for q in draws]
    print(f"\n  Haar 8x8 trace over 400 draws: mean {np.mean(traces):+.3f} (0), var {np.var(traces):.3f} (1)")
    assert abs(np.mean(traces)) < 0.2 and 0.75 < np.var(traces) < 1.3
    assert max(gram_error(q[None]) for q in draws) < 1e-12


@pytest.mark.parametrize("keep", ["init", "retraction", "parametrization", "rownorm"])
def test_project_is_the_nearest_orthogonal_and_reports_the_output_change(keep):
    torch.manual_seed(3)
    model = Zoo()
    compiled = compile_(model, passes=["orthogonal"], options={"orthogonal": {"init": "project", "keep": keep}})
    for name in ("square", "wide", "tall", "grouped", "tconv"):
        layout = Layout.of(getattr(model, name))
        before = layout.to_matrix(getattr(model, name).weight.detach().double())
        after = layout.to_matrix(getattr(compiled, name).weight.detach().double())
        for b, a in zip(before, after):  # per group, against scipy's polar decomposition
            u, _ = scipy.linalg.polar(b.numpy(), side="right")
            assert np.abs(a.numpy() - u).max() < 1e-5, name
        change = (torch.linalg.vector_norm(after - before) / torch.linalg.vector_norm(before)).item()
        text = compiled.vgp_report.site(name).outcomes["orthogonal"]
        assert f"step-0 output change {change:.1%}" in text, text
    print("\n  project:", compiled.vgp_report.site("square").outcomes["orthogonal"])


def test_gain_scales_the_orthogonal_matrix():
    for keep in ("retraction", "parametrization", "rownorm"):
        model = compiled_zoo(keep=keep, gain=2.0)
        w = model.square.weight.detach()
        assert torch.allclose(w @ w.T, 4 * torch.eye(16), atol=1e-4), keep
        assert max_error(model) < 1e-5  # measured on weight / gain
        train(model, 5)
        if keep == "rownorm":
            assert torch.allclose(model.square.weight.norm(dim=1), torch.full((16,), 2.0), atol=1e-5)


# ---- keeping it orthogonal ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "keep, orthogonal_map",
    [
        ("retraction", "auto"),
        ("parametrization", "cayley"),
        ("parametrization", "matrix_exp"),
        ("parametrization", "householder"),
    ],
)
def test_modes_that_promise_orthogonality_keep_it_for_100_steps(keep, orthogonal_map):
    model = compiled_zoo(keep=keep, map=orthogonal_map)
    start = max_error(model)
    train(model, 100)
    model(*zoo_inputs())  # a retraction happens at the next forward (or with retract(model))
    end = max_error(model)
    print(f"\n  keep={keep} map={orthogonal_map}: ||G - I||_2 at init {start:.1e}, after 100 SGD steps {end:.1e}")
    assert start < 1e-5 and end < TOL


def test_init_mode_drifts_and_rownorm_keeps_unit_fan_in_only():
    drift = compiled_zoo(keep="init")
    rows = compiled_zoo(keep="rownorm")
    assert max_error(rows) < 1e-5  # orthogonal at step 0
    train(drift, 100)
    train(rows, 100)
    print(f"\n  after 100 steps: keep=init {max_error(drift):.1e}, keep=rownorm {max_error(rows):.1e}")
    assert max_error(drift) > 1e-3  # nothing keeps it: this is what the other modes are for
    for name in ("square", "wide", "conv2", "grouped", "tconv"):
        layer = getattr(rows, name)
        mat = Layout.of(layer).to_matrix(layer.weight.detach())
        assert torch.allclose(mat.norm(dim=-1), torch.ones(mat.shape[:2]), atol=1e-5), name
    tall = Layout.of(rows.tall).to_matrix(rows.tall.weight.detach())  # tall: columns, the smaller Gram's diagonal
    assert torch.allclose(tall.norm(dim=-2), torch.ones(1, 8), atol=1e-5)


def test_retraction_happens_in_the_optimizer_step_and_explicitly():
    model = compiled_zoo()
    assert sorted(model.state_dict()) == sorted(Zoo().state_dict())  # plain parameters, original names
    assert all(not m._forward_pre_hooks for m in layers(model))  # the forward is the plain layer's
    train(model, 1)
    moved = drift(model)
    assert moved > TOL  # the step moved the weight by more than tol ...
    assert max_error(model) < TOL  # ... and step() pulled it back, before any forward
    with torch.no_grad():
        model.square.weight.add_(1e-2 * torch.randn(16, 16))  # an edit by hand is not an optimizer step
    assert max_error(model) > TOL
    assert retract(model) == 8
    assert max_error(model) < TOL
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    handle = retract_after(opt, model)
    loss = model(*zoo_inputs()).pow(2).mean()
    loss.backward()
    opt.step()
    assert max_error(model) < TOL
    handle.remove()
    print(f"\n  retraction: error bound before the step's retraction {moved:.1e}, after {max_error(model):.1e}")


def test_every_k_steps_retracts_on_the_kth_and_reports_the_drift():
    model = compiled_zoo(every=4)
    errors = []
    for _ in range(8):
        train(model, 1)
        errors.append(max_error(model))
    assert max(errors[0:3]) > TOL and max(errors[4:7]) > TOL  # drifting between retractions
    assert errors[3] < TOL and errors[7] < TOL  # retracted at steps 4 and 8
    assert max(errors) <= drift(model) * 1.01  # the reported drift bounds what any forward saw
    print(f"\n  every=4: errors after each step {[f'{e:.1e}' for e in errors]}, reported drift {drift(model):.1e}")


def test_a_weight_read_without_calling_its_module_is_orthogonal_after_a_step():
    """The stored parameter is retracted, not the layer's input at its next call: code that
    reads ``layer.weight`` itself (transformers' Mamba reads its conv1d's) sees it too."""

    class ReadsWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 3, groups=4, padding=2)
            self.out = nn.Linear(4, 4)

        def forward(self, x):  # like MambaMixer.slow_forward: the conv's weight, not conv(x)
            w = self.conv.weight.view(4, 3)
            h = F.conv1d(x, w.unsqueeze(1), self.conv.bias, padding=2, groups=4)[..., : x.shape[-1]]
            return self.out(torch.tanh(h).mean(-1))

    torch.manual_seed(0)
    model = compile_(ReadsWeight(), passes=["orthogonal"])
    x = torch.randn(3, 4, 7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).pow(2).sum().backward()
    opt.step()
    assert max_error(model) < TOL
    assert max_abs(freeze(model)(x), model(x)) == 0.0


def test_retraction_sees_fused_optimizer_steps():
    # fused Adam updates parameters without bumping their version counter (torch 2.13)
    model = compiled_zoo()
    train(model, 20, lr=1e-2, opt_cls=torch.optim.Adam, fused=True)
    model(*zoo_inputs())
    assert max_error(model) < TOL


def test_retraction_from_far_away_uses_the_polar_factor():
    model = compiled_zoo()
    with torch.no_grad():
        model.square.weight.add_(torch.randn(16, 16))  # far outside Newton-Schulz's basin
    retract(model)
    assert orthogonality_error(model.square) < TOL


def test_default_keeps_1e4_through_1000_steps():
    """The issue's bar for the default mode, on a small net (the benchmark prints it at width 256)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    model = compile_(net, passes=["bsnn"])
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.5)
    x, y = torch.randn(256, 32), torch.randint(0, 10, (256,))
    worst = 0.0
    for step in range(1000):
        idx = torch.randint(0, 256, (64,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if step % 10 == 0:  # the weights the forward just used
            worst = max(worst, max_error(model))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model(x)
    end = max_error(model)
    print(f"\n  default keep over 1000 steps: worst seen by a forward {worst:.1e}, at the end {end:.1e}")
    assert worst < TOL and end < TOL


# ---- freeze, state_dicts, copies ----------------------------------------------------------------


@pytest.mark.parametrize("keep", ["init", "rownorm", "parametrization", "retraction"])
def test_freeze_parity_plain_layers_and_state_dict_round_trip(keep):
    inputs = zoo_inputs()
    model = compiled_zoo(keep=keep)
    train(model, 3)
    out = model(*inputs)
    frozen = freeze(model)
    assert max_abs(frozen(*inputs), out) < 1e-6
    assert max_abs(model(*inputs), out) == 0.0  # freeze worked on a copy
    for name, layer in frozen.named_modules():
        assert not parametrize.is_parametrized(layer), name
        assert not layer._forward_pre_hooks, name
    assert sorted(frozen.state_dict()) == sorted(Zoo().state_dict())
    # training form -> a fresh compile (other seed) ; frozen form -> a fresh compile
    for state in (model.state_dict(), frozen.state_dict()):
        fresh = compiled_zoo(keep=keep, seed=7)
        fresh.load_state_dict(state)
        assert max_abs(fresh(*inputs), out) < 1e-6, keep


@pytest.mark.parametrize("keep", ["retraction", "parametrization"])
def test_original_state_dict_loads_and_is_projected(keep):
    inputs = zoo_inputs()
    torch.manual_seed(5)
    original = Zoo()
    projected = compile_(original, passes=["orthogonal"], options={"orthogonal": {"init": "project", "keep": keep}})
    fresh = compiled_zoo(keep=keep)
    fresh.load_state_dict(original.state_dict())
    assert max_abs(fresh(*inputs), projected(*inputs)) < 1e-5


def test_frozen_graph_has_no_linalg_and_exports_to_onnx(tmp_path):
    model = compile_(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 16, 10)),
        passes=["bsnn"],
        options={"orthogonal": {"keep": "parametrization", "thin_shell": True}},
    )
    x = torch.randn(2, 3, 4, 4)
    frozen = freeze(model)
    traced = torch.fx.symbolic_trace(frozen)
    names = " ".join(str(n.target) for n in traced.graph.nodes)
    assert "linalg" not in names and "solve" not in names and "matrix_exp" not in names
    report = vgpcompile.export_onnx(model, tmp_path / "m.onnx", x, exporter="torchscript")
    ops = set(report.op_types)
    print(f"\n  ONNX ops: {sorted(ops)}; max abs vs torch {report.max_abs:.1e}")
    assert not ops & {"Inverse", "Einsum", "Loop"} and report.max_abs < 1e-4


def test_deepcopy_keeps_marks_and_freezing_a_copy_leaves_the_original_training():
    model = compiled_zoo(keep="parametrization")
    assert "square.parametrizations.weight.original" in model.state_dict()  # documented key change
    twin = copy.deepcopy(model)
    assert all(getattr(m, "vgp_applied", ()) == ("orthogonal",) for m in layers(twin))
    freeze(twin, inplace=True)
    assert parametrize.is_parametrized(model.square) and model.square.weight.shape == (16, 16)
    train(model, 2)
    retracting = compiled_zoo()
    frozen = freeze(copy.deepcopy(retracting))
    twin = copy.deepcopy(retracting)  # a copy retracts after its own optimizer's steps
    for m in (retracting, twin, frozen):
        train(m, 1)
    assert max_error(retracting) < TOL and max_error(twin) < TOL
    assert max(orthogonality_error(frozen.square, 1.0), orthogonality_error(frozen.wide, 1.0)) > TOL  # plain now


def test_second_application_is_refused_per_layer():
    once = compiled_zoo(thin_shell=True)
    twice = compile_(once, passes=["orthogonal"], options={"orthogonal": {"thin_shell": True}})
    outcomes = {r.name: r.outcomes["orthogonal"] for r in twice.vgp_report.sites if r.spelling != "function"}
    assert len(outcomes) == 9  # 8 layers and the input
    assert all(v.startswith("already rewritten by 'orthogonal'") for v in outcomes.values()), outcomes
    assert twice.vgp_report.changed_count("orthogonal") == 0
    assert sum(isinstance(m, vgpcompile.orthogonal.ThinShell) for m in twice.modules()) == 1


# ---- thin shell, skips, options, presets, warnings ----------------------------------------------


def test_thin_shell_puts_the_input_on_the_shell():
    net = nn.Sequential(nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3))
    model = compile_(net, passes=["orthogonal"], options={"orthogonal": {"thin_shell": True}})
    seen = []
    model.get_submodule("0").register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    model(5 * torch.randn(7, 12))
    assert torch.allclose(seen[0].pow(2).sum(1), torch.full((7,), 12.0), rtol=1e-5)
    assert "rescaled to ||x||^2 = n" in model.vgp_report.site("<model>").outcomes["orthogonal"]
    frozen = freeze(model)
    x = torch.randn(3, 12)
    assert max_abs(frozen(x), model(x)) < 1e-6
    off = compile_(net, passes=["orthogonal"])
    assert not any(isinstance(m, vgpcompile.orthogonal.ThinShell) for m in off.modules())


def test_layers_the_pass_cannot_take_are_skipped_with_a_reason():
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.LazyLinear(3))
    torch.nn.utils.parametrizations.weight_norm(net[0])
    report = plan(net, passes=["orthogonal"])
    assert "already parametrized" in report.site("0").outcomes["orthogonal"]
    assert "not an initialized parameter" in report.site("2").outcomes["orthogonal"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"gain": 0.0}, "positive"),
        ({"gain": "-1"}, "positive"),
        ({"tol": 1.0}, "(0, 0.5)"),
        ({"keep": "always"}, "must be one of"),
        ({"map": "qr"}, "must be one of"),
        ({"init": "xavier"}, "must be one of"),
        ({"seed": 1.5}, "must be int"),
        ({"every": 0}, "option 'every' of pass 'orthogonal' must be a number of steps >= 1"),
        ({"every": 2.5}, "must be int"),
    ],
)
def test_bad_options_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(Zoo(), passes=["orthogonal"], options={"orthogonal": options})


def test_bsnn_preset_and_the_gpn_without_orthogonal_warning():
    deep = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(8, 8), nn.Tanh())], nn.Linear(8, 1))
    shallow = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    alone = plan(deep, passes=["gpn"])
    assert any("gpn without orthogonal" in w for w in alone.warnings)
    assert "warning: gpn without orthogonal" in str(alone)
    assert not plan(shallow, passes=["gpn"]).warnings
    both = plan(deep, passes=["bsnn"])
    assert both.passes == ["gpn", "orthogonal"] and not both.warnings
    assert both.changed_count("orthogonal") == 13 and both.changed_count("gpn") == 12


def test_thin_shell_on_an_untraceable_top_level_forward_is_reported_not_guessed():
    from models import tiny_transformer

    report = plan(tiny_transformer(), passes=["orthogonal"], options={"orthogonal": {"thin_shell": True}})
    assert "root stayed eager" in report.site("<model>").outcomes["orthogonal"]
    assert any("thin_shell needs a traced top-level forward" in w for w in report.warnings)
    assert report.changed_count("orthogonal") > 0  # the traced blocks' layers are still rewritten


# ---- large layers: the float32 factorizations (benchmarks/orthogonal_init.py times them) ---------


def test_float32_cholesky_qr_is_the_haar_q_of_householder_qr(monkeypatch):
    from vgpcompile.passes.orthogonal import modules

    z = torch.randn(3, 400, 60, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q64, r64 = torch.linalg.qr(z)
    q64 = q64 * torch.diagonal(r64, dim1=-2, dim2=-1).sign().unsqueeze(-2)  # diag(R) > 0: the Haar Q
    fast = modules.orthonormal_columns(z.float())
    assert max_abs(fast.double(), q64) < 1e-5 and gram_error(fast) < 1e-5
    # near-square or rank-deficient inputs fall back to Householder QR, still orthonormal
    for bad in (torch.randn(2, 70, 60), torch.cat([torch.randn(1, 400, 30)] * 2, -1)):
        assert gram_error(modules.orthonormal_columns(bad)) < 1e-5
    # the pass takes the fast path above FAST_WORK (rows * cols^2 of the thin side) for float32 weights
    monkeypatch.setattr(modules, "FAST_WORK", 1)
    layout = Layout((12, 200))
    w = modules.haar(layout, torch.Generator().manual_seed(1), torch.float32)
    assert w.dtype == torch.float32 and gram_error(w[None]) < 1e-5
    assert modules.orthogonality_estimate(w.mT[None]) <= modules.FAST_TOL


def test_float32_polar_of_a_large_matrix_matches_the_float64_svd(monkeypatch):
    from vgpcompile.passes.orthogonal import modules

    monkeypatch.setattr(modules, "FAST_WORK", 1)
    g = torch.Generator().manual_seed(0)
    for shape in [(40, 300), (300, 40), (64, 64)]:
        a = torch.randn(*shape, generator=g)
        fast, exact = polar(a[None]), polar(a.double()[None])
        assert fast.dtype == torch.float32 and max_abs(fast.double(), exact) < 1e-5, shape
    u, _ = torch.linalg.qr(torch.randn(300, 40, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    # cond^2 = 3e3: the Gram route misses FAST_TOL, a Newton–Schulz step brings it back;
    # cond^2 = 1e8: the Gram would lose the small singular values, so the SVD is used
    for smallest in (-1.75, -4):
        a = (u * torch.logspace(0, smallest, 40, dtype=torch.float64)) @ v.T
        fast = polar(a.float()[None])
        assert max_abs(fast.double(), (u @ v.T)[None]) < 1e-5 and gram_error(fast) < 1e-5


class TiedLM(nn.Module):
    """A language-model head whose weight is the token embedding (GPT-2's tying)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.fc(self.emb(ids))))


def test_tied_weights_are_left_alone_unless_selected_by_name():
    net = TiedLM()
    model = vgpcompile.vgpcompile(net, passes=["orthogonal"])
    row = model.vgp_report.site("head")
    assert not row.changed["orthogonal"] and "tied to emb" in row.outcomes["orthogonal"]
    assert torch.equal(model.get_submodule("emb").weight, net.emb.weight)  # the embedding is untouched
    assert model.vgp_report.site("fc").changed["orthogonal"]
    chosen = vgpcompile.vgpcompile(net, passes=["orthogonal"], select=["head", "fc"])
    assert chosen.vgp_report.site("head").changed["orthogonal"]


def test_transformers_mamba_conv_weight_read_in_eager_code_stays_orthogonal():
    """MambaMixer reads ``conv1d.weight`` in eager code without calling the conv: after one
    SGD step the frozen model used to differ by 5.6e-3 (the conv was never retracted)."""
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = T.MambaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, state_size=8, intermediate_size=64, use_cache=False
    )
    model = compile_(T.MambaModel(cfg), passes=["orthogonal"])
    convs = [m for n, m in model.named_modules() if n.endswith("conv1d")]
    assert convs and all(m in set(layers(model)) for m in convs)
    ids = torch.randint(0, 50, (2, 9))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(ids).last_hidden_state.pow(2).sum().backward()
    opt.step()
    assert drift(model) > TOL and max_error(model) < TOL  # the step moved the weights and retracted them
    out = model(ids).last_hidden_state
    assert max_abs(freeze(model)(ids).last_hidden_state, out) == 0.0
