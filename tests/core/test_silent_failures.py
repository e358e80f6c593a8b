"""Issue 19's silent failures: a report or graph that says one thing while the model computes
another. Each was reproduced before the fix; each is pinned here."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import max_abs
from torch import nn

from vgpcompile import plan, vgpcompile
from vgpcompile.core.catalogue import DEFAULT
from vgpcompile.core.facts import Fact, changed, observe
from vgpcompile.errors import PassError
from vgpcompile.passes.gpn.modules import GPNActivation

# --- 1. a formula match never swallows the op after it -----------------------------------------


class ClampedGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.b(torch.clamp(F.gelu(self.a(x)), max=9.0))


def test_a_clamp_after_a_gelu_is_kept_and_the_gelu_alone_is_the_site():
    net = ClampedGelu()
    compiled = vgpcompile(net, ["gpn"])
    (row,) = compiled.vgp_report.sites
    assert row.kind == "gelu" and row.spelling == "function"
    assert [n.target for n in compiled.graph.nodes if n.op == "call_function"] == [torch.clamp]
    x = 40 * torch.randn(64, 4)  # pre-activations far past the clamp
    g = GPNActivation(DEFAULT.get("gelu"), {})
    assert max_abs(compiled(x), net.b(torch.clamp(g(net.a(x)), max=9.0))) < 1e-5


class Written(nn.Module):
    def __init__(self, formula):
        super().__init__()
        self.fc, self.head, self.formula = nn.Linear(4, 4), nn.Linear(4, 2), formula

    def forward(self, x):
        return self.head(self.formula(self.fc(x)))


def _gpn(kind):
    return GPNActivation(DEFAULT.get(kind), {})


# (formula, the op after the recognised part that must stay, the formula with that part rewritten)
AFTER = [
    (lambda x: torch.clamp(x * F.relu6(x + 3) / 6, max=9.0), torch.clamp,
     lambda x: torch.clamp(_gpn("hardswish")(x), max=9.0)),
    (lambda x: torch.where(x > 100, x, x * torch.sigmoid(x)), torch.where,
     lambda x: torch.where(x > 100, x, _gpn("silu")(x))),
    (lambda x: torch.minimum(x * torch.sigmoid(x), torch.full_like(x, 50.0)), torch.minimum,
     lambda x: torch.minimum(_gpn("silu")(x), torch.full_like(x, 50.0))),
    (lambda x: (x * torch.sigmoid(x)).masked_fill(x > 200, 0.0), "masked_fill",
     lambda x: _gpn("silu")(x).masked_fill(x > 200, 0.0)),
]


@pytest.mark.parametrize("formula,kept,rewritten", AFTER)
def test_a_value_changing_op_after_a_formula_ends_the_match(formula, kept, rewritten):
    torch.manual_seed(0)
    net = Written(formula)
    compiled = vgpcompile(net, ["gpn"])
    (row,) = compiled.vgp_report.sites
    assert row.spelling == "formula" and row.changed["gpn"]
    assert kept in [n.target for n in compiled.graph.nodes]
    x = 300 * torch.randn(256, 4)  # every branch: past 9, 50, 100 and 200
    assert max_abs(compiled(x), net.head(rewritten(net.fc(x)))) < 1e-3


def test_a_formula_that_differs_from_an_activation_only_far_out_is_not_it():
    # hardswish's structure (one clamp), but the clamp is at 6000: equal on [-8, 8], not at 1e4
    rows = vgpcompile(Written(lambda x: x * torch.clamp(x + 3, 0, 6000) / 6)).vgp_report.sites
    assert rows == []


# --- 2. eager rewrites reported are rewrites done ----------------------------------------------


class ThreeTanh(nn.Module):
    """torch.tanh called directly, inside a list comprehension and inside a lambda."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(this, x):  # noqa: N805  (the module's argument need not be called self)
        h = this.fc(x)
        y = torch.tanh(h)
        zs = [torch.tanh(t) for t in [h]]
        f = lambda t: torch.tanh(t)  # noqa: E731
        return y + zs[0] + f(h)


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.e, self.out = ThreeTanh(), nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.e(x))


def test_every_eager_call_reported_rewritten_is_rewritten():
    torch.manual_seed(0)
    net, x = Holder(), torch.randn(5, 4)
    compiled = vgpcompile(net, ["gpn"], eager=["<root>", "e"], example_inputs=(x,))
    rows = compiled.vgp_report.sites
    assert len(rows) == 3 and all(r.changed["gpn"] for r in rows)
    g = GPNActivation(DEFAULT.get("tanh"), {})
    assert max_abs(compiled(x), net.out(3 * g(net.e.fc(x)))) < 1e-6


# --- 3. traced and eager code agree on what a site is --------------------------------------------


class QuickGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        z = self.fc(x)
        return self.out(z * torch.sigmoid(1.702 * z)) + torch.tanh(2.0 * z + 1.0) + torch.relu(torch.sigmoid(z))


class EagerQuickGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = QuickGelu()

    def forward(self, x):
        return self.q(x)


def test_traced_and_eager_code_find_the_same_sites():
    traced = plan(QuickGelu(), ["gpn"]).sites
    eager = plan(EagerQuickGelu(), ["gpn"], eager=["<root>", "q"]).sites
    assert sorted(r.kind for r in traced) == sorted(r.kind for r in eager) == ["sigmoid", "tanh"]
    # the quick GELU's sigmoid multiplies its own input: a piece of a formula, in both
    assert not any("1.702" in r.name for r in eager)


# --- 4. the order of passes never changes the model ----------------------------------------------


def _mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))


PAIR_PASSES = ["gpn", "arp", "orthogonal", "roaf"]


@pytest.mark.parametrize("first,second", list(itertools.combinations(PAIR_PASSES, 2)))
def test_the_order_of_two_passes_never_changes_the_result(first, second, monkeypatch):
    monkeypatch.setenv("VGPCOMPILE_CHECK_FACTS", "1")  # every pass's declared writes are checked too
    x = torch.randn(32, 8)
    one = vgpcompile(_mlp(), [first, second], example_inputs=(x,))
    two = vgpcompile(_mlp(), [second, first], example_inputs=(x,))
    assert one.vgp_report.passes == two.vgp_report.passes  # the order that ran, said in the report
    assert torch.equal(one(x), two(x))


def test_orthogonal_runs_before_arp_and_the_report_says_so():
    x = torch.randn(32, 8)
    report = vgpcompile(_mlp(), ["arp", "orthogonal"], example_inputs=(x,)).vgp_report
    assert report.passes == ["orthogonal", "arp"] and report.requested == ["arp", "orthogonal"]
    assert "run order: orthogonal, arp" in str(report)


def test_an_undeclared_change_is_an_error_when_facts_are_checked(monkeypatch):
    from vgpcompile.passes.orthogonal import Orthogonal

    class Quiet(Orthogonal):  # changes weights and ranges, declares nothing
        writes = frozenset()

    monkeypatch.setenv("VGPCOMPILE_CHECK_FACTS", "1")
    with pytest.raises(PassError, match="does not declare it"):
        vgpcompile(_mlp(), [Quiet()], example_inputs=(torch.randn(8, 8),))


def test_a_fact_outside_the_vocabulary_is_an_error():
    from vgpcompile.passes.gpn import GPN

    class Typo(GPN):
        writes = frozenset({"rangez"})

    with pytest.raises(PassError, match="'rangez', not a fact"):
        vgpcompile(_mlp(), [Typo()])


def test_fact_detection_sees_weights_layers_and_ranges():
    net = _mlp()
    before = observe(net, {"|x": (0.0, 1.0)})
    with torch.no_grad():
        net[0].weight.mul_(2)
    net[2] = nn.Linear(16, 16)
    assert changed(before, observe(net, {"|x": (0.0, 2.0)})) == {Fact.WEIGHTS, Fact.RANGES}
    net[4] = nn.Conv1d(16, 4, 1)
    assert Fact.LAYERS in changed(before, observe(net, {}))


# --- RWKV: an eager call rewritten by one pass, then seen by another -----------------------------


def test_rwkv_with_arp_and_gpn_compiles_and_reports_each_call_once():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.RwkvConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, attention_hidden_size=16,
                                  intermediate_size=32, context_length=16)
    net = transformers.RwkvModel(cfg).eval()
    ids = torch.randint(0, 50, (1, 6))
    compiled = vgpcompile(net, ["arp", "gpn"], example_inputs=(ids,))
    report = compiled.vgp_report
    assert len(report.sites) == 6 and report.changed_count("gpn") == 6
    assert all("_gpn" not in r.name for r in report.sites)
    assert torch.isfinite(compiled(ids).last_hidden_state).all()


# --- what was reported is what runs ------------------------------------------------------------


class LateLambda(nn.Module):
    """Makes a lambda in forward and keeps it; a caller runs it after forward returned."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        self.later = lambda t: torch.tanh(t)  # noqa: E731
        return self.fc(x)


class CallsLater(nn.Module):
    def __init__(self):
        super().__init__()
        self.e = LateLambda()

    def forward(self, x):
        h = self.e(x)
        return self.e.later(h)


def test_a_rewrite_that_never_runs_is_reported_not_changed():
    x = torch.randn(3, 4)
    compiled = vgpcompile(CallsLater(), ["gpn"], eager=["<root>", "e"], example_inputs=(x,))
    (row,) = compiled.vgp_report.sites
    assert row.changed["gpn"] is False and "never ran" in row.outcomes["gpn"]


class FormulaGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


def _kernel(x, activation):  # like mamba's causal_conv1d_fn: it takes the activation's name
    return getattr(F, activation)(x)


class NamesItsAct(nn.Module):
    """Like transformers' MambaMixer: holds ``self.act`` but hands its name to a kernel."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.fc, self.act = nn.Linear(4, 4), act

    def forward(self, x):
        h = self.fc(x)
        if h.abs().sum() >= 0:  # data-dependent: fx cannot trace it, this module stays eager
            return _kernel(h, "gelu" if isinstance(self.act, FormulaGELU) else "silu")
        return h


@pytest.mark.parametrize("act", [nn.SiLU, FormulaGELU], ids=["module", "formula"])
def test_a_module_its_owner_never_calls_is_not_rewritten(act, tmp_path):
    from vgpcompile.io.checkpoint import load, save

    def factory():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), NamesItsAct(act()), nn.Linear(4, 2))

    x = torch.randn(5, 3)
    net, compiled = factory(), vgpcompile(factory(), ["gpn"], example_inputs=(x,))
    (row,) = [r for r in compiled.vgp_report.sites if r.name.startswith("1.act")]
    assert row.changed["gpn"] is False and "never ran" in row.outcomes["gpn"], row
    assert not any(isinstance(m, GPNActivation) for m in compiled[1].modules())  # undone, as reported
    y = torch.randn(7, 4)
    assert torch.allclose(compiled[1].act(y), net[1].act(y), atol=1e-6)  # the original computation again
    save(compiled, tmp_path / "m")
    loaded = load(factory, tmp_path / "m")  # no example inputs: the recipe says which rewrites were undone
    (again,) = [r for r in loaded.vgp_report.sites if r.name.startswith("1.act")]
    assert again.changed["gpn"] is False and not any(isinstance(m, GPNActivation) for m in loaded[1].modules())
    assert torch.equal(loaded(x), compiled(x))


def test_without_example_inputs_eager_rewrites_are_unverified():
    compiled = vgpcompile(Holder(), ["gpn"], eager=["<root>", "e"])
    assert all(any("unverified" in n for n in r.notes) for r in compiled.vgp_report.sites)


def test_every_reported_change_ran_on_an_mlp_with_every_pass():
    x = torch.randn(16, 8)
    report = vgpcompile(_mlp(), ["gpn", "arp", "roaf", "orthogonal"], example_inputs=(x,)).vgp_report
    assert report.changed_count("gpn") == 2 and report.changed_count("arp") == 2
    assert not any("did not run" in n for r in report.sites for n in r.notes)


class UntakenBranch(nn.Module):
    """Left eager (a data-dependent branch); the tanh in the branch the examples never take."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        if h.abs().sum() < 0:  # never true
            return torch.tanh(h)
        return torch.sigmoid(h)


def test_plan_reports_what_compile_reports_on_an_untaken_eager_branch():
    torch.manual_seed(0)
    net, x = nn.Sequential(nn.Linear(3, 4), UntakenBranch(), nn.Linear(4, 2)), torch.randn(5, 3)
    planned = plan(net, ["gpn"], example_inputs=(x,))
    compiled = vgpcompile(net, ["gpn"], example_inputs=(x,)).vgp_report
    rows = {r.name: (r.kind, r.changed, r.outcomes) for r in planned.sites}
    assert rows == {r.name: (r.kind, r.changed, r.outcomes) for r in compiled.sites}
    tanh = [r for r in planned.sites if r.kind == "tanh"]
    assert len(tanh) == 1 and tanh[0].changed["gpn"] is False and "never ran" in tanh[0].outcomes["gpn"]
    assert any(r.kind == "sigmoid" and r.changed["gpn"] for r in planned.sites)
