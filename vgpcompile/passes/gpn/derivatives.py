"""phi'(z) from phi's own value t = phi(z): the activations whose backward can read GPN's output.

GPNActivation's output y = a * phi(z) + b is saved by the next layer anyway (a Linear saves
its input); autograd's default also saves phi(z) (or z) for phi's own backward. Where
phi'(z) is a function of t = phi(z) = (y - b) / a, the module saves y alone and its backward
is one elementwise pass (modules.py). "Exact" here means: t recovered from y carries the
rounding of y (about ulp(y) / |a|), and phi' must be continuous in t so that this rounding
moves phi' by no more than rounding. That rules out every kinked activation whose derivative
jumps at the kink (relu, leaky_relu, relu6, hardtanh, selu, elu with alpha != 1,
hardsigmoid): y = fl(a * t + b) maps a band of width ~ulp(b) / |a| on both sides of the
kink onto the same values, so the side (and with it phi') cannot be read back from y. (From
t itself a mask would be exact, but saving t is what autograd already does.) Non-monotone
activations (gelu, silu, mish, hardswish) have no phi'(t) at all. Those, and user-registered
activations, keep the plain addcmul. In float32/bfloat16, y's rounding is coarser than t's
own where |y| > |t|: the largest gradient error against float64 measured 1.0-2.4x the plain
path's in float32, 2.3-3.1x in bfloat16 (tests/passes/gpn/test_gpn_function.py).

Each entry takes (grad, t) and returns grad * phi'(z), as torch's own ``*_backward(grad,
output)`` kernels do (one fused op in eager where torch has one).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ...core.catalogue import Activation

BackwardFromOutput = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _tanh(grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.tanh_backward(grad, t)  # grad * (1 - t^2)


def _sigmoid(grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.sigmoid_backward(grad, t)  # grad * t * (1 - t)


def _softsign(grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return grad * (1 - t.abs()).square()  # t = z / (1 + |z|): 1 / (1 + |z|)^2 = (1 - |t|)^2


def _arctan(grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return grad * t.cos().square()  # z = tan(t): 1 / (1 + z^2) = cos(t)^2


def _elu_like(grad: torch.Tensor, t: torch.Tensor, *, alpha: float, input_scale: float) -> torch.Tensor:
    # z > 0 <=> t > 0; below, phi'(z) = input_scale * (t + alpha), which is 1 at the kink for elu(alpha=1) and celu
    return torch.ops.aten.elu_backward(grad, alpha, 1.0, input_scale, True, t)


def _softplus(grad: torch.Tensor, t: torch.Tensor, *, beta: float, threshold: float) -> torch.Tensor:
    # sigmoid(beta z) = 1 - exp(-beta t); torch is linear (phi' = 1) above the threshold, where this
    # differs from 1 by exp(-threshold) (2e-9 at the default 20: below float32's rounding)
    return grad * torch.where(t * beta > threshold, 1.0, -torch.expm1(-beta * t))


def _elu(params: Mapping[str, Any]) -> BackwardFromOutput | None:
    alpha = float(params["alpha"])
    return functools.partial(_elu_like, alpha=1.0, input_scale=1.0) if alpha == 1.0 else None  # else phi' jumps at 0


def _celu(params: Mapping[str, Any]) -> BackwardFromOutput | None:
    # celu(z) = alpha (exp(z / alpha) - 1) below 0: phi' = t / alpha + 1, 1 at 0 (torch's elu_backward
    # refuses a negative alpha on the output)
    alpha = float(params["alpha"])
    return functools.partial(_elu_like, alpha=alpha, input_scale=1.0 / alpha) if alpha > 0 else None


def _softplus_form(params: Mapping[str, Any]) -> BackwardFromOutput | None:
    beta, threshold = float(params["beta"]), float(params["threshold"])
    return functools.partial(_softplus, beta=beta, threshold=threshold) if beta > 0 else None


def _always(fn: BackwardFromOutput) -> Callable[[Mapping[str, Any]], BackwardFromOutput]:
    return functools.partial(_const, fn)


def _const(fn: BackwardFromOutput, params: Mapping[str, Any]) -> BackwardFromOutput:
    return fn


# activation function -> (its parameters -> grad * phi'(z) from (grad, t), or None where not exact).
# Keyed by the function itself, so a user activation registered under a built-in name is not taken for it.
FROM_OUTPUT: dict[Callable[..., torch.Tensor], Callable[[Mapping[str, Any]], BackwardFromOutput | None]] = {
    torch.tanh: _always(_tanh),
    torch.sigmoid: _always(_sigmoid),
    F.softsign: _always(_softsign),
    torch.atan: _always(_arctan),
    F.elu: _elu,
    F.celu: _celu,
    F.softplus: _softplus_form,
}


def backward_from_output(activation: Activation, params: Mapping[str, Any]) -> BackwardFromOutput | None:
    """``(grad, t) -> grad * phi'(z)`` for ``t = phi(z)``, or None where phi' is not a continuous
    function of phi's value (the module then keeps autograd's plain path)."""
    form = FROM_OUTPUT.get(activation.fn)
    return None if form is None else form(params)
