"""The compiled model is still the user's model (core/region.py): its class, methods and attributes."""

from __future__ import annotations

import abc
import copy
import pickle

import pytest
import torch
from torch import fx, nn

from vgpcompile import freeze, load, save, vgpcompile


class MyNet(nn.Module):
    """A model with a helper method that calls a submodule, and a plain attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 16), nn.GELU())
        self.head = nn.Linear(16, 3)
        self.temperature = 2.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def scaled(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled(self.head(self.features(x)))


def _net() -> MyNet:
    torch.manual_seed(0)
    return MyNet()


X = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))


def _run(model, training: bool, fn=None) -> torch.Tensor:
    model.train(training)
    torch.manual_seed(3)
    return (fn or model)(X).detach()


@pytest.mark.parametrize("passes", [[], ["gpn"], ["bsnn"], ["arp"], ["roaf"]], ids=lambda p: "+".join(p) or "none")
def test_user_class_methods_and_attributes_survive(passes):
    net = _net()
    compiled = vgpcompile(net, passes, example_inputs=(X,))
    assert isinstance(compiled, MyNet) and isinstance(compiled, fx.GraphModule)
    assert type(compiled).__name__ == "MyNet" and compiled.temperature == 2.0
    assert sorted(compiled.state_dict()) == sorted(net.state_dict())
    for training in (True, False):
        # the helper method runs the compiled submodule: forward == scaled(head(features(x)))
        by_methods = _run(compiled, training, lambda x: compiled.scaled(compiled.head(compiled.features(x))))
        assert torch.equal(by_methods, _run(compiled, training))
        if not passes:
            assert torch.equal(_run(compiled, training), _run(net, training))
            assert torch.equal(_run(compiled, training, compiled.features), _run(net, training, net.features))
    compiled.temperature = 4.0  # the user's method reads it (the traced forward holds the value it was traced with)
    assert torch.equal(compiled.scaled(torch.ones(2)), torch.full((2,), 0.25))
    assert isinstance(compiled.body, nn.Sequential) and isinstance(compiled.body, fx.GraphModule)


def test_freeze_copy_pickle_and_load_keep_the_class(tmp_path):
    compiled = vgpcompile(_net(), ["gpn"], example_inputs=(X,))
    compiled.temperature = 3.0
    expected = _run(compiled, False)
    frozen = freeze(compiled)
    twins = [frozen, copy.deepcopy(compiled), pickle.loads(pickle.dumps(compiled))]
    for twin in twins:
        assert isinstance(twin, MyNet) and twin.temperature == 3.0 and isinstance(twin.body, nn.Sequential)
        assert torch.allclose(_run(twin, False), expected, atol=1e-6)
        assert torch.allclose(_run(twin, False, twin.features), _run(compiled, False, compiled.features), atol=1e-6)
    assert torch.equal(_run(twins[2], True), _run(compiled, True))  # pickled: the same graph, bitwise
    save(compiled, tmp_path / "ckpt")
    back = load(_net, tmp_path / "ckpt")
    assert isinstance(back, MyNet) and torch.equal(_run(back, False), _run(compiled, False))


def test_compiled_again_and_torch_compile():
    compiled = vgpcompile(_net(), ["gpn"], example_inputs=(X,))
    again = vgpcompile(compiled, ["arp"], example_inputs=(X,))
    assert isinstance(again, MyNet) and type(again).vgp_user_class is MyNet  # not a subclass of a subclass
    assert again.temperature == 2.0 and again.features(X).shape == (5, 16)
    fast = torch.compile(again.eval(), fullgraph=True, backend="eager")
    assert torch.allclose(fast(X), again(X), atol=1e-6)
    assert "MyNet" in repr(again)


class HasGraph(nn.Module):
    """An attribute named like part of fx.GraphModule's machinery: the module cannot be both."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.graph = {"nodes": 3}

    def forward(self, x):
        return torch.tanh(self.fc(x))


class Base(nn.Module, abc.ABC):
    @abc.abstractmethod
    def features(self, x): ...


class Concrete(Base):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.Tanh()  # a module: swapped in place, so features() calls the rewritten one too

    def features(self, x):
        return self.act(self.fc(x))

    def forward(self, x):
        return self.features(x) * 2


def test_attribute_clash_stays_eager_and_abc_classes_compile():
    x = torch.randn(2, 4)
    clash = vgpcompile(HasGraph(), ["gpn"], example_inputs=(x,))
    assert type(clash) is HasGraph and clash.graph == {"nodes": 3}
    assert any("shadowed by torch.fx.GraphModule" in e.reason for e in clash.vgp_report.eager)
    abstract = vgpcompile(Concrete(), ["gpn"], example_inputs=(x,))
    assert isinstance(abstract, Concrete) and isinstance(abstract, Base) and isinstance(abstract, fx.GraphModule)
    assert abstract.vgp_report.changed_count("gpn") == 1
    assert torch.allclose(abstract(x), abstract.features(x) * 2)


class TimmLike(nn.Module):
    """timm's classifier API: forward_features, forward_head, get_classifier, reset_classifier."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.stages = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU())
        self.head = nn.Sequential(nn.Linear(8, num_classes), nn.Sigmoid())  # a multi-label head

    def forward_features(self, x):
        return self.stages(self.stem(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean((2, 3))
        return x if pre_logits else self.head(x)

    def get_classifier(self):
        return self.head[0]

    def reset_classifier(self, num_classes: int) -> None:
        self.head[0] = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_timm_style_entry_points():
    torch.manual_seed(0)
    net, x = TimmLike(), torch.randn(2, 3, 8, 8)
    model = vgpcompile(net, ["gpn"], example_inputs=(x,)).eval()
    assert isinstance(model, TimmLike)
    assert torch.allclose(model.forward_head(model.forward_features(x)), model(x))
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 8)
    assert model.get_classifier() is model.head[0]
    # the head is split off as a region of its own (get_classifier names it), and it is still the
    # model's output: its final sigmoid is left alone, as in the model compiled whole
    changed = {r.name for r in model.vgp_report.sites if r.outcomes.get("gpn", "").startswith("a=")}
    assert changed == {"stem.1", "stages.1", "stages.3"}
    model.reset_classifier(6)
    assert model(x).shape == (2, 6) and model.get_classifier().out_features == 6


class FunctionInHelper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def features(self, x):
        return torch.tanh(self.fc(x))

    def forward(self, x):
        return self.features(x) * 2


def test_activation_function_in_an_inlined_helper_is_reported():
    x = torch.randn(2, 4)
    model = vgpcompile(FunctionInHelper(), ["gpn"], example_inputs=(x,))
    # forward's graph has the tanh rewritten; features() called directly runs torch.tanh as written
    assert not torch.allclose(model(x), model.features(x) * 2)
    (warning,) = [w for w in model.vgp_report.warnings if "direct call" in w]
    assert "FunctionInHelper.features calls tanh (test_region.py:" in warning
    assert not any("direct call" in w for w in vgpcompile(_net(), ["gpn"], example_inputs=(X,)).vgp_report.warnings)


class Blocks(nn.Module):
    """Methods that use a ModuleList and a head the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(3))
        self.aux = nn.Sequential(nn.Linear(4, 2), nn.Tanh(), nn.Linear(2, 2))

    def intermediates(self, x):
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward_aux(self, x):
        return self.aux(x)

    def forward(self, x):
        return self.intermediates(x)[-1]


def test_containers_and_modules_forward_does_not_call():
    torch.manual_seed(0)
    net, x = Blocks(), torch.randn(2, 4)
    plain = vgpcompile(net, [], example_inputs=(x,))
    assert isinstance(plain.blocks, nn.ModuleList) and len(plain.blocks) == 3
    assert all(torch.equal(a, b) for a, b in zip(plain.intermediates(x), net.intermediates(x)))
    assert torch.equal(plain.forward_aux(x), net.forward_aux(x)) and torch.equal(plain(x), net(x))
    model = vgpcompile(net, ["gpn"], example_inputs=(x,))
    assert isinstance(model.aux, fx.GraphModule)  # compiled too: forward_aux calls the rewritten tanh
    changed = {r.name for r in model.vgp_report.sites if r.outcomes.get("gpn", "").startswith("a=")}
    assert changed == {"blocks.0.1", "blocks.1.1", "aux.1"}  # blocks.2's tanh is the model's output
    assert torch.equal(model.intermediates(x)[-1], model(x))
    assert sorted(model.state_dict()) == sorted(net.state_dict())


class Hooked(nn.Module):
    """Keeps the handles of its own forward hooks (with kwargs, always called): they point to
    its hook tables, and the region that replaces it holds the hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.calls = 0
        self.handle = self.register_forward_hook(Hooked._count, always_call=True)
        self.pre_handle = self.register_forward_pre_hook(Hooked._pre, with_kwargs=True)

    @staticmethod
    def _count(module, args, out):
        module.calls += 1

    @staticmethod
    def _pre(module, args, kwargs):
        return None

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("passes", [["orthogonal"], ["bsnn"]], ids="+".join)
def test_hooks_and_handles_survive_copies_of_copies(passes):
    """A deep copy of a deep copy freezes (the handles pointed to the tables of the module the
    region replaced: a TypeError in RemovableHandle.__setstate__), and every copy keeps the hooks."""
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    compiled = vgpcompile(Hooked(), passes, example_inputs=(x,))
    twice = copy.deepcopy(copy.deepcopy(compiled))
    for model in (compiled, twice, freeze(twice), freeze(copy.deepcopy(twice))):
        assert isinstance(model, Hooked)
        before = model.calls
        model(x)
        assert model.calls == before + 1, "the forward hook was lost"
    twice.handle.remove()  # the copy's handle removes the copy's hook, not the original's
    calls = (twice.calls, compiled.calls)
    twice(x), compiled(x)
    assert (twice.calls, compiled.calls) == (calls[0], calls[1] + 1)


class PoolHead(nn.Module):
    """timm's NormMlpClassifierHead in small: a flag that changes the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x, pre_logits: bool = False):
        x = x.mean((2, 3))
        return x if pre_logits else torch.tanh(self.fc(x))


class Gate(PoolHead):
    """Arguments whose value does not change the graph: a flag and an optional it ignores."""

    def forward(self, x, unused: bool = False, scale=None):
        return torch.tanh(self.fc(x.mean((2, 3))))


class SplitHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh())
        self.head = PoolHead()
        self.gate = Gate()

    def forward_head(self, x, pre_logits: bool = False):
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward_gate(self, x, unused: bool = False):
        return self.gate(x, unused=unused)

    def forward(self, x):
        x = self.stem(x)
        return self.forward_head(x) + self.forward_gate(x, unused=True)


def test_split_off_module_takes_the_other_flag_values():
    """A module split off for other methods is traced both ways for its None/bool arguments: the
    head whose graph depends on pre_logits stays eager (forward_head(x, pre_logits=True) works, no
    guard); the gate, whose graph depends on none of them, stays a region without guards."""
    torch.manual_seed(0)
    net, x = SplitHead(), torch.randn(2, 3, 6, 6)
    model = vgpcompile(net, ["gpn"], example_inputs=(x,))
    assert isinstance(model.gate, fx.GraphModule) and not isinstance(model.head, fx.GraphModule)
    (eager,) = [e for e in model.vgp_report.eager if e.name == "head"]
    assert "depends on pre_logits" in eager.reason
    features = net.stem(x)  # the compiled stem is inlined into forward's graph
    assert torch.equal(model.forward_head(features, pre_logits=True), net.forward_head(features, pre_logits=True))
    assert torch.equal(model.gate(features, unused=False, scale=2.0), model.gate(features, unused=True, scale=2.0))
    assert torch.equal(model.gate(features, scale=2.0), model.gate(features))  # None traced as a Proxy, no guard
    # the head's tanh runs in eager code and is changed there; the gate's in the gate's graph
    report = model.vgp_report
    assert (report.changed_count("gpn"), report.changed_eager_count("gpn")) == (3, 1)
    assert {"stem.1", "gate.tanh()"} <= {r.name for r in report.sites if r.changed.get("gpn")}


def test_rai_cuts_through_modules_the_other_methods_call():
    """rai needs the forward as one graph: TimmLike's stages and head (named by forward_features and
    get_classifier) are traced into it, not split off, so its cuts are found; the other methods
    run those modules eagerly, with the very layers the graph calls."""
    torch.manual_seed(0)
    net, x = TimmLike(), torch.randn(2, 3, 8, 8)
    lifted = vgpcompile(net, ["rai"], example_inputs=(x,), options={"rai": {"num_examples": 2}}).eval()
    assert isinstance(lifted, TimmLike) and lifted.vgp_report.changed_count("rai") > 0
    assert not isinstance(lifted.stages, fx.GraphModule) and lifted.get_classifier() is lifted.head[0]
    with torch.no_grad():
        assert torch.equal(lifted.forward_head(lifted.forward_features(x)), net(x))
        assert torch.equal(lifted(x), net(x))
    lifted.train()
    assert lifted(x, torch.arange(2)).shape == (2, 4)
