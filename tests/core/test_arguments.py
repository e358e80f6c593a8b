"""Arguments with defaults, the check against the original, and where errors point."""

import functools

import pytest
import torch
from torch import fx, nn

from vgpcompile import load, save, vgpcompile


class Child(nn.Module):
    """The issue's case: a None default that the forward tests."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, bias=None):
        if bias is None:
            bias = torch.zeros(4)
        return torch.tanh(self.fc(x)) + bias


class Parent(nn.Module):
    """Untraceable (branches on a value): the child is traced on its own."""

    def __init__(self, give_bias=False):
        super().__init__()
        self.c, self.give_bias = Child(), give_bias

    def forward(self, x):
        bias = torch.ones(4) if self.give_bias else None
        if x.sum() > 0:
            return self.c(x, bias)
        return self.c(-x, bias)


def _factory(give_bias):
    def build():
        torch.manual_seed(0)
        return Parent(give_bias)

    return build


@pytest.mark.parametrize("give_bias", [False, True])
def test_child_with_a_none_default_computes_what_the_original_computes(give_bias):
    net = _factory(give_bias)()
    x = torch.randn(3, 4)
    compiled = vgpcompile(net, ["gpn"])  # no example inputs: the child may be called either way
    eager = {e.name: e.reason for e in compiled.vgp_report.eager}
    assert "depends on whether bias=None" in eager["c"]
    (site,) = [r for r in compiled.vgp_report.sites if r.name.startswith("c.tanh@L")]
    assert site.eager and site.changed["gpn"]  # rewritten in eager code
    assert torch.equal(vgpcompile(net)(x), net(x))


@pytest.mark.parametrize("give_bias", [False, True])
def test_with_example_inputs_the_child_is_traced_as_called(give_bias, tmp_path):
    net = _factory(give_bias)()
    x = torch.randn(3, 4)
    compiled = vgpcompile(net, example_inputs=(x,))
    assert isinstance(compiled.c, fx.GraphModule)
    record = compiled.vgp_recipe["capture"]["args"]["c"]
    assert record["bias"] == ("tensor" if give_bias else {"value": None})
    assert torch.equal(compiled(x), net(x)) and torch.equal(compiled(-x), net(-x))
    save(compiled, tmp_path / "ckpt")  # load has no example inputs: the recipe carries the decision
    back = load(_factory(give_bias), tmp_path / "ckpt")
    assert isinstance(back.c, fx.GraphModule) and torch.equal(back(x), net(x))


def test_a_call_with_another_value_raises_naming_the_module_and_the_fix():
    x = torch.randn(3, 4)
    compiled = vgpcompile(_factory(False)(), example_inputs=(x,))  # traced for bias=None
    with pytest.raises(AssertionError, match=r"traced Child 'c' for bias=None .* eager=\['c'\]"):
        compiled.c(x, torch.ones(4))


class LibraryChild(Child):
    """A module of a mask-building library (transformers): its eager caller passes None or a
    tensor depending on data and context, so a None guard would fail on other calls."""

    def forward(self, x, bias=None):
        return super().forward(x, bias)

    forward.__module__ = "transformers.models.fake"


def test_a_library_module_given_none_by_eager_code_is_not_guarded_to_none():
    x = torch.randn(3, 4)
    net = _factory(False)()
    net.c = LibraryChild()
    net.c.load_state_dict(_factory(False)().c.state_dict())
    compiled = vgpcompile(net, ["gpn"], example_inputs=(x,))  # the examples pass bias=None
    eager = {e.name: e.reason for e in compiled.vgp_report.eager}
    assert "its eager caller may pass a tensor there" in eager["c"]  # its graph depends on bias: eager
    plain = vgpcompile(net, example_inputs=(x,))
    assert torch.equal(plain.c(x, torch.ones(4)), net.c(x, torch.ones(4)))  # no guard to fail
    # (a block that only hands the argument on is traced without the guard: test_zoo_onnx's DistilBERT)


def test_an_unused_or_required_default_does_not_prevent_tracing():
    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, head_mask=None, scale=None, flag=False):
            return torch.relu(self.fc(x)) * scale  # head_mask unused, scale used as a tensor, flag unused

    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = Layer()

        def forward(self, x):
            if x.sum() > 0:
                return self.layer(x, scale=torch.full((4,), 2.0))
            return -x

    torch.manual_seed(0)
    net = Host()
    compiled = vgpcompile(net)
    assert isinstance(compiled.layer, fx.GraphModule)
    x = torch.ones(2, 4)
    assert torch.equal(compiled(x), net(x))
    assert torch.equal(compiled.layer(x, head_mask=torch.ones(1), scale=torch.ones(4), flag=True), net.layer(x, None,
                                                                                                          torch.ones(4)))


# ---- the check against the original (example inputs) ----------------------------------------


class TypeChecked(nn.Module):
    """``isinstance(x, torch.Tensor)`` is False for a Proxy: fx silently takes the other branch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        scale = 2.0 if isinstance(x, torch.Tensor) else 1.0
        return torch.tanh(self.fc(x)) * scale


def test_a_region_that_differs_from_the_original_is_left_eager_with_the_reason():
    torch.manual_seed(0)
    net = nn.Sequential(TypeChecked(), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    compiled = vgpcompile(net, ["gpn"], example_inputs=(x,))
    report = compiled.vgp_report
    eager = {e.name: e for e in report.eager}
    assert set(eager) == {"<root>", "0"}  # the root's graph inlines the module; then its own graph
    assert all(e.checked and "differs from the original" in e.reason for e in eager.values())
    assert report.stats["capture"]["left eager by the check"] == 2
    (site,) = [r for r in report.sites if r.name.startswith("0.tanh@L")]
    assert site.changed["gpn"]  # still rewritten, in eager code
    assert torch.equal(vgpcompile(net, example_inputs=(x,))(x), net(x))
    assert not torch.equal(vgpcompile(net)(x), net(x))  # without example inputs nothing catches it


class Hooked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_forward_hook(lambda module, args, out: 2 * out)

    def forward(self, x):
        return torch.tanh(self.fc(x))


class Branchy(nn.Module):
    """Untraceable, so its child is traced on its own: its hooks are not part of its forward."""

    def __init__(self):
        super().__init__()
        self.hooked, self.head = Hooked(), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.hooked(x) if x.sum() > 0 else -x)


def test_a_region_keeps_the_hooks_of_the_module_it_replaces():
    torch.manual_seed(0)
    net = Branchy()
    compiled = vgpcompile(net)
    assert isinstance(compiled.hooked, fx.GraphModule)
    x = torch.ones(3, 4)
    assert torch.equal(compiled(x), net(x))


class Noisy(nn.Module):
    """fx runs ``torch.randn(4)`` while tracing and bakes the draw into the graph."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.tanh(self.fc(x)) + 0.1 * torch.randn(4)


def test_a_random_draw_baked_in_while_tracing_is_caught_by_the_two_traces():
    torch.manual_seed(0)
    net = nn.Sequential(Noisy(), nn.Linear(4, 2))
    (eager,) = vgpcompile(net).vgp_report.eager
    assert eager.name == "0" and "different things in train and eval mode" in eager.reason
    x = torch.randn(3, 4)
    compiled = vgpcompile(net)
    torch.manual_seed(5)
    y = compiled(x)
    torch.manual_seed(5)
    assert torch.equal(y, net(x))


def test_without_example_inputs_nothing_is_run_and_the_report_says_so():
    report = vgpcompile(nn.Sequential(nn.Linear(4, 4), nn.Tanh())).vgp_report
    assert report.stats["capture"] == {"checked": "no example_inputs: structure only"}


def test_a_model_that_fails_on_its_example_inputs_is_a_usage_error():
    from vgpcompile import UsageError

    with pytest.raises(UsageError, match=r"does not run on example inputs of shape \[\(3, 5\)\]"):
        vgpcompile(nn.Linear(4, 4), example_inputs=(torch.randn(3, 5),))


# ---- decorated forwards and where errors point ---------------------------------------------


def logged(fn):
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        return fn(self, *args, **kwargs)

    return wrapper


class Decorated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    @logged
    def forward(self, x, mask=None):
        return torch.tanh(self.fc(x))


def test_an_unknown_decorator_keeps_the_module_eager_naming_it():
    compiled = vgpcompile(Decorated(), ["gpn"])  # a decorated forward as a region's own: not traceable
    (eager,) = compiled.vgp_report.eager
    assert "Decorated.forward at" in eager.reason and "test_arguments.py" in eager.reason
    assert "'wrapper'" in eager.reason and "vgpcompile/core" not in eager.reason
    assert compiled.vgp_report.changed_eager_count("gpn") == 1
    assert torch.isfinite(compiled(torch.randn(2, 4))).all()


def test_a_transparent_decorator_is_traced_through(monkeypatch):
    from vgpcompile.core import capture

    code = logged(lambda self: None).__code__
    monkeypatch.setitem(capture.TRANSPARENT_WRAPPERS, (code.co_filename, code.co_name), "test wrapper")
    torch.manual_seed(0)
    net = Decorated()
    compiled = vgpcompile(net)
    assert not compiled.vgp_report.eager and isinstance(compiled, fx.GraphModule)
    x = torch.randn(3, 4)
    assert torch.equal(compiled(x), net(x))
    assert type(net).forward.__wrapped__  # the class is left as it was


def test_trace_errors_point_at_the_users_code_not_vgpcompile():
    class Shape(nn.Module):
        def forward(self, x):
            return x.view(int(x.shape[0]), -1)

    report = vgpcompile(nn.Sequential(Shape(), nn.Linear(4, 2))).vgp_report
    for e in report.eager:
        assert "vgpcompile/core" not in e.reason and "test_arguments.py" in e.reason
