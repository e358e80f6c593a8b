"""The activation catalogue: which elementwise activations vgpcompile knows, in every spelling.

torch.fx records one activation in three node kinds: `call_module` (``nn.Tanh()``),
`call_function` (``torch.tanh``, ``F.gelu(x, approximate="tanh")``) and `call_method`
(``x.tanh()``; ``F.tanh`` and ``F.sigmoid`` are recorded as methods too). Each catalogue
entry lists all of its spellings, in-place ones included, and knows its output range and
its kinks (for quadrature); passes keep their own per-activation tables, and a user's
activation can carry per-pass ``hints`` (e.g. ``arp_L=3``). Users add their own with
:func:`register_activation`.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ActivationError, did_you_mean
from .lookup import attribute, submodule

_INF = math.inf
_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717


def _const(value: Any, params: Mapping[str, Any]) -> Any:
    return value


def fixed(value: Any) -> Callable[[Mapping[str, Any]], Any]:
    """A parameter-independent ``output_range`` or ``kinks`` that still pickles (no lambda)."""
    return functools.partial(_const, value)


@dataclass(frozen=True)
class Activation:
    """One elementwise activation kind.

    ``fn(x, **params)`` computes it out of place. ``output_range(params)`` gives (lo, hi),
    with infinities where unbounded; ``kinks(params)`` the points where its derivative
    jumps (quadrature splits there); ``hints`` per-pass values named ``<pass>_<option>``
    (a user activation's ``arp_L``), read only by that pass. The built-in entries hold only
    module-level callables, so modules that keep an Activation (GPN) pickle.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    output_range: Callable[[Mapping[str, Any]], tuple[float, float]] = fixed((-_INF, _INF))
    kinks: Callable[[Mapping[str, Any]], tuple[float, ...]] = fixed(())
    family: str = ""
    hints: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def bounded(self, params: Mapping[str, Any]) -> bool:
        lo, hi = self.output_range(params)
        return math.isfinite(lo) and math.isfinite(hi)

    def describe(self, params: Mapping[str, Any]) -> str:
        """``leaky_relu(negative_slope=0.2)``: the kind plus the parameters that differ."""
        diff = {k: v for k, v in params.items() if self.defaults.get(k) != v}
        if not diff:
            return self.name
        return self.name + "(" + ", ".join(f"{k}={v!r}" for k, v in sorted(diff.items())) + ")"


@dataclass(frozen=True)
class Spelling:
    """How one node kind spells an activation: which node arguments are which parameters."""

    kind: str
    argnames: tuple[str, ...] = ()
    inplace: bool = False


def _hardtanh_range(p: Mapping[str, Any]) -> tuple[float, float]:
    return float(p["min_val"]), float(p["max_val"])


def _leaky_range(p: Mapping[str, Any]) -> tuple[float, float]:
    return (-_INF if p["negative_slope"] > 0 else 0.0), _INF


def _alpha_range(p: Mapping[str, Any]) -> tuple[float, float]:
    return -float(p["alpha"]), _INF


def _softplus_kinks(p: Mapping[str, Any]) -> tuple[float, ...]:
    return (float(p["threshold"]) / float(p["beta"]),)  # softplus turns linear above threshold / beta


def _hardtanh_kinks(p: Mapping[str, Any]) -> tuple[float, ...]:
    return float(p["min_val"]), float(p["max_val"])


def _builtin_catalogue() -> list[Activation]:
    """The built-in activations. ``fn`` is torch's own function: each accepts the parameters
    as keyword arguments.
    """
    at_zero = fixed((0.0,))
    return [
        Activation("tanh", torch.tanh, output_range=fixed((-1.0, 1.0))),
        Activation("sigmoid", torch.sigmoid, output_range=fixed((0.0, 1.0))),
        Activation(
            "hardtanh",
            F.hardtanh,
            defaults={"min_val": -1.0, "max_val": 1.0},
            output_range=_hardtanh_range,
            kinks=_hardtanh_kinks,
        ),
        Activation("softsign", F.softsign, output_range=fixed((-1.0, 1.0))),
        Activation("arctan", torch.atan, output_range=fixed((-math.pi / 2, math.pi / 2))),
        Activation("relu", F.relu, output_range=fixed((0.0, _INF)), kinks=at_zero, family="relu"),
        Activation("relu6", F.relu6, output_range=fixed((0.0, 6.0)), kinks=fixed((0.0, 6.0)), family="relu"),
        Activation(
            "leaky_relu",
            F.leaky_relu,
            defaults={"negative_slope": 0.01},
            output_range=_leaky_range,
            kinks=at_zero,
            family="relu",
        ),
        Activation("elu", F.elu, defaults={"alpha": 1.0}, output_range=_alpha_range, kinks=at_zero),
        Activation("selu", F.selu, output_range=fixed((-_SELU_SCALE * _SELU_ALPHA, _INF)), kinks=at_zero),
        Activation("celu", F.celu, defaults={"alpha": 1.0}, output_range=_alpha_range, kinks=at_zero),
        Activation(
            "gelu", F.gelu, defaults={"approximate": "none"}, output_range=fixed((-0.17, _INF)), family="gelu"
        ),
        Activation("silu", F.silu, output_range=fixed((-0.2785, _INF))),
        Activation("mish", F.mish, output_range=fixed((-0.3089, _INF))),
        Activation("hardswish", F.hardswish, output_range=fixed((-0.375, _INF)), kinks=fixed((-3.0, 3.0))),
        Activation("hardsigmoid", F.hardsigmoid, output_range=fixed((0.0, 1.0)), kinks=fixed((-3.0, 3.0))),
        Activation(
            "softplus",
            F.softplus,
            defaults={"beta": 1.0, "threshold": 20.0},
            output_range=fixed((0.0, _INF)),
            kinks=_softplus_kinks,
        ),
    ]


def _builtin_modules() -> dict[type[nn.Module], tuple[str, tuple[str, ...]]]:
    """Module class -> (kind, attributes holding its parameters). Exact classes only."""
    return {
        nn.Tanh: ("tanh", ()),
        nn.Sigmoid: ("sigmoid", ()),
        nn.Hardtanh: ("hardtanh", ("min_val", "max_val")),
        nn.Softsign: ("softsign", ()),
        nn.ReLU: ("relu", ()),
        nn.ReLU6: ("relu6", ()),
        nn.LeakyReLU: ("leaky_relu", ("negative_slope",)),
        nn.ELU: ("elu", ("alpha",)),
        nn.SELU: ("selu", ()),
        nn.CELU: ("celu", ("alpha",)),
        nn.GELU: ("gelu", ("approximate",)),
        nn.SiLU: ("silu", ()),
        nn.Mish: ("mish", ()),
        nn.Softplus: ("softplus", ("beta", "threshold")),
        nn.Hardswish: ("hardswish", ()),
        nn.Hardsigmoid: ("hardsigmoid", ()),
    }


def _builtin_functions() -> dict[Any, Spelling]:
    """call_function targets. Positional argument names follow torch's own signatures."""
    nn_c = torch._C._nn
    table: dict[Any, Spelling] = {
        torch.tanh: Spelling("tanh"),
        torch.tanh_: Spelling("tanh", inplace=True),
        torch.sigmoid: Spelling("sigmoid"),
        torch.sigmoid_: Spelling("sigmoid", inplace=True),
        F.hardtanh: Spelling("hardtanh", ("min_val", "max_val", "inplace")),
        nn_c.hardtanh_: Spelling("hardtanh", ("min_val", "max_val"), inplace=True),
        F.softsign: Spelling("softsign"),
        torch.atan: Spelling("arctan"),
        torch.arctan: Spelling("arctan"),
        torch.atan_: Spelling("arctan", inplace=True),
        torch.arctan_: Spelling("arctan", inplace=True),
        F.relu: Spelling("relu", ("inplace",)),
        torch.relu: Spelling("relu"),
        torch.relu_: Spelling("relu", inplace=True),
        F.relu6: Spelling("relu6", ("inplace",)),
        F.leaky_relu: Spelling("leaky_relu", ("negative_slope", "inplace")),
        nn_c.leaky_relu_: Spelling("leaky_relu", ("negative_slope",), inplace=True),
        F.elu: Spelling("elu", ("alpha", "inplace")),
        nn_c.elu_: Spelling("elu", ("alpha",), inplace=True),
        F.selu: Spelling("selu", ("inplace",)),
        torch.selu: Spelling("selu"),
        torch.selu_: Spelling("selu", inplace=True),
        F.celu: Spelling("celu", ("alpha", "inplace")),
        torch.celu: Spelling("celu", ("alpha",)),
        torch.celu_: Spelling("celu", ("alpha",), inplace=True),
        F.gelu: Spelling("gelu", ("approximate",)),
        F.silu: Spelling("silu", ("inplace",)),
        F.mish: Spelling("mish", ("inplace",)),
        F.softplus: Spelling("softplus", ("beta", "threshold")),
        F.hardswish: Spelling("hardswish", ("inplace",)),
        F.hardsigmoid: Spelling("hardsigmoid", ("inplace",)),
        nn_c.hardswish_: Spelling("hardswish", inplace=True),
        nn_c.hardsigmoid_: Spelling("hardsigmoid", inplace=True),
    }
    if hasattr(nn_c, "gelu") and nn_c.gelu is not F.gelu:
        table[nn_c.gelu] = Spelling("gelu", ("approximate",))
    return table


def _builtin_methods() -> dict[str, Spelling]:
    methods = {"tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "atan": "arctan", "arctan": "arctan"}
    table = {m: Spelling(k) for m, k in methods.items()}
    table.update({m + "_": Spelling(k, inplace=True) for m, k in methods.items()})
    return table


@dataclass(frozen=True)
class Match:
    """An fx node recognised as an activation: its kind, parameters and spelling."""

    activation: Activation
    params: dict[str, Any]
    spelling: str  # "module" | "function" | "method"
    inplace: bool
    reason: str = ""  # non-empty: recognised, but the parameters are not constants


class Catalogue:
    """Activation kinds by name, and the lookup from fx nodes and modules to them."""

    def __init__(self) -> None:
        self.kinds: dict[str, Activation] = {a.name: a for a in _builtin_catalogue()}
        self.modules = _builtin_modules()
        self.functions = _builtin_functions()
        self.methods = _builtin_methods()
        # user Python functions: the tracer must record them as one call, not trace inside
        self.wrap_functions: tuple[Callable, ...] = ()

    def get(self, name: str) -> Activation:
        try:
            return self.kinds[name]
        except KeyError:
            raise ActivationError(f"unknown activation kind {name!r}." + did_you_mean(name, self.kinds)) from None

    def register(
        self,
        activation: Activation,
        *,
        modules: Mapping[type[nn.Module], Sequence[str]] | Sequence[type[nn.Module]] = (),
        functions: Mapping[Any, Sequence[str]] | Sequence[Any] = (),
        methods: Sequence[str] = (),
    ) -> Activation:
        if not isinstance(activation, Activation):
            raise ActivationError(f"register() takes an Activation, got {type(activation).__name__}")
        self.kinds[activation.name] = activation
        mods = modules if isinstance(modules, Mapping) else {m: () for m in modules}
        for cls, attrs in mods.items():
            self.modules[cls] = (activation.name, tuple(attrs))
        funcs = functions if isinstance(functions, Mapping) else {f: () for f in functions}
        for fn, argnames in funcs.items():
            self.functions[fn] = Spelling(activation.name, tuple(argnames))
            if isinstance(fn, types.FunctionType) and not fn.__module__.startswith("torch"):
                self.wrap_functions += (fn,)
        for m in methods:
            self.methods[m] = Spelling(activation.name)
        return activation

    def plain_call(self, name: str, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        """An out-of-place function computing activation ``name`` with ``params``: (target, kwargs)."""
        act = self.get(name)
        for target, spelling in self.functions.items():
            if spelling.kind == name and not spelling.inplace and set(act.defaults) <= set(spelling.argnames):
                return target, {k: params[k] for k in act.defaults}
        return None

    def match_module(self, module: nn.Module) -> Match | None:
        entry = self.modules.get(type(module))
        if entry is None:
            return None
        kind, attrs = entry
        act = self.kinds[kind]
        params = dict(act.defaults)
        params.update({a: getattr(module, a) for a in attrs})
        return Match(act, params, "module", bool(attribute(module, "inplace", False)))

    def match_node(self, node: torch.fx.Node, root: nn.Module) -> Match | None:
        if node.op == "call_module":
            try:
                return self.match_module(submodule(root, str(node.target)))
            except AttributeError:
                return None
        if node.op == "call_function":
            spelling = _lookup(self.functions, node.target)
        elif node.op == "call_method":
            spelling = self.methods.get(str(node.target))
        else:
            return None
        if spelling is None:
            return None
        return self._match_call(node, spelling)

    def _match_call(self, node: torch.fx.Node, spelling: Spelling) -> Match:
        act = self.kinds[spelling.kind]
        given = dict(zip(spelling.argnames, node.args[1:]))
        given.update(node.kwargs)
        inplace = spelling.inplace or bool(given.pop("inplace", False) is True)
        params = dict(act.defaults)
        unknown = sorted(set(given) - set(act.defaults))
        reason = f"unexpected argument(s) {unknown}" if unknown else ""
        for key in act.defaults:
            if key in given:
                if isinstance(given[key], torch.fx.Node):
                    reason = f"argument {key!r} is computed at run time, not a constant"
                params[key] = given[key]
        kind = "method" if node.op == "call_method" else "function"
        return Match(act, params, kind, inplace, reason)


def _lookup(table: Mapping[Any, Spelling], target: Any) -> Spelling | None:
    try:
        return table.get(target)
    except TypeError:  # unhashable targets cannot be activations
        return None


DEFAULT = Catalogue()
BUILTIN_KINDS = frozenset(DEFAULT.kinds)


def register_activation(
    name: str,
    fn: Callable[..., torch.Tensor],
    *,
    modules: Mapping[type[nn.Module], Sequence[str]] | Sequence[type[nn.Module]] = (),
    functions: Mapping[Any, Sequence[str]] | Sequence[Any] = (),
    methods: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
    output_range: tuple[float, float] = (-_INF, _INF),
    kinks: Sequence[float] = (),
    catalogue: Catalogue | None = None,
    **hints: Any,
) -> Activation:
    """Teach vgpcompile a new elementwise activation.

    ``fn(x, **params)`` must compute it out of place and elementwise; ``modules`` maps
    module classes to the attribute names holding its parameters (or lists classes
    without parameters), ``functions`` maps callables to their positional parameter
    names after the input, ``methods`` lists Tensor method names. Declare ``kinks``
    (points where the derivative jumps) so GPN quadrature stays exact to 1e-6. Further
    keyword arguments are per-pass hints named ``<pass>_<option>``, e.g. ``arp_L=3`` (the
    ARP rotation target for this activation).
    """
    _check_hints(hints)
    act = Activation(
        name,
        fn,
        defaults=dict(defaults or {}),
        output_range=fixed(tuple(float(v) for v in output_range)),
        kinks=fixed(tuple(float(k) for k in kinks)),
        hints=dict(hints),
    )
    return (catalogue or DEFAULT).register(act, modules=modules, functions=functions, methods=methods)


def _check_hints(hints: Mapping[str, Any]) -> None:
    """A hint must name a registered pass (``arp_L``): a typo is an error, not a silent no-op."""
    from .registry import REGISTRY

    for key in hints:
        owner = key.split("_", 1)[0]
        if owner not in REGISTRY or "_" not in key:
            raise ActivationError(
                f"register_activation() got an unexpected keyword {key!r}: extra keywords are per-pass hints "
                "named <pass>_<option>, <pass> a registered pass." + did_you_mean(owner, REGISTRY)
            )
