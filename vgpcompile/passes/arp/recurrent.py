"""Auto-rotating recurrent layers: ``AutoRotRNN``, ``AutoRotLSTM``, ``AutoRotGRU``.

The reference never released recurrent layers (research/arp.md §2.2), so this gate scheme
is ours. For gate g of layer l the pre-activation at step t is

    z_g = W_ig x_t + b_ig + W_hg h_{t-1} + b_hg

and it is rotated per unit by

    rho_g = L_g / (|q_x * sum(W_ig row) + q_h * sum(W_hg row) + b_ig + b_hg| + eps)

that is, z_g evaluated at the pivot x = q_x*1, h = q_h*1. L_g follows the gate's
activation (sigmoid gates 4, the tanh cell/candidate 2, a relu RNN 4: the catalogue's
``arp_L``). q_x is the pivot of the layer's input (``xmin``/``xmax``/``xQ``, as for
``AutoRotLinear``); for layers after the first the input is the previous layer's h.
q_h = 2*1 - (-1) = 3 for the tanh-bounded state of a tanh RNN, an LSTM and a GRU; a relu
RNN's state is unbounded, so there q_h must be given.

GRU's candidate n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) is not affine in h. We rotate
its whole pre-activation, rho_n * (...), and take r = 1 at the pivot (the formula above):
the reset gate only shrinks the recurrent part, so this is its largest pivot magnitude.

rho_g is constant over time steps, so rho_g * z_g = (rho_g W_ig) x + rho_g b_ig +
(rho_g W_hg) h + rho_g b_hg: rotating every step's pre-activation is the same as running
torch's own fused recurrence once on row-scaled weights. That is what ``forward`` does,
instead of a Python time loop: identical mathematics, torch's speed, and everything
``nn.LSTM`` accepts (packed sequences, unbatched input, ``batch_first``, ``num_layers``,
``bidirectional``, ``dropout``, h0) works unchanged. Gradients flow through rho.

``rotate=False`` runs the torch layer itself. ``fold()`` returns the plain torch layer with
the row-scaled weights. Parameter names, shapes and state_dict keys are torch's
(``weight_ih_l0``, ``bias_hh_l1_reverse``, ...). ``proj_size > 0`` is not supported: the
projected state's range is unknown.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...core.catalogue import DEFAULT
from ...errors import UsageError
from .constants import DEFAULT_FLOOR, EPS, TANH_STATE_Q, default_L
from .modules import check_floor, check_positive, pivot_q, rotation, unit_norms

# torch's gate order in weight_ih / weight_hh rows, and each gate's activation
GATES: dict[str, tuple[str, ...]] = {
    "LSTM": ("sigmoid", "sigmoid", "tanh", "sigmoid"),  # i, f, g, o
    "GRU": ("sigmoid", "sigmoid", "tanh"),  # r, z, n
    "RNN_TANH": ("tanh",),
    "RNN_RELU": ("relu",),
}


class _AutoRotRecurrent:
    vgp_pass = "arp"
    vgp_applied = ("arp",)
    _plain: type[nn.RNNBase]

    def __init__(
        self,
        *args: Any,
        L: float | Sequence[float] | None = None,
        xmin: float = 0.0,
        xmax: float = 1.0,
        xQ: float | None = None,
        q_h: float | None = None,
        eps: float = EPS,
        floor: float = DEFAULT_FLOOR,
        rotate: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)  # the torch class that follows in the MRO (nn.LSTM, ...)
        self._setup_rotation(L, pivot_q(xmin, xmax, xQ), q_h, eps, rotate, floor)

    def _setup_rotation(self, L, q_x: float, q_h: float | None, eps: float, rotate: bool, floor: float) -> None:
        if getattr(self, "proj_size", 0):
            raise UsageError(
                f"{type(self).__name__} does not support proj_size > 0: the projected state's range is "
                "unknown, so no pivot q_h can be inferred"
            )
        gates = GATES[self.mode]
        if L is None:
            L = tuple(default_L(DEFAULT.get(g)) for g in gates)
        elif isinstance(L, (int, float)):
            L = (L,) * len(gates)
        if len(L) != len(gates):
            raise UsageError(f"{type(self).__name__} has {len(gates)} gates {gates}; got {len(L)} values of L")
        self.gate_L = tuple(check_positive("L", v) for v in L)
        if q_h is None and self.mode == "RNN_RELU":
            raise UsageError("AutoRotRNN(nonlinearity='relu') needs q_h: the hidden state of a relu RNN is unbounded")
        self.q_x = float(q_x)
        self.q_h = TANH_STATE_Q if q_h is None else float(q_h)
        self.eps = check_positive("eps", eps)
        self.floor = check_floor(floor)
        self.rotate = bool(rotate)
        self._register_L_rows(self._flat_weights[0].device)

    def _register_L_rows(self, device: torch.device) -> None:
        rows = torch.tensor(self.gate_L, device=device).repeat_interleave(self.hidden_size)
        # a non-persistent buffer: it follows .to(device) but the state_dict keys stay torch's
        self.register_buffer("arp_L_rows", rows, persistent=False)

    def _groups(self) -> list[tuple[int, list[str]]]:
        """(layer, [weight_ih, weight_hh, bias_ih?, bias_hh?] names) per layer and direction."""
        dirs = 2 if self.bidirectional else 1
        names = self._flat_weights_names
        per = len(names) // (self.num_layers * dirs)  # torch orders them layer by layer, direction by direction
        return [(i // dirs, names[k : k + per]) for i, k in enumerate(range(0, len(names), per))]

    def rho(self, layer: int = 0, reverse: bool = False) -> torch.Tensor:
        """rho per row of ``weight_ih_l{layer}`` (gates * hidden_size values, torch's gate order)."""
        names = [
            f"{n}_l{layer}{'_reverse' if reverse else ''}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        return self._rho([n for n in names if hasattr(self, n)], layer)

    def _rho(self, names: list[str], layer: int) -> torch.Tensor:
        w_ih, w_hh, *biases = (getattr(self, n) for n in names)
        q_in = self.q_x if layer == 0 else self.q_h
        zq = torch.add(w_hh.sum(1) * self.q_h, w_ih.sum(1), alpha=q_in)
        for b in biases:
            zq = zq + b
        spread = None
        if self.floor:  # the typical |z_Q| of each row: |q_x| ||w_ih row||, |q_h| ||w_hh row|| in quadrature
            spread = torch.hypot(unit_norms(w_ih) * abs(q_in), unit_norms(w_hh) * abs(self.q_h)) * self.floor
        return rotation(zq, self.arp_L_rows, self.eps, spread)

    def rotated_weights(self) -> dict[str, torch.Tensor]:
        """Every flat weight with its rows scaled by its gate's rho."""
        out: dict[str, torch.Tensor] = {}
        for layer, names in self._groups():
            rho = self._rho(names, layer)
            for n in names:
                w = getattr(self, n)
                out[n] = (w.to(rho.dtype) * (rho[:, None] if w.dim() == 2 else rho)).to(w.dtype)
        return out

    def forward(self, input, hx=None):
        if not self.rotate:
            return super().forward(input, hx)
        # torch's forward reads the weights from _flat_weights: lend it the rotated ones for this
        # call only, so its input handling (packing, batch_first, h0 checks) is reused as is
        self._update_flat_weights()  # first, so torch's own check below sees nothing to refresh
        plain = self._flat_weights
        rotated = self.rotated_weights()
        self._flat_weights = [rotated[n] for n in self._flat_weights_names]
        try:
            with _quiet_cudnn(plain[0].is_cuda):
                return super().forward(input, hx)
        finally:
            self._flat_weights = plain

    def fold(self) -> nn.RNNBase:
        """The plain torch layer with the rotated weights."""
        plain = self._plain(**_ctor_args(self), device="meta", dtype=self._flat_weights[0].dtype)
        with torch.no_grad():
            weights = self.rotated_weights() if self.rotate else {n: getattr(self, n) for n in self._flat_weights_names}
        for n, w in weights.items():
            setattr(plain, n, nn.Parameter(w.detach().clone(), requires_grad=getattr(self, n).requires_grad))
        plain._init_flat_weights()
        return plain.train(self.training)

    @classmethod
    def from_module(
        cls,
        module: nn.RNNBase,
        *,
        L=None,
        q: float = 2.0,
        q_h: float | None = None,
        eps: float = EPS,
        floor: float = DEFAULT_FLOOR,
        rotate: bool = True,
    ):
        """A rotated layer sharing ``module``'s parameter objects (no copy, same names)."""
        new = cls(
            **_ctor_args(module),
            device="meta",
            dtype=module._flat_weights[0].dtype,
            L=L,
            xQ=q,
            q_h=q_h,
            eps=eps,
            floor=floor,
            rotate=rotate,
        )
        for n in module._flat_weights_names:
            setattr(new, n, getattr(module, n))
        new._init_flat_weights()
        new._register_L_rows(module._flat_weights[0].device)
        return new.train(module.training)

    def extra_repr(self) -> str:
        rot = f"L={self.gate_L}, q_x={self.q_x:g}, q_h={self.q_h:g}, eps={self.eps:g}, floor={self.floor:g}"
        return f"{super().extra_repr()}, {rot}" + ("" if self.rotate else ", rotate=False")


@contextlib.contextmanager
def _quiet_cudnn(on_cuda: bool):
    """cuDNN warns that weights outside its flat buffer are copied in at every call. Rotated
    weights are new tensors at every call, so that copy is expected: silence it, here only."""
    if not on_cuda:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
        yield


def _ctor_args(m: nn.RNNBase) -> dict[str, Any]:
    kw = dict(
        input_size=m.input_size,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        bias=m.bias,
        batch_first=m.batch_first,
        dropout=m.dropout,
        bidirectional=m.bidirectional,
    )
    if m.mode.startswith("RNN_"):
        kw["nonlinearity"] = m.nonlinearity
    return kw


_DOC = """``nn.{0}`` with every gate's pre-activation rotated per unit (module docstring: the scheme).

    ``L``: None (each gate's catalogue default), one number for every gate, or one per
    gate in torch's order ({1}). ``xmin``/``xmax``/``xQ``: the input's range or pivot, as
    for ``AutoRotLinear``. ``q_h``: the hidden state's pivot (default 3, for h in [-1, 1]).
    """


class AutoRotRNN(_AutoRotRecurrent, nn.RNN):
    __doc__ = _DOC.format("RNN", "one gate")
    _plain = nn.RNN


class AutoRotLSTM(_AutoRotRecurrent, nn.LSTM):
    __doc__ = _DOC.format("LSTM", "i, f, g, o")
    _plain = nn.LSTM


class AutoRotGRU(_AutoRotRecurrent, nn.GRU):
    __doc__ = _DOC.format("GRU", "r, z, n")
    _plain = nn.GRU


ROTATED_RECURRENT: dict[type[nn.Module], type[nn.Module]] = {
    nn.RNN: AutoRotRNN,
    nn.LSTM: AutoRotLSTM,
    nn.GRU: AutoRotGRU,
}
