"""Auto-rotated RNN / LSTM / GRU: torch parity with rotation off, the gate scheme against an
explicit time loop, variable and packed sequences, the pass and freeze."""

import pytest
import torch
from helpers import max_abs
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vgpcompile import UsageError, freeze, vgpcompile
from vgpcompile.nn import AutoRotGRU, AutoRotLSTM, AutoRotRNN

EPS = 1e-5
CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, batch_first=True, bias=False),
    dict(bidirectional=True, batch_first=True),
]
KINDS = [
    (nn.RNN, AutoRotRNN, dict(nonlinearity="tanh")),
    (nn.RNN, AutoRotRNN, dict(nonlinearity="relu")),
    (nn.LSTM, AutoRotLSTM, {}),
    (nn.GRU, AutoRotGRU, {}),
]
IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def _pair(torch_cls, our_cls, extra, cfg, **rot):
    ours = our_cls(3, 5, **extra, **cfg, q_h=(3.0 if extra.get("nonlinearity") == "relu" else None), **rot)
    theirs = torch_cls(3, 5, **extra, **cfg)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _grads(module, x, h0=None):
    out, h = module(x, h0)
    hs = h if isinstance(h, tuple) else (h,)
    loss = (out**2).sum() + sum((t**3).sum() for t in hs)
    return out, torch.autograd.grad(loss, [x, *module.parameters()])


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_rotate_off_matches_torch_outputs_and_gradients(kind, cfg):
    ours, theirs = _pair(*kind, cfg, rotate=False)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(4, 6, 3, requires_grad=True)
    out_a, grads_a = _grads(ours, x)
    out_b, grads_b = _grads(theirs, x)
    assert max_abs(out_a, out_b) <= 1e-5
    assert all(max_abs(a, b) <= 1e-5 for a, b in zip(grads_a, grads_b))


def reference(module, x, L_rows, q_x, q_h, rotate=True):
    """A plain time loop rotating each gate's pre-activation (seq-first, zero h0); rho is floored
    at floor * hypot(|q_in| ||w_ih row||, |q_h| ||w_hh row||)."""
    mode, H = module.mode, module.hidden_size
    dirs = 2 if module.bidirectional else 1
    inp = x
    for layer in range(module.num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(module, "weight_ih" + sfx), getattr(module, "weight_hh" + sfx)
            zeros = torch.zeros(w_ih.shape[0], dtype=x.dtype)
            b_ih = getattr(module, "bias_ih" + sfx) if module.bias else zeros
            b_hh = getattr(module, "bias_hh" + sfx) if module.bias else zeros
            q_in = q_x if layer == 0 else q_h
            zq = q_in * w_ih.sum(1) + q_h * w_hh.sum(1) + b_ih + b_hh
            spread = module.floor * torch.hypot(abs(q_in) * w_ih.norm(dim=1), abs(q_h) * w_hh.norm(dim=1))
            rho = L_rows / (torch.maximum(zq.abs(), spread) + EPS) if rotate else torch.ones_like(zq)
            seq = inp.flip(0) if d else inp
            h, c, hs = torch.zeros(x.shape[1], H, dtype=x.dtype), torch.zeros(x.shape[1], H, dtype=x.dtype), []
            for x_t in seq:
                gi, gh = x_t @ w_ih.T + b_ih, h @ w_hh.T + b_hh
                if mode == "LSTM":
                    i, f, g, o = (rho * (gi + gh)).chunk(4, 1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                elif mode == "GRU":
                    (ri, zi, ni), (rh, zh, nh), (rr, rz, rn) = gi.chunk(3, 1), gh.chunk(3, 1), rho.chunk(3)
                    r, z = torch.sigmoid(rr * (ri + rh)), torch.sigmoid(rz * (zi + zh))
                    h = (1 - z) * torch.tanh(rn * (ni + r * nh)) + z * h
                else:
                    pre = rho * (gi + gh)
                    h = torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)
                hs.append(h)
            out = torch.stack(hs)
            outs.append(out.flip(0) if d else out)
        inp = torch.cat(outs, -1)
    return inp


@pytest.mark.parametrize("cfg", [dict(), dict(num_layers=2, bidirectional=True), dict(bias=False)])
@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_gate_scheme_matches_an_explicit_time_loop(kind, cfg):
    ours, _ = _pair(*kind, cfg, xmin=-1.0, xmax=1.0)
    ours = ours.double()  # a relu state can grow to 1e9: compare in float64
    gates = {"LSTM": [4.0, 4.0, 2.0, 4.0], "GRU": [4.0, 4.0, 2.0], "RNN_TANH": [2.0], "RNN_RELU": [4.0]}[ours.mode]
    assert list(ours.gate_L) == gates and ours.q_x == 3.0
    L_rows = torch.tensor(gates, dtype=torch.float64).repeat_interleave(5)
    x = torch.rand(7, 2, 3, dtype=torch.float64) * 2 - 1
    expected = reference(ours, x, L_rows, 3.0, ours.q_h)
    torch.testing.assert_close(ours(x)[0], expected, rtol=1e-5, atol=1e-5)
    assert max_abs(ours(x)[0], reference(ours, x, L_rows, 3.0, ours.q_h, rotate=False)) > 1e-3
    # rho per gate row, as documented
    zq = 3.0 * ours.weight_ih_l0.sum(1) + ours.q_h * ours.weight_hh_l0.sum(1)
    if ours.bias:
        zq = zq + ours.bias_ih_l0 + ours.bias_hh_l0
    spread = 0.25 * torch.hypot(3.0 * ours.weight_ih_l0.norm(dim=1), abs(ours.q_h) * ours.weight_hh_l0.norm(dim=1))
    torch.testing.assert_close(ours.rho(0), L_rows / (torch.maximum(zq.abs(), spread) + EPS), rtol=1e-5, atol=1e-6)
    ours.floor = 0.0  # the unfloored formula, as the reference layers would compute it
    torch.testing.assert_close(ours.rho(0), L_rows / (zq.abs() + EPS), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours(x)[0], reference(ours, x, L_rows, 3.0, ours.q_h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_gradients_flow_through_rho(kind):
    ours, _ = _pair(*kind, dict(num_layers=2))
    ours = ours.double()
    x = torch.rand(4, 2, 3, dtype=torch.float64)
    names = [n for n, _ in ours.named_parameters()]

    def run(*params):
        return torch.func.functional_call(ours, dict(zip(names, params)), (x,))[0]

    params = tuple(p.detach().clone().requires_grad_() for p in ours.parameters())
    assert torch.autograd.gradcheck(run, params, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_variable_length_packed_and_unbatched_sequences(kind):
    ours, _ = _pair(*kind, dict(batch_first=True, bidirectional=True))
    lengths = [9, 4, 1]
    seqs = [torch.rand(n, 3) for n in lengths]
    padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    packed = pack_padded_sequence(padded, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    out, _ = ours(packed)
    unpacked, got_lengths = pad_packed_sequence(out, batch_first=True)
    assert got_lengths.tolist() == lengths
    for i, s in enumerate(seqs):  # each sequence alone, unbatched (2-D input), any length
        alone, _ = ours(s)
        assert alone.shape == (len(s), 10)
        torch.testing.assert_close(unpacked[i, : len(s)], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_fold_is_the_plain_layer_with_rotated_weights(kind):
    ours, theirs = _pair(*kind, dict(num_layers=2, bidirectional=True))
    plain = ours.fold()
    assert type(plain) is type(theirs)
    assert list(plain.state_dict()) == list(theirs.state_dict())
    x = torch.randn(5, 3, 3)
    h0 = torch.randn(4, 3, 5) * 0.5
    hx = (h0, torch.zeros_like(h0)) if ours.mode == "LSTM" else h0
    a, b = ours(x, hx), plain(x, hx)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)


class Tagger(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.embed = nn.Linear(4, 3)
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 2)

    def forward(self, x):
        out, _ = self.rnn(torch.sigmoid(self.embed(x)))
        return self.head(out)


@pytest.mark.parametrize("kind", KINDS[:1] + KINDS[2:], ids=["rnn_tanh", "lstm", "gru"])
def test_pass_swaps_recurrent_layers_and_freeze_parity(kind):
    torch_cls, our_cls, extra = kind
    model = Tagger(torch_cls(3, 5, num_layers=2, bidirectional=True, batch_first=True, **extra))
    out = vgpcompile(model, ["arp"], input_range=(0.0, 1.0))
    assert type(out.rnn) is our_cls
    row = out.vgp_report.site("rnn")
    assert row.changed["arp"] and "q_x=2 q_h=3 (x in [0, 1] from sigmoid)" in row.outcomes["arp"]
    assert list(out.state_dict()) == list(model.state_dict())
    x = torch.rand(4, 6, 4)
    frozen = freeze(out)
    assert type(frozen.rnn) is torch_cls
    assert max_abs(frozen(x), out(x)) < 1e-5
    assert max_abs(out(x), model(x)) > 1e-4


def test_pass_options_refusals_and_relu_state():
    model = Tagger(nn.RNN(3, 5, nonlinearity="relu"))
    with pytest.raises(UsageError, match="relu RNN .*'rnn'.*xQ"):
        vgpcompile(model, ["arp"], input_range=(0.0, 1.0))
    out = vgpcompile(model, ["arp"], options={"arp": {"xQ": 2.0, "L": 3.0}})
    assert out.rnn.q_x == out.rnn.q_h == 2.0 and out.rnn.gate_L == (3.0,)
    proj = vgpcompile(Tagger(nn.LSTM(3, 5, proj_size=2)), ["arp"], input_range=(0, 1))
    assert "proj_size" in proj.vgp_report.site("rnn").outcomes["arp"]
    with pytest.raises(UsageError, match="proj_size"):
        AutoRotLSTM(3, 5, proj_size=2)
    with pytest.raises(UsageError, match="needs q_h"):
        AutoRotRNN(3, 5, nonlinearity="relu")
    with pytest.raises(UsageError, match="4 gates"):
        AutoRotLSTM(3, 5, L=(1.0, 2.0))
    again = vgpcompile(vgpcompile(Tagger(nn.GRU(3, 5)), ["arp"], input_range=(0, 1)), ["arp"], input_range=(0, 1))
    assert "already rewritten" in again.vgp_report.site("rnn").outcomes["arp"]


def test_rotation_follows_the_module_to_another_dtype_and_functional_call():
    lstm = AutoRotLSTM(3, 4).double()
    x = torch.rand(5, 2, 3, dtype=torch.float64)
    assert lstm(x)[0].dtype == torch.float64
    assert "arp_L_rows" not in lstm.state_dict()
    doubled = {n: p * 2 for n, p in lstm.named_parameters()}
    swapped = torch.func.functional_call(lstm, doubled, (x,))[0]
    # positive scale invariance (I5) makes the doubled weights give (almost) the same output
    assert max_abs(swapped, lstm(x)[0]) < 1e-4
    zero = {n: torch.zeros_like(p) for n, p in lstm.named_parameters()}
    assert torch.isfinite(torch.func.functional_call(lstm, zero, (x,))[0]).all()


class Heads(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn, self.lstm = rnn, isinstance(rnn, nn.LSTM)
        self.a, self.b, self.c = nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 5)

    def forward(self, x):
        out, state = self.rnn(x)
        h = state[0] if self.lstm else state
        y = torch.tanh(self.a(out[:, -1])) + torch.sigmoid(self.b(h[-1]))
        if self.lstm:
            y = y + torch.tanh(self.c(state[1][-1]))  # an LSTM cell state: unbounded
        return y.sum(-1)


@pytest.mark.parametrize("rnn", [nn.LSTM, nn.GRU])
def test_ranges_of_recurrent_outputs_and_states(rnn):
    model = Heads(rnn(3, 5, batch_first=True))
    ignore = ["re:.*tanh_1.*"] if rnn is nn.LSTM else None
    if rnn is nn.LSTM:
        with pytest.raises(UsageError, match=r"fed by c\).*an output of LSTM 'rnn' whose range is not bounded"):
            vgpcompile(model, ["arp"], input_range=(0, 1))
    out = vgpcompile(model, ["arp"], input_range=(0, 1), ignore=ignore)
    rows = {r.name: r.outcomes["arp"] for r in out.vgp_report.sites}
    assert rows["tanh()"] == f"L=2 q=3 (x in [-1, 1] from {rnn.__name__} 'rnn' output)"
    assert rows["sigmoid()"] == f"L=4 q=3 (x in [-1, 1] from {rnn.__name__} 'rnn' output)"
    x = torch.rand(2, 4, 3)
    assert max_abs(freeze(out)(x), out(x)) < 1e-5
