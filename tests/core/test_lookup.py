"""The compile's fast look-ups give what the slow ones give: core/lookup.py against
get_submodule and getattr, and modes.in_mode's direct flags against Module.train."""

import pytest
import torch
from torch import nn

from vgpcompile.core import modes
from vgpcompile.core.lookup import attribute, set_plain, submodule


class _Odd(nn.Module):
    """Attributes reached every way getattr reaches them on a module."""

    vgp_pass = "odd"  # a class attribute

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(2, 2), nn.Tanh())
        self.register_buffer("scale", torch.ones(1))
        self.plain = 3  # an instance attribute
        self.nothing = None  # an instance attribute holding None
        self.register_module("gone", None)  # a submodule slot holding None

    @property
    def vgp_activation(self):
        return ("tanh", {})


class _OwnGetattr(nn.Module):
    def __getattr__(self, name):
        if name == "vgp_depth":
            return 7
        return super().__getattr__(name)


NAMES = ["vgp_pass", "vgp_activation", "vgp_depth", "inplace", "inner", "scale", "plain", "nothing", "gone",
         "weight", "training", "forward", "missing"]  # fmt: skip


@pytest.mark.parametrize("obj", [_Odd(), _OwnGetattr(), nn.Linear(2, 2), nn.ReLU(inplace=True), len, "text"],
                         ids=["odd", "own_getattr", "linear", "relu", "function", "str"])  # fmt: skip
@pytest.mark.parametrize("name", NAMES)
def test_attribute_is_getattr(obj, name):
    sentinel = object()
    assert attribute(obj, name, sentinel) is getattr(obj, name, sentinel) or (
        attribute(obj, name, sentinel) == getattr(obj, name, sentinel)  # a bound method is made anew each time
    )


def test_submodule_is_get_submodule():
    model = nn.Sequential(_Odd(), nn.ModuleDict({"a": nn.Sequential(nn.Linear(2, 2))}))
    for name, module in model.named_modules():
        assert submodule(model, name) is model.get_submodule(name) is module
    for bad in ["5", "0.scale", "0.plain", "1.a.0.weight", "0.gone", "0.inner.7"]:
        with pytest.raises(AttributeError) as ours:
            submodule(model, bad)
        with pytest.raises(AttributeError) as theirs:
            model.get_submodule(bad)
        assert str(ours.value) == str(theirs.value)


class _KeepsBNInEval(nn.Module):
    """A class whose train() is its own: in_mode must call it (and restore every flag)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(2)
        self.fc = nn.Linear(2, 2)

    def train(self, mode: bool = True):
        super().train(mode)
        self.bn.eval()
        return self


@pytest.mark.parametrize("training", [True, False])
def test_in_mode_sets_what_train_sets_and_restores_every_flag(training):
    for make in (lambda: nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(), nn.Tanh())), _KeepsBNInEval):
        model, reference = make(), make()
        for m in (model, reference):
            list(m.modules())[-1].train(not training)  # mixed flags before
        before = [m.training for m in model.modules()]
        reference.train(training)
        with modes.in_mode(model, training):
            assert [m.training for m in model.modules()] == [m.training for m in reference.modules()]
        assert [m.training for m in model.modules()] == before


class _OwnSetattr(nn.Module):
    def __setattr__(self, name, value):
        super().__setattr__(name, value * 2 if name == "plain" else value)


def _state(module: nn.Module) -> tuple:
    named = (module.named_parameters(), module.named_buffers(), module.named_children())
    return sorted(vars(module)), [[k for k, _ in items] for items in named], module.plain, module.extra


def test_set_plain_gives_what_setattr_gives():
    fast, slow = _Odd(), _Odd()
    param, child, buf = nn.Parameter(torch.ones(2)), nn.Tanh(), torch.zeros(3)
    values = {"plain": 5, "extra": "x", "weight": param, "child": child, "scale": buf}
    set_plain(fast, **values)
    for name, value in values.items():
        setattr(slow, name, value)
    assert _state(fast) == _state(slow)
    assert fast.weight is param and fast.child is child and fast.scale is buf  # registered, not plain
    assert "weight" not in vars(fast) and "child" not in vars(fast) and "scale" not in vars(fast)
    # a plain value on a name a dict holds: Module.__setattr__'s own error
    with pytest.raises(TypeError, match="inner"):
        set_plain(_Odd(), inner=3)
    with pytest.raises(TypeError, match="inner"):
        _Odd().inner = 3
    # a class with its own __setattr__ still gets it
    own = _OwnSetattr()
    set_plain(own, plain=4, extra=1)
    assert own.plain == 8 and own.extra == 1
