"""A grammar of random models for the property tests (hypothesis strategies building nn.Modules).

A model is a stem layer, a list of blocks and a head. Blocks:

- ``Dense``: affine (nn.Linear / nn.Conv2d, or ``F.linear`` / ``F.conv2d`` on the module's own
  parameters) -> optional BatchNorm -> an activation in one of its spellings (module,
  function, tensor method, in-place, or written out as a formula: tanh-GELU, erf-GELU,
  x*sigmoid(x), hardswish and hardsigmoid as formulas, mish) -> optional clamp -> optional
  dropout, with an optional residual sum when the shape allows;
- ``Branch``: two Dense blocks on the same input, summed or concatenated;
- ``Reshape``: max/avg pool (CNN) or a reshape round trip (MLP);
- ``Eager``: a module whose forward fx cannot trace (a data-dependent ``if``) and which
  calls an activation itself: straight, inside a list comprehension, inside a lambda, or
  through an activation module child.

Every model can be built in *reference* forms: ``gpn=(root,)`` replaces each activation
phi by a * phi + b with the constants of ``passes/gpn/constants.py`` (eager in-place calls
excepted), ``arp=(xQ, floor)`` rotates each affine -> activation pre-activation by the
reference formula of research/arp.md §1 (with the pass's floor). These are written here,
by hand, from the drawn structure: they do not use the compiler's site finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from vgpcompile.core.catalogue import DEFAULT
from vgpcompile.passes.arp.constants import EPS, default_L
from vgpcompile.passes.gpn.constants import gpn_constants

PARAMS = {"leaky_relu": {"negative_slope": 0.2}, "elu": {"alpha": 0.7}, "celu": {"alpha": 0.7}}
_C = math.sqrt(2 / math.pi)


def _formula_gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(_C * (x + 0.044715 * torch.pow(x, 3))))


def _formula_gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _formula_silu(x):
    return x * torch.sigmoid(x)


def _formula_hardswish(x):
    return x * F.relu6(x + 3) / 6


def _formula_hardsigmoid(x):
    return F.relu6(x + 3) / 6


def _formula_mish(x):
    return x * torch.tanh(F.softplus(x))


# formula label -> (kind, params, function written out)
FORMULAS = {
    "gelu_tanh": ("gelu", {"approximate": "tanh"}, _formula_gelu_tanh),
    "gelu_erf": ("gelu", {"approximate": "none"}, _formula_gelu_erf),
    "silu": ("silu", {}, _formula_silu),
    "hardswish": ("hardswish", {}, _formula_hardswish),
    "hardsigmoid": ("hardsigmoid", {}, _formula_hardsigmoid),
    "mish": ("mish", {}, _formula_mish),
}


@dataclass(frozen=True)
class Spelled:
    """One way to write one activation: ``how`` in module / function / method / inplace / formula."""

    kind: str
    how: str
    what: object  # module class, function, method name or formula label
    params: tuple = ()  # (name, value) pairs the call passes

    @property
    def label(self) -> str:
        name = self.what if isinstance(self.what, str) else getattr(self.what, "__name__", str(self.what))
        return f"{self.kind}:{self.how}:{name}"

    def module(self) -> nn.Module:
        return self.what(**dict(self.params)) if self.how == "module" else nn.Identity()

    def __call__(self, h: torch.Tensor, module: nn.Module) -> torch.Tensor:
        params = dict(self.params)
        if self.how == "module":
            return module(h)
        if self.how == "formula":
            return FORMULAS[self.what][2](h)
        if self.how in ("method", "inplace") and isinstance(self.what, str):
            return getattr(h, self.what)()
        if self.how == "inplace" and "inplace" in _argnames(self.what):
            return self.what(h, *params.values(), inplace=True) if not params else self.what(h, inplace=True, **params)
        return self.what(h, **params)


def _argnames(fn) -> tuple:
    spelling = DEFAULT.functions.get(fn)
    return spelling.argnames if spelling else ()


def _build_spellings() -> list[Spelled]:
    out: list[Spelled] = []
    for kind in sorted(DEFAULT.kinds):
        params = tuple(PARAMS.get(kind, {}).items())
        out += [Spelled(kind, "module", c, params) for c, (k, _) in DEFAULT.modules.items() if k == kind]
        for fn, s in DEFAULT.functions.items():
            if s.kind != kind:
                continue
            given = tuple((k, v) for k, v in params if k in s.argnames)
            if len(given) != len(params):
                continue  # this spelling cannot carry the drawn parameters
            if s.inplace:
                out.append(Spelled(kind, "inplace", fn, given))
            else:
                out.append(Spelled(kind, "function", fn, given))
                if "inplace" in s.argnames:
                    out.append(Spelled(kind, "inplace", fn, given))  # F.relu(h, inplace=True)
        if not params:
            out += [Spelled(kind, "inplace" if s.inplace else "method", m) for m, s in DEFAULT.methods.items()
                    if s.kind == kind]
    for label, (kind, params, _) in FORMULAS.items():
        out.append(Spelled(kind, "formula", label, tuple(params.items())))
    return out


SPELLINGS: list[Spelled] = _build_spellings()
FORMULA_SPELLINGS = [i for i, s in enumerate(SPELLINGS) if s.how == "formula"]


def activation_fn(kind: str, params: dict):
    """The catalogue's out-of-place function for ``kind`` with ``params`` (the reference's phi)."""
    act = DEFAULT.get(kind)
    full = {**act.defaults, **params}
    return lambda h: act.fn(h, **full), act, full


# ---- the structure ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dense:
    width: int
    spelling: int  # index into SPELLINGS
    bias: bool = True
    norm: bool = False
    dropout: bool = False
    residual: bool = False
    functional: bool = False  # F.linear / F.conv2d on the module's parameters
    clamp: float | None = None  # clamp(max=...) after the activation


@dataclass(frozen=True)
class Branch:
    left: Dense
    right: Dense
    merge: str  # "add" (right takes left's width) or "cat"


@dataclass(frozen=True)
class Reshape:
    how: str  # "max" / "avg" (CNN pools) or "round" (MLP: reshape there and back)


# eager call styles; each is a class below with the call written in its source
EAGER_STYLES = ("direct", "listcomp", "lambda", "child")
# catalogue functions an eager block may hold in ``self.fn`` (default parameters only)
EAGER_FUNCTIONS = [
    (torch.tanh, "tanh"), (torch.sigmoid, "sigmoid"), (F.relu, "relu"), (F.gelu, "gelu"), (F.silu, "silu"),
    (F.elu, "elu"), (F.softplus, "softplus"), (torch.atan, "arctan"), (F.hardswish, "hardswish"),
    (F.leaky_relu, "leaky_relu"), (F.mish, "mish"), (F.selu, "selu"),
]
_EAGER_MODULES = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU,
                  "elu": nn.ELU, "softplus": nn.Softplus, "hardswish": nn.Hardswish, "leaky_relu": nn.LeakyReLU,
                  "mish": nn.Mish, "selu": nn.SELU}


@dataclass(frozen=True)
class Eager:
    width: int
    function: int  # index into EAGER_FUNCTIONS
    style: str


@dataclass(frozen=True)
class Spec:
    conv: bool
    blocks: tuple
    seed: int = 0
    scale: float = 1.0  # the inputs' magnitude (large ones reach where formula checks stop)

    @property
    def d_in(self) -> int:
        return 3 if self.conv else 5

    def inputs(self, batch: int = 4) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + 7)
        shape = (batch, self.d_in, 4, 4) if self.conv else (batch, self.d_in)
        return (torch.rand(shape, generator=g) * 2 - 1) * self.scale


@dataclass
class Reference:
    """Which hand-applied transformation ``build`` writes into the model (none: the original)."""

    gpn: str | None = None  # the root
    arp: tuple[float, float] | None = None  # (xQ, floor)
    rotated: list = field(default_factory=list)  # names of the affine layers arp rotates (filled by build)


# ---- building -----------------------------------------------------------------------------


class Act(nn.Module):
    """Applies one drawn activation spelling (and its hand-applied reference transformation)."""

    def __init__(self, spelled: Spelled, ref: Reference | None) -> None:
        super().__init__()
        self.spelled, self.ref = spelled, ref
        self.act = spelled.module()

    def forward(self, h):
        if self.ref is not None and self.ref.gpn:
            return gpn_reference(self.spelled.kind, dict(self.spelled.params), self.ref.gpn, h)
        return self.spelled(h, self.act)


def gpn_reference(kind: str, params: dict, root: str, h: torch.Tensor) -> torch.Tensor:
    fn, act, full = activation_fn(kind, params)
    a, b = gpn_constants(act, full, root)
    return a * fn(h) + b


def arp_rho(weight: torch.Tensor, bias: torch.Tensor | None, kind: str, params: dict, xQ: float, floor: float):
    """research/arp.md §1 per output unit (a conv's unit is its whole kernel), with the pass's floor:
    z_Q = q * sum(w_unit) + b, rho = L / (max(|z_Q|, floor * |q| * ||w_unit||) + eps)."""
    w = weight.double().flatten(1)
    zq = xQ * w.sum(1) + (bias.double() if bias is not None else 0.0)
    den = zq.abs()
    if floor:
        den = torch.maximum(den, floor * abs(xQ) * w.norm(dim=1))
    L = default_L(DEFAULT.get(kind))
    return L / (den + EPS)


class DenseBlock(nn.Module):
    def __init__(self, d_in: int, spec: Dense, conv: bool, ref: Reference | None) -> None:
        super().__init__()
        self.spec, self.conv, self.ref = spec, conv, ref
        self.affine = nn.Conv2d(d_in, spec.width, 3, padding=1, bias=spec.bias) if conv else nn.Linear(
            d_in, spec.width, bias=spec.bias)
        if spec.norm:
            self.norm = (nn.BatchNorm2d if conv else nn.BatchNorm1d)(spec.width)
        self.act = Act(SPELLINGS[spec.spelling], ref)
        self.residual = spec.residual and d_in == spec.width

    def forward(self, x):
        spec = self.spec
        if spec.functional:
            w, b = self.affine.weight, self.affine.bias
            h = F.conv2d(x, w, b, padding=1) if self.conv else F.linear(x, w, b)
        else:
            h = self.affine(x)
        if self.ref is not None and self.ref.arp and not spec.norm:
            s = SPELLINGS[spec.spelling]
            rho = arp_rho(self.affine.weight, self.affine.bias, s.kind, dict(s.params), *self.ref.arp).to(h.dtype)
            h = h * (rho.view(1, -1, 1, 1) if self.conv else rho)
        if spec.norm:
            h = self.norm(h)
        h = self.act(h)
        if spec.clamp is not None:
            h = torch.clamp(h, max=spec.clamp)
        if spec.dropout:
            h = F.dropout(h, 0.1, self.training)
        return h + x if self.residual else h


class BranchBlock(nn.Module):
    def __init__(self, d_in: int, spec: Branch, conv: bool, ref: Reference | None) -> None:
        super().__init__()
        self.merge = spec.merge
        self.left = DenseBlock(d_in, spec.left, conv, ref)
        right = spec.right if spec.merge == "cat" else Dense(spec.left.width, *_rest(spec.right))
        self.right = DenseBlock(d_in, right, conv, ref)
        self.width = spec.left.width + right.width if spec.merge == "cat" else spec.left.width

    def forward(self, x):
        if self.merge == "cat":
            return torch.cat([self.left(x), self.right(x)], 1)
        return self.left(x) + self.right(x)


def _rest(d: Dense) -> tuple:
    return (d.spelling, d.bias, d.norm, d.dropout, d.residual, d.functional, d.clamp)


class ReshapeBlock(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, x):
        if self.how == "max":
            return F.max_pool2d(x, 2)
        if self.how == "avg":
            return F.avg_pool2d(x, 2)
        n = x.shape[0]
        return x.reshape(n, 1, -1).flatten(1)


class EagerBase(nn.Module):
    """fx cannot trace these (a data-dependent ``if``): they stay eager, their calls are eager sites."""

    def __init__(self, d_in: int, spec: Eager, conv: bool, ref: Reference | None) -> None:
        super().__init__()
        self.spec, self.ref, self.conv = spec, ref, conv
        self.affine = nn.Conv2d(d_in, spec.width, 1) if conv else nn.Linear(d_in, spec.width)
        self.fn, self.kind = EAGER_FUNCTIONS[spec.function]

    def reference(self, h):
        return gpn_reference(self.kind, {}, self.ref.gpn, h)

    def use_reference(self) -> bool:
        return self.ref is not None and bool(self.ref.gpn)


class EagerDirect(EagerBase):
    def forward(self, x):
        h = self.affine(x)
        if h.abs().sum() >= 0:  # always (finite inputs); fx cannot decide it
            return self.reference(h) if self.use_reference() else self.fn(h)
        return h


class EagerListcomp(EagerBase):
    def forward(self, x):
        h = self.affine(x)
        if h.abs().sum() >= 0:
            if self.use_reference():
                return self.reference(h)
            return [self.fn(t) for t in (h,)][0]
        return h


class EagerLambda(EagerBase):
    def forward(self, x):
        h = self.affine(x)
        if h.abs().sum() >= 0:
            if self.use_reference():
                return self.reference(h)
            f = lambda t: self.fn(t)
            return f(h)
        return h


class EagerChild(EagerBase):
    def __init__(self, d_in: int, spec: Eager, conv: bool, ref: Reference | None) -> None:
        super().__init__(d_in, spec, conv, ref)
        self.act = _EAGER_MODULES.get(self.kind, nn.Tanh)()
        self.kind = next(k for k, c in _EAGER_MODULES.items() if isinstance(self.act, c))

    def forward(self, x):
        h = self.affine(x)
        if h.abs().sum() >= 0:
            return self.reference(h) if self.use_reference() else self.act(h)
        return h


_EAGER = {"direct": EagerDirect, "listcomp": EagerListcomp, "lambda": EagerLambda, "child": EagerChild}


class RandomModel(nn.Module):
    def __init__(self, spec: Spec, ref: Reference | None = None) -> None:
        super().__init__()
        torch.manual_seed(spec.seed)
        self.conv = spec.conv
        width, hw = spec.d_in, 4
        blocks = []
        for b in spec.blocks:
            if isinstance(b, Dense):
                blocks.append(DenseBlock(width, b, spec.conv, ref))
                width = b.width
            elif isinstance(b, Branch):
                blocks.append(BranchBlock(width, b, spec.conv, ref))
                width = blocks[-1].width
            elif isinstance(b, Reshape):
                if spec.conv and b.how == "round" or not spec.conv and b.how != "round" or spec.conv and hw < 2:
                    continue  # only the reshapes that fit this model
                hw = hw // 2 if spec.conv else hw
                blocks.append(ReshapeBlock(b.how))
            else:
                blocks.append(_EAGER[b.style](width, b, spec.conv, ref))
                width = b.width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        if self.conv:
            x = x.mean((2, 3))
        return self.head(x)


def build(spec: Spec, ref: Reference | None = None) -> nn.Module:
    """The model of ``spec`` (weights from ``spec.seed``), in train mode; ``ref`` writes a reference form."""
    return RandomModel(spec, ref)


def reference(spec: Spec, original: nn.Module, **ref) -> nn.Module:
    """The hand-applied reference transformation of ``original`` (same weights)."""
    model = RandomModel(spec, Reference(**ref))
    model.load_state_dict(original.state_dict())
    return model.train(original.training)


def sites(spec: Spec) -> int:
    """The activation calls the drawn model makes per forward (each block's one; a branch's two)."""
    n = 0
    for b in spec.blocks:
        n += 2 if isinstance(b, Branch) else 0 if isinstance(b, Reshape) else 1
    return n


# ---- strategies ---------------------------------------------------------------------------


def dense(spellings: list[int] | None = None, clamp: bool = True, functional: bool = True, norm: bool = True):
    pool = spellings if spellings is not None else list(range(len(SPELLINGS)))
    return st.builds(
        Dense,
        width=st.sampled_from([4, 8]),
        spelling=st.sampled_from(pool),
        bias=st.booleans(),
        norm=st.booleans() if norm else st.just(False),
        dropout=st.booleans(),
        residual=st.booleans(),
        functional=st.booleans() if functional else st.just(False),
        clamp=st.one_of(st.none(), st.sampled_from([2.0, 9.0, 30.0])) if clamp else st.none(),
    )


def eager(styles=EAGER_STYLES):
    return st.builds(Eager, width=st.sampled_from([4, 8]), function=st.integers(0, len(EAGER_FUNCTIONS) - 1),
                     style=st.sampled_from(styles))


def blocks(
    spellings: list[int] | None = None,
    *,
    clamp: bool = True,
    functional: bool = True,
    norm: bool = True,
    branches: bool = True,
    eager_styles: tuple = EAGER_STYLES,
    max_blocks: int = 5,
):
    d = dense(spellings, clamp, functional, norm)
    options = [d, st.builds(Reshape, st.sampled_from(["max", "avg", "round"]))]
    if branches:
        options.append(st.builds(Branch, d, d, st.sampled_from(["add", "cat"])))
    if eager_styles:
        options.append(eager(eager_styles))
    return st.lists(st.one_of(*options), min_size=1, max_size=max_blocks).map(tuple)


def specs(spellings: list[int] | None = None, *, scale=st.sampled_from([1.0, 1.0, 30.0]), conv=st.booleans(), **kw):
    """Random model specs drawing activations from ``spellings`` (indices into SPELLINGS; all by
    default); ``kw`` as :func:`blocks` (which parts of the grammar to draw from)."""
    return st.builds(Spec, conv=conv, blocks=blocks(spellings, **kw), seed=st.integers(0, 2**16), scale=scale)
