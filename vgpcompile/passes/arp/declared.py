"""arp for affine layers of other libraries declared with ``register_affine`` (core/affine.py),
e.g. transformers' ``Conv1D`` in GPT-2 (weight stored (in, out), ``x @ W + b``).

The rotated layer is the same module object's data under a subclass of its own class that
multiplies the output by rho per output unit (the same rho as ``AutoRotLinear``: modules.py's
``unit_rho`` on the (out, in) view of the weight). It keeps the parameters, their names and
shapes, so an original state_dict still loads; ``fold()`` gives the declared class back with
rho folded into the weight and bias (freeze).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ...core.affine import AffineSpec, declared
from .modules import unit_rho

_CLASSES: dict[type, type] = {}


def rotatable(module: nn.Module) -> str | None:
    """Why a declared affine ``module`` cannot be rotated, or None."""
    spec = declared(module)
    weight = getattr(module, spec.weight, None) if spec else None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return f"{type(module).__name__} holds no 2-d weight {spec.weight if spec else 'weight'!r}"
    return None


def rotate_declared(module: nn.Module, *, L: float, q: float, eps: float, floor: float) -> nn.Module:
    """``module`` (a declared affine layer) with its output rotated per unit."""
    new = copy.copy(module)
    new.__class__ = _rotated_class(type(module))
    new._parameters = dict(module._parameters)
    new.L, new.q, new.eps, new.floor = float(L), float(q), float(eps), float(floor)
    return new


class AutoRotDeclared:
    """Mixed in before the declared class: output * rho, rho from the weights in every step."""

    vgp_pass = "arp"
    vgp_applied = ("arp",)
    _vgp_base: type = nn.Module

    def _spec(self) -> AffineSpec:
        return declared(self)

    def _out_in(self) -> torch.Tensor:
        spec = self._spec()
        weight = getattr(self, spec.weight)
        return weight.t() if spec.layout == "in_out" else weight

    def _bias(self) -> torch.Tensor | None:
        spec = self._spec()
        return getattr(self, spec.bias, None) if spec.bias else None

    def rho(self) -> torch.Tensor:
        return unit_rho(self._out_in(), self._bias(), q=self.q, L=self.L, eps=self.eps, floor=self.floor)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        z = super().forward(*args, **kwargs)
        return z * self.rho().to(z.dtype)

    def fold(self) -> nn.Module:
        """The declared class again, rho folded into its weight and bias."""
        spec, base = self._spec(), self._vgp_base
        plain = copy.copy(self)
        plain.__class__ = base
        plain._parameters = dict(self._parameters)
        for attr in ("L", "q", "eps", "floor"):
            plain.__dict__.pop(attr, None)
        with torch.no_grad():
            rho = self.rho()
            weight = getattr(self, spec.weight)
            scale = rho.view(1, -1) if spec.layout == "in_out" else rho.view(-1, 1)
            setattr(plain, spec.weight, nn.Parameter((weight * scale).to(weight.dtype), weight.requires_grad))
            bias = self._bias()
            if bias is not None:
                setattr(plain, spec.bias, nn.Parameter((bias * rho).to(bias.dtype), bias.requires_grad))
        return plain


def _rotated_class(base: type) -> type:
    if base not in _CLASSES:
        _CLASSES[base] = type(f"AutoRot{base.__name__}", (AutoRotDeclared, base), {"_vgp_base": base})
    return _CLASSES[base]
