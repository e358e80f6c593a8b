"""The GPN activation a * phi(x) + b (Lu, Gould, Ajanthan: Bidirectionally Self-Normalizing Networks)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...core.catalogue import DEFAULT, Activation
from ...core.lookup import set_plain
from ...core.protocol import affine_of_range
from .constants import gpn_constants, resolve_root
from .derivatives import BackwardFromOutput, backward_from_output


class _AffineFromOutput(torch.autograd.Function):
    """y = a * phi(x) + b as one autograd node that saves y only, its backward reading
    phi'(x) from t = (y - b) / a (derivatives.py).

    Autograd's own path saves phi(x) (or x) for phi's backward besides y, which the next
    layer saves as its input anyway: one activation-sized tensor per layer more, and under
    torch.compile a store in forward and a load in backward that inductor cannot remove.
    a and b are constants here (buffers); a learnable a or b takes the plain path.
    Twice differentiable: the backward is made of differentiable ops on the saved output.

    Taken under torch.compile only, by measurement (DESIGN.md, benchmarks/step_overhead_gpn.py;
    depth-20 tanh MLP, one thread, step / plain, this vs the addcmul): compiled 1.02 vs 1.13 at
    256/128, 1.01 vs 1.06 at 1024/128, where inductor fuses the backward into one kernel; eager
    1.47 vs 1.20 at 64/32, 1.23 vs 1.13 at 256/128 (a Python Function's own cost, ~10 us a
    layer, and two more passes), so eager keeps the addcmul, which costs what a hand-written
    a * tanh + b costs. The same math either way: the forward is that addcmul (FMA on a CPU),
    the value bit for bit; the gradients differ by rounding (phi' from t = (y - b) / a).
    """

    @staticmethod
    def forward(ctx, x, a, b, fn, params, backward):  # type: ignore[override]
        y = torch.addcmul(b, fn(x, **params), a)
        ctx.save_for_backward(y)
        # a, b are constants (buffers): kept on ctx, so y is the only tensor the backward reads back
        ctx.a, ctx.b, ctx.backward_from_output = a, b, backward
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (y,), a, b = ctx.saved_tensors, ctx.a, ctx.b
        # a = 0 (a buffer zeroed by hand): y = b holds no phi(x), but dy/dx = a * phi' = 0 there, which
        # t = 0 gives; 1 / a = inf would make it 0 * inf = nan
        inv = a.reciprocal().nan_to_num_(posinf=0.0, neginf=0.0)
        t = y.sub(b).mul_(inv)
        return ctx.backward_from_output(grad, t).mul_(a), None, None, None, None, None


class GPNActivation(nn.Module):
    """``a * phi(x) + b`` with E[(a phi(z) + b)^2] = E[(a phi'(z))^2] = 1 for z ~ N(0, 1).

    ``a`` and ``b`` are non-persistent buffers (constants recomputed from the activation,
    so the state_dict keeps the original model's keys) unless ``learnable=True``, where
    they become parameters and are saved. It declares the activation it wraps, so sites and
    the nonlinear depth see through it, and its output range, a * range(phi) + b.

    With fixed a, b and an activation in derivatives.py its backward reads its own output
    (``from_output``): code that changes that output in place before backward makes autograd
    refuse the step. The pass clears ``from_output`` at such sites (and at sites in eager code);
    a module built by hand for such a consumer should set ``from_output = None``.
    """

    vgp_pass = "gpn"
    vgp_applied = ("gpn",)
    from_output: BackwardFromOutput | None = None  # a module pickled before it existed takes the plain path

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
        params = {**act.defaults, **(params or {})}
        root = resolve_root(root, act)
        a, b = gpn_constants(act, params, root)
        # phi' from the output where it is exact (derivatives.py); a learnable a may reach 0, or
        # so small that (y - b) / a is rounding: it keeps phi(x) saved (the plain path)
        from_output = None if learnable else backward_from_output(act, params)
        # one module per site: plain values set without Module.__setattr__'s checks (core/lookup.py)
        set_plain(self, activation=act, params=params, root=root, from_output=from_output)
        # scalar_tensor: the same 0-dim tensor of the default dtype as torch.tensor, at a third of its cost
        if learnable:
            self.a = nn.Parameter(torch.scalar_tensor(a))
            self.b = nn.Parameter(torch.scalar_tensor(b))
        else:
            self.register_buffer("a", torch.scalar_tensor(a), persistent=False)
            self.register_buffer("b", torch.scalar_tensor(b), persistent=False)

    @property
    def vgp_activation(self) -> tuple[Activation, dict[str, Any]]:
        return self.activation, self.params

    def vgp_output_range(self, input_range) -> tuple[float, float] | None:
        return affine_of_range(self.activation, self.params, self.a.item(), self.b.item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.from_output is not None and _saves_output(x, self.a, self.b):
            return _AffineFromOutput.apply(x, self.a, self.b, self.activation.fn, self.params, self.from_output)
        # one fused kernel for the affine part: b + phi(x) * a
        return torch.addcmul(self.b, self.activation.fn(x, **self.params), self.a)

    def extra_repr(self) -> str:
        return f"{self.activation.describe(self.params)}, a={self.a.item():.6f}, b={self.b.item():+.6f}"


def _saves_output(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> bool:
    """The Function under torch.compile where a backward will run through x only: not in eager
    (slower there, see _AffineFromOutput), not without grad, not for a learnable a or b, and not
    where the call is traced for export (torch.export, ONNX: a Python Function has no symbolic):
    those get the same value from the plain addcmul."""
    if not torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    return torch.is_grad_enabled() and x.requires_grad and not (a.requires_grad or b.requires_grad)
