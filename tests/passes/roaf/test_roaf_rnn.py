"""ROAFRNN and the ``roaf`` pass on nn.RNN: parity with nn.RNN at beta = 1, the filtered state
update against an explicit loop, the horizon rule, what is refused, freeze and save/load."""

from __future__ import annotations

import pytest
import torch
from helpers import max_abs
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from vgpcompile import UsageError, export_onnx, freeze, load, save, vgpcompile
from vgpcompile.core.report import VgpWarning
from vgpcompile.nn import ROAFRNN

CONFIGS = [
    dict(),
    dict(nonlinearity="relu"),
    dict(num_layers=3, batch_first=True),
    dict(num_layers=2, bias=False, nonlinearity="relu"),
    dict(num_layers=2, dropout=0.3),
]


def _grads(module, x, h0=None):
    out, h = module(x, h0)
    loss = (out**2).sum() + (h**3).sum()
    return out, h, torch.autograd.grad(loss, [x, *module.parameters()])


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_beta_one_is_nn_rnn_in_outputs_and_gradients(cfg):
    plain = nn.RNN(3, 5, **cfg).eval()
    ours = ROAFRNN.from_rnn(plain, beta=1.0)
    assert ours.alpha == 0.0
    assert list(ours.state_dict()) == list(plain.state_dict())
    assert all(a is b for a, b in zip(ours.parameters(), plain.parameters()))  # shared, not copied
    batch_first = cfg.get("batch_first", False)
    x = torch.randn(4, 7, 3, requires_grad=True) if batch_first else torch.randn(7, 4, 3, requires_grad=True)
    h0 = torch.randn(cfg.get("num_layers", 1), 4, 5)
    for hx in (None, h0):
        out_a, h_a, g_a = _grads(ours, x, hx)
        out_b, h_b, g_b = _grads(plain, x, hx)
        assert max_abs(out_a, out_b) <= 1e-5 and max_abs(h_a, h_b) <= 1e-5
        assert all(max_abs(a, b) <= 1e-5 for a, b in zip(g_a, g_b))
    unbatched = torch.randn(6, 3)
    assert max_abs(ours(unbatched)[0], plain(unbatched)[0]) <= 1e-5
    assert max_abs(ours(unbatched, h0[:, 0])[1], plain(unbatched, h0[:, 0])[1]) <= 1e-5


def reference(rnn: ROAFRNN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = alpha O h_{t-1} + beta phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), written out (seq-first, h0 = 0)."""
    phi = torch.tanh if rnn.nonlinearity == "tanh" else torch.relu
    finals, inp = [], x
    for k in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh, o = rnn.layer_weights(k)
        h, outs = torch.zeros(x.shape[1], rnn.hidden_size), []
        for x_t in inp:
            pre = x_t @ w_ih.T + h @ w_hh.T + (0 if b_ih is None else b_ih + b_hh)
            h = rnn.alpha * h @ o.T + rnn.beta * phi(pre)
            outs.append(h)
        inp = torch.stack(outs)
        finals.append(h)
    return inp, torch.stack(finals)


@pytest.mark.parametrize("cfg", CONFIGS[:4], ids=["default", "relu", "3 layers", "no bias relu"])
def test_filtered_update_matches_the_explicit_loop(cfg):
    rnn = ROAFRNN(3, 6, beta=0.1, seed=4, **{k: v for k, v in cfg.items() if k != "batch_first"})
    x = torch.randn(9, 2, 3)
    out, h = rnn(x)
    ref_out, ref_h = reference(rnn, x)
    assert max_abs(out, ref_out) <= 1e-6 and max_abs(h, ref_h) <= 1e-6
    for k in range(rnn.num_layers):
        o = rnn.layer_weights(k)[4]
        assert max_abs(o @ o.T, torch.eye(6)) <= 1e-6
    assert rnn.alpha == pytest.approx(0.9)


def test_by_hand_constructor_is_seeded_and_initialised_like_torch():
    a, b = ROAFRNN(4, 8, num_layers=2, seed=1), ROAFRNN(4, 8, num_layers=2, seed=1)
    o = lambda m, k=0: m.matrices[k].O
    assert torch.equal(o(a), o(b)) and not torch.equal(o(a), o(a, 1))
    assert not torch.equal(o(a), o(ROAFRNN(4, 8, seed=2)))
    bound = 8**-0.5
    assert all(p.abs().max() <= bound for p in a.parameters())
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in nn.RNN(4, 8, num_layers=2).named_parameters()]
    assert not any("matrices" in k for k in a.state_dict())
    with pytest.raises(UsageError, match="PackedSequence"):
        a(pack_padded_sequence(torch.randn(5, 2, 4), [5, 3]))
    with pytest.raises(UsageError, match=r"expected hidden state of shape \(2, 3, 8\)"):
        a(torch.randn(5, 3, 4), torch.zeros(1, 3, 8))
    with pytest.raises(UsageError, match="nonlinearity must be 'tanh' or 'relu'"):
        ROAFRNN(4, 8, nonlinearity="gelu")
    with pytest.raises(UsageError, match="beta must be a positive finite number"):
        ROAFRNN(4, 8, beta=0.0)


class Seq(nn.Module):
    def __init__(self, **rnn):
        super().__init__()
        self.rnn = nn.RNN(3, 8, batch_first=True, **rnn)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def test_pass_swaps_nn_rnn_with_the_horizon_rule_and_keeps_names():
    net = Seq(num_layers=2)
    with pytest.warns(
        VgpWarning, match=r"beta = c/horizon = 0.01 for the default horizon of 100 steps.*T = 1000: 5e-05"
    ):
        model = vgpcompile(net, passes=["roaf"])
    rnn = model.get_submodule("rnn")
    assert isinstance(rnn, ROAFRNN) and (rnn.alpha, rnn.beta) == (pytest.approx(0.99), 0.01)
    assert list(model.state_dict()) == list(net.state_dict())
    model.load_state_dict(net.state_dict(), strict=True)
    row = model.vgp_report.site("rnn")
    assert row.kind == "RNN" and "beta=0.01 (c/horizon, horizon 100), 2 O of 8^2" in row.outcomes["roaf"]
    assert model.vgp_report.stats["roaf"]["rnn_layers"] == 2 and model.vgp_report.stats["roaf"]["beta_rnn"] == 0.01
    x = torch.randn(4, 11, 3)
    ref, _ = reference(rnn, x.transpose(0, 1))
    assert max_abs(model(x), net.head(ref[-1])) <= 1e-6
    assert vgpcompile(Seq(), passes=["roaf{horizon=1000}"]).rnn.beta == pytest.approx(1e-3)
    assert vgpcompile(Seq(), passes=["roaf{horizon=1000, c=2}"]).rnn.beta == pytest.approx(2e-3)
    assert vgpcompile(Seq(), passes=["roaf{beta=0.2}"]).rnn.alpha == pytest.approx(0.8)


def test_beta_one_through_the_pass_equals_the_original_model_and_freezes_to_nn_rnn():
    net = Seq(num_layers=2, nonlinearity="relu")
    model = vgpcompile(net, passes=["roaf{beta=1}"])
    x = torch.randn(3, 13, 3)
    assert max_abs(model(x), net(x)) <= 1e-5
    frozen = freeze(model)
    assert type(frozen.get_submodule("rnn")) is nn.RNN
    assert max_abs(frozen(x), model(x)) <= 1e-6


def test_bidirectional_and_subclasses_are_left_alone_with_the_reason():
    class MyRNN(nn.RNN):
        pass

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bi = nn.RNN(3, 4, bidirectional=True)
            self.sub = MyRNN(8, 4)

        def forward(self, x):
            return self.sub(self.bi(x)[0])[0]

    model = vgpcompile(Net(), passes=["roaf"])
    rows = {r.name: r.outcomes["roaf"] for r in model.vgp_report.sites}
    assert rows["bi"] == "bidirectional nn.RNN is not supported by ROAFRNN"
    assert rows["sub"] == "MyRNN is a subclass of nn.RNN; roaf swaps exact types"


def test_freeze_save_load_and_onnx(tmp_path):
    def factory():
        torch.manual_seed(5)
        return Seq(num_layers=2)

    model = vgpcompile(factory(), passes=["roaf{horizon=50}"])
    x = torch.randn(2, 6, 3)
    frozen = freeze(model)
    assert isinstance(frozen.get_submodule("rnn"), ROAFRNN)
    assert torch.equal(frozen(x), model(x))
    for form, obj in (("training", model), ("frozen", frozen)):
        save(obj, tmp_path / form)
        assert torch.equal(load(factory, tmp_path / form)(x), obj(x)), form
    pytest.importorskip("onnxruntime")
    report = export_onnx(model, tmp_path / "rnn.onnx", (x,), exporter="torchscript")  # unrolled at 6 steps
    assert report.max_abs <= 1e-5


def test_declared_output_range_bounds_the_state():
    rnn = ROAFRNN(2, 16, beta=0.05, seed=0)
    lo, hi = rnn.vgp_output_range((-1.0, 1.0))
    assert lo == -hi and hi == pytest.approx(16**0.5)  # sqrt(n) * beta / (1 - alpha)
    out, _ = rnn(10 * torch.randn(400, 8, 2))
    assert out.abs().max() <= hi
    assert ROAFRNN(2, 16, beta=1.0).vgp_output_range(None) == (-1.0, 1.0)  # alpha = 0: tanh's range
    assert ROAFRNN(2, 16, nonlinearity="relu").vgp_output_range(None) is None
