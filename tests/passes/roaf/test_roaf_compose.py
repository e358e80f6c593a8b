"""``roaf`` with ``gpn``, ``arp`` and ``orthogonal``: every listing order, the run order the
runner derives, the function each combination computes, arp's pivots read through the
filters' declared ranges, freeze parity and save/load."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import max_abs
from test_roaf import filters, mlp
from torch import nn

from vgpcompile import UsageError, freeze, load, save, vgpcompile
from vgpcompile.nn import AutoRotLinear, GPNActivation


def build(passes, depth=4, **options):
    torch.manual_seed(0)
    net = mlp(depth=depth)
    return net, vgpcompile(net, passes=list(passes), options=options or None, input_range=(-1.0, 1.0))


@pytest.mark.parametrize(
    "passes",
    [list(p) for n in (2, 3) for p in itertools.permutations(["gpn", "roaf", "orthogonal"], n) if "roaf" in p],
    ids="+".join,
)
def test_gpn_and_orthogonal_compose_in_any_order_to_the_same_function(passes):
    _, model = build(passes)
    _, reference = build(sorted(passes))  # another listing order
    x = torch.rand(5, 6) * 2 - 1
    # none reads what another writes: they run in one fixed order, whatever order they are listed in
    assert model.vgp_report.passes == reference.vgp_report.passes
    assert torch.equal(model(x), reference(x))
    found = filters(model)
    assert len(found) == 4
    if "gpn" in passes:  # the filter adds the GPN-normalized activation: h = alpha O x + beta (a phi(z) + b)
        node, filt = found[0]
        act = model.get_submodule(node.args[0].target)
        assert isinstance(act, GPNActivation)
        z = torch.randn(3, 16)
        lin = model.get_submodule(node.args[0].args[0].target)
        want = filt.alpha * z @ filt.O.T + filt.beta * (act.a * torch.tanh(lin(z)) + act.b)
        assert max_abs(filt(act(lin(z)), z), want) <= 1e-6
    if "orthogonal" in passes:
        lin = model.get_submodule(found[0][0].args[0].args[0].target)
        assert max_abs(lin.weight @ lin.weight.T, torch.eye(16)) <= 1e-4
    frozen = freeze(model)
    assert max_abs(frozen(x), model(x)) <= 1e-5
    assert len(filters(frozen)) == 4  # the filters stay in the inference form


@pytest.mark.parametrize(
    "passes", [["arp", "roaf"], ["roaf", "arp"], ["arp", "gpn", "roaf", "orthogonal"]], ids="+".join
)
def test_arp_runs_after_roaf_and_reads_the_filters_declared_range(passes):
    _, model = build(passes)
    order = model.vgp_report.passes
    assert order.index("roaf") < order.index("arp")  # roaf writes ranges, arp reads them
    found = filters(model)
    rows = model.vgp_report.sites
    # block 1's input is the projection's activation; block k's input is filter k-1's output
    y_range = (-1.0, 1.0)
    if "gpn" in passes:
        y_range = model.get_submodule(found[0][0].args[0].target).vgp_output_range(None)
    x_range = y_range
    for k, (node, filt) in enumerate(found):
        lin = model.get_submodule(node.args[0].args[0].target)
        assert isinstance(lin, AutoRotLinear)
        lo, hi = x_range
        assert lin.q == pytest.approx(2 * hi - lo), f"block {k}"
        y = node.args[0]
        site = y.meta.get("vgp.site", y.target)
        assert f"q={lin.q:g}" in next(r.outcomes["arp"] for r in rows if r.name == site)
        x_range = filt.vgp_output_range(y_range, x_range)
    x = torch.rand(5, 6) * 2 - 1
    assert max_abs(freeze(model)(x), model(x)) <= 1e-5


def test_arp_after_a_deep_roaf_stack_asks_for_a_pivot():
    """The filters' worst-case ranges widen by up to sqrt(n) per block; on a deep stack arp
    cannot infer its pivots and says which option to set."""
    pattern = r"arp cannot infer the input range of site .*: its input is .*\. Give example_inputs=.*pivot with .*xQ"
    with pytest.raises(UsageError, match=pattern):
        build(["roaf", "arp"], depth=400)
    _, model = build(["roaf", "arp"], depth=400, arp={"xQ": 3.0})
    assert len(filters(model)) == 400
    assert all(m.q == 3.0 for m in model.modules() if isinstance(m, AutoRotLinear))


def test_compositions_save_and_load_bitwise(tmp_path):
    def factory():
        torch.manual_seed(1)
        return mlp(depth=3)

    x = torch.rand(4, 6)
    for passes in (["gpn", "orthogonal", "roaf"], ["roaf", "arp"]):
        model = vgpcompile(factory(), passes=passes, input_range=(0.0, 1.0))
        for form, obj in (("training", model), ("frozen", freeze(model))):
            path = tmp_path / "-".join(passes) / form
            save(obj, path)
            assert torch.equal(load(factory, path)(x), obj(x)), (passes, form)


def test_rnn_with_other_passes():
    """arp's recurrent rewrite and roaf's both want nn.RNN: roaf runs first (it writes ranges)
    and arp leaves the ROAF RNN alone; a Linear block after it reads the RNN's declared range."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(3, 8)
            self.fc = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(torch.tanh(self.fc(self.rnn(x)[0][-1])))

    model = vgpcompile(Net(), passes=["arp", "roaf"], options={"roaf": {"horizon": 20}}, input_range=(-1.0, 1.0))
    assert type(model.rnn).__name__ == "ROAFRNN"
    bound = model.rnn.vgp_output_range(None)[1]
    fc = model.get_submodule("fc")
    # fc is a block: roaf filters it; arp rotates it with the pivot from the RNN's declared range
    assert isinstance(fc, AutoRotLinear) and fc.q == pytest.approx(3 * bound)
    assert len(filters(model)) == 1
    x = torch.randn(5, 2, 3)
    assert max_abs(freeze(model)(x), model(x)) <= 1e-5
