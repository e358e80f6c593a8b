"""The transformed activation gamma * (phi(alpha * x + beta) + delta) (DKS / TAT)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...core.catalogue import DEFAULT, Activation
from ...core.protocol import affine_of_range


class TATActivation(nn.Module):
    """``gamma * (phi(alpha * x + beta) + delta)`` with the constants ``dks`` derived for the
    network (kept as Python floats: the state_dict keeps the original keys, and torch.compile
    and ONNX see constants). Factors equal to 1 and shifts equal to 0 are skipped, so a
    partly folded module (freeze) costs only what is left. It declares the activation it
    wraps (sites and the nonlinear depth see through it) and its output range."""

    vgp_pass = "tat"
    vgp_applied = ("tat",)

    def __init__(
        self,
        activation: Activation | str,
        params: dict[str, Any] | None = None,
        *,
        alpha: float = 1.0,
        beta: float = 0.0,
        gamma: float = 1.0,
        delta: float = 0.0,
    ) -> None:
        super().__init__()
        act = DEFAULT.get(activation) if isinstance(activation, str) else activation
        self.activation = act
        self.params = {**act.defaults, **(params or {})}
        self.alpha, self.beta, self.gamma, self.delta = float(alpha), float(beta), float(gamma), float(delta)

    @property
    def vgp_activation(self) -> tuple[Activation, dict[str, Any]]:
        return self.activation, self.params

    def vgp_output_range(self, input_range) -> tuple[float, float] | None:
        return affine_of_range(self.activation, self.params, self.gamma, self.gamma * self.delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha != 1.0:
            x = x * self.alpha
        if self.beta != 0.0:
            x = x + self.beta
        y = self.activation.fn(x, **self.params)
        if self.delta != 0.0:
            y = y + self.delta
        if self.gamma != 1.0:
            y = y * self.gamma
        return y

    def fold(self) -> nn.Module:
        return self  # its own inference form: one elementwise function (freeze folds what it can first)

    def extra_repr(self) -> str:
        return (f"{self.activation.describe(self.params)}, alpha={self.alpha:.6g}, beta={self.beta:+.6g}, "
                f"gamma={self.gamma:.6g}, delta={self.delta:+.6g}")  # fmt: skip
