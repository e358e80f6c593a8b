"""Compile cost stays linear in depth (issue 18): the work repeated per compile (forward passes
of the model, recompiles of its code) does not grow with depth, and the shortcuts that save it
give what the long way gives (the copy is a deep copy; a graph left as it was keeps its code;
the what-ran check needs no run where a traced root calls every inserted module)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from vgpcompile import vgpcompile
from vgpcompile.api import copy_model
from vgpcompile.core import verify_run

PASSES = {
    "off": ([], None),
    "arp": (["arp"], None),
    "gpn": (["gpn"], None),
    "arp+gpn": (["arp", "gpn"], None),
    "orthogonal": (["orthogonal"], None),
    "roaf": (["roaf"], None),
    "rai": (["rai"], {"rai": {"num_examples": 8}}),
    "bsnn": (["bsnn"], None),
}


def _mlp(pairs: int, act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    torch.manual_seed(0)
    first = [nn.Linear(3, 8), act()]  # in_features 3: only the first layer, so its calls count forward passes
    rest = [m for _ in range(pairs - 1) for m in (nn.Linear(8, 8), act())]
    return nn.Sequential(*first, *rest, nn.Linear(8, 1))


def _costs(monkeypatch, passes, options, pairs: int, act: type[nn.Module]) -> tuple[int, int]:
    """(forward passes of the model, GraphModule recompiles) of one compile with example inputs."""
    counts = {"forward": 0, "recompile": 0}
    linear_forward, recompile = nn.Linear.forward, fx.GraphModule.recompile

    def forward(self, x):
        counts["forward"] += self.in_features == 3
        return linear_forward(self, x)

    def counted_recompile(self):
        counts["recompile"] += 1
        return recompile(self)

    monkeypatch.setattr(nn.Linear, "forward", forward)
    monkeypatch.setattr(fx.GraphModule, "recompile", counted_recompile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gpn without orthogonal on a deep stack warns
        vgpcompile(_mlp(pairs, act), passes=passes, options=options, example_inputs=(torch.randn(4, 3),))
    monkeypatch.undo()
    return counts["forward"], counts["recompile"]


@pytest.mark.parametrize("name", list(PASSES))
@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU], ids=["tanh", "relu"])
def test_forward_passes_and_recompiles_do_not_grow_with_depth(monkeypatch, name, act):
    passes, options = PASSES[name]
    shallow = _costs(monkeypatch, passes, options, 4, act)
    deep = _costs(monkeypatch, passes, options, 24, act)
    assert deep == shallow
    # the reference (eval, train), the check's replays (2), calibration, what ran, and with
    # VGPCOMPILE_CHECK_FACTS (the test suite's default) one run before and after each pass
    assert shallow[0] <= 10 and shallow[1] <= 2


def test_a_pass_that_swaps_modules_by_name_does_not_recompile(monkeypatch):
    forwards, recompiles = _costs(monkeypatch, ["gpn"], None, 8, nn.Tanh)
    assert recompiles == 1  # capture's; gpn swaps each Tanh module in place, the code stays


def test_a_graph_changed_by_a_pass_is_recompiled():
    x = torch.randn(4, 3)
    compiled = vgpcompile(_mlp(3), passes=["roaf"], example_inputs=(x,))
    assert any(n.meta.get("vgp.pass") == "roaf" for n in compiled.graph.nodes)  # roaf inserted filter nodes
    assert compiled.code == compiled.graph.python_code("self").src  # the code run is the graph's code
    with torch.no_grad():
        assert torch.equal(compiled(x), fx.Interpreter(compiled).run(x))


def test_the_what_ran_run_is_skipped_only_when_every_module_is_called_by_the_root_graph(monkeypatch):
    runs = []
    original = verify_run.count_calls
    monkeypatch.setattr(verify_run, "count_calls", lambda *a: runs.append(1) or original(*a))
    x = torch.randn(4, 3)
    compiled = vgpcompile(_mlp(3), passes=["gpn"], example_inputs=(x,))
    assert runs == [] and all(r.changed.get("gpn") for r in compiled.vgp_report.sites if not r.is_output)

    class Eager(nn.Module):  # a data-dependent branch: stays eager, its activation call is intercepted
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            if x.sum() > 0:
                return torch.tanh(self.fc(x))
            return self.fc(x)

    vgpcompile(nn.Sequential(Eager(), nn.Linear(3, 1)), passes=["gpn"], example_inputs=(x.abs(),))
    assert runs == [1]


class _Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        shared = nn.Linear(4, 4)
        self.a, self.b = shared, shared
        self.enc = nn.TransformerEncoderLayer(8, 2, 16)
        self.lstm = nn.LSTM(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.items = [1, {"x": torch.ones(2)}]
        self.p = nn.Linear(3, 3)
        parametrize.register_parametrization(self.p, "weight", nn.Identity())  # a class with its own __deepcopy__
        self.tied, self.tied2 = nn.Linear(4, 4), nn.Linear(4, 4)
        self.tied2.weight = self.tied.weight
        self.register_buffer("scratch", torch.zeros(3), persistent=False)
        self.seq = nn.Sequential(nn.Tanh(), nn.ModuleList([nn.ReLU()]))
        self.seq.register_forward_hook(lambda m, i, o: o)


def _layout(model: nn.Module) -> list:
    return [
        (n, type(m), m.training, sorted(m.__dict__), len(m._forward_hooks), sorted(m._non_persistent_buffers_set))
        for n, m in model.named_modules(remove_duplicate=False)
    ]


def test_copy_model_is_a_deep_copy():
    model = _Holder()
    model.bn.eval()
    ours, theirs = copy_model(model), copy.deepcopy(model)
    assert _layout(ours) == _layout(theirs)
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), k
    assert ours.a is ours.b and ours.a is not model.a
    assert ours.tied2.weight is ours.tied.weight and ours.tied.weight is not model.tied.weight
    assert ours.items[0] == 1 and torch.equal(ours.items[1]["x"], model.items[1]["x"])
    assert ours.items is not model.items and ours.items[1]["x"] is not model.items[1]["x"]
    own = {p.data_ptr() for p in model.parameters()}
    assert not own & {p.data_ptr() for p in ours.parameters()}
    x = torch.randn(5, 2, 8)
    ours.eval(), theirs.eval()
    assert torch.equal(ours.enc(x), theirs.enc(x))
