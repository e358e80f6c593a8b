"""The plain baseline ladder: what a practitioner would use instead of a pass.

Every comparison of a compiled model against a plain one takes the plain arm from here, so
the demo, the examples and ``diagnose`` compare against the same, strongest standard
practice: for each activation its standard initialisation (Kaiming for the ReLU family,
LeCun for SELU, Xavier/Glorot with the activation's gain for tanh and sigmoid, orthogonal
with the activation's gain, PyTorch's default), and the usual architectural fixes
(BatchNorm or LayerNorm after each hidden Linear, residual connections).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.catalogue import DEFAULT

RELU_FAMILY = ("relu", "leaky_relu", "relu6")
# torch.nn.init.calculate_gain knows these; the others get the gain of their closest kin
_GAIN_NAME = {"tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "leaky_relu": "leaky_relu", "selu": "selu"}
_GAIN_KIN = {"relu6": "relu", "gelu": "relu", "silu": "relu", "mish": "relu", "elu": "relu", "celu": "relu"}


def gain(activation: str, negative_slope: float = 0.01) -> float:
    """The gain torch recommends for ``activation`` (its closest kin where torch has none)."""
    name = _GAIN_NAME.get(activation) or _GAIN_KIN.get(activation)
    if name is None:
        return 1.0
    if name == "leaky_relu":
        return nn.init.calculate_gain(name, negative_slope)
    return nn.init.calculate_gain(name)


def standard_inits(activation: str) -> list[str]:
    """The initialisations a practitioner would try for ``activation``, the standard one first."""
    if activation in RELU_FAMILY or activation in _GAIN_KIN:
        first = "kaiming"
    elif activation == "selu":
        first = "lecun"
    else:
        first = "xavier"
    return [first] + [i for i in ("kaiming", "xavier", "lecun", "orthogonal", "default") if i != first]


@torch.no_grad()
def init_linear(layer: nn.Linear, init: str, activation: str) -> None:
    """Initialise one Linear (biases to 0, except for 'default', which keeps torch's)."""
    w = layer.weight
    if init == "default":
        layer.reset_parameters()
        return
    if init == "kaiming":
        slope = 0.01 if activation == "leaky_relu" else 0.0
        kind = "leaky_relu" if activation == "leaky_relu" else "relu"
        nn.init.kaiming_normal_(w, a=slope, nonlinearity=kind)
    elif init == "lecun":
        nn.init.normal_(w, 0.0, 1.0 / math.sqrt(w.shape[1]))
    elif init == "xavier":
        nn.init.xavier_normal_(w, gain=gain(activation))
    elif init == "orthogonal":
        nn.init.orthogonal_(w, gain=gain(activation))
    else:
        raise ValueError(f"unknown init {init!r}; use one of {standard_inits(activation)}")
    if layer.bias is not None:
        layer.bias.zero_()


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


@dataclass(frozen=True)
class Arm:
    """One plain baseline: an initialisation and optionally an architectural fix."""

    init: str
    norm: str | None = None  # None, "batch" or "layer"
    residual: bool = False

    @property
    def name(self) -> str:
        extras = [self.norm + "norm"] if self.norm else []
        extras += ["residual"] if self.residual else []
        return "+".join([self.init, *extras])


def ladder(activation: str, architectural: bool = True) -> list[Arm]:
    """The plain arms for ``activation``: every standard init, then the standard one with the
    usual architectural fixes."""
    arms = [Arm(init) for init in standard_inits(activation)]
    if architectural:
        first = standard_inits(activation)[0]
        arms += [Arm(first, norm="batch"), Arm(first, norm="layer"), Arm(first, residual=True)]
    return arms


def plain_mlp(
    activation: str, depth: int, width: int, d_in: int, d_out: int, arm: Arm = Arm("default"), seed: int = 0
) -> nn.Sequential:
    """Linear(d_in, width) + act, ``depth`` hidden blocks (Linear(width, width) [+ norm] + act,
    optionally residual), Linear(width, d_out); initialised as ``arm`` says."""
    act_cls = _module_class(activation)
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(d_in, width), act_cls()]
    for _ in range(depth):
        block: list[nn.Module] = [nn.Linear(width, width)]
        if arm.norm == "batch":
            block.append(nn.BatchNorm1d(width))
        elif arm.norm == "layer":
            block.append(nn.LayerNorm(width))
        block.append(act_cls())
        layers.append(Residual(nn.Sequential(*block)) if arm.residual else nn.Sequential(*block))
    layers.append(nn.Linear(width, d_out))
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            init_linear(m, arm.init, activation)
    return net


def _module_class(activation: str) -> Callable[[], nn.Module]:
    kind = DEFAULT.get(activation).name
    return next(cls for cls, (k, _) in DEFAULT.modules.items() if k == kind)
