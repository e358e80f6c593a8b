"""Auto-rotating affine layers (ARP: Saromo, Villota, Villanueva 2019), by hand or from the ``arp`` pass.

Each layer computes its plain affine map z = W*x + b and returns rho * z, with one factor
per output unit (per output channel for convolutions)::

    z_Q = q * (sum of the unit's weights) + b     the pre-activation at the pivot x = q*1
    rho = L / (max(|z_Q|, floor*|q|*||w||) + eps) so that |rho * z_Q| ~= L (<= L when floored)
    q   = 2 * xmax - xmin  ("auto"), or a given xQ

rho is recomputed from the weights in every forward pass and gradients flow through it (no
detach), exactly as the reference arpkeras layers (research/arp.md §1). There are no new
parameters: the classes subclass the torch layers, so parameter names, shapes and
state_dict keys are the torch ones and ``isinstance(m, nn.Linear)`` still holds. L, q and
eps are plain attributes.

Where we differ from the reference, on purpose:

- The floor (default 0.25; ``floor=0`` is the reference formula): a unit whose pivot value
  z_Q is near 0 gets rho up to L/eps in the reference, which makes deep nets ill-conditioned
  in float32 (rewrite.py has the measurements). The floor caps rho at
  L / (floor * |q| * ||w_unit||_2), |q| * ||w_unit||_2 being the typical size of z_Q; other
  units are unchanged. The cap scales with the weights, so positive scale invariance holds.

- Convolutions take rho per output channel from the whole kernel, q * sum(kernel) + bias:
  the value at an interior position, which ignores padding. The reference runs the conv
  on a constant image with the layer's own padding, so with 'same' padding the border
  positions sum fewer taps; their z_Q can approach 0 and rho explodes there (output 15.2
  for L = 2 in research/arp.md §7). Per channel, a rotated conv is also exactly a plain
  conv with rotated weights, which is what ``fold()`` returns. ``pivot="position"`` keeps
  the reference behaviour on ``AutoRotConv1d/2d/3d`` for parity tests; it cannot be folded.
- Transposed convolutions use the same whole-kernel rule. (With stride > 1 each output
  position receives only some of the taps, so no single position sees q * sum(kernel).)
- eps is added before dividing for every layer. The reference Conv1D adds it after, which
  gives inf/NaN for a unit with z_Q = 0 (research/arp.md §1.5).
- rho is computed in float32 for float16/bfloat16 weights: L/eps = 4e5 overflows float16.

Where the rotation is applied: ``AutoRotLinear`` multiplies its output by rho (batch*out
element operations, fewer than the in*out of scaling the weight at the batch sizes MLPs
train with); the convolutions run the plain conv once with W' = rho * W and b' = rho * b,
since rho * (W x + b) = W' x + b' and the kernel is far smaller than the output map.

``fold()`` returns the exact plain torch layer with W' and b' as its parameters;
:func:`vgpcompile.freeze` calls it. The ``arp_*`` functions are the rotated forms of
``F.linear`` / ``F.conv*``; the pass calls them for functional producers and ``freeze``
folds them through their ``vgp_fold`` attribute.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.conv import _ConvTransposeNd

from ...core.lookup import set_plain
from ...errors import UsageError
from .constants import DEFAULT_FLOOR, EPS

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def pivot_q(xmin: float = 0.0, xmax: float = 1.0, xQ: float | None = None) -> float:
    """The pivot coordinate: ``xQ`` when given, else the reference's auto rule 2*xmax - xmin."""
    q = float(xQ) if xQ is not None else 2.0 * float(xmax) - float(xmin)
    if not math.isfinite(q):
        raise UsageError(f"ARP pivot q must be finite, got {q} (xmin={xmin}, xmax={xmax}, xQ={xQ})")
    return q


def check_floor(value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"ARP floor must be a finite number >= 0 (0: the reference formula), got {value!r}")
    return value


def check_positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"ARP {name} must be a positive finite number, got {value!r}")
    return value


def rotation(
    zq: torch.Tensor, L: float | torch.Tensor, eps: float, spread: torch.Tensor | None = None
) -> torch.Tensor:
    """rho = L / (max(|z_Q|, spread) + eps), in float32 at least; eps before the division keeps
    rho <= L/eps finite, ``spread`` (the floor, see :func:`spreads`) keeps it <= L/spread."""
    if zq.dtype in _LOW_PRECISION:
        zq = zq.float()
    den = zq.abs()
    if spread is not None:
        den = torch.maximum(den, spread.to(den.dtype))
    return L / (den + eps)


def spreads(norms: torch.Tensor, q: float, floor: float) -> torch.Tensor | None:
    """floor * |q| * ||w_unit||_2 per unit, or None when ``floor`` is 0 (the reference formula).

    |q| * ||w_unit||_2 is the typical size of z_Q = q * sum(w_unit) + b: for weights of
    random signs sum(w_unit) is about ||w_unit||_2 * N(0, 1). A unit whose |z_Q| falls
    below ``floor`` times that has a near-degenerate pivot; flooring it bounds rho by
    L / (floor * |q| * ||w_unit||_2), so every rotated weight row has norm at most
    L / (floor * |q|), whatever the initialisation.
    """
    return None if floor == 0 else norms * (floor * abs(q))


def unit_norms(weight: torch.Tensor, *, transposed: bool = False, groups: int = 1) -> torch.Tensor:
    """||w_unit||_2 of each output unit (layouts as :func:`unit_sums`), in float32 at least."""
    if weight.dtype in _LOW_PRECISION:
        weight = weight.float()
    return unit_sums(weight * weight, transposed=transposed, groups=groups).sqrt()


def unit_rho(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    q: float,
    L: float,
    eps: float,
    floor: float = 0.0,
    transposed: bool = False,
    groups: int = 1,
) -> torch.Tensor:
    """rho per output unit of a Linear/ConvNd or transposed conv weight."""
    zq = _pivot_values(unit_sums(weight, transposed=transposed, groups=groups), bias, q)
    spread = spreads(unit_norms(weight, transposed=transposed, groups=groups), q, floor) if floor else None
    return rotation(zq, L, eps, spread)


def _pivot_values(unit_sums: torch.Tensor, bias: torch.Tensor | None, q: float) -> torch.Tensor:
    return unit_sums * q if bias is None else torch.add(bias, unit_sums, alpha=q)


def _scaled(t: torch.Tensor, rho: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return (t.to(rho.dtype) * rho.view(shape)).to(t.dtype)


def unit_sums(weight: torch.Tensor, *, transposed: bool = False, groups: int = 1) -> torch.Tensor:
    """The sum of each output unit's weights: Linear/ConvNd (out, in, ...), transposed (in, out/groups, ...)."""
    if transposed:
        # output channel c = g * (out/groups) + j reads weight[group g's inputs, j, ...]
        return weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1).sum(dim=(1, 3)).reshape(-1)
    return weight.sum(dim=tuple(range(1, weight.dim()))) if weight.dim() > 1 else weight


def rotate_parameters(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    q: float,
    L: float,
    eps: float,
    floor: float = 0.0,
    transposed: bool = False,
    groups: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rho * W, rho * b), rho per output unit, for a Linear/ConvNd or a transposed conv weight."""
    rho = unit_rho(weight, bias, q=q, L=L, eps=eps, floor=floor, transposed=transposed, groups=groups)
    if transposed:
        cpg = weight.shape[1]
        grouped = weight.reshape(groups, weight.shape[0] // groups, cpg, -1)
        w = _scaled(grouped, rho, (groups, 1, cpg, 1)).reshape(weight.shape)
    else:
        w = _scaled(weight, rho, (-1,) + (1,) * (weight.dim() - 1))
    return w, None if bias is None else _scaled(bias, rho, (-1,))


def rotated_linear(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, q: float, L: float, eps: float,
    floor: float = 0.0, save_output: bool = True,
) -> torch.Tensor:
    """rho * (input @ W^T + b), rho per output unit as :func:`unit_rho`: ``AutoRotLinear``'s forward.

    ``save_output=False`` when the caller modifies the output in place (an in-place activation):
    the backward then takes dL/drho from the weight gradient, never from the overwritten output.

    float32/float64 run :class:`_RotatedLinear` (one autograd node, backward written out);
    float16/bfloat16 the composed ops, which keep rho in float32, and so does a call under a
    torch.func transform (vmap, jacrev, jvp, ...): those refuse a Function without vmap/jvp rules.
    """
    if weight.dtype in _LOW_PRECISION or _under_functorch():
        z = F.linear(input, weight, bias)
        return z * unit_rho(weight, bias, q=q, L=L, eps=eps, floor=floor).to(z.dtype)
    return _RotatedLinear.apply(input, weight, bias, float(q), float(L), float(eps), float(floor), bool(save_output))


def _under_functorch() -> bool:
    # dynamo traces the Function itself (and its own functorch handling): no check while compiling
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is not None


class _RotatedLinear(torch.autograd.Function):
    """The rotated Linear as one autograd node.

    Composed, the same math records about a dozen small ops per layer (each with its
    backward node, ~5 us apiece on a CPU) and saves z = x W^T + b for the product's
    backward. Here the forward is the plain Linear's matmul plus per-unit vectors, and the
    backward needs t_j = rho_j * dL/drho_j = sum_b g_bj * y_bj, which it gets either

    - from the output y, saved when it is no larger than the weight (rows <= in_features,
      the usual training batch);
    - or, for larger batches, from the weight gradient without y:
      t_j = W_j . dW_j + b_j * db_j, with dW = (g * rho)^T x, db = sum_b g * rho,

    whichever touches fewer elements in eager, where each is a pass of its own. Under
    torch.compile always the second: inductor fuses that row reduction into the pass over dW
    that adds rho's terms anyway, while t from y is one more read of y down its columns
    (256/128: 1.08 against 1.17 x the compiled plain step; equal at 1024/128). rho's own derivative is per unit: through
    |z_Q| = |q * sum(W_j) + b_j| where that term wins the max, else through the floor
    floor * |q| * ||W_j|| (``rotation``); a tie counts as |z_Q| (torch.maximum would split it).
    Both are t_j times a per-unit coefficient that depends on the weights only, so the
    forward computes the coefficients (kz, kn) and the backward is t * kz into dW's rank-1
    pivot term and db, t * kn times W_j into dW for floored units: on a CPU every small op
    costs a few microseconds, and this halves the backward's count of them.
    Not twice differentiable (``once_differentiable``): the saved per-unit vectors carry no graph.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, q, L, eps, floor, save_output):  # type: ignore[override]
        zq = weight.sum(1) * q if bias is None else torch.add(bias, weight.sum(1), alpha=q)
        mag = zq.abs()
        # inv = 1/(den + eps): rho = L * inv and dL/dden = t * (-rho / L) = -t * inv. kz, kn carry that
        # through z_Q's sign and through the floor's norm, each zero where the other term wins the max
        kn = None
        if floor:
            norms = torch.linalg.vector_norm(weight, dim=1)
            spread = norms.mul(floor * abs(q))
            off_pivot = mag < spread  # a tie counts as |z_Q| (torch.maximum's own gradient would split it)
            # maximum and masked_fill_, not where(off_pivot, spread, mag) and in-place products with the
            # mask: those measured 1.45x the plain step under torch.compile, these 1.18x (eager: the same)
            inv = torch.maximum(mag, spread).add_(eps).reciprocal_()
            kn = inv.mul(-floor * abs(q)).div_(norms).masked_fill_(~off_pivot, 0.0)  # a zero row: 0, not inf
            kz = zq.sign().mul_(inv).neg_().masked_fill_(off_pivot, 0.0)
        else:
            inv = mag.add_(eps).reciprocal_()  # mag is a fresh tensor: in place is safe
            kz = zq.sign().mul_(inv).neg_()
        rho = inv * L
        y = F.linear(x, weight, bias).mul_(rho)
        keep_y = save_output and y.numel() <= weight.numel() and not torch.compiler.is_compiling()
        ctx.save_for_backward(x, weight, bias, rho, kz, kn, y if keep_y else None)
        ctx.q, ctx.has_bias = q, bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, bias, rho, kz, kn, y = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gz = grad * rho
        gx = gz.matmul(weight) if need_x else None
        if not (need_w or need_b):
            return gx, None, None, None, None, None, None, None
        if gz.dim() != 2:  # (features,) or (batch, ..., features): every leading index is a row for dW
            gz, x, grad = gz.reshape(-1, gz.shape[-1]), x.reshape(-1, x.shape[-1]), grad.reshape(-1, gz.shape[-1])
            y = None if y is None else y.reshape(-1, y.shape[-1])
        gb = gz.sum(0) if ctx.has_bias else None
        gw = gz.t().mm(x)
        if y is not None:
            t = torch.linalg.vecdot(grad, y, dim=0)
        else:
            t = torch.linalg.vecdot(weight, gw) if gb is None else torch.linalg.vecdot(weight, gw).addcmul_(bias, gb)
        if kn is not None:
            gw.addcmul_(weight, (t * kn).unsqueeze(1))  # through ||W_j||: d||W_j|| / dW_j = W_j / ||W_j||
        gzq = t.mul_(kz)
        gw.add_(gzq.unsqueeze(1), alpha=ctx.q)  # z_Q = q * sum(W_j) + b_j: q * dL/dz_Q for every i
        if gb is not None:
            gb.add_(gzq)
        return gx, gw if need_w else None, gb if need_b else None, None, None, None, None, None


class _AutoRot:
    """What every rotated affine layer shares: the options, rho, fold()."""

    vgp_pass = "arp"
    vgp_applied = ("arp",)
    _plain: type[nn.Module]
    _transposed = False

    def __init__(
        self,
        *args: Any,
        L: float = 4.0,
        xmin: float = 0.0,
        xmax: float = 1.0,
        xQ: float | None = None,
        eps: float = EPS,
        floor: float = DEFAULT_FLOOR,
        rotate: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)  # the torch layer that follows in the MRO
        self._setup_rotation(L, xmin, xmax, xQ, eps, rotate, floor)

    def reset_parameters(self) -> None:
        # from_module and fold build on the meta device and set the parameters right after: an
        # init there changes nothing (no data, no random draws) but cost ~10% of arp's compile
        if not self.weight.is_meta:
            super().reset_parameters()

    def _setup_rotation(
        self, L: float, xmin: float, xmax: float, xQ: float | None, eps: float, rotate: bool, floor: float
    ) -> None:
        set_plain(
            self, L=check_positive("L", L), q=pivot_q(xmin, xmax, xQ), eps=check_positive("eps", eps),
            floor=check_floor(floor), rotate=bool(rotate),
        )  # fmt: skip

    def _rotation_options(self) -> dict[str, Any]:
        return dict(
            q=self.q, L=self.L, eps=self.eps, floor=self.floor, transposed=self._transposed,
            groups=getattr(self, "groups", 1),
        )  # fmt: skip

    def rotated_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(rho * W, rho * b): the weight and bias the plain op runs with."""
        return rotate_parameters(self.weight, self.bias, **self._rotation_options())

    def rho(self) -> torch.Tensor:
        """The rotation factor per output unit, shape (out_features,) / (out_channels,)."""
        return unit_rho(self.weight, self.bias, **self._rotation_options())

    def fold(self) -> nn.Module:
        """The exact plain torch layer: rho folded into its weight and bias."""
        plain = _build(self._plain, self, device="meta")
        with torch.no_grad():
            w, b = self.rotated_parameters() if self.rotate else (self.weight, self.bias)
        plain.weight = nn.Parameter(w.detach().clone(), requires_grad=self.weight.requires_grad)
        if b is not None:
            plain.bias = nn.Parameter(b.detach().clone(), requires_grad=self.bias.requires_grad)
        return plain.train(self.training)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        L: float,
        q: float,
        eps: float = EPS,
        floor: float = DEFAULT_FLOOR,
        rotate: bool = True,
        **kw: Any,
    ):
        """A rotated layer sharing ``module``'s parameter objects (no copy, same names)."""
        new = _build(cls, module, device="meta", L=L, xQ=q, eps=eps, floor=floor, rotate=rotate, **kw)
        new.weight, new.bias = module.weight, module.bias
        return new.train(module.training)

    def extra_repr(self) -> str:
        rot = f"L={self.L:g}, q={self.q:g}, eps={self.eps:g}, floor={self.floor:g}"
        rot += "" if self.rotate else ", rotate=False"
        return f"{super().extra_repr()}, {rot}"


def _build(cls: type[nn.Module], like: nn.Module, **extra: Any) -> nn.Module:
    """A fresh ``cls`` with ``like``'s layer hyper-parameters (weights on ``extra['device']``)."""
    kw: dict[str, Any] = {"bias": like.bias is not None, "dtype": like.weight.dtype, **extra}
    if isinstance(like, nn.Linear):
        return cls(like.in_features, like.out_features, **kw)
    kw.update(
        stride=like.stride,
        padding=like.padding,
        dilation=like.dilation,
        groups=like.groups,
        padding_mode=like.padding_mode,
    )
    if isinstance(like, _ConvTransposeNd):
        kw["output_padding"] = like.output_padding
    return cls(like.in_channels, like.out_channels, like.kernel_size, **kw)


class AutoRotLinear(_AutoRot, nn.Linear):
    """``nn.Linear`` whose output is rotated per unit (the reference's ``AutoRotDense``).

    ``L`` is the pivot target (4 for sigmoid, 2 for tanh); ``xmin``/``xmax`` the range of
    the inputs, giving q = 2*xmax - xmin, unless ``xQ`` is given; ``rotate=False`` is the
    plain layer.
    """

    _plain = nn.Linear
    # False where the consumer overwrites the output in place (ReLU(inplace=True)): arp sets it
    save_output = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        L: float = 4.0,
        xmin: float = 0.0,
        xmax: float = 1.0,
        xQ: float | None = None,
        eps: float = EPS,
        floor: float = DEFAULT_FLOOR,
        rotate: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            in_features, out_features, bias, L=L, xmin=xmin, xmax=xmax, xQ=xQ, eps=eps, floor=floor,
            rotate=rotate, device=device, dtype=dtype,
        )  # fmt: skip

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.rotate:
            return F.linear(input, self.weight, self.bias)
        return rotated_linear(
            input, self.weight, self.bias, q=self.q, L=self.L, eps=self.eps, floor=self.floor,
            save_output=self.save_output,
        )  # fmt: skip


class _AutoRotConv(_AutoRot):
    """Shared by AutoRotConv1d/2d/3d; ``pivot="position"`` is the reference's per-position rho."""

    def __init__(self, *args: Any, pivot: str = "channel", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if pivot not in ("channel", "position"):
            raise UsageError(f"pivot must be 'channel' or 'position', got {pivot!r}")
        self.pivot = pivot

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.rotate:
            return self._conv_forward(input, self.weight, self.bias)
        if self.pivot == "position":
            return self._reference_forward(input)
        return self._conv_forward(input, *self.rotated_parameters())

    def _reference_forward(self, input: torch.Tensor) -> torch.Tensor:
        # arpkeras: Z_Q = conv(full(q)) + b with the layer's own padding, rho per output position
        spatial = input.shape[-(len(self.kernel_size) + 1) :]
        zq = self._conv_forward(input.new_full((1, *spatial), self.q), self.weight, self.bias)
        spread = spreads(unit_norms(self.weight), self.q, self.floor)
        if spread is not None:
            spread = spread.view(1, -1, *([1] * (zq.dim() - 2)))
        rho = rotation(zq, self.L, self.eps, spread)
        return self._conv_forward(input, self.weight, self.bias) * rho.to(input.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", pivot='position'" if self.pivot == "position" else "")

    def fold(self) -> nn.Module:
        if self.pivot == "position" and self.rotate:
            raise UsageError(
                f"{type(self).__name__}(pivot='position') rotates each output position separately, which no plain "
                "conv can express; use pivot='channel' (the default) to freeze it"
            )
        return super().fold()


class AutoRotConv1d(_AutoRotConv, nn.Conv1d):
    """``nn.Conv1d`` rotated per output channel (module docstring: why per channel)."""

    _plain = nn.Conv1d


class AutoRotConv2d(_AutoRotConv, nn.Conv2d):
    """``nn.Conv2d`` rotated per output channel (module docstring: why per channel)."""

    _plain = nn.Conv2d


class AutoRotConv3d(_AutoRotConv, nn.Conv3d):
    """``nn.Conv3d`` rotated per output channel (module docstring: why per channel)."""

    _plain = nn.Conv3d


class _AutoRotConvTranspose(_AutoRot):
    _transposed = True
    _functional: Callable[..., torch.Tensor]

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if not self.rotate:
            return super().forward(input, output_size)
        dims = len(self.kernel_size)
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, dims, self.dilation
        )
        w, b = self.rotated_parameters()
        return self._functional(input, w, b, self.stride, self.padding, output_padding, self.groups, self.dilation)


class AutoRotConvTranspose1d(_AutoRotConvTranspose, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` rotated per output channel from its whole kernel."""

    _plain = nn.ConvTranspose1d
    _functional = staticmethod(F.conv_transpose1d)


class AutoRotConvTranspose2d(_AutoRotConvTranspose, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` rotated per output channel from its whole kernel."""

    _plain = nn.ConvTranspose2d
    _functional = staticmethod(F.conv_transpose2d)


class AutoRotConvTranspose3d(_AutoRotConvTranspose, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` rotated per output channel from its whole kernel."""

    _plain = nn.ConvTranspose3d
    _functional = staticmethod(F.conv_transpose3d)


ROTATED_MODULES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: AutoRotLinear,
    nn.Conv1d: AutoRotConv1d,
    nn.Conv2d: AutoRotConv2d,
    nn.Conv3d: AutoRotConv3d,
    nn.ConvTranspose1d: AutoRotConvTranspose1d,
    nn.ConvTranspose2d: AutoRotConvTranspose2d,
    nn.ConvTranspose3d: AutoRotConvTranspose3d,
}


# ---- functional producers: F.linear / F.conv* called on a module's own parameters ----


def groups_of(args: tuple, kwargs: dict) -> int:
    # F.conv_transposeNd(input, weight, bias, stride, padding, output_padding, groups, dilation)
    return int(args[3]) if len(args) > 3 else int(kwargs.get("groups", 1))


def _rotated_function(fn: Callable[..., torch.Tensor], name: str, transposed: bool) -> Callable[..., torch.Tensor]:
    def rotated(input, weight, bias=None, *args, L: float, q: float, eps: float = EPS, floor: float = 0.0,
                save_output: bool = True, **kwargs):
        if fn is F.linear:  # as AutoRotLinear: scale the output
            return rotated_linear(input, weight, bias, q=q, L=L, eps=eps, floor=floor, save_output=save_output)
        groups = groups_of(args, kwargs) if transposed else 1
        w, b = rotate_parameters(weight, bias, q=q, L=L, eps=eps, floor=floor, transposed=transposed, groups=groups)
        return fn(input, w, b, *args, **kwargs)

    rotated.__name__ = rotated.__qualname__ = name
    rotated.__doc__ = f"``{fn.__name__}`` with the ARP rotation of its weight and bias (per output unit)."
    rotated.vgp_pass = "arp"
    rotated.vgp_plain = fn
    rotated.vgp_transposed = transposed
    rotated.vgp_fold = _fold_call
    return rotated


def _fold_call(node: fx.Node, gm: fx.GraphModule) -> None:
    from .lower import fold_call  # the lowering lives with the pass's other lowering code

    fold_call(node, gm)


arp_linear = _rotated_function(F.linear, "arp_linear", False)
arp_conv1d = _rotated_function(F.conv1d, "arp_conv1d", False)
arp_conv2d = _rotated_function(F.conv2d, "arp_conv2d", False)
arp_conv3d = _rotated_function(F.conv3d, "arp_conv3d", False)
arp_conv_transpose1d = _rotated_function(F.conv_transpose1d, "arp_conv_transpose1d", True)
arp_conv_transpose2d = _rotated_function(F.conv_transpose2d, "arp_conv_transpose2d", True)
arp_conv_transpose3d = _rotated_function(F.conv_transpose3d, "arp_conv_transpose3d", True)

ROTATED_FUNCTIONS: dict[Any, Callable[..., torch.Tensor]] = {
    fn.vgp_plain: fn
    for fn in (
        arp_linear,
        arp_conv1d,
        arp_conv2d,
        arp_conv3d,
        arp_conv_transpose1d,
        arp_conv_transpose2d,
        arp_conv_transpose3d,
    )
}
