"""Activations written out as formulas, and activation calls that are part of a formula.

A *formula* is a set of elementwise nodes computing ``y = f(x)`` from one tensor ``x`` with
only Python numbers besides, e.g. GPT-2's ``0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x**3)))``.
Each rule in :data:`FORMULAS` (data: an activation kind, its parameters, and the formula as
people write it, and its *structure*: the nonlinear operations it is made of, e.g. one
``tanh`` for GPT-2's GELU, one clamp for hardswish) says which activation a formula may be.
A formula is recognised as that activation when its structure is the rule's (arithmetic,
powers and squares are free; every other operation must be one the rule names, as often
as the rule names it: a ``clamp``, ``min``/``max``, ``where`` or any other op after a GELU ends
the match) and, to confirm, it computes the activation: the nodes are evaluated on a
float64 grid that covers every branch and magnitudes up to 1e5 and compared with the
catalogue's function to 1e-6, so every spelling of the same structure counts (operand
order, ``x*x*x`` or ``x**3``, ``torch.pow`` or ``**``, a rounded constant). An intermediate
value used outside the formula also ends the match. A recognised formula is ONE site of
that activation: a pass replaces the whole formula (its nodes go), never a piece of it.

An activation call whose input is a nonlinear elementwise function of some value (the
``tanh`` inside a GELU formula that is not recognised, ``relu(tanh(z))``) is not applied to
a layer's pre-activation, so it is not a site (:func:`inside_formula`). Scaling, shifting
and negating keep a pre-activation a pre-activation: ``tanh(2 * z + 1)`` is a site.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from .catalogue import Catalogue


@dataclass(frozen=True)
class Formula:
    """A rule: a formula computing activation ``kind`` with ``params``; ``text`` is how it is
    written; ``ops`` the structures it may have, each the multiset of its non-free operations
    (:func:`op_name`) as sorted (name, count) pairs."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    ops: tuple[tuple[tuple[str, int], ...], ...] = ()


def _ops(*names: str) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(Counter(names).items()))


FORMULAS: tuple[Formula, ...] = (
    Formula("gelu", {"approximate": "tanh"}, "0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x**3)))",  # GPT-2, "gelu_new"
            (_ops("tanh"),)),
    Formula("gelu", {"approximate": "none"}, "0.5*x*(1+erf(x/sqrt(2)))", (_ops("erf"),)),  # the exact GELU
    Formula("silu", {}, "x*sigmoid(x)", (_ops("sigmoid"), _ops("exp"))),  # swish; x/(1+exp(-x))
    Formula("hardswish", {}, "x*relu6(x+3)/6", (_ops("clamp"),)),  # MobileNetV3
    Formula("hardsigmoid", {}, "relu6(x+3)/6", (_ops("clamp"),)),
    Formula("mish", {}, "x*tanh(softplus(x))", (_ops("tanh", "softplus"),)),
)

# Elementwise ops a formula may contain besides catalogue activations. The first group is
# affine in its one tensor operand when the other operands are numbers.
_AFFINE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pos}
_AFFINE_FUNCTIONS |= {torch.add, torch.sub, torch.mul, torch.div, torch.true_divide, torch.neg}
_AFFINE_METHODS = {"add", "sub", "mul", "div", "true_divide", "neg", "__radd__", "__rmul__"}
_FUNCTIONS = _AFFINE_FUNCTIONS | {
    operator.pow,
    torch.pow,
    torch.exp,
    torch.erf,
    torch.sqrt,
    torch.rsqrt,
    torch.square,
    torch.reciprocal,
    torch.clamp,
    torch.clip,
    torch.abs,
    torch.log,
    torch.log1p,
    torch.expm1,
}
_METHODS = _AFFINE_METHODS | {
    "pow",
    "exp",
    "erf",
    "sqrt",
    "rsqrt",
    "square",
    "reciprocal",
    "clamp",
    "clip",
    "clamp_min",
    "clamp_max",
    "abs",
    "log",
    "log1p",
    "expm1",
}
# Operations that are free in a rule's structure: arithmetic and powers with number operands.
_FREE = {"arith", "pow"}
_POW = {operator.pow, torch.pow, torch.square, "pow", "square"}
# Clamps in all their spellings are one structural operation (hardswish: relu6(x+3),
# hardtanh(x+3, 0, 6) or clamp(x+3, 0, 6)).
_CLAMPS = {"clamp", "clip", "clamp_min", "clamp_max", "relu6", "hardtanh", "relu"}
# Dense over every branch of the rules' activations (kinks at -3, 0, 3), then magnitudes up
# to 1e5 both ways: a clamp at 9 or a saturation at 1e3 is not an activation.
_BIG = torch.logspace(-1.0, 5.0, 61, dtype=torch.float64)
_GRID = torch.cat([torch.linspace(-8.0, 8.0, 321, dtype=torch.float64), _BIG, -_BIG])
_TOL = 1e-6
_MAX_NODES = 48  # a formula larger than this is not an activation written out


@dataclass
class FormulaMatch:
    """A recognised formula: ``output`` computes ``kind(params)`` of ``input``; ``nodes`` in graph order."""

    output: fx.Node
    input: fx.Node
    nodes: tuple[fx.Node, ...]
    kind: str
    params: dict[str, Any]


@dataclass
class Elementwise:
    """Which nodes of a graph are elementwise functions of one source node, and of which."""

    source: dict[fx.Node, fx.Node]
    affine: dict[fx.Node, bool]  # the node is an affine function of its source

    def cone(self, node: fx.Node) -> list[fx.Node]:
        """The elementwise nodes ``node`` is computed from (itself included), in graph order."""
        src = self.source[node]
        seen, stack = {node}, [node]
        while stack:
            for arg in stack.pop().all_input_nodes:
                if arg is not src and arg not in seen and self.source.get(arg) is src:
                    seen.add(arg)
                    stack.append(arg)
        return sorted(seen)


def elementwise(gm: fx.GraphModule, catalogue: Catalogue, cuts: frozenset[fx.Node] = frozenset()) -> Elementwise:
    """Label every elementwise node whose tensor operands all come from one source; ``cuts``
    (recognised formulas' outputs) are sources themselves."""
    source: dict[fx.Node, fx.Node] = {}
    affine: dict[fx.Node, bool] = {}
    for node in gm.graph.nodes:
        kind = None if node in cuts else _op_kind(node, gm, catalogue)
        if kind is None:
            continue
        srcs = {source.get(a, a) for a in node.all_input_nodes}
        if len(srcs) != 1:
            continue
        (src,) = srcs
        source[node] = src
        operands_affine = all(affine.get(a, a is src) for a in node.all_input_nodes)
        n_tensors = len(node.all_input_nodes)
        if kind == "affine":
            is_mul = node.target in (operator.mul, torch.mul, operator.truediv, torch.div, torch.true_divide) or (
                node.op == "call_method" and node.target in ("mul", "div", "true_divide", "__rmul__")
            )
            affine[node] = operands_affine and not (is_mul and n_tensors > 1)
        else:
            affine[node] = False
    return Elementwise(source, affine)


def _op_kind(node: fx.Node, gm: fx.GraphModule, catalogue: Catalogue) -> str | None:
    """"affine", "nonlinear", or None for a node that is not an elementwise op on numbers."""
    if not node.all_input_nodes or not _plain_constants(node):
        return None
    if node.op == "call_function" and node.target in _FUNCTIONS:
        return "affine" if node.target in _AFFINE_FUNCTIONS else "nonlinear"
    if node.op == "call_method" and node.target in _METHODS:
        return "affine" if node.target in _AFFINE_METHODS else "nonlinear"
    match = catalogue.match_node(node, gm)
    if match is not None and not match.inplace and not match.reason:
        return "nonlinear"
    return None


def _plain_constants(node: fx.Node) -> bool:
    ok = True

    def check(value: Any) -> None:
        nonlocal ok
        if not isinstance(value, (fx.Node, int, float, bool, str, type(None))):
            ok = False

    fx.node.map_aggregate((node.args, node.kwargs), check)
    return ok


@dataclass
class Analysis:
    """The formulas of a graph and the activation calls that are pieces of a formula."""

    formulas: list[FormulaMatch]
    elementwise: Elementwise
    gated: frozenset[fx.Node] = frozenset()  # nodes whose value multiplies a value of their own source

    def inside_formula(self, node: fx.Node) -> bool:
        """Whether activation ``node`` is a piece of a formula: its input is a nonlinear
        elementwise function of some value (a recognised formula's output counts:
        ``relu(gelu_formula(z))``), or its value is multiplied or divided by a value computed
        from its own input (``z * sigmoid(1.702 * z)``, CLIP's quick GELU, which no rule knows).
        core/eager.py applies the same two rules to source code."""
        return self.nonlinear(node.args[0] if node.args else None) or node in self.gated

    def nonlinear(self, src: Any) -> bool:
        """Whether value ``src`` is a nonlinear elementwise function of some other value."""
        if not isinstance(src, fx.Node):
            return False
        ew = self.elementwise
        return (src in ew.source and not ew.affine[src]) or any(f.output is src for f in self.formulas)


def analyse(gm: fx.GraphModule, catalogue: Catalogue) -> Analysis:
    """Find every formula that computes a rule's activation, outermost first; a recognised
    formula's output is then a source, so formulas applied to formulas are found too."""
    found: list[FormulaMatch] = []
    cuts: frozenset[fx.Node] = frozenset()
    while True:
        ew = elementwise(gm, catalogue, cuts)
        new = _find(gm, catalogue, ew, {n for f in found for n in f.nodes})
        if not new:
            order = {n: i for i, n in enumerate(gm.graph.nodes)}
            return Analysis(sorted(found, key=lambda f: order[f.output]), ew, _gated(ew))
        found += new
        cuts = cuts | {f.output for f in new}


def _gated(ew: Elementwise) -> frozenset[fx.Node]:
    """The nodes upstream of a product (or quotient) of two values of one source, within it."""
    out: set[fx.Node] = set()
    for node in ew.source:
        if ew.affine[node] or len(node.all_input_nodes) < 2 or not _is_product(node):
            continue
        out.update(n for n in ew.cone(node) if n is not node)
    return frozenset(out)


def _is_product(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in ("mul", "div", "true_divide", "__rmul__")
    return node.target in (operator.mul, torch.mul, operator.truediv, torch.div, torch.true_divide)


def _find(gm: fx.GraphModule, catalogue: Catalogue, ew: Elementwise, used: set[fx.Node]) -> list[FormulaMatch]:
    found: list[FormulaMatch] = []
    for node in reversed(list(gm.graph.nodes)):
        if node not in ew.source or node in used or ew.affine[node]:
            continue
        cone = ew.cone(node)
        if len(cone) < 2 or len(cone) > _MAX_NODES or used.intersection(cone) or _escapes(cone, node):
            continue
        rule = _recognise(cone, ew.source[node], gm, catalogue, structure(cone, gm, catalogue))
        if rule is not None:
            found.append(FormulaMatch(node, ew.source[node], tuple(cone), rule.kind, dict(rule.params)))
            used.update(cone)
    return found


def _escapes(cone: list[fx.Node], output: fx.Node) -> bool:
    """Whether a node of the formula other than its output is used outside it."""
    inside = set(cone)
    return any(user not in inside for n in cone if n is not output for user in n.users)


def op_name(node: fx.Node, gm: fx.GraphModule, catalogue: Catalogue) -> str:
    """The structural name of an elementwise op: "arith", "pow", "clamp", an activation
    kind ("tanh", "softplus"), or the function's own name ("erf", "exp", "abs")."""
    target = node.target
    if node.op in ("call_function", "call_method") and (target in _AFFINE_FUNCTIONS or target in _AFFINE_METHODS):
        return "arith"
    if node.op in ("call_function", "call_method") and target in _POW:
        return "pow"
    match = catalogue.match_node(node, gm)
    name = match.activation.name if match is not None else getattr(target, "__name__", str(target))
    return "clamp" if name in _CLAMPS else name


def structure(cone: list[fx.Node], gm: fx.GraphModule, catalogue: Catalogue) -> tuple[tuple[str, int], ...]:
    """The multiset of a formula's non-free operations, as a rule's ``ops`` lists them."""
    names = [op_name(n, gm, catalogue) for n in cone]
    return _ops(*(n for n in names if n not in _FREE))


def _recognise(cone: list[fx.Node], src: fx.Node, gm: fx.GraphModule, catalogue: Catalogue,
               ops: tuple[tuple[str, int], ...]) -> Formula | None:
    rules = [rule for rule in FORMULAS if ops in rule.ops and rule.kind in catalogue.kinds]
    if not rules:
        return None  # the structure of no rule: numbers never decide alone
    try:
        y = evaluate(cone, src, gm, _GRID)
    except Exception:  # an op that does not take a float64 vector: not a formula we know
        return None
    if not isinstance(y, torch.Tensor) or y.shape != _GRID.shape:
        return None
    for rule in rules:
        act = catalogue.kinds[rule.kind]
        ref = act.fn(_GRID.clone(), **{**act.defaults, **rule.params})
        if torch.allclose(y.double(), ref, rtol=_TOL, atol=_TOL, equal_nan=False):
            return rule
    return None


def evaluate(nodes: list[fx.Node], src: fx.Node, gm: fx.GraphModule, x: torch.Tensor) -> Any:
    """The value of the last of ``nodes`` (in graph order) when ``src`` takes the value ``x``."""
    env: dict[fx.Node, Any] = {src: x}
    for node in nodes:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: env[n])
        if node.op == "call_function":
            env[node] = node.target(*args, **kwargs)
        elif node.op == "call_method":
            env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            module: nn.Module = gm.get_submodule(str(node.target))
            env[node] = module(*args, **kwargs)
    return env[nodes[-1]]
