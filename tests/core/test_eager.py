"""Eager code: a model nothing of which traces is compiled, and its activations are rewritten."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from helpers import max_abs
from torch import fx, nn

from vgpcompile import VgpWarning, freeze, load, register_affine, save, vgpcompile
from vgpcompile.nn import GPNActivation


class Step(nn.Module):
    """RWKV-style: a one-token step takes another path, so fx cannot trace it."""

    def __init__(self, slope=0.2):
        super().__init__()
        self.fc, self.out, self.act, self.slope = nn.Linear(8, 8), nn.Linear(8, 8), nn.GELU(), slope

    def forward(self, x):
        if x.size(1) == 1:
            return x
        h = torch.tanh(self.fc(x))
        h = self.act(self.out(h))
        g = x * torch.sigmoid(x)  # a formula: its sigmoid is not a site
        return F.leaky_relu(self.fc(h), self.slope) + h.relu() + g + F.elu(h, alpha=float(x.size(1)))


class Stack(nn.Sequential):
    def forward(self, x):
        if x.size(1) == 1:  # untraceable too: nothing of the model traces
            return x
        return super().forward(x)


def _net():
    torch.manual_seed(0)
    return Stack(Step(), Step())


def _gpn(compiled, kind):
    return next(m for m in compiled.modules() if isinstance(m, GPNActivation) and m.activation.name == kind)


def test_activations_in_eager_code_are_sites_rewritten_as_modules_or_intercepted():
    net, x = _net(), torch.randn(4, 3, 8)
    with pytest.warns(VgpWarning, match="no part of Stack could be traced"):
        compiled = vgpcompile(net, ["gpn"])
    report = compiled.vgp_report
    rows = {r.name.split("@")[0]: r for r in report.sites if r.name.startswith("0.")}
    assert set(rows) == {"0.act", "0.tanh", "0.leaky_relu", "0.relu", "0.elu"}
    assert all(r.eager for r in rows.values())
    assert "computed at run time" in rows["0.elu"].outcomes["gpn"]  # alpha from x.size(1)
    assert rows["0.leaky_relu"].kind == "leaky_relu(negative_slope=0.2)"  # self.slope read at compile time
    assert report.changed_count("gpn") == report.changed_eager_count("gpn") == 8
    assert "8 in eager code" in str(report)
    step, c = net[0], compiled[0]
    with torch.no_grad():
        h = _gpn(c, "tanh")(step.fc(x))
        h = _gpn(c, "gelu")(step.out(h))
        ref = _gpn(c, "leaky_relu")(step.fc(h)) + _gpn(c, "relu")(h) + x * torch.sigmoid(x) + F.elu(h, alpha=3.0)
        assert max_abs(c(x), ref) < 1e-6


def test_eager_rewrites_survive_copy_pickle_freeze_and_load(tmp_path):
    net, x = _net(), torch.randn(4, 3, 8)
    compiled = vgpcompile(net, ["gpn"], example_inputs=(x,))
    y = compiled(x)
    assert not torch.equal(y, net(x))
    assert torch.equal(copy.deepcopy(compiled)(x), y)
    buf = io.BytesIO()
    torch.save(compiled, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), y)
    assert torch.equal(freeze(compiled)(x), y)
    assert list(compiled.state_dict()) == list(net.state_dict())
    save(compiled, tmp_path / "ckpt")
    assert torch.equal(load(_net, tmp_path / "ckpt")(x), y)


def test_no_pass_is_exact_and_interception_is_scoped_to_the_module():
    net, x = _net(), torch.randn(4, 3, 8)
    assert torch.equal(vgpcompile(net)(x), net(x))
    compiled = vgpcompile(net, ["gpn"], select=["re:0\\..*"])  # only the first block's sites
    assert torch.equal(compiled[1](x), net[1](x))  # the second block's calls pass through
    assert torch.equal(torch.tanh(x), torch.tanh(x))


def test_a_pass_that_rewrites_graphs_only_says_so_for_eager_sites():
    report = vgpcompile(_net(), ["arp"], options={"arp": {"xQ": 3.0}}).vgp_report
    row = report.site("0.act")
    assert not row.changed["arp"] and "rewrites traced graphs only" in row.outcomes["arp"]


def test_the_output_activation_in_eager_code_is_left_alone_when_example_inputs_show_it():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = nn.Linear(4, 4), nn.Sigmoid()

        def forward(self, x):
            if x.sum() > 0:
                x = -x
            return self.out(self.fc(x))

    compiled = vgpcompile(Head(), ["gpn"], example_inputs=(torch.randn(2, 4),))
    assert compiled.vgp_report.site("out").outcomes["gpn"].startswith("model output activation")


# ---- torch's composite layers -----------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        if x.shape[1] > 8:
            raise ValueError("too long")
        return self.head(self.encoder(x).mean(1))


@pytest.mark.parametrize("activation", ["relu", "gelu", nn.GELU()])
def test_torch_transformer_layers_are_looked_into(activation):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, activation=activation, batch_first=True)
    compiled = vgpcompile(nn.Sequential(layer, nn.Linear(16, 2)), ["gpn"])
    (row,) = compiled.vgp_report.sites
    assert row.producer == "Linear 0.linear1" and row.changed["gpn"]


def test_a_model_on_transformer_encoder_is_compiled_not_refused():
    torch.manual_seed(0)
    net, x = Encoder(), torch.randn(2, 5, 16)
    compiled = vgpcompile(net, ["gpn"], example_inputs=(x,))
    report = compiled.vgp_report
    assert report.changed_count("gpn") == 2  # one GELU per layer
    assert all(isinstance(m, fx.GraphModule) for m in compiled.encoder.layers)
    for training in (True, False):
        net.train(training)
        plain = vgpcompile(net).train(training)
        torch.manual_seed(1)
        y = plain(x)
        torch.manual_seed(1)
        assert torch.equal(y, net(x))


# ---- affine layers of other libraries ---------------------------------------------------------


class Conv1D(nn.Module):
    """transformers' Conv1D: x @ W + b with W stored (in, out)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], -1)


def test_a_declared_affine_layer_is_a_producer_and_an_orthogonal_layer():
    register_affine(Conv1D, layout="in_out")
    torch.manual_seed(0)
    net = nn.Sequential(Conv1D(32, 8), nn.Tanh(), Conv1D(8, 32))
    compiled = vgpcompile(net, ["orthogonal"])
    assert compiled.vgp_report.site("1").producer == "Conv1D 0"
    w = compiled.get_submodule("0").weight.detach().double()  # (8, 32) stored as (in, out): orthonormal rows of W.T
    assert torch.allclose(w @ w.T, torch.eye(8, dtype=torch.float64), atol=1e-5)
    x = torch.randn(3, 8)
    assert torch.equal(freeze(compiled)(x), compiled(x))


def test_no_affine_layer_is_a_warning():
    with pytest.warns(VgpWarning, match="no affine layer"):
        vgpcompile(nn.Sequential(nn.Tanh()), ["orthogonal"])
