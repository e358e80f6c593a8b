"""What was reported is what runs: after the passes, count the calls of every module they
inserted on one run of the example inputs.

Every change goes through the rewriter, which records the module it put in for which report
row (``Inserted``) and, for an activation rewrite (a module swapped, a call replaced or
intercepted), how to put the original back. With example inputs the compiled model runs
them once (no gradients, the random number generators forked, every buffer restored) with a
forward hook on each of those modules and on the traced regions they sit in. An activation
rewrite whose module never ran is undone: the original runs again and the row says "not
changed" and why (a call the interception cannot see, a branch the example inputs do not
take, a region its owner never calls, as transformers' MambaMixer passes its activation's
name to a kernel instead of calling ``self.act``). So the report and the model agree both
ways. Kept, with a note: a change in a traced region that never ran and holds more than the
activation (a part of the model another method calls, as a ``forward_aux``), and a change
that is not self-contained (a layer swapped with others that depend on it). The undone rows
are saved in the recipe (``capture["unrun"]``) so ``load`` undoes the same ones without
example inputs. Without example inputs (and no recipe) the rows of eager rewrites say they
are unverified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import fx, nn

from .lookup import submodule
from .report import Report
from .rewriter import Inserted

NOT_RUN_EAGER = (
    "not changed: its replacement never ran on example_inputs, so the rewrite was undone (the call sits in a "
    "branch they do not take, runs outside its module's forward, or comes from code the interception cannot see)"
)
NOT_RUN_REGION = (
    "not changed: its replacement never ran on example_inputs, so the rewrite was undone (the traced region "
    "{region!r} never ran: its owner does not call it on them, e.g. it hands the activation's name to a kernel)"
)
NOT_RUN = (
    "not changed: its replacement never ran on example_inputs, so the rewrite was undone (its owner does not "
    "call the module on them, e.g. it hands the activation's name to a kernel)"
)
NOT_RUN_SAVED = "not changed: its replacement never ran on the example inputs of the saved compile (recipe)"
NOT_REACHED = (
    "its replacement did not run on example_inputs (a path they do not take, or a part of the model that "
    "forward does not call but another method may): kept, unverified"
)
UNVERIFIED = "eager rewrite unverified: without example_inputs whether the intercepted call runs is not checked"


def count_calls(root: nn.Module, modules: Sequence[nn.Module], example_inputs: tuple) -> dict[int, int]:
    """id(module) -> how many times it ran when ``root(*example_inputs)`` ran once."""
    counts = {id(m): 0 for m in modules}
    seen: set[int] = set()
    handles = []
    for module in modules:
        if id(module) in seen:
            continue
        seen.add(id(module))
        handles.append(module.register_forward_pre_hook(lambda m, args: counts.__setitem__(id(m), counts[id(m)] + 1)))
    buffers = [(b, b.detach().clone()) for b in root.buffers()]
    devices = sorted({t.device.index for t in example_inputs if isinstance(t, torch.Tensor) and t.is_cuda})
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            root(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return counts


def check(
    report: Report,
    root: nn.Module,
    inserted: Sequence[Inserted],
    example_inputs: tuple | None,
    saved: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[str]]:
    """Correct ``report`` and the model: each activation rewrite whose module never ran is
    undone and reported not changed (see the module doc). ``saved``: the rows a recipe says
    were undone (``load``, without example inputs). Return the undone rows, by pass."""
    rows = {rec.name: rec for rec in report.sites}
    kept = [i for i in inserted if i.target in rows and rows[i.target].changed.get(i.pass_name)]
    if example_inputs is None:
        return _undo_saved(report, kept, saved or {})
    if not kept:
        return {}
    always = _always_run(root)
    if all(id(i.module) in always for i in kept):
        return {}  # nothing to count: each runs whenever the model runs (its result would be this)
    regions = {id(i.region): i.region for i in kept if i.region is not None}
    counts = count_calls(root, [i.module for i in kept] + list(regions.values()), example_inputs)
    names = {id(m): name for name, m in root.named_modules()}
    undone: dict[str, list[str]] = {}
    for item in kept:
        if counts[id(item.module)]:
            continue
        row = rows[item.target]
        if item.undo is not None and not _part_of_unrun_network(item, counts):
            item.undo()
            report.record(item.target, item.pass_name, False, _why(item, counts, names))
            undone.setdefault(item.pass_name, []).append(item.target)
        elif item.eager:
            report.record(item.target, item.pass_name, False, NOT_RUN_EAGER)
        elif NOT_REACHED not in row.notes:
            row.notes.append(NOT_REACHED)
    return undone


def _always_run(root: nn.Module) -> set[int]:
    """id() of each module a traced root calls from its graph: a graph has no branches, so
    every one runs on every call of the model (the run of :func:`count_calls` is not needed
    to see it, and costs a forward pass with a hook per module)."""
    if not isinstance(root, fx.GraphModule):
        return set()
    return {id(submodule(root, str(n.target))) for n in root.graph.nodes if n.op == "call_module"}


def _part_of_unrun_network(item: Inserted, counts: dict[int, int]) -> bool:
    """The rewrite sits in a traced region that never ran and computes more than this
    activation: a part of the model another method runs (a head, ``forward_aux``), kept."""
    region = item.region
    if region is None or counts.get(id(region)) or not isinstance(region, fx.GraphModule):
        return False
    return sum(n.op not in ("placeholder", "output", "get_attr") for n in region.graph.nodes) > 1


def _why(item: Inserted, counts: dict[int, int], names: dict[int, str]) -> str:
    if item.eager:
        return NOT_RUN_EAGER
    if item.region is not None and not counts.get(id(item.region)):
        return NOT_RUN_REGION.format(region=names.get(id(item.region), "") or "<root>")
    return NOT_RUN


def _undo_saved(report: Report, kept: Sequence[Inserted], saved: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Without example inputs: undo the rewrites the saved compile undid; the other eager
    rewrites are unverified."""
    rows = {rec.name: rec for rec in report.sites}
    undone: dict[str, list[str]] = {}
    for item in kept:
        if item.undo is not None and item.target in saved.get(item.pass_name, ()):
            item.undo()
            report.record(item.target, item.pass_name, False, NOT_RUN_SAVED)
            undone.setdefault(item.pass_name, []).append(item.target)
        elif item.eager and UNVERIFIED not in rows[item.target].notes:
            rows[item.target].notes.append(UNVERIFIED)
    return undone
