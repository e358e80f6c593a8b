"""The GPN activation a * phi(x) + b (Lu, Gould, Ajanthan: Bidirectionally Self-Normalizing Networks)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...core.catalogue import DEFAULT, Activation
from ...core.protocol import affine_of_range
from .constants import gpn_constants, resolve_root


class GPNActivation(nn.Module):
    """``a * phi(x) + b`` with E[(a phi(z) + b)^2] = E[(a phi'(z))^2] = 1 for z ~ N(0, 1).

    ``a`` and ``b`` are non-persistent buffers (constants recomputed from the activation,
    so the state_dict keeps the original model's keys) unless ``learnable=True``, where
    they become parameters and are saved. It declares the activation it wraps, so sites and
    the nonlinear depth see through it, and its output range, a * range(phi) + b.
    """

    vgp_pass = "gpn"
    vgp_applied = ("gpn",)

    def __init__(
        self,
        activation: Activation | str,
        params: dict[str, Any] | None = None,
        *,
        root: str = "minus",
        learnable: bool = False,
    ) -> None:
        super().__init__()
        act = DEFAULT.get(activation) if isinstance(activation, str) else activation
        self.activation = act
        self.params = {**act.defaults, **(params or {})}
        self.root = resolve_root(root, act)
        a, b = gpn_constants(act, self.params, self.root)
        if learnable:
            self.a = nn.Parameter(torch.tensor(a))
            self.b = nn.Parameter(torch.tensor(b))
        else:
            self.register_buffer("a", torch.tensor(a), persistent=False)
            self.register_buffer("b", torch.tensor(b), persistent=False)

    @property
    def vgp_activation(self) -> tuple[Activation, dict[str, Any]]:
        return self.activation, self.params

    def vgp_output_range(self, input_range) -> tuple[float, float] | None:
        return affine_of_range(self.activation, self.params, self.a.item(), self.b.item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one fused kernel for the affine part: b + phi(x) * a
        return torch.addcmul(self.b, self.activation.fn(x, **self.params), self.a)

    def extra_repr(self) -> str:
        return f"{self.activation.describe(self.params)}, a={self.a.item():.6f}, b={self.b.item():+.6f}"
