"""Capture: parity with no passes, state_dict names, hierarchical fallback, leaf=."""

import models
import pytest
import torch
import torch.nn.functional as F
from helpers import max_abs
from torch import fx, nn

from vgpcompile import SelectorError, UsageError, VgpWarning, plan, vgpcompile


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.register_buffer("scale", torch.tensor(2.0))
        self.register_buffer("cache", torch.zeros(3), persistent=False)
        self.free = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return torch.tanh(self.fc(x)) * self.scale


@pytest.mark.parametrize(
    "factory,shape",
    [
        (models.deep_tanh_mlp, (5, 16)),
        (models.issue_gelu_mlp, (3, 64)),
        (models.tiny_transformer, (2, 6, 8)),
        (models.small_cnn, (2, 3, 8, 8)),
        (WithUnused, (3, 4)),
    ],
)
def test_no_pass_compile_is_exact_and_keeps_state_dict(factory, shape):
    net = factory().eval()
    compiled = vgpcompile(net).eval()
    x = torch.randn(*shape)
    assert torch.equal(compiled(x), net(x))
    assert list(compiled.state_dict()) == list(net.state_dict())
    compiled.load_state_dict(net.state_dict())  # strict: an original checkpoint loads
    print(f"{factory.__name__}: no-pass max abs error {max_abs(compiled(x), net(x)):.1e}")


def test_original_state_dict_loads_into_compiled_with_gpn():
    net = models.deep_tanh_mlp()
    compiled = vgpcompile(net, passes=["gpn"])
    other = models.deep_tanh_mlp()
    compiled.load_state_dict(other.state_dict())
    assert torch.equal(compiled.get_parameter("0.weight"), other.get_parameter("0.weight"))


def test_forward_reads_submodules_from_the_module_tree():
    """The generated forward calls ``self._modules[...]`` (no nn.Module.__getattr__ miss per
    call), so it calls whatever module the tree holds now, as fx's own ``getattr`` code would."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2))
    compiled = vgpcompile(model, passes=[])
    assert "self._modules['2']._modules['0'](" in compiled.code and "getattr(self" not in compiled.code
    x = torch.randn(3, 4)
    assert torch.equal(compiled(x), model(x))
    compiled[3] = nn.Linear(4, 5)  # replaced after compiling: the new module is the one called
    assert compiled(x).shape == (3, 5)
    targets = [str(n.target) for n in compiled.graph.nodes if n.op == "call_module"]
    assert targets == [str(n.target) for n in fx.symbolic_trace(model).graph.nodes if n.op == "call_module"]
    for target in targets:  # each call, once, in the fast spelling
        fast = "self" + "".join(f"._modules[{part!r}]" for part in target.split("."))
        assert compiled.code.count(fast + "(") == 1


def test_input_model_is_not_mutated():
    net = models.deep_tanh_mlp()
    before = [type(m) for m in net.modules()]
    vgpcompile(net, passes=["gpn"])
    assert [type(m) for m in net.modules()] == before


def test_inplace_true_mutates_given_model():
    net = WithUnused()
    compiled = vgpcompile(net, passes=["gpn"], inplace=True)
    assert isinstance(compiled, fx.GraphModule)
    assert compiled.fc is net.fc


def test_untraceable_root_keeps_children_compiled():
    net = models.tiny_transformer().eval()
    compiled = vgpcompile(net, passes=["gpn"])
    report = compiled.vgp_report
    assert [e.name for e in report.eager] == ["<root>"]
    assert "TraceError" in report.eager[0].reason and "models.py:" in report.eager[0].reason
    assert all(isinstance(b, fx.GraphModule) for b in compiled.blocks)
    assert report.changed_count("gpn") == 5  # 4 in the traced blocks, the root's own tanh in eager code
    assert report.changed_eager_count("gpn") == 1
    assert type(compiled).__name__ == "TinyTransformer"
    out = compiled(torch.randn(2, 6, 8))
    assert torch.isfinite(out).all()
    print(report)


class Picky(nn.Module):
    """Data-dependent control flow: untraceable."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.Sigmoid()

    def forward(self, x):
        if x.sum() > 0:
            return self.act(self.fc(x))
        return self.act(-self.fc(x))


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return F.elu(self.fc(x))


class PickyParent(nn.Module):
    """Untraceable child with a traceable grandchild, inside a traceable parent."""

    def __init__(self):
        super().__init__()
        self.inner = Inner()

    def forward(self, x):
        assert x.shape[-1] == 8, "wrong width"
        return self.inner(x)


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.picky = Picky()
        self.parent = PickyParent()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = torch.tanh(self.fc(x))
        x = self.picky(x) + self.parent(x)
        return self.head(x)


def test_untraceable_submodule_is_left_eager_and_reported():
    net = Outer().eval()
    compiled = vgpcompile(net, passes=["gpn"])
    report = compiled.vgp_report
    eager = {e.name: e.reason for e in report.eager}
    assert set(eager) == {"picky", "parent"}
    assert "control flow" in eager["picky"]
    assert "test_capture.py:" in eager["parent"]
    assert isinstance(compiled, fx.GraphModule)
    assert isinstance(compiled.parent.inner, fx.GraphModule)  # grandchild traced on its own
    assert type(compiled.picky) is Picky
    changed = {r.name for r in report.sites if r.changed.get("gpn")}
    assert changed == {"tanh()", "parent.inner.elu()", "picky.act"}  # picky's Sigmoid module: an eager site
    x = torch.randn(4, 8)
    assert torch.isfinite(compiled(x)).all()
    assert torch.equal(vgpcompile(net)(x), net(x))


def test_leaf_keeps_module_opaque():
    net = Outer()
    compiled = vgpcompile(net, passes=["gpn"], leaf=["parent"])
    report = compiled.vgp_report
    assert {"parent"} <= {e.name for e in report.eager}
    assert type(compiled.parent.inner) is Inner  # never traced into
    assert "parent.inner.elu()" not in {r.name for r in report.sites}


def test_leaf_by_type_and_unknown_leaf():
    compiled = vgpcompile(Outer(), leaf=["type:PickyParent"])
    assert type(compiled.parent) is PickyParent
    with pytest.raises(SelectorError, match="leaf rule 'parnet' matches no module.*'parent'"):
        vgpcompile(Outer(), leaf=["parnet"])


def test_nothing_traceable_is_returned_eager_with_a_report():
    with pytest.warns(VgpWarning, match="no part of Picky could be traced"):
        compiled = vgpcompile(Picky(), passes=["gpn"])
    report = compiled.vgp_report
    assert type(compiled) is Picky and report.regions == []
    assert [e.name for e in report.eager] == ["<root>"]
    assert report.site("act").eager and report.site("act").changed["gpn"]  # its Sigmoid module, swapped


def test_wrapped_models_are_refused():
    with pytest.raises(UsageError, match="compile the bare model first"):
        vgpcompile(nn.DataParallel(nn.Linear(2, 2)))


def test_not_a_module():
    with pytest.raises(UsageError, match="takes an nn.Module"):
        vgpcompile(lambda x: x)


def test_shared_activation_module_called_twice():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Linear(4, 4), nn.Linear(4, 4), nn.Tanh()

        def forward(self, x):
            return self.b(self.act(self.b(self.act(self.a(x)))))

    net = Shared()
    compiled = vgpcompile(net, passes=["gpn"], select=["re:.*"])
    x = torch.randn(3, 4)
    ref = net.b(1.467414 * torch.tanh(net.b(1.467414 * torch.tanh(net.a(x)) - 0.388542)) - 0.388542)
    assert max_abs(compiled(x), ref) < 1e-5
    assert compiled.vgp_report.changed_count("gpn") == 2


def test_plan_changes_nothing_and_reports_depth():
    net = models.deep_tanh_mlp(depth=5)
    report = plan(net, ["gpn"])
    assert report.mode == "plan"
    assert report.depth_before == 7 and report.depth_after == 7
    assert all(type(m) is not fx.GraphModule for m in net.modules())
    assert report.to_dict()["sites"][0]["outcomes"]["gpn"].startswith("a=1.4674")


def test_copy_keeps_tied_weights_tied_and_separate_from_the_original():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Linear(4, 4), nn.Linear(4, 4)
            self.dec.weight = self.enc.weight

        def forward(self, x):
            return self.dec(torch.tanh(self.enc(x)))

    net = Tied()
    compiled = vgpcompile(net, passes=["gpn"])
    assert compiled.enc.weight is compiled.dec.weight
    assert compiled.enc.weight is not net.enc.weight
    with torch.no_grad():
        compiled.enc.weight.add_(1.0)
    assert not torch.equal(compiled.enc.weight, net.enc.weight)


def test_compiled_model_survives_torch_save_and_load(tmp_path):
    """Checkpoints never rely on pickling, but users do pickle models: it must not crash."""
    compiled = vgpcompile(models.deep_tanh_mlp(depth=3), passes=["gpn"]).eval()
    torch.save(compiled, tmp_path / "m.pt")
    back = torch.load(tmp_path / "m.pt", weights_only=False)
    x = torch.randn(2, 16)
    assert torch.equal(back(x), compiled(x))
