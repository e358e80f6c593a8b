"""The ``tat`` pass: the derived subnetwork maximizing function against hand derivations,
the kernel at init (q and c measured layer by layer), freeze parity, save/load, plan, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from vgpcompile import UsageError, freeze, load, plan, save, vgpcompile
from vgpcompile.passes.tat import Refusal, TATActivation, subnet_max_function
from vgpcompile.passes.tat.constants import Constants, solve

pytest.importorskip("dks")
pytest.importorskip("absl")

TAT = {"c_val_0_target": 0.9, "c_curve_target": 0.3}
# a leaky-ReLU net of a few layers cannot be as nonlinear as C(0) = 0.9 (dks's own message says so)
SHALLOW = {"tat": {"c_val_0_target": 0.5}}


def leaky_cmap(c: float, s: float) -> float:
    """Leaky ReLU's local C map (TAT paper, eq. for q = 1)."""
    return ((1 - s) ** 2 * (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi + 2 * s * c) / (1 + s * s)


MAPS = [lambda y: y + 1.0, lambda y: 1.3 * y, lambda y: leaky_cmap(y, 0.3), lambda y: 0.2 + 0.8 * y * y]


def chain(depth: int, width: int, act=nn.Tanh, d_in: int | None = None, d_out: int | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 and d_in else width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, d_out or width))


class Residual(nn.Module):
    """x -> Linear -> act -> 3 blocks h = ws*h + wr*Linear(act(Linear(h))) -> act -> Linear."""

    def __init__(self, ws: float, wr: float, width: int = 16):
        super().__init__()
        self.ws, self.wr = ws, wr
        self.stem = nn.Linear(width, width)
        self.a = nn.ModuleList(nn.Linear(width, width) for _ in range(3))
        self.b = nn.ModuleList(nn.Linear(width, width) for _ in range(3))
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        for a, b in zip(self.a, self.b):
            h = self.ws * h + self.wr * b(torch.tanh(a(h)))
        return self.head(torch.tanh(h))


class CNN(nn.Module):
    def __init__(self, pool: nn.Module | None = None, concat: bool = False):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(8, 24, 3, padding=1) if concat else None
        self.c4 = nn.Conv2d(32 if concat else 8, 8, 3, padding=1)
        self.pool, self.concat = pool, concat
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = nn.functional.leaky_relu(self.c1(x), 0.1)
        h = nn.functional.leaky_relu(self.c2(h), 0.1)
        if self.pool is not None:
            h = self.pool(h)
        if self.concat:
            h = torch.cat([h, nn.functional.leaky_relu(self.c3(h), 0.1)], dim=1)
        h = nn.functional.leaky_relu(self.c4(h), 0.1)
        return self.head(h.mean((2, 3)))


def rows(report) -> list[tuple[str, bool, str]]:
    """(name, changed, text) of each report row tat has an outcome for, sites and layers."""
    return [(r.name, r.changed["tat"], r.outcomes["tat"]) for r in report.sites if "tat" in r.outcomes]


def site_rows(report) -> list[tuple[str, bool, str]]:
    layers = {r.name for r in report.sites if r.spelling == "layer"}
    return [row for row in rows(report) if row[0] not in layers]


def agree(got, want) -> None:
    for x in (0.0, 0.25, 0.9):
        for r in MAPS:
            assert got(x, r) == pytest.approx(want(x, r), rel=1e-12, abs=1e-12)


# ---- the derivation ---------------------------------------------------------------------------


def test_mlp_chain_is_r_composed_depth_times():
    def hand(x, r):
        for _ in range(7):
            x = r(x)
        return x

    agree(subnet_max_function(chain(7, 8)), hand)


@pytest.mark.parametrize("ws", [0.8, 0.6, 0.95])
def test_residual_block_with_given_shortcut_weights(ws):
    wr = math.sqrt(1 - ws * ws)

    def hand(x, r):
        h = r(x)
        for _ in range(3):
            h = ws**2 * h + wr**2 * r(h)
        return max(r(h), r(x))  # the output, the residual branch alone

    agree(subnet_max_function(Residual(ws, wr)), hand)


def test_unnormalised_residual_sum_is_read_as_a_normalised_one():
    """h + f(h): block k sums a stream of scale sqrt(k) and a branch of scale 1, so its
    weights are sqrt(k / (k + 1)) and sqrt(1 / (k + 1)), and the next activation divides
    the scale sqrt(k + 1) out."""

    def hand(x, r):
        h = r(x)
        for k in (1, 2, 3):
            h = k / (k + 1) * h + 1 / (k + 1) * r(h)
        return max(r(h), r(x))

    agree(subnet_max_function(Residual(1.0, 1.0)), hand)
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    report = vgpcompile(Residual(1.0, 1.0), passes=["tat"], example_inputs=(x,)).vgp_report
    texts = [text for _, changed, text in rows(report) if changed]
    assert any(t.endswith(" s=1.414") for t in texts)  # after the first block: sqrt(1 + 1)
    assert any(t.endswith(" s=2") for t in texts)  # after the third: sqrt(4)
    assert "add: w = 0.7071, 0.7071" in report.stats["tat"]["joins"]


def test_cnn_with_strided_convs_and_global_pooling_is_a_chain():
    def hand(x, r):
        return r(r(r(x)))

    agree(subnet_max_function(CNN()), hand)


def test_concatenation_weights_branches_by_width():
    def hand(x, r):
        h = r(r(x))
        return max(r(8 / 32 * h + 24 / 32 * r(h)), r(x))  # the output; the concatenated conv branch alone

    x = torch.randn(2, 3, 8, 8)
    agree(subnet_max_function(CNN(concat=True), (x,)), hand)


@pytest.mark.parametrize(
    "pool,why",
    [(nn.MaxPool2d(2), "max-pooling"), (nn.AvgPool2d(2), "average pooling before an activation")],
)
def test_pooling_inside_the_network_is_refused(pool, why):
    with pytest.raises(Refusal, match=why):
        subnet_max_function(CNN(pool=pool))


def test_constants_equal_dks_with_the_hand_written_function():
    """The pass hands dks the same function as a user would write by hand for a chain."""
    depth = 12
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    model = vgpcompile(chain(depth, 16), passes=["tat"], example_inputs=(x,))
    acts = [m for m in model.modules() if isinstance(m, TATActivation)]
    hand = solve(["tanh"], "TAT", {**TAT, "c_slope_1_target": 1.5}, lambda x, r: _compose(r, depth)(x))["tanh"]
    import dks.pytorch.activation_transform as at

    phi = at.get_transformed_activations(["tanh"], method="TAT", subnet_max_func=lambda x, r: _compose(r, depth)(x))
    grid = torch.linspace(-3, 3, 13, dtype=torch.float64)
    assert len(acts) == depth
    assert torch.allclose(acts[0].double()(grid), phi["tanh"](grid), rtol=1e-12, atol=1e-12)
    assert (acts[0].alpha, acts[0].beta, acts[0].gamma, acts[0].delta) == pytest.approx(
        (hand.alpha, hand.beta, hand.gamma, hand.delta), rel=1e-12
    )


def _compose(r, n):
    def f(x):
        for _ in range(n):
            x = r(x)
        return x

    return f


# ---- the kernel at init -------------------------------------------------------------------------


def local_cmap(act: TATActivation, c: float, n: int = 60) -> float:
    """E[phi(u) phi(c u + sqrt(1 - c^2) v)] for u, v ~ N(0, 1) (q = 1 in, q = 1 out by construction)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    u, v = np.meshgrid(z, z, indexing="ij")
    f = lambda t: act(torch.from_numpy(t)).numpy()
    return float((w[:, None] * w[None, :] * f(u) * f(c * u + math.sqrt(1 - c * c) * v)).sum())


def measure(model: nn.Module, x: torch.Tensor) -> tuple[list[float], list[float], float]:
    """Per transformed activation: q of its input (mean square, averaged over the batch) and
    c (cosine between the first two examples' outputs); and c at the model output."""
    qs, cs = [], []

    def hook(mod, inp, out):
        qs.append(float(inp[0].pow(2).mean()))
        cs.append(float(nn.functional.cosine_similarity(out[0], out[1], dim=0)))

    for mod in model.modules():
        if isinstance(mod, TATActivation):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        y = model(x)
    return qs, cs, float(nn.functional.cosine_similarity(y[0], y[1], dim=0))


def orthogonal_inputs(width: int, n: int = 8) -> torch.Tensor:
    """n inputs with q = 1 (mean square 1) and pairwise cosine 0."""
    torch.manual_seed(1)
    return torch.linalg.qr(torch.randn(width, n, dtype=torch.float64))[0].T * math.sqrt(width)


@pytest.mark.parametrize("act", ["tanh", "leaky_relu"])
def test_kernel_at_init_follows_the_target_on_a_100_layer_net(act):
    """q stays at 1 in every layer; c follows the transformed activation's C map from 0, and
    the output C(0) is TAT's: eta = 0.9 for leaky ReLU, the composed C map for tanh."""
    width, depth = 512, 100
    torch.manual_seed(0)
    net = chain(depth, width, nn.Tanh if act == "tanh" else nn.LeakyReLU).double()
    x = orthogonal_inputs(width)
    model = vgpcompile(net, passes=["tat"], example_inputs=(x[:2],))
    phi = next(m for m in model.modules() if isinstance(m, TATActivation))
    phi = TATActivation(phi.activation, phi.params, alpha=phi.alpha, beta=phi.beta, gamma=phi.gamma, delta=phi.delta)
    predicted, c = [], 0.0
    for _ in range(depth):  # leaky ReLU's C map in closed form (quadrature is poor at its kink)
        c = leaky_cmap(c, phi.params["negative_slope"]) if act == "leaky_relu" else local_cmap(phi, c)
        predicted.append(c)
    qs, cs, c_out = measure(model, x)
    print(f"{act}: q in [{min(qs):.3f}, {max(qs):.3f}], mean {np.mean(qs):.3f}; C(0) measured {c_out:.4f}, "
          f"predicted {predicted[-1]:.4f}; layer 10/50 measured {cs[9]:.3f}/{cs[49]:.3f}, "
          f"predicted {predicted[9]:.3f}/{predicted[49]:.3f}")  # fmt: skip
    assert len(qs) == depth
    if act == "leaky_relu":
        assert predicted[-1] == pytest.approx(0.9, abs=1e-6)  # eta, by construction of the slope
        # a leaky ReLU's q is a product of per-layer factors of mean 1 at finite width: it wanders
        # (measured at width 512: within [0.66, 1.07], mean 0.86), where tanh's stays within 3%
        assert 0.7 < np.mean(qs) < 1.3 and 0.4 < min(qs) and max(qs) < 2.5
    else:
        assert max(abs(q - 1) for q in qs) < 0.1
    assert abs(c_out - predicted[-1]) < 0.05
    assert max(abs(a - b) for a, b in zip(cs, predicted)) < 0.08


# ---- the model forms ----------------------------------------------------------------------------


@pytest.mark.parametrize("factory,shape", [(lambda: chain(6, 16, d_in=5, d_out=3), (7, 5)),
                                           (lambda: Residual(1.0, 1.0), (7, 16)),
                                           (lambda: CNN(concat=True), (3, 3, 8, 8))])  # fmt: skip
def test_freeze_parity_and_save_load(factory, shape, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    model = vgpcompile(factory(), passes=["tat"], example_inputs=(x,), options=SHALLOW)
    frozen = freeze(model)
    for mode in ("train", "eval"):
        getattr(model, mode)(), getattr(frozen, mode)()
        want = model(x)
        assert (frozen(x) - want).abs().max() <= 1e-5 * max(1.0, want.abs().max())
    for form, obj in (("training", model), ("frozen", frozen)):
        save(obj, tmp_path / form)
        back = load(factory, tmp_path / form)  # the recipe holds the constants: no solve
        assert torch.equal(back(x), obj(x)), form


def test_frozen_chain_has_plain_layers_only():
    torch.manual_seed(0)
    model = vgpcompile(chain(5, 8, act=nn.LeakyReLU), passes=["tat"], options=SHALLOW)
    frozen = freeze(model)
    assert not any(isinstance(m, TATActivation) for m in frozen.modules())
    ops = [n.target for n in frozen.graph.nodes if n.op == "call_function"]
    assert len(ops) == 5 and all(t is nn.functional.leaky_relu for t in ops)


def test_init_is_orthogonal_and_keeps_q():
    torch.manual_seed(0)
    model = vgpcompile(nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 32), nn.Tanh(),
                                     nn.Conv1d(1, 1, 3)), passes=["tat"])  # fmt: skip
    wide, narrow = model.get_submodule("0"), model.get_submodule("2")
    assert torch.allclose(wide.weight.T @ wide.weight, 2.0 * torch.eye(64), atol=1e-5)  # scale sqrt(128/64)
    assert torch.allclose(narrow.weight @ narrow.weight.T, torch.eye(32), atol=1e-5)
    assert float(wide.bias.abs().max()) == 0.0


def test_init_draws_are_seeded_per_layer_and_leave_the_global_random_state_alone(monkeypatch):
    """Each layer's draw is seeded by (seed, layer name) on the CPU generator, without
    torch.manual_seed (which queues a seed, with a stack trace, for every accelerator backend:
    half of tat's compile at 1000 layers); the draws repeat, and the caller's stream goes on."""
    seeded = []
    monkeypatch.setattr(torch, "manual_seed", lambda s: seeded.append(s))
    torch.random.default_generator.manual_seed(123)
    first = vgpcompile(chain(3, 8), passes=["tat"])
    after = torch.rand(3)
    torch.random.default_generator.manual_seed(123)
    again = vgpcompile(chain(3, 8), passes=["tat"])
    assert seeded == []
    for a, b in zip(first.parameters(), again.parameters()):
        assert torch.equal(a, b)
    torch.random.default_generator.manual_seed(123)
    chain(3, 8)  # chain() draws its own weights; tat's draws come from forked states
    assert torch.equal(after, torch.rand(3))


def test_conv_init_is_delta_orthogonal():
    torch.manual_seed(0)
    model = vgpcompile(CNN(), passes=["tat"], options=SHALLOW)
    w = model.c1.weight
    centre = w[:, :, 1, 1]
    assert torch.allclose(centre.T @ centre, (8 / 3) * torch.eye(3), atol=1e-5)
    off_centre = w.detach().clone()
    off_centre[:, :, 1, 1] = 0
    assert not off_centre.any()


def test_keep_init_leaves_weights():
    torch.manual_seed(0)
    net = chain(3, 8, act=nn.LeakyReLU)
    before = [p.clone() for p in net.parameters()]
    model = vgpcompile(net, passes=["tat"], options={"tat": {"init": "keep", "c_val_0_target": 0.5}})
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_compile_fullgraph():
    torch.manual_seed(0)
    x = torch.randn(4, 5)
    model = vgpcompile(chain(3, 8, d_in=5), passes=["tat"], example_inputs=(x,))
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x), model(x))


# ---- report, options, refusals ------------------------------------------------------------------


def test_plan_shows_the_constants_per_site():
    report = plan(chain(4, 8, act=nn.LeakyReLU), passes=["tat"], options=SHALLOW)
    found = [text for _, changed, text in site_rows(report) if changed]
    assert len(found) == 4
    assert all(t.startswith("α=1 β=+0 γ=1.") and " slope=0." in t and len(t) <= 48 for t in found)
    assert report.stats["tat"]["kernel_depth"] == 4.0
    assert "tat" in str(report)


def test_constants_option_skips_solving(monkeypatch):
    k = Constants(0.5, 0.1, 2.0, -0.2)
    import vgpcompile.passes.tat.constants as constants

    monkeypatch.setattr(constants, "solve", lambda *a, **k: pytest.fail("dks called"))
    model = vgpcompile(chain(2, 4), passes=["tat"], options={"tat": {"constants": f"tanh={k.format()}"}})
    act = next(m for m in model.modules() if isinstance(m, TATActivation))
    assert (act.alpha, act.beta, act.gamma, act.delta) == (0.5, 0.1, 2.0, -0.2)


def test_recipe_records_the_solved_constants():
    model = vgpcompile(chain(3, 4, act=nn.LeakyReLU), passes=["tat"], options=SHALLOW)
    (entry,) = model.vgp_recipe["passes"]
    assert entry["options"]["constants"].startswith("leaky_relu=1.0,0.0,1.")


@pytest.mark.parametrize(
    "net,method,why",
    [
        (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)), "TAT", "normalisation"),
        (chain(3, 4, act=nn.ReLU), "TAT", "plain ReLU is not supported by TAT: use leaky_relu"),
        (chain(3, 4, act=nn.Mish), "TAT", "no DKS/TAT transform"),
        (nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), "TAT",
         "leaky ReLU must be the only activation"),
    ],
)  # fmt: skip
def test_refusals_name_the_reason_on_every_site(net, method, why):
    report = plan(net, passes=["tat"], options={"tat": {"method": method}})
    found = site_rows(report)
    assert found and not any(changed for _, changed, _ in found)
    assert any(why in text for _, _, text in found)
    assert all(not changed for _, changed, _ in rows(report))  # nor are the layers initialised


def test_dks_accepts_relu_and_mixed_activations():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    report = plan(net, passes=["tat"], options={"tat": {"method": "DKS"}})
    assert sum(changed for _, changed, _ in site_rows(report)) == 2


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="c_val_0_target"):
        vgpcompile(chain(2, 4), passes=["tat"], options={"tat": {"c_val_0_target": 1.5}})
    with pytest.raises(UsageError, match="method"):
        vgpcompile(chain(2, 4), passes=["tat"], options={"tat": {"method": "tat"}})
    with pytest.raises(UsageError, match="constants"):
        vgpcompile(chain(2, 4), passes=["tat"], options={"tat": {"constants": "tanh=1,2"}})


def test_plain_install_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_dks(name, *args, **kwargs):
        if name.startswith("dks"):
            raise ImportError("No module named 'dks'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dks)
    with pytest.raises(UsageError, match=r"vgpcompile\[tat\]"):
        vgpcompile(chain(2, 4, act=nn.Softsign), passes=["tat"])


# ---- the eager form: one addcmul each side ------------------------------------------------------


@pytest.mark.parametrize("constants", [(0.17, 0.55, 7.9, -0.51), (0.17, 0.0, 7.9, 0.0), (1.0, 0.3, 1.0, -0.2)])
def test_eager_form_equals_the_composed_one(constants):
    """The addcmul form is the formula: float64 values and gradients to the last bits, float32 to
    rounding; the result keeps the input's dtype (bfloat16 too), as Python float constants do."""
    alpha, beta, gamma, delta = constants
    act = TATActivation("tanh", alpha=alpha, beta=beta, gamma=gamma, delta=delta)
    x = torch.linspace(-4, 4, 41, dtype=torch.float64, requires_grad=True)
    want = gamma * (torch.tanh(alpha * x + beta) + delta)
    (got_grad,) = torch.autograd.grad(act(x).sum(), x)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    assert torch.allclose(act(x), want, rtol=1e-15, atol=1e-15)
    assert torch.allclose(got_grad, want_grad, rtol=1e-15, atol=1e-15)
    assert torch.allclose(act(x.float()).double(), want, rtol=1e-6, atol=1e-6)
    assert act(x.detach().bfloat16()).dtype == torch.bfloat16
    if beta == 0.0 and delta == 0.0:  # no addcmul: the very ops of the composed form
        xf = x.detach().float()
        assert torch.equal(act(xf), torch.tanh(xf * alpha) * gamma)


def test_eager_constants_are_no_state_and_survive_a_dtype_round_trip(tmp_path):
    act = TATActivation("tanh", alpha=0.1234567890123, beta=0.5, gamma=3.0, delta=-0.25)
    assert not list(act.buffers()) and not act.state_dict()
    with torch.device("meta"):  # a model built on the meta device (FSDP's init) keeps them usable
        assert all(c.device.type == "cpu" for c in TATActivation("tanh", alpha=0.5, beta=0.1)._scalars)
    act.half().double()  # no buffer, so nothing to round: a float64 model keeps every digit
    x = torch.tensor([0.7], dtype=torch.float64)
    assert act(x).item() == pytest.approx(3.0 * (math.tanh(0.1234567890123 * 0.7 + 0.5) - 0.25), rel=1e-15)
    path = tmp_path / "act.pt"
    torch.save(act, path)
    again = torch.load(path, weights_only=False)  # a file this test wrote itself
    assert torch.equal(again(x), act(x))
