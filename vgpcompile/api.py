"""The entry points: ``vgpcompile(model, passes=[...])`` and ``plan(...)``."""

from __future__ import annotations

import copy
import gc
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from . import __version__
from .activations import DEFAULT, Catalogue
from .analysis import nonlinear_depth
from .capture import capture
from .errors import SelectorError, UsageError, did_you_mean
from .nn import WRAPPERS
from .passes import resolve
from .pipeline import Context, Pass, run_passes
from .report import Report, SiteRecord
from .selection import Selection, target_of
from .sites import find_sites

Rules = Sequence[str] | str | None


def vgpcompile(
    model: nn.Module,
    passes: Sequence[str | Pass] | str | Pass = (),
    *,
    example_inputs: tuple | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    select: Rules = None,
    ignore: Rules = None,
    leaf: Rules = None,
    inplace: bool = False,
    input_range: tuple[float, float] | None = None,
    catalogue: Catalogue | None = None,
) -> nn.Module:
    """Compile ``model``: capture it with torch.fx, run ``passes``, return a trainable module.

    The result is a ``torch.fx.GraphModule`` (or, when the top-level forward cannot be
    traced, the model with its traceable children compiled in place). It keeps the
    original parameter names, so an original state_dict loads into it. It carries
    ``vgp_report`` (per site: what changed, or why not) and ``vgp_recipe`` (what to
    re-apply on load). ``model`` itself is left untouched unless ``inplace=True``.

    ``select`` / ``ignore`` / ``leaf`` take the rule grammar of :mod:`vgpcompile.selection`;
    ``leaf`` modules stay opaque (never traced into, never rewritten).
    """
    compiled, _ = _compile(model, passes, "compile", locals())
    return compiled


def plan(model: nn.Module, passes: Sequence[str | Pass] | str | Pass = (), **kwargs: Any) -> Report:
    """The report ``vgpcompile`` would produce, computed on a copy: ``model`` is not changed."""
    kwargs["inplace"] = False
    _, report = _compile(model, passes, "plan", kwargs)
    return report


def _compile(model: nn.Module, passes, mode: str, kw: Mapping[str, Any]) -> tuple[nn.Module, Report]:
    # A compile allocates tens of thousands of long-lived objects (fx nodes, modules); the
    # cyclic GC would walk them again and again, about a third of the compile time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _compile_unguarded(model, passes, mode, kw)
    finally:
        if enabled:
            gc.enable()


def _compile_unguarded(model: nn.Module, passes, mode: str, kw: Mapping[str, Any]) -> tuple[nn.Module, Report]:
    if not isinstance(model, nn.Module):
        raise UsageError(f"vgpcompile takes an nn.Module, got {type(model).__name__}")
    _refuse_wrapped(model)
    catalogue = kw.get("catalogue") or DEFAULT
    pass_list = resolve(passes, kw.get("options"))
    selection = Selection(kw.get("select"), kw.get("ignore"))
    _check_kinds(selection, catalogue)
    is_leaf = _leaf_predicate(kw.get("leaf"), model)
    work = model if kw.get("inplace") else copy_model(model)
    cap = capture(work, is_leaf, catalogue.wrap_functions, tuple(catalogue.modules))
    report = Report(type(model).__name__, mode, [p.name for p in pass_list], eager=cap.eager, regions=list(cap.regions))
    ctx = Context(catalogue, selection, report, WRAPPERS, kw.get("example_inputs"), kw.get("input_range"))
    known = _register_sites(cap.regions, ctx)
    report.depth_before, report.depth_exact = nonlinear_depth(cap.root, catalogue, WRAPPERS)
    run_passes(pass_list, cap.regions, ctx)
    _warn_gpn_alone(report)
    if pass_list:
        selection.check_all_matched(known)
    report.depth_after, _ = nonlinear_depth(cap.root, catalogue, WRAPPERS)
    cap.root.vgp_report = report
    cap.root.vgp_recipe = recipe(pass_list, kw)
    return cap.root, report


def _warn_gpn_alone(report: Report, min_depth: int = 10) -> None:
    """GPN's norm preservation assumes orthogonal weights (research/bsnn.md §4): under
    PyTorch's default init a deep GPN net's gradient ratio explodes."""
    if "gpn" in report.passes and "orthogonal" not in report.passes and report.changed_count("gpn"):
        if (report.depth_before or 0) >= min_depth:
            report.warnings.append(
                f"gpn without orthogonal on a stack of nonlinear depth {report.depth_before}: GPN assumes "
                "orthogonal weights, and under PyTorch's default init a deep GPN net's gradients explode; "
                "add 'orthogonal' (passes=['bsnn']) unless the weights are orthogonal already"
            )


def _register_sites(regions, ctx: Context) -> list[str]:
    """Add every site to the report; return every name a selector may use."""
    known: list[str] = []
    for prefix, gm in regions.items():
        for site in find_sites(gm, prefix, ctx.catalogue, ctx.wrappers):
            producer = f"{site.producer_kind} {site.producer_name}" if site.producer_kind else None
            ctx.report.sites.append(
                SiteRecord(site.name, site.kind, site.spelling, producer, site.is_output, list(site.notes))
            )
            known += [n for n in (site.name, site.module_name, site.producer_name) if n]
    for prefix, gm in regions.items():
        known += [prefix + name for name, _ in gm.named_modules() if name]
    return known


def recipe(passes: list[Pass], kw: Mapping[str, Any]) -> dict[str, Any]:
    """What ``load`` re-applies: passes with every option resolved, rules, versions."""
    import dataclasses

    def rules(value: Rules) -> list[str]:
        return [value] if isinstance(value, str) else list(value or [])

    return {
        "passes": [{"name": p.name, "options": dataclasses.asdict(p)} for p in passes],
        "select": rules(kw.get("select")),
        "ignore": rules(kw.get("ignore")),
        "leaf": rules(kw.get("leaf")),
        "input_range": _input_range(kw),
        "versions": {"vgpcompile": __version__, "torch": torch.__version__},
    }


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, with plain parameters and buffers cloned up front.

    Parameter.__deepcopy__ does the same clone; pre-filling the memo skips deepcopy's slow
    per-tensor path (about 40% of the copy). Tied weights stay tied through the memo.
    """
    memo: dict[int, Any] = {}
    for p in model.parameters():
        if type(p) is nn.Parameter:
            memo[id(p)] = nn.Parameter(p.detach().clone(), p.requires_grad)
    for b in model.buffers():
        if type(b) is torch.Tensor:
            memo[id(b)] = b.clone()
    return copy.deepcopy(model, memo)


def _input_range(kw: Mapping[str, Any]) -> list[float] | None:
    """The model-input range, given or seen in example_inputs, so load() needs no example."""
    if kw.get("input_range"):
        return [float(v) for v in kw["input_range"]]
    tensors = [t for t in kw.get("example_inputs") or () if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not tensors:
        return None
    return [min(float(t.min()) for t in tensors), max(float(t.max()) for t in tensors)]


def _refuse_wrapped(model: nn.Module) -> None:
    wrapped = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    if isinstance(model, wrapped) or type(model).__name__ == "OptimizedModule":
        raise UsageError(
            f"{type(model).__name__} is a wrapper: compile the bare model first, then wrap the result "
            "(DDP / DataParallel / torch.compile)"
        )


def _check_kinds(selection: Selection, catalogue: Catalogue) -> None:
    for rule in selection.select + selection.ignore:
        if rule.text.startswith("act:") and rule.text[4:] not in catalogue.kinds:
            kind = rule.text[4:]
            raise SelectorError(
                f"{rule.where} rule {rule.text!r}: unknown activation kind {kind!r}."
                + did_you_mean(kind, catalogue.kinds)
            )


def _leaf_predicate(leaf: Rules, model: nn.Module):
    if not leaf:
        return lambda name, module: False
    rules = Selection(leaf, None).select
    modules = dict(model.named_modules())
    for rule in rules:
        if rule.text.startswith("act:"):
            raise SelectorError(f"leaf rule {rule.text!r}: leaf= takes module names, re: or type: rules")
        if not any(rule.matches(target_of([n], [m])) for n, m in modules.items() if n):
            raise SelectorError(
                f"leaf rule {rule.text!r} matches no module." + did_you_mean(rule.text, [n for n in modules if n])
            )

    def is_leaf(name: str, module: nn.Module) -> bool:
        target = target_of([name], [module])
        return any(r.matches(target) for r in rules)

    return is_leaf
