"""Which forward arguments a traced module is traced with as constants.

torch.fx makes every argument a Proxy, so ``if mask is None:`` silently takes the not-None
branch and a module called with ``mask=None`` then fails or computes something else. Each
traced module's arguments are decided by the first rule that applies:

1. a previous compile's decision (a checkpoint's recipe; ``load`` passes it back);
2. the calls the example inputs made (core/verify.py records them): an argument that was
   always None, or always the same bool/int/float/str, is traced as that constant (a None
   given to a module of a MASK_BUILDING_LIBRARIES package by eager code only if the graph
   does not depend on it: else the module stays eager, since that caller passes a tensor
   on other data or under torch.export); one
   that received tensors stays a Proxy; one that received None and tensors, or keyword
   arguments through ``**kwargs``, cannot be one graph and the module stays eager;
3. the model itself (the root): its ``None`` and ``bool`` defaults, as ``model(x)`` calls it;
4. a module called from eager code that the example inputs did not reach (or no example
   inputs): each ``None``/``bool`` default is also traced the other way (a Proxy, the other
   bool); an argument whose value changes the graph makes the module eager (its caller may
   pass either), the others are traced as Proxies (None defaults) or as unguarded constants
   (bools whose value does not matter).

A module split off for the class's other methods (core/region.py: timm's ``forward_head``
calls ``self.head(x, pre_logits=True)``) has callers the examples did not run: after rule 2,
each argument the examples passed as None or a bool (a None/bool default) is traced the other
way too, as in rule 4 (``other_callers``).

``**kwargs`` is traced empty. A constant argument is guarded in the graph: a call with
another value raises, naming the module and the fix, instead of computing another thing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

_CONSTANTS = (bool, int, float, str, type(None))
TENSOR = "tensor"  # a recorded decision: the argument stays a Proxy


@dataclass
class Decision:
    """How to trace one module: ``concrete`` for fx, the constants whose guard is dropped,
    the JSON record for the recipe, or why it stays eager."""

    concrete: dict[str, Any] = field(default_factory=dict)
    unguarded: set[str] = field(default_factory=set)
    record: dict[str, Any] | None = None
    reason: str = ""


def parameters(forward: Callable) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(inspect.unwrap(forward)).parameters.values())[1:]
    except (TypeError, ValueError):
        return []


def _defaults(params: list[inspect.Parameter]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in params:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            out["**" + p.name] = {}
        elif p.kind is not inspect.Parameter.VAR_POSITIONAL and (p.default is None or isinstance(p.default, bool)):
            out[p.name] = p.default
    return out


def decide(
    forward: Callable,
    name: str,
    planned: Mapping[str, Any] | None,
    calls: list | None,
    trace: Callable[[dict[str, Any]], fx.Graph],
    other_callers: bool = False,
) -> Decision:
    """The decision for module ``name`` (``""``: the root); ``trace(concrete)`` traces it once;
    ``other_callers``: code the example inputs did not run may call it (a split-off module)."""
    params = parameters(forward)
    if planned is not None:
        concrete, unguarded = _from_record(params, planned)
        return Decision(concrete, unguarded, record=dict(planned))
    if calls:
        decision = _observed(forward, params, calls)
        if not decision.reason and name != "" and _mask_building_library(forward):
            decision = _none_may_be_a_tensor(decision, trace)
        if not decision.reason and other_callers:
            decision = _both_ways(params, decision, trace)
    elif name == "":
        decision = Decision(_defaults(params))
    else:
        decision = _probe(params, trace)
    if not decision.reason:
        decision.record = _record(params, decision)
    return decision


def _record(params: list[inspect.Parameter], decision: Decision) -> dict[str, Any]:
    """The decision as JSON, for the recipe: each named argument a Proxy or a constant."""
    out: dict[str, Any] = {}
    for p in params:
        if p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        if p.name in decision.concrete:
            entry = {"value": decision.concrete[p.name]}
            if p.name in decision.unguarded:
                entry["unguarded"] = True
            out[p.name] = entry
        else:
            out[p.name] = TENSOR
    return out


def _from_record(params: list[inspect.Parameter], record: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    concrete = {"**" + p.name: {} for p in params if p.kind is inspect.Parameter.VAR_KEYWORD}
    unguarded = set()
    for key, entry in record.items():
        if entry != TENSOR:
            concrete[key] = entry["value"]
            if entry.get("unguarded"):
                unguarded.add(key)
    return concrete, unguarded


def _observed(forward: Callable, params: list[inspect.Parameter], calls: list) -> Decision:
    sig = inspect.signature(inspect.unwrap(forward))
    seen: dict[str, list[Any]] = {}
    for call in calls:
        try:
            bound = sig.bind(None, *call.args, **call.kwargs)
        except TypeError as err:
            return Decision(reason=f"its recorded call does not match its signature ({err})")
        bound.apply_defaults()
        for p in params:
            value = bound.arguments.get(p.name)
            if p.kind is inspect.Parameter.VAR_KEYWORD and value:
                keys = ", ".join(sorted(value))
                return Decision(reason=f"it is called with keyword arguments through **{p.name} ({keys}), "
                                "which torch.fx cannot trace")
            if p.kind is inspect.Parameter.VAR_POSITIONAL and value:
                return Decision(reason=f"it is called with positional arguments through *{p.name}, "
                                "which torch.fx cannot trace")
            if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                seen.setdefault(p.name, []).append(value)
    concrete = {"**" + p.name: {} for p in params if p.kind is inspect.Parameter.VAR_KEYWORD}
    for key, values in seen.items():
        constants = [v for v in values if isinstance(v, _CONSTANTS)]
        if not constants:
            continue
        elif len(constants) < len(values):
            return Decision(reason=f"it is called with None and with a tensor for {key!r}: one graph cannot take both")
        elif any(type(v) is not type(constants[0]) or v != constants[0] for v in constants):
            values = sorted(set(map(repr, constants)))
            return Decision(reason=f"it is called with different values for {key!r} ({', '.join(values)})")
        else:
            concrete[key] = constants[0]
    return Decision(concrete)


# Libraries whose eager code passes None or a tensor to a module depending on data or context
# (transformers' attention masks: None for an unpadded batch, a tensor under torch.export).
MASK_BUILDING_LIBRARIES = ("transformers",)


def _mask_building_library(forward: Callable) -> bool:
    module = getattr(inspect.unwrap(forward), "__module__", None) or ""
    return module.split(".")[0] in MASK_BUILDING_LIBRARIES


def _none_may_be_a_tensor(decision: Decision, trace: Callable[[dict[str, Any]], fx.Graph]) -> Decision:
    """Rule 2 for a module called from eager code: an argument the examples passed as None is
    traced as a Proxy when the graph does not depend on it being None (so the caller may pass a
    tensor too), and keeps the module eager when it does: eager callers decide such arguments
    from data or context (transformers builds an attention mask only under torch.export or
    when a sequence is padded), so a None guard would fail on calls the examples did not make."""
    nones = [k for k, v in decision.concrete.items() if v is None and not k.startswith("**")]
    if not nones:
        return decision
    try:
        base = trace(decision.concrete)
    except Exception:
        return decision  # the trace itself fails: capture reports it as before
    concrete = dict(decision.concrete)
    for key in nones:
        variant = {k: v for k, v in concrete.items() if k != key}
        try:
            graph = trace(variant)
        except Exception:
            graph = None
        if graph is None or not same_graph(base, graph, as_none={key}):
            return Decision(reason=(
                f"the example inputs call it with {key}=None, its graph depends on that, and its eager caller "
                f"may pass a tensor there (transformers does under torch.export and for padded batches)"
            ))
        concrete = variant
    return Decision(concrete, decision.unguarded)


def _both_ways(
    params: list[inspect.Parameter], decision: Decision, trace: Callable[[dict[str, Any]], fx.Graph]
) -> Decision:
    """Rule 4 for the None/bool arguments with None/bool defaults, in a module that other code
    calls too: one whose value changes the graph keeps the module eager (a guard would stop
    ``forward_head(x, pre_logits=True)``); the others are traced as Proxies (None) or unguarded."""
    given = decision.concrete
    keys = [p.name for p in params if p.name in given and (given[p.name] is None or isinstance(given[p.name], bool))
            and (p.default is None or isinstance(p.default, bool))]  # fmt: skip
    if not keys:
        return decision
    try:
        base = trace(decision.concrete)
    except Exception:
        return decision  # the trace itself fails: capture reports it as before
    concrete, unguarded, nones = dict(given), set(decision.unguarded), set()
    for key in keys:
        variant = {k: v for k, v in concrete.items() if k != key}
        if concrete[key] is not None:
            variant[key] = not concrete[key]
        try:
            graph = trace(variant)
        except Exception:
            graph = None
        if graph is None or not same_graph(base, graph, as_none=nones | ({key} if concrete[key] is None else set())):
            return Decision(reason=(
                f"its forward depends on {key} (the examples pass {concrete[key]!r}) and the "
                "model's other methods call it too and may pass another value: kept eager so that every call works"
            ))
        if concrete[key] is None:
            concrete, nones = variant, nones | {key}
        else:
            unguarded.add(key)
    return Decision(concrete, unguarded)


def _probe(params: list[inspect.Parameter], trace: Callable[[dict[str, Any]], fx.Graph]) -> Decision:
    """Rule 4: try every None/bool default the other way; the ones that change the graph decide."""
    base = _defaults(params)
    candidates = [k for k in base if not k.startswith("**")]
    try:
        g0 = trace(base)
    except Exception:
        g0 = None
    concrete, unguarded, relevant = dict(base), set(), []
    for key in candidates:
        variant = dict(base)
        if base[key] is None:
            del variant[key]
        else:
            variant[key] = not base[key]
        try:
            g1 = trace(variant)
        except Exception:
            g1 = None
        if g0 is None:
            if g1 is not None and base[key] is None:
                del concrete[key]  # used as a tensor without a None check: callers pass one
            continue
        if g1 is not None and same_graph(g0, g1, as_none={key} if base[key] is None else set()):
            if base[key] is None:
                del concrete[key]  # unused, or used as a value that None would take the place of
            else:
                unguarded.add(key)
        else:
            relevant.append(key)
    if relevant:
        names = ", ".join(f"{k}={base[k]!r}" for k in relevant)
        return Decision(reason=(
            f"its forward depends on whether {names} (the defaults) and nothing shows how its caller calls it; "
            "give example_inputs= to trace it as called"
        ))
    return Decision(concrete, unguarded)


def is_guard(node: fx.Node) -> str | None:
    """The argument a specialisation guard checks (``x has been specialized ...``), else None."""
    if node.op != "call_function" or len(node.args) != 2 or not isinstance(node.args[1], str):
        return None
    text = node.args[1]
    marker = " has been specialized to have value "
    return text.split(marker)[0] if marker in text else None


def drop_guards(graph: fx.Graph, names: set[str]) -> None:
    """Remove the guards on ``names`` (and the comparisons that fed them)."""
    for node in list(graph.nodes):
        if is_guard(node) in names:
            inputs = [a for a in node.all_input_nodes if a.op != "placeholder"]
            graph.erase_node(node)
            for a in inputs:
                if not a.users:
                    graph.erase_node(a)


def same_graph(a: fx.Graph, b: fx.Graph, as_none: set[str] = frozenset()) -> bool:
    """Whether two traces compute the same thing, ignoring guards and placeholder names; in
    ``b``, the arguments ``as_none`` read as None (a graph that only passes an argument on
    computes, for None, what the trace with None computes)."""
    return _signature(a) == _signature(b, as_none)


def _signature(graph: fx.Graph, as_none: set[str] = frozenset()) -> list:
    skip = set()
    nones = {n for n in graph.nodes if n.op == "placeholder" and str(n.target) in as_none}
    for node in graph.nodes:
        if is_guard(node) is not None:
            skip.add(node)
            skip.update(a for a in node.all_input_nodes if a.op != "placeholder" and len(a.users) == 1)
    for node in graph.nodes:
        if node.op == "placeholder" and (node in nones or all(u in skip for u in node.users)):
            skip.add(node)  # an argument the graph does not use (or reads as None)
    nodes = [n for n in graph.nodes if n not in skip]
    index = {n: i for i, n in enumerate(nodes)}

    def norm(value: Any) -> Any:
        if isinstance(value, fx.Node):
            return None if value in nones else ("node", index.get(value))
        if isinstance(value, (tuple, list)):
            return tuple(norm(v) for v in value)
        if isinstance(value, dict):
            return tuple((k, norm(v)) for k, v in value.items())
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape))
        return value if isinstance(value, (*_CONSTANTS, torch.dtype, torch.device)) else type(value).__name__

    def target(n: fx.Node) -> Any:
        if n.op == "placeholder":
            return ""
        if n.op == "get_attr" and str(n.target).startswith("_tensor_constant"):
            return "_tensor_constant"  # each trace numbers its constants anew
        return n.target if isinstance(n.target, str) else id(n.target)

    return [(n.op, target(n), norm(n.args), norm(n.kwargs)) for n in nodes]
