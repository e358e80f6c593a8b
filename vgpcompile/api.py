"""The entry points: ``vgpcompile(model, passes=[...])`` and ``plan(...)``."""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import __version__
from .core import recipe as recipes
from .core.capture import capture
from .core.catalogue import DEFAULT, Catalogue
from .core.contract import Env, Pass
from .core.graph import nonlinear_depth
from .core.registry import resolve
from .core.report import Report, SiteRecord
from .core.runner import order, run_pass
from .core.select import Selection, target_of
from .core.targets import find_sites
from .errors import SelectorError, UsageError, did_you_mean

Rules = Sequence[str] | str | None
Passes = Sequence[str | Pass] | str | Pass


@dataclass(frozen=True)
class CompileOptions:
    """The keyword options of ``vgpcompile`` and ``plan``, checked once."""

    example_inputs: tuple | None = None
    options: Mapping[str, Mapping[str, Any]] | None = None
    select: Rules = None
    ignore: Rules = None
    leaf: Rules = None
    inplace: bool = False
    input_range: tuple[float, float] | None = None
    catalogue: Catalogue | None = None


def vgpcompile(
    model: nn.Module,
    passes: Passes = (),
    *,
    example_inputs: tuple | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    select: Rules = None,
    ignore: Rules = None,
    leaf: Rules = None,
    inplace: bool = False,
    input_range: tuple[float, float] | None = None,
    catalogue: Catalogue | None = None,
    **unknown: Any,
) -> nn.Module:
    """Compile ``model``: capture it with torch.fx, run ``passes``, return a trainable module.

    ``passes`` takes pass names, pipeline strings (``"gpn{root=paper},arp"``) or Pass
    instances. The result is a ``torch.fx.GraphModule`` (or, when the top-level forward
    cannot be traced, the model with its traceable children compiled in place). It keeps the
    original parameter names, so an original state_dict loads into it. It carries
    ``vgp_report`` (per site: what changed, or why not) and ``vgp_recipe`` (what to
    re-apply on load). ``model`` itself is left untouched unless ``inplace=True``.

    ``select`` / ``ignore`` / ``leaf`` take the rule grammar of :mod:`vgpcompile.core.select`;
    ``leaf`` modules stay opaque (never traced into, never rewritten).
    """
    _refuse_unknown("vgpcompile", unknown)
    opts = CompileOptions(example_inputs, options, select, ignore, leaf, inplace, input_range, catalogue)
    compiled, _ = _compile(model, passes, "compile", opts)
    return compiled


def plan(
    model: nn.Module,
    passes: Passes = (),
    *,
    example_inputs: tuple | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    select: Rules = None,
    ignore: Rules = None,
    leaf: Rules = None,
    input_range: tuple[float, float] | None = None,
    catalogue: Catalogue | None = None,
    **unknown: Any,
) -> Report:
    """The report ``vgpcompile`` would produce, computed on a copy: ``model`` is not changed."""
    _refuse_unknown("plan", unknown)
    opts = CompileOptions(example_inputs, options, select, ignore, leaf, False, input_range, catalogue)
    _, report = _compile(model, passes, "plan", opts)
    return report


compile = vgpcompile  # noqa: A001  (vgpcompile.compile reads naturally; the builtin is not shadowed globally)


def _refuse_unknown(where: str, unknown: Mapping[str, Any]) -> None:
    if unknown:
        key = next(iter(unknown))
        fields = [f for f in CompileOptions.__dataclass_fields__ if where == "vgpcompile" or f != "inplace"]
        raise UsageError(f"{where}() got an unexpected keyword {key!r}." + did_you_mean(key, fields))


def _compile(model: nn.Module, passes: Passes, mode: str, opts: CompileOptions) -> tuple[nn.Module, Report]:
    # A compile allocates tens of thousands of long-lived objects (fx nodes, modules); the
    # cyclic GC would walk them again and again, about a third of the compile time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _compile_unguarded(model, passes, mode, opts)
    finally:
        if enabled:
            gc.enable()


def _compile_unguarded(model: nn.Module, passes: Passes, mode: str, opts: CompileOptions) -> tuple[nn.Module, Report]:
    _check_arguments(model, opts)
    catalogue = opts.catalogue or DEFAULT
    pass_list = order(resolve(passes, opts.options))
    selection = Selection(opts.select, opts.ignore)
    _check_kinds(selection, catalogue)
    is_leaf = _leaf_predicate(opts.leaf, model)
    work = model if opts.inplace else copy_model(model)
    cap = capture(work, is_leaf, catalogue.wrap_functions, tuple(catalogue.modules))
    report = Report(type(model).__name__, mode, [p.name for p in pass_list], eager=cap.eager, regions=list(cap.regions))
    known = _register_sites(cap.regions, report, catalogue)
    report.depth_before, report.depth_exact = nonlinear_depth(cap.root, catalogue)
    env = Env(
        catalogue,
        selection,
        _as_tuple(opts.example_inputs),
        opts.input_range,
        tuple(p.name for p in pass_list),
        report.depth_before,
        planning=mode == "plan",
    )
    for i, pass_ in enumerate(pass_list):
        result = run_pass(pass_, cap.regions, env, cap.root)
        report.add(result)
        if result.root is not None:
            cap.root = result.root
        if result.resolved:  # the recipe records resolved options, so load() rebuilds without examples
            pass_list[i] = dataclasses.replace(pass_, **result.resolved)
    if pass_list:
        selection.check_all_matched(known)
    report.depth_after, _ = nonlinear_depth(cap.root, catalogue)
    rules = {k: _rules(getattr(opts, k)) for k in ("select", "ignore", "leaf")}
    versions = {"vgpcompile": __version__, "torch": torch.__version__}
    cap.root.vgp_report = report
    cap.root.vgp_recipe = recipes.build(pass_list, rules, _input_range(opts), report, catalogue, versions)
    return cap.root, report


def _register_sites(regions, report: Report, catalogue: Catalogue) -> list[str]:
    """Add every site to the report; return every name a selector may use."""
    known: list[str] = []
    for prefix, gm in regions.items():
        for site in find_sites(gm, prefix, catalogue):
            producer = f"{site.producer_kind} {site.producer_name}" if site.producer_kind else None
            report.sites.append(
                SiteRecord(site.name, site.kind, site.spelling, producer, site.is_output, list(site.notes))
            )
            known += [n for n in (site.name, site.module_name, site.producer_name) if n]
    for prefix, gm in regions.items():
        known += [prefix + name for name, _ in gm.named_modules() if name]
    return known


def _rules(value: Rules) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


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


def _as_tuple(example_inputs: Any) -> tuple | None:
    if example_inputs is None:
        return None
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _input_range(opts: CompileOptions) -> list[float] | None:
    """The model-input range, given or seen in example_inputs, so load() needs no example."""
    if opts.input_range is not None:
        return [float(v) for v in opts.input_range]
    tensors = [
        t
        for t in _as_tuple(opts.example_inputs) or ()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()
    ]
    if not tensors:
        return None
    return [min(float(t.min()) for t in tensors), max(float(t.max()) for t in tensors)]


def _check_arguments(model: Any, opts: CompileOptions) -> None:
    """One UsageError naming the argument, before any work, for each kind of misuse."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"vgpcompile takes an nn.Module, got {type(model).__name__}")
    wrapped = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    if isinstance(model, wrapped) or type(model).__name__ == "OptimizedModule":
        raise UsageError(
            f"{type(model).__name__} is a wrapper: compile the bare model first, then wrap the result "
            "(DDP / DataParallel / torch.compile)"
        )
    if opts.input_range is not None:
        _check_range(opts.input_range)
    if opts.catalogue is not None and not isinstance(opts.catalogue, Catalogue):
        raise UsageError(f"catalogue= must be a vgpcompile Catalogue, got {type(opts.catalogue).__name__}")


def _check_range(value: Any) -> None:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"input_range= must be a pair (lo, hi) of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise UsageError(f"input_range= must be finite with lo <= hi, got {value!r}")


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
