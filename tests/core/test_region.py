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
