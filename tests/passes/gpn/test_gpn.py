"""The gpn pass: constants against the paper and closed forms, the GPN property, every spelling."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import max_abs
from torch import nn

from vgpcompile import ActivationError, UsageError, register_activation, vgpcompile
from vgpcompile.core.catalogue import DEFAULT, Catalogue
from vgpcompile.nn import GPNActivation
from vgpcompile.passes.gpn import gpn_constants

# (kind, params, a, b) from research/bsnn.md §1.5, recomputed to 6 digits there.
TABLE = [
    ("tanh", {}, 1.46741, 0.388542),
    ("sigmoid", {}, 4.72265, -2.18104),
    ("relu", {}, 1.41421, 0.0),
    ("leaky_relu", {"negative_slope": 0.01}, 1.41414, 0.0),
    ("leaky_relu", {"negative_slope": 0.2}, 1.38675, 0.0),
    ("elu", {}, 1.22343, 0.0742203),
    ("selu", {}, 0.966026, 0.258446),
    ("gelu", {}, 1.48111, 0.0738771),
    ("gelu", {"approximate": "tanh"}, 1.48117, 0.0738806),
    ("silu", {}, 1.62332, 0.0828854),
    ("softplus", {}, 1.84623, -1.21517),
    ("arctan", {}, 1.41421, 0.317172),
    ("mish", {}, 1.44476, 0.0727379),
    ("hardtanh", {}, 1.21029, 0.494045),
]
# The paper's published 4-decimal table (its GELU is x*sigmoid(1.702x), checked below).
PAPER = [("tanh", 1.4674, 0.3885), ("relu", 1.4142, 0.0), ("elu", 1.2234, 0.0742), ("selu", 0.9660, 0.2585)]


@pytest.mark.parametrize("kind,params,a,b", TABLE)
def test_constants_match_recomputed_table(kind, params, a, b):
    act = DEFAULT.get(kind)
    got_a, got_b = gpn_constants(act, {**act.defaults, **params}, "plus")
    # the table gives 6 significant digits
    assert got_a == pytest.approx(a, rel=5e-6)
    assert got_b == pytest.approx(b, rel=5e-6, abs=1e-6)


@pytest.mark.parametrize("kind,a,b", PAPER)
def test_constants_match_paper_to_its_rounding(kind, a, b):
    got_a, got_b = gpn_constants(DEFAULT.get(kind), dict(DEFAULT.get(kind).defaults), "paper")
    assert got_a == pytest.approx(a, abs=6e-5) and got_b == pytest.approx(b, abs=6e-5)


def test_paper_gelu_is_the_sigmoid_approximation_with_minus_root():
    cat = Catalogue()
    register_activation("gelu_sigmoid", lambda x: x * torch.sigmoid(1.702 * x), catalogue=cat)
    a, b = gpn_constants(cat.get("gelu_sigmoid"), {}, "minus")
    assert (round(a, 4), round(b, 4)) == (1.4915, -0.9097)  # the paper's GELU column
    exact_gelu = DEFAULT.get("gelu")
    assert gpn_constants(exact_gelu, dict(exact_gelu.defaults), "paper")[1] == pytest.approx(-0.909506, abs=2e-6)


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.2, 0.5])
def test_closed_forms_relu_family(slope):
    act = DEFAULT.get("leaky_relu")
    a_plus, b_plus = gpn_constants(act, {"negative_slope": slope}, "plus")
    a_minus, b_minus = gpn_constants(act, {"negative_slope": slope}, "minus")
    a = math.sqrt(2 / (1 + slope**2))
    assert a_plus == pytest.approx(a, abs=1e-9) and a_minus == pytest.approx(a, abs=1e-9)
    assert b_plus == 0.0
    assert b_minus == pytest.approx(-2 * a * (1 - slope) / math.sqrt(2 * math.pi), abs=1e-9)


def test_closed_forms_relu_and_arctan():
    relu, atan = DEFAULT.get("relu"), DEFAULT.get("arctan")
    assert gpn_constants(relu, {}, "plus") == (pytest.approx(math.sqrt(2), abs=1e-10), 0.0)
    assert gpn_constants(relu, {}, "minus")[1] == pytest.approx(-2 / math.sqrt(math.pi), abs=1e-10)
    assert gpn_constants(atan, {}, "plus")[0] == pytest.approx(math.sqrt(2), abs=1e-10)


def _mc_moments(module: nn.Module, n: int = 1_000_000) -> tuple[float, float]:
    z = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = module.double()(z)
    (dy,) = torch.autograd.grad(y.sum(), z)
    return (y.detach() ** 2).mean().item(), (dy**2).mean().item()


@pytest.mark.parametrize("kind", sorted(DEFAULT.kinds))
@pytest.mark.parametrize("root", ["plus", "minus"])
def test_gpn_property_monte_carlo(kind, root):
    m2, d2 = _mc_moments(GPNActivation(kind, root=root))
    assert abs(m2 - 1) < 1e-2 and abs(d2 - 1) < 1e-2, (kind, root, m2, d2)


def test_root_option_and_learnable():
    fixed = GPNActivation("gelu", root="paper")
    assert float(fixed.b) == pytest.approx(-0.909506, abs=1e-5)
    assert "a" not in fixed.state_dict()
    learn = GPNActivation("tanh", learnable=True)
    assert {n for n, _ in learn.named_parameters()} == {"a", "b"}
    with pytest.raises(UsageError, match="root"):
        GPNActivation("tanh", root="larger")


def test_undeclared_kink_is_caught_and_declared_kink_is_exact():
    cat = Catalogue()
    register_activation("shifted_relu", lambda x: F.relu(x - 0.3), catalogue=cat)
    with pytest.raises(ActivationError, match="kink"):
        gpn_constants(cat.get("shifted_relu"), {}, "plus")
    register_activation("shifted_relu2", lambda x: F.relu(x - 0.3), kinks=[0.3], catalogue=cat)
    a, _ = gpn_constants(cat.get("shifted_relu2"), {}, "plus")
    expected = 1 / math.sqrt(0.5 * math.erfc(0.3 / math.sqrt(2)))  # E psi'^2 = P(z > 0.3)
    assert a == pytest.approx(expected, abs=1e-9)


def test_functions_without_gpn_constants_raise():
    cat = Catalogue()
    register_activation("jump", lambda x: x + torch.sign(x), kinks=[0.0], catalogue=cat)
    register_activation("step", lambda x: (x > 0).to(x.dtype), kinks=[0.0], catalogue=cat)
    with pytest.raises(ActivationError, match="no real GPN shift"):
        gpn_constants(cat.get("jump"), {}, "plus")
    with pytest.raises(ActivationError, match="vanishes"):
        gpn_constants(cat.get("step"), {}, "plus")


# --- every spelling torch.fx records is found and rewritten --------------------------------

SPELLINGS = [
    ("tanh", {}, nn.Tanh(), None),
    ("tanh", {}, None, torch.tanh),
    ("tanh", {}, None, torch.tanh_),
    ("tanh", {}, None, F.tanh),
    ("tanh", {}, None, lambda t: t.tanh()),
    ("tanh", {}, None, lambda t: t.tanh_()),
    ("sigmoid", {}, nn.Sigmoid(), None),
    ("sigmoid", {}, None, torch.sigmoid),
    ("sigmoid", {}, None, torch.sigmoid_),
    ("sigmoid", {}, None, F.sigmoid),
    ("sigmoid", {}, None, lambda t: t.sigmoid()),
    ("sigmoid", {}, None, lambda t: t.sigmoid_()),
    ("hardtanh", {"min_val": -2.0, "max_val": 2.0}, nn.Hardtanh(-2.0, 2.0), None),
    ("hardtanh", {}, nn.Hardtanh(inplace=True), None),
    ("hardtanh", {"min_val": -0.5, "max_val": 0.5}, None, lambda t: F.hardtanh(t, -0.5, 0.5)),
    ("hardtanh", {}, None, F.hardtanh_),
    ("softsign", {}, nn.Softsign(), None),
    ("softsign", {}, None, F.softsign),
    ("arctan", {}, None, torch.atan),
    ("arctan", {}, None, torch.arctan),
    ("arctan", {}, None, torch.atan_),
    ("arctan", {}, None, lambda t: t.atan()),
    ("arctan", {}, None, lambda t: t.arctan_()),
    ("relu", {}, nn.ReLU(), None),
    ("relu", {}, nn.ReLU(inplace=True), None),
    ("relu", {}, None, F.relu),
    ("relu", {}, None, lambda t: F.relu(t, inplace=True)),
    ("relu", {}, None, torch.relu),
    ("relu", {}, None, torch.relu_),
    ("relu", {}, None, F.relu_),
    ("relu", {}, None, lambda t: t.relu()),
    ("relu", {}, None, lambda t: t.relu_()),
    ("relu6", {}, nn.ReLU6(), None),
    ("relu6", {}, nn.ReLU6(inplace=True), None),
    ("relu6", {}, None, F.relu6),
    ("leaky_relu", {"negative_slope": 0.2}, nn.LeakyReLU(0.2), None),
    ("leaky_relu", {"negative_slope": 0.1}, nn.LeakyReLU(0.1, inplace=True), None),
    ("leaky_relu", {"negative_slope": 0.2}, None, lambda t: F.leaky_relu(t, 0.2)),
    ("leaky_relu", {"negative_slope": 0.3}, None, lambda t: F.leaky_relu(t, negative_slope=0.3)),
    ("leaky_relu", {"negative_slope": 0.1}, None, lambda t: F.leaky_relu_(t, 0.1)),
    ("elu", {"alpha": 0.5}, nn.ELU(alpha=0.5), None),
    ("elu", {}, None, F.elu),
    ("elu", {}, None, F.elu_),
    ("selu", {}, nn.SELU(), None),
    ("selu", {}, None, F.selu),
    ("selu", {}, None, torch.selu),
    ("selu", {}, None, torch.selu_),
    ("celu", {"alpha": 0.7}, nn.CELU(0.7), None),
    ("celu", {}, None, F.celu),
    ("celu", {"alpha": 0.5}, None, lambda t: torch.celu(t, 0.5)),
    ("gelu", {}, nn.GELU(), None),
    ("gelu", {"approximate": "tanh"}, nn.GELU(approximate="tanh"), None),
    ("gelu", {}, None, F.gelu),
    ("gelu", {"approximate": "tanh"}, None, lambda t: F.gelu(t, approximate="tanh")),
    ("silu", {}, nn.SiLU(), None),
    ("silu", {}, None, F.silu),
    ("silu", {}, None, lambda t: F.silu(t, inplace=True)),
    ("mish", {}, nn.Mish(), None),
    ("mish", {}, None, F.mish),
    ("softplus", {"beta": 2.0}, nn.Softplus(beta=2.0), None),
    ("softplus", {}, None, F.softplus),
    ("softplus", {"beta": 2.0, "threshold": 10.0}, None, lambda t: F.softplus(t, 2.0, 10.0)),
    ("hardswish", {}, nn.Hardswish(), None),
    ("hardswish", {}, None, F.hardswish),
    ("hardswish", {}, None, lambda t: F.hardswish(t, inplace=True)),
    ("hardsigmoid", {}, nn.Hardsigmoid(), None),
    ("hardsigmoid", {}, None, F.hardsigmoid),
    ("hardsigmoid", {}, None, lambda t: F.hardsigmoid(t, inplace=True)),
]


class Spell(nn.Module):
    def __init__(self, act=None, fn=None):
        super().__init__()
        self.fc, self.head = nn.Linear(6, 8), nn.Linear(8, 3)
        self.act, self.fn = act, fn

    def forward(self, x):
        z = self.fc(x)
        return self.head(self.act(z) if self.act is not None else self.fn(z))


@pytest.mark.parametrize("kind,params,module,fn", SPELLINGS, ids=lambda v: getattr(v, "__name__", None))
def test_every_spelling_is_rewritten(kind, params, module, fn):
    net = Spell(module, fn)
    compiled = vgpcompile(net, passes=["gpn"])
    (row,) = compiled.vgp_report.sites
    act = DEFAULT.get(kind)
    full = {**act.defaults, **params}
    assert row.kind == act.describe(full)
    assert row.changed["gpn"], row.outcomes
    a, b = gpn_constants(act, full, "minus")  # the pass's default root
    x = torch.randn(5, 6)
    expected = net.head(a * act.fn(net.fc(x), **full) + b)
    assert max_abs(compiled(x), expected) < 1e-5
    # the activation call itself is gone: only the GPN module computes it now
    assert not [n for n in compiled.graph.nodes if DEFAULT.match_node(n, compiled) is not None]


def test_inplace_rewrite_updates_later_uses_of_the_mutated_input():
    class Mutating(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.h1, self.h2 = nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            z = self.fc(x)
            pre = self.h1(z)  # before the in-place op: sees z unchanged
            y = z.relu_()
            return pre + self.h1(z) + self.h2(y)  # after: z is relu'd

    net = Mutating()
    compiled = vgpcompile(net, passes=["gpn"])
    x = torch.randn(5, 4)
    z = net.fc(x)
    g = math.sqrt(2) * F.relu(z) - 2 / math.sqrt(math.pi)
    expected = net.h1(z) + net.h1(g) + net.h2(g)
    assert max_abs(compiled(x), expected) < 1e-5


def test_inplace_on_a_view_is_left_alone_with_reason():
    class ViewMutation(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            z = self.fc(x)
            z[:, :2].relu_()
            return self.head(z)

    net = ViewMutation()
    compiled = vgpcompile(net, passes=["gpn"])
    (row,) = compiled.vgp_report.sites
    assert not row.changed["gpn"] and "view" in row.outcomes["gpn"]
    x = torch.randn(3, 4)
    assert torch.equal(compiled(x), net(x))


def test_output_activation_left_alone_unless_selected_by_name():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Sigmoid())
    report = vgpcompile(net, passes=["gpn"]).vgp_report
    assert report.site("3").outcomes["gpn"].startswith("model output activation")
    assert report.site("1").changed["gpn"]
    report = vgpcompile(net, passes=["gpn"], select=["1", "3"]).vgp_report
    assert report.changed_count("gpn") == 2


def bent(x):
    return (torch.sqrt(x * x + 1) - 1) / 2 + x


class Bent(nn.Module):
    def forward(self, x):
        return bent(x)


def test_user_registered_activation_every_spelling():
    cat = Catalogue()
    register_activation("bent", bent, modules=[Bent], functions=[bent], catalogue=cat)

    class UsesBent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act, self.head = nn.Linear(3, 3), Bent(), nn.Linear(6, 1)

        def forward(self, x):
            z = self.fc(x)
            return self.head(torch.cat([self.act(z), bent(z)], 1))

    compiled = vgpcompile(UsesBent(), passes=["gpn"], catalogue=cat)
    assert compiled.vgp_report.changed_count("gpn") == 2
    assert not compiled.vgp_report.eager  # an activation module is a leaf, not an eager module
    m2, d2 = _mc_moments(compiled.get_submodule("act"))
    assert abs(m2 - 1) < 1e-2 and abs(d2 - 1) < 1e-2
