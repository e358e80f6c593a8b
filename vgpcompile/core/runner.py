"""The runner: orders passes, finds their targets, applies the default rules, and keeps
every graph valid.

For each pass and each traced region it finds the targets the pass matches, leaves alone
those the default rules exclude (selection, the model's final activation, a pass already
applied there), calls ``prepare`` once with the rest, then ``check`` and ``apply`` per
target (in the order the example inputs reach them for a ``dataflow_order`` pass), then
``finish`` once. After the pass it stamps every new node with ``meta["vgp.pass"]``, lints and
recompiles each graph, and wraps any failure with the pass, node and region. The result
is a :class:`PassResult`; nothing is written to a report behind the caller's back.
"""

from __future__ import annotations

import dataclasses
import time
import types
from collections.abc import Sequence
from typing import Any

from torch import fx, nn

from ..errors import PassError, UsageError, VgpError
from . import calibrate, facts, protocol
from .contract import BLOCK, LAYER, MODEL, SITE, Env, Pass, PassResult, Target
from .eager import find_eager_layers
from .index import SiteIndex
from .lookup import submodule
from .rewriter import Rewriter
from .select import target_of
from .targets import META_PASS, META_SITE, Block, Layer, ModelTarget, Site, find_blocks, find_layers


def order(passes: Sequence[Pass]) -> list[Pass]:
    """``passes`` in the order they run: a pass that reads a fact after every pass that
    writes it (arp's pivots read the value ranges gpn and orthogonal change), a pass that
    changes the model's inputs after all others (they find sites on the original signature),
    and passes that do not depend on each other in one fixed order (core.facts.rank), so the
    order the user lists them in never changes the result."""
    for p in passes:
        _check_facts(p)
    items = sorted(passes, key=lambda p: (p.changes_inputs, _rank(p)))
    return _stable_order(items, lambda p: p.reads, lambda p: p.writes, "run")


def lower_order(passes: Sequence[Pass]) -> list[Pass]:
    """The order freeze lowers in: the reverse of the run order, then a pass whose lowering
    reads a fact after every pass whose lowering writes it (gpn folds into plain layers,
    which arp's and orthogonal's lowerings produce)."""
    return _stable_order(list(reversed(passes)), lambda p: p.lower_reads, lambda p: p.lower_writes, "lower")


def _rank(p: Pass) -> tuple[int, str]:
    from .registry import REGISTRY

    return facts.rank(p.name, REGISTRY)


def _check_facts(p: Pass) -> None:
    for attribute in ("reads", "writes", "lower_reads", "lower_writes"):
        facts.facts(getattr(p, attribute), p.name, attribute)


def _stable_order(items: list[Pass], reads, writes, what: str) -> list[Pass]:
    out: list[Pass] = []
    pending = list(items)
    while pending:
        ready = next(
            (p for p in pending if not any(reads(p) & writes(q) for q in pending if q is not p)),
            None,
        )
        if ready is None:
            names = [p.name for p in pending]
            raise UsageError(f"passes {names} read what each other writes; no {what} order satisfies them all")
        out.append(ready)
        pending.remove(ready)
    return out


def run_pass(
    pass_: Pass,
    regions: dict[str, fx.GraphModule] | fx.GraphModule,
    env: Env | None = None,
    root: nn.Module | None = None,
    eager: Sequence[tuple[str, nn.Module]] = (),
    outputs: set[str] | frozenset[str] = frozenset(),
    index: SiteIndex | None = None,
) -> PassResult:
    """Run one pass over ``regions`` (or one bare GraphModule, which is then
    also the model target's root) and return what it did.

    ``eager`` lists the modules left eager, (name, module), whose activation modules,
    activation calls and layers are targets too (core/eager.py); ``outputs`` names eager
    activation modules known to compute the model output; ``index`` is the compile's site
    index (core/index.py; a fresh one when None)."""
    if isinstance(regions, fx.GraphModule):
        root = regions if root is None else root
        regions = {"": regions}
    env = env or Env(passes=(pass_.name,))
    index = index if index is not None else SiteIndex(regions, env.catalogue, eager, outputs)
    rewriter = Rewriter(pass_.name, index)
    env = dataclasses.replace(env, rewriter=rewriter, state=types.SimpleNamespace())
    with rewriter.active():
        result = _run(pass_, regions, env, root, eager, index)
    result.inserted = rewriter.inserted
    return result


def _run(pass_: Pass, regions, env: Env, root, eager, index: SiteIndex) -> PassResult:
    start = time.perf_counter()
    result = PassResult(pass_.name)
    before = {prefix: set(gm.graph.nodes) for prefix, gm in regions.items()}
    code_before = {prefix: code_shape(gm) for prefix, gm in regions.items()}
    candidates = _candidates(pass_, regions, env, result, index) + _eager_candidates(pass_, eager, env, result, index)
    if pass_.dataflow_order and env.observed:
        candidates.sort(key=lambda t: calibrate.position(env.observed, _key_of(t)))
    if root is not None and MODEL in pass_.matches:
        candidates.append(ModelTarget(root, regions))
    _guarded(pass_, None, "", lambda: _merge(result, pass_.prepare(candidates, env)))
    for target in candidates:
        _guarded(pass_, _node_of(target), _region_of(target), lambda t=target: _visit(pass_, t, env, result))
        if isinstance(target, ModelTarget) and target.root is not root:
            result.root = target.root
        if result.outcomes and result.outcomes[-1].changed:
            _invalidate(index, target)
    _guarded(pass_, None, "", lambda: _merge(result, pass_.finish(candidates, env)))
    for prefix, gm in regions.items():
        unchanged = same_code(code_shape(gm), code_before[prefix])
        finish = lambda gm=gm, prefix=prefix, same=unchanged: _finish_graph(gm, before[prefix], pass_.name, same)  # noqa: E731
        _guarded(pass_, None, prefix, finish)
        if len(gm.graph.nodes) != len(before[prefix]) or any(n not in before[prefix] for n in gm.graph.nodes):
            index.invalidate(prefix)  # changed by other means than the rewriter
    result.seconds = time.perf_counter() - start
    return result


def _invalidate(index: SiteIndex, target: Target) -> None:
    """A target changed: its region's sites (or eager code's, or all for the model) are stale."""
    if isinstance(target, ModelTarget):
        index.invalidate()
    elif _node_of(target) is None:
        index.invalidate_eager()
    else:
        index.invalidate(_region_of(target))


def _candidates(pass_: Pass, regions: dict[str, fx.GraphModule], env: Env, result: PassResult,
                index: SiteIndex) -> list[Target]:
    """Every target of the kinds the pass matches that survives the default rules."""
    found: list[Target] = []
    for prefix, gm in regions.items():
        targets: list[Target] = []
        sites = index.sites(prefix) if {SITE, BLOCK} & set(pass_.matches) else []
        if SITE in pass_.matches:
            targets += sites
        if BLOCK in pass_.matches:
            targets += find_blocks(sites)
        if LAYER in pass_.matches and pass_.layer_types:
            targets += find_layers(gm, prefix, pass_.layer_types)
        for target in targets:
            reason = default_skip(target, pass_, env)
            if reason:
                _record(result, target, False, reason)
            else:
                found.append(target)
    return found


def _eager_candidates(pass_: Pass, eager, env: Env, result: PassResult, index: SiteIndex) -> list[Target]:
    """The targets in eager code, for a pass that rewrites them (the others get a reason)."""
    if not eager:
        return []
    targets: list[Target] = []
    if SITE in pass_.matches:
        targets += index.eager_sites()
    if LAYER in pass_.matches and pass_.layer_types:
        targets += find_eager_layers(list(eager), pass_.layer_types)
    found: list[Target] = []
    for target in targets:
        reason = default_skip(target, pass_, env)
        if reason is None and not pass_.rewrites_eager:
            reason = f"in eager code: pass {pass_.name!r} rewrites traced graphs only"
        if reason:
            _record(result, target, False, reason)
        else:
            found.append(target)
    return found


def default_skip(target: Target, pass_: Pass, env: Env) -> str | None:
    """The reason the default rules leave ``target`` alone, or None."""
    if isinstance(target, Layer):
        reason = env.selection.decide(target_of([target.full_name], [target.module]))
        if reason:
            return reason
        if pass_.name in protocol.applied(target.module):
            return f"already rewritten by {pass_.name!r}; a pass is applied once per layer"
        return None
    site = target.site if isinstance(target, Block) else target
    if site.unusable:
        return site.unusable
    selected = site_target(site)
    reason = env.selection.decide(selected)
    if reason:
        return reason
    if site.is_output and not env.selection.explicitly_selected(selected):
        return "model output activation (left alone by default; select it by name to rewrite it)"
    if pass_.name in site.applied:
        return f"already rewritten by {pass_.name!r}; a pass is applied once per site"
    return None


def site_target(site: Site):
    names = (site.name, site.module_name, site.producer_name)
    return target_of(names, (site.module, site.producer_module), site.activation.name)


def _visit(pass_: Pass, target: Target, env: Env, result: PassResult) -> None:
    reason = pass_.check(target, env)
    if reason:
        _record(result, target, False, reason)
    else:
        _record(result, target, True, pass_.apply(target, env))


def _record(result: PassResult, target: Target, changed: bool, text: str) -> None:
    if isinstance(target, Site):
        result.record(target.name, changed, text)
    elif isinstance(target, Block):
        result.record(target.site.name, changed, text)
    elif isinstance(target, Layer):
        spelling = "layer" if target.node is not None else "eager layer"
        result.record(target.full_name, changed, text, type(target.module).__name__, spelling)
    else:
        result.record("<model>", changed, text, type(target.root).__name__, "model")


def _merge(result: PassResult, extra: PassResult | None) -> None:
    if extra is not None:
        result.outcomes += extra.outcomes
        result.warnings += extra.warnings
        result.stats.update(extra.stats)
        result.resolved.update(extra.resolved)


def _finish_graph(gm: fx.GraphModule, before: set[fx.Node], pass_name: str, unchanged: bool = False) -> None:
    for node in gm.graph.nodes:
        if node not in before:
            node.meta.setdefault(META_PASS, pass_name)
    gm.graph.lint()
    _check_targets(gm)
    if not unchanged:  # a graph whose code is as it was (modules swapped by name) keeps its code
        gm.recompile()


def code_shape(gm: fx.GraphModule) -> tuple:
    """What ``gm``'s generated code is made of: each node's name, op, target, arguments and
    annotation, in order, and the graph's code generator. Equal before and after a pass: the
    code is the same, and recompiling it (about as long as tracing it) can be skipped."""
    graph = gm.graph
    nodes = tuple((n, n.name, n.op, n.target, n.args, n.kwargs, n.type) for n in graph.nodes)
    return graph, graph._codegen, nodes


def same_code(a: tuple, b: tuple) -> bool:
    try:
        return bool(a == b)
    except Exception:  # an argument whose == is not a bool (a tensor constant): assume changed
        return False


def _key_of(target: Target) -> str:
    """The calibration key of the node where ``target`` runs."""
    node = _node_of(target)
    if node is None:  # the model, or a target in eager code (never calibrated by node)
        return ""
    return calibrate.key(_region_of(target), node.name)


def _node_of(target: Target) -> fx.Node | None:
    if isinstance(target, Block):
        return target.site.node
    return None if isinstance(target, ModelTarget) else target.node


def _region_of(target: Target) -> str:
    if isinstance(target, Block):
        return target.site.region
    return "" if isinstance(target, ModelTarget) else target.region


def _guarded(pass_: Pass, node: fx.Node | None, region: str, fn) -> Any:
    """Run ``fn``; any failure is re-raised naming the pass, the node and the region."""
    try:
        return fn()
    except PassError:
        raise
    except VgpError as err:
        raise type(err)(f"pass {pass_.name!r}{_where(node, region)}: {err}") from err
    except Exception as err:
        raise PassError(f"pass {pass_.name!r} failed{_where(node, region)}: {type(err).__name__}: {err}") from err


def _where(node: fx.Node | None, region: str) -> str:
    if node is None:
        return f" in region {region or '<root>'!r}"
    site = node.meta.get(META_SITE, "")
    return f" at node {node.name!r}" + (f" (site {site!r})" if site else "") + f" in region {region or '<root>'!r}"


def _check_targets(gm: fx.GraphModule) -> None:
    """Every call_module and get_attr target resolves (fx's lint checks this only partly)."""
    for node in gm.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            try:
                submodule(gm, str(node.target)) if node.op == "call_module" else get_attr(gm, str(node.target))
            except AttributeError as err:
                raise PassError(f"node {node.name!r} refers to missing {node.target!r}: {err}") from None


def get_attr(root: nn.Module, target: str) -> Any:
    """``root.a.b.c`` for ``target`` ``"a.b.c"``."""
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
