"""The transformed activation gamma * (phi(alpha * x + beta) + delta) (DKS / TAT)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...core.catalogue import DEFAULT, Activation
from ...core.protocol import affine_of_range


def _tracing() -> bool:
    """torch.compile (inductor fuses the float constants: the tensors measured 1.17 against 1.13
    x compiled plain at 256/128) and torch.jit tracing, which the ONNX export runs under (the
    graph gets constants, no Casts), take the composed form. (is_in_onnx_export would cost 1 us
    a call, the two together 0.15.)"""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


class TATActivation(nn.Module):
    """``gamma * (phi(alpha * x + beta) + delta)`` with the constants ``dks`` derived for the
    network (kept as Python floats: the state_dict keeps the original keys, and torch.compile
    and ONNX see constants). Factors equal to 1 and shifts equal to 0 are skipped, so a
    partly folded module (freeze) costs only what is left. In eager on a CPU, a side with both
    a factor and a shift is one addcmul on 0-dim copies of the constants: a depth-20 tanh MLP's
    step measured 1.18 against 1.24 x plain at width 256, batch 128 (1.42 against 1.47 at
    64/32, 1.01 against 1.03 at 1024/32). Elsewhere the composed form: other devices (whose
    kernels were not measured here) and tensor subclasses (DTensor) that may refuse a plain
    tensor beside them. It declares the activation it wraps (sites and the nonlinear depth
    see through it) and its output range."""

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
        # the same constants as CPU float64 0-dim tensors, which promote like Python floats (the
        # result keeps x's dtype; a float64 model keeps every digit) and are no buffers (.half()
        # cannot round them): each side becomes one addcmul, one autograd node for a mul and an add
        constants = (self.alpha, self.beta, self.gamma, self.gamma * self.delta)
        self._scalars = tuple(torch.scalar_tensor(v, dtype=torch.float64, device="cpu") for v in constants)

    @property
    def vgp_activation(self) -> tuple[Activation, dict[str, Any]]:
        return self.activation, self.params

    def vgp_output_range(self, input_range) -> tuple[float, float] | None:
        return affine_of_range(self.activation, self.params, self.gamma, self.gamma * self.delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fuse = type(x) is torch.Tensor and x.device.type == "cpu" and not _tracing()
        a, b, g, gd = self._scalars
        if fuse and self.alpha != 1.0 and self.beta != 0.0:
            x = torch.addcmul(b, x, a)
        else:
            x = x * self.alpha if self.alpha != 1.0 else x
            x = x + self.beta if self.beta != 0.0 else x
        y = self.activation.fn(x, **self.params)
        if fuse and self.gamma != 1.0 and self.delta != 0.0:
            return torch.addcmul(gd, y, g)
        y = y + self.delta if self.delta != 0.0 else y
        return y * self.gamma if self.gamma != 1.0 else y

    def fold(self) -> nn.Module:
        return self  # its own inference form: one elementwise function (freeze folds what it can first)

    def extra_repr(self) -> str:
        return (f"{self.activation.describe(self.params)}, alpha={self.alpha:.6g}, beta={self.beta:+.6g}, "
                f"gamma={self.gamma:.6g}, delta={self.delta:+.6g}")  # fmt: skip
