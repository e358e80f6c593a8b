"""The entry points: ``vgpcompile(model, passes=[...])`` and ``plan(...)``."""

from __future__ import annotations

import contextlib
import copy
import copyreg
import dataclasses
import gc
import math
import sys
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import __version__
from .core import calibrate, facts, verify, verify_run
from .core import recipe as recipes
from .core.capture import capture as capture_model
from .core.capture import tree_heights
from .core.catalogue import DEFAULT, Catalogue
from .core.contract import Env, Pass
from .core.eager import eager_owners
from .core.graph import nonlinear_depth
from .core.index import SiteIndex
from .core.region import helper_activation_calls, keep_class
from .core.registry import resolve
from .core.report import Report, SiteRecord, VgpWarning
from .core.runner import order, run_pass
from .core.select import Selection, target_of
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
    eager: Rules = None
    capture: Mapping[str, Any] | None = None
    # not a keyword of vgpcompile(): the ranges each pass read in an earlier compile, which
    # load() hands back (recipe "observed") so a rebuild needs no example inputs
    observed: Mapping[str, Mapping[str, Sequence[float]]] | None = None


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
    eager: Rules = None,
    capture: Mapping[str, Any] | None = None,
    **unknown: Any,
) -> nn.Module:
    """Compile ``model``: capture it with torch.fx, run ``passes``, return a trainable module.

    ``passes`` takes pass names, pipeline strings (``"gpn{root=paper},arp"``) or Pass
    instances. The result is still an instance of ``model``'s class: a ``torch.fx.GraphModule``
    subclass of it whose ``forward`` is the traced graph, with the model's methods and plain
    attributes (core/region.py), or, when the top-level forward cannot be traced, the model
    with its traceable children compiled in place. It keeps the original parameter names, so
    an original state_dict loads into it. It carries
    ``vgp_report`` (per site: what changed, or why not) and ``vgp_recipe`` (what to
    re-apply on load). ``model`` itself is left untouched unless ``inplace=True``.

    ``select`` / ``ignore`` / ``leaf`` / ``eager`` take the rule grammar of
    :mod:`vgpcompile.core.select`; ``leaf`` modules stay opaque (never traced into, never
    rewritten); ``eager`` modules are not traced but their children are captured and the
    activations in their own code rewritten (core/eager.py); ``"<root>"`` names the model.

    With ``example_inputs`` the captured model is checked against the original before any
    pass: every traced region must reproduce the original's outputs on the calls the
    example inputs make, in train mode (same random state) and eval mode, or it is left
    eager with the reason in the report (core/verify.py), and the calls they make decide
    which arguments are traced as constants (core/arguments.py). Without them nothing is
    run. ``capture`` reproduces an earlier compile's capture decisions (``load`` passes a
    checkpoint's ``recipe["capture"]``).

    ``example_inputs`` (a tuple of positional inputs) also calibrate: a pass that needs the
    value range of a node (arp's pivots) gets the range seen when they run through the model
    (:mod:`vgpcompile.core.calibrate`; the run changes neither the model's buffers nor the
    RNG). The ranges a pass read are kept in the recipe, so ``load`` needs no example.
    """
    _refuse_unknown("vgpcompile", unknown)
    opts = CompileOptions(
        example_inputs, options, select, ignore, leaf, inplace, input_range, catalogue, eager, capture
    )
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
    eager: Rules = None,
    capture: Mapping[str, Any] | None = None,
    **unknown: Any,
) -> Report:
    """The report ``vgpcompile`` would produce, computed on a copy: ``model`` is not changed.
    With ``example_inputs`` the copy runs them once after the passes, as in ``vgpcompile``, so
    a rewrite that never runs is reported not changed here too (core/verify_run.py)."""
    _refuse_unknown("plan", unknown)
    opts = CompileOptions(example_inputs, options, select, ignore, leaf, False, input_range, catalogue, eager, capture)
    _, report = _compile(model, passes, "plan", opts)
    return report


def compile_with(model: nn.Module, passes: Passes, opts: CompileOptions) -> nn.Module:
    """``vgpcompile`` with options given as one CompileOptions (load() passes recorded ranges this way)."""
    compiled, _ = _compile(model, passes, "compile", opts)
    return compiled


compile = vgpcompile  # noqa: A001  (vgpcompile.compile reads naturally; the builtin is not shadowed globally)


def _refuse_unknown(where: str, unknown: Mapping[str, Any]) -> None:
    if unknown:
        key = next(iter(unknown))
        fields = [f for f in CompileOptions.__dataclass_fields__ if f != "observed"]
        fields = [f for f in fields if where == "vgpcompile" or f != "inplace"]
        raise UsageError(f"{where}() got an unexpected keyword {key!r}." + did_you_mean(key, fields))


def _compile(model: nn.Module, passes: Passes, mode: str, opts: CompileOptions) -> tuple[nn.Module, Report]:
    # A compile allocates tens of thousands of long-lived objects (fx nodes, modules); the
    # cyclic GC would walk them again and again, about a third of the compile time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        with _recursion_for(model):
            return _compile_unguarded(model, passes, mode, opts)
    finally:
        if enabled:
            gc.enable()


# Copying, tracing and checking a model recurse once per level of its module tree, each level
# taking up to ~40 Python frames (deepcopy, Module.__call__, the tracer): 200 nested modules run
# fine in plain PyTorch but pass the default limit of 1000. Deeper than MAX_NESTING is refused.
FRAMES_PER_LEVEL = 40
MAX_NESTING = 1000


@contextlib.contextmanager
def _recursion_for(model: Any):
    depth = tree_heights(model)[id(model)] if isinstance(model, nn.Module) else 0
    if depth > MAX_NESTING:
        raise UsageError(
            f"{type(model).__name__} nests modules {depth} deep, more than the {MAX_NESTING} levels vgpcompile "
            "compiles; flatten the nesting (e.g. one nn.Sequential of the layers)"
        )
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 1000 + FRAMES_PER_LEVEL * depth))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _compile_unguarded(model: nn.Module, passes: Passes, mode: str, opts: CompileOptions) -> tuple[nn.Module, Report]:
    _check_arguments(model, opts)
    catalogue = opts.catalogue or DEFAULT
    requested = resolve(passes, opts.options)
    pass_list = order(requested)
    selection = Selection(opts.select, opts.ignore)
    _check_kinds(selection, catalogue)
    is_leaf = _module_predicate(opts.leaf, model, "leaf")
    is_eager = _module_predicate(opts.eager, model, "eager")
    work = model if opts.inplace else copy_model(model)
    example = _as_tuple(opts.example_inputs)
    reference = check_reference(work, example) if example is not None else None
    check = reference.check if reference else None
    observed = reference.calls if reference else None
    cap = capture_model(
        work, is_leaf, catalogue.wrap_functions, tuple(catalogue.modules), is_eager, check, observed, opts.capture,
        one_graph=any(getattr(p, "one_graph", False) for p in pass_list),
    )
    report = Report(type(model).__name__, mode, [p.name for p in pass_list], eager=cap.eager, regions=list(cap.regions),
                    requested=[p.name for p in requested])
    _report_capture(report, cap, reference, example)
    if pass_list:
        _report_helpers(report, cap.regions, catalogue)
    owners = eager_owners(cap.root, cap.eager)
    outputs = reference.outputs if reference else set()
    index = SiteIndex(cap.regions, catalogue, owners, outputs)  # the sites, found once; the rewriter invalidates
    known = _register_sites(cap.regions, report, index) + _register_eager(owners, report, index, outputs)
    report.depth_before, report.depth_exact = nonlinear_depth(cap.root, catalogue)
    env = Env(
        catalogue,
        selection,
        example,
        opts.input_range,
        tuple(p.name for p in pass_list),
        report.depth_before,
        tied=tied_parameters(cap.root),
        planning=mode == "plan",
    )
    run = None if example is None else (lambda: calibrate.observe(cap.root, cap.regions, example))
    stepper = None
    if example is not None and list(cap.regions) == [""] and cap.regions[""] is cap.root:
        if calibrate.Incremental.usable(cap.root, example):  # one graph: re-run only downstream of a change
            stepper = calibrate.Incremental(cap.root, example)
    calibration = calibrate.Calibration(run, opts.observed, stepper)
    checked = facts.checking() and example is not None
    inserted = []
    for i, pass_ in enumerate(pass_list):
        before = _facts_now(cap, example) if checked and not pass_.changes_inputs else None
        result = run_pass(pass_, cap.regions, calibration.env_for(env, pass_.name), cap.root, owners, outputs, index)
        calibration.done(pass_.name)
        inserted += result.inserted
        if before is not None:
            facts.check(pass_.name, pass_.writes, facts.changed(before, _facts_now(cap, example)))
        report.add(result)
        if result.root is not None:
            cap.root = result.root
        if result.resolved:  # the recipe records resolved options, so load() rebuilds without examples
            pass_list[i] = dataclasses.replace(pass_, **result.resolved)
    unrun = {}
    if not any(p.changes_inputs for p in pass_list):  # plan too: it reports what compile would (on its copy)
        saved = (opts.capture or {}).get("unrun")  # load(): the rewrites the saved compile undid
        unrun = verify_run.check(report, cap.root, inserted, example, saved)  # every reported change ran, or undone
    if pass_list:
        selection.check_all_matched(known)
    # no pass ran: the model is the one just measured (the walk costs about a third of a trace)
    report.depth_after = nonlinear_depth(cap.root, catalogue)[0] if pass_list else report.depth_before
    rules = {k: _rules(getattr(opts, k)) for k in ("select", "ignore", "leaf", "eager")}
    versions = {"vgpcompile": __version__, "torch": torch.__version__}
    cap.root = keep_class(cap.root)  # an eager root gets save_pretrained's guard (core/region.py)
    cap.root.vgp_report = report
    decisions = cap.decisions() | ({"unrun": unrun} if unrun else {})
    recipe = recipes.build(pass_list, rules, _input_range(opts), report, catalogue, versions, decisions)
    if calibration.recorded:
        recipe["observed"] = calibration.recorded
    cap.root.vgp_recipe = recipe
    return cap.root, report


def _report_helpers(report: Report, regions, catalogue: Catalogue) -> None:
    """Warn about activation functions in methods the traced forward inlined (core/region.py)."""
    for prefix, gm in regions.items():
        calls = helper_activation_calls(gm, catalogue)
        if calls:
            shown = "; ".join(calls[:3]) + (f" (+{len(calls) - 3} more)" if len(calls) > 3 else "")
            report.warn(
                f"{prefix.rstrip('.') or '<root>'}: {shown}: the traced forward has these calls rewritten, but a "
                "direct call of that method runs them as written; call the model (forward), or use activation "
                "modules (nn.Tanh()), which are swapped in place"
            )


def _facts_now(cap, example: tuple) -> facts.Snapshot:
    """The facts of the model as it is now, with the ranges seen on ``example`` (core/facts.py)."""
    return facts.observe(cap.root, calibrate.observe(cap.root, cap.regions, example))


def _register_sites(regions, report: Report, index: SiteIndex) -> list[str]:
    """Add every site to the report; return every name a selector may use."""
    known: list[str] = []
    for prefix in regions:
        for site in index.sites(prefix):
            producer = f"{site.producer_kind} {site.producer_name}" if site.producer_kind else None
            report.sites.append(
                SiteRecord(site.name, site.kind, site.spelling, producer, site.is_output, list(site.notes))
            )
            known += [n for n in (site.name, site.module_name, site.producer_name) if n]
    for prefix, gm in regions.items():
        known += [prefix + name for name, _ in gm.named_modules() if name]
    return known


def _register_eager(owners, report: Report, index: SiteIndex, outputs: set[str]) -> list[str]:
    """Add the sites in eager code (core/eager.py) to the report; return their names."""
    known: list[str] = []
    for site in index.eager_sites():
        record = SiteRecord(site.name, site.kind, site.spelling, None, site.is_output, list(site.notes), eager=True)
        if not site.is_output and not outputs:
            record.notes.append("position in the model unknown without example_inputs")
        report.sites.append(record)
        known += [n for n in (site.name, site.module_name) if n]
    tops: list[str] = []  # an owner inside another owner adds no name: walk the outermost ones only
    for name, owner in sorted(owners, key=lambda item: len(item[0])):
        if any(not top or name.startswith(top + ".") for top in tops):
            continue
        tops.append(name)
        known += [f"{name}.{n}" if name else n for n, _ in owner.named_modules() if n]
    return known


def tied_parameters(root: nn.Module) -> dict[str, tuple[str, ...]]:
    """Module name -> the other modules holding one of its parameters (tied weights)."""
    holders: dict[int, list[str]] = {}
    for name, module in root.named_modules(remove_duplicate=False):
        # the module's own dict, not parameters(recurse=False) (a generator per module); a
        # parameter held twice by one module lists its name twice, which changes no set below
        for p in module._parameters.values():
            if p is not None:
                holders.setdefault(id(p), []).append(name)
    tied: dict[str, set[str]] = {}
    for names in holders.values():
        for name in names:
            others = {n for n in names if n != name}
            if others:
                tied.setdefault(name, set()).update(others)
    return {name: tuple(sorted(others)) for name, others in tied.items()}


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
    return _copy_module(model, memo)


_ATOMIC = (type(None), int, float, bool, str)
_MISSING = object()


def _plain_module_class(cls: type) -> bool:
    """Whether ``copy.deepcopy`` copies a ``cls`` instance the generic way: a new object whose
    state is the deep copy of ``Module.__getstate__()``, set by ``Module.__setstate__``."""
    return (
        getattr(cls, "__deepcopy__", None) is None
        and cls not in copyreg.dispatch_table
        and cls.__reduce_ex__ is object.__reduce_ex__
        and cls.__reduce__ is object.__reduce__
        and cls.__getstate__ is nn.Module.__getstate__
        and cls.__setstate__ is nn.Module.__setstate__
        and not copyreg._slotnames(cls)
    )


def _copy_module(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """``copy.deepcopy(module, memo)``, the same steps written out for a plain module class
    (_plain_module_class): deepcopy's generic path (__reduce_ex__, then a deep copy of each
    state dict) is most of the copy's time for the many small modules of a deep model. The
    module dict and its children are copied here, every other value by deepcopy, in the same
    order and through the same memo (shared modules and tied weights stay shared)."""
    found = memo.get(id(module), _MISSING)
    if found is not _MISSING:
        return found
    cls = type(module)
    if not _plain_module_class(cls):
        return copy.deepcopy(module, memo)
    new = cls.__new__(cls)
    memo[id(module)] = new
    state = {}
    for key, value in module.__getstate__().items():
        kind = type(value)
        if kind in _ATOMIC:
            state[key] = value
        elif kind is dict:
            state[key] = _copy_dict(value, memo)
        elif kind is OrderedDict and not value:  # the empty hook tables
            state[key] = memo[id(value)] = OrderedDict()
        elif kind is set and not value:  # _non_persistent_buffers_set, most often empty
            state[key] = memo[id(value)] = set()
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__setstate__(state)
    return new


def _copy_dict(d: dict, memo: dict[int, Any]) -> dict:
    """deepcopy of a plain dict of modules, parameters (copied up front: in the memo) or atoms."""
    found = memo.get(id(d), _MISSING)
    if found is not _MISSING:
        return found
    out: dict = {}
    memo[id(d)] = out
    for key, value in d.items():
        if isinstance(value, nn.Module):
            out[key] = _copy_module(value, memo)
        elif type(value) in _ATOMIC:
            out[key] = value
        else:
            out[key] = memo.get(id(value), _MISSING)
            if out[key] is _MISSING:
                out[key] = copy.deepcopy(value, memo)
    return out


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
    if not tensors or not all(bool(torch.isfinite(t).all()) for t in tensors):
        return None  # no range to record (arp, the one reader, refuses such inputs with a reason)
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
    if _any_on_meta(model):  # named only then: naming every tensor of a deep model cost more than the test
        meta = next(n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta)
        raise UsageError(
            f"the model's {meta!r} is on the 'meta' device (no data): materialize the model first, e.g. "
            "model.to_empty(device='cpu') and initialize or load its weights"
        )
    _check_example_inputs(opts.example_inputs)
    for key in ("select", "ignore", "leaf"):
        rules = getattr(opts, key)
        if rules is not None and not isinstance(rules, (str, list, tuple)):
            kind = type(rules).__name__
            raise UsageError(f"{key}= must be a rule string or a list of them, got {kind} {rules!r:.30}")
    if opts.input_range is not None:
        _check_range(opts.input_range)
    if not isinstance(opts.inplace, bool):
        raise UsageError(f"inplace= must be True or False, got {opts.inplace!r:.60}")
    if opts.catalogue is not None and not isinstance(opts.catalogue, Catalogue):
        raise UsageError(f"catalogue= must be a vgpcompile Catalogue, got {type(opts.catalogue).__name__}")


def _any_on_meta(model: nn.Module) -> bool:
    tensors = (t for m in model.modules() for t in (*m._parameters.values(), *m._buffers.values()))
    return any(t is not None and t.is_meta for t in tensors)


def _check_example_inputs(value: Any) -> None:
    """A tuple (or list) of the model's positional inputs; a bare tensor is taken as the one input."""
    if value is None or isinstance(value, torch.Tensor):
        items = [] if value is None else [value]
    elif isinstance(value, (tuple, list)):
        items = list(value)
    else:
        raise UsageError(
            f"example_inputs= must be a tuple of the model's inputs (or one tensor), got {type(value).__name__} "
            f"{value!r:.40}"
        )
    for i, t in enumerate(items):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and bool(torch.isnan(t).any()):
            raise UsageError(f"example_inputs[{i}] contains NaN: give sample data the model is meant to see")
        if isinstance(t, torch.Tensor) and t.is_floating_point() and bool(torch.isinf(t).any()):
            # unlike NaN, inf is data some models are meant to see (an additive attention mask): kept, and said
            warnings.warn(
                f"example_inputs[{i}] holds inf values: kept (e.g. an attention mask), but no value range is taken "
                "from it (arp leaves the sites it feeds alone; give input_range=)",
                VgpWarning,
                stacklevel=6,
            )
        if isinstance(t, torch.Tensor) and t.numel() == 0:
            # nothing could be checked or calibrated on it, and every check would pass vacuously
            raise UsageError(f"example_inputs[{i}] is empty (shape {tuple(t.shape)}): give at least one example")


def _check_range(value: Any) -> None:
    try:
        if isinstance(value, (str, bytes)) or any(isinstance(v, (str, bytes, bool)) for v in value):
            raise TypeError
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"input_range= must be a pair (lo, hi) of numbers, got {value!r:.60}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise UsageError(f"input_range= must be finite with lo <= hi, got {value!r:.60}")


def _check_kinds(selection: Selection, catalogue: Catalogue) -> None:
    for rule in selection.select + selection.ignore:
        if rule.text.startswith("act:") and rule.text[4:] not in catalogue.kinds:
            kind = rule.text[4:]
            raise SelectorError(
                f"{rule.where} rule {rule.text!r}: unknown activation kind {kind!r}."
                + did_you_mean(kind, catalogue.kinds)
            )


def _module_predicate(rules_given: Rules, model: nn.Module, where: str):
    """``(name, module) -> bool`` for ``leaf=`` / ``eager=`` rules; ``"<root>"`` names the model."""
    if not rules_given:
        return lambda name, module: False
    rules = Selection(rules_given, None).select
    modules = {n or "<root>": m for n, m in model.named_modules()}
    for rule in rules:
        if rule.text.startswith("act:"):
            raise SelectorError(f"{where} rule {rule.text!r}: {where}= takes module names, re: or type: rules")
        if not any(rule.matches(target_of([n], [m])) for n, m in modules.items()):
            raise SelectorError(
                f"{where} rule {rule.text!r} matches no module." + did_you_mean(rule.text, list(modules))
            )

    def matches(name: str, module: nn.Module) -> bool:
        target = target_of([name or "<root>"], [module])
        return any(r.matches(target) for r in rules)

    return matches


def check_reference(model: nn.Module, example: tuple):
    """The original's calls on the example inputs (core/verify.py); a model that cannot run
    them is a usage error naming the failure."""
    try:
        return verify.record(model, example)[0]
    except Exception as err:
        shapes = [tuple(t.shape) for t in example if isinstance(t, torch.Tensor)]
        raise UsageError(
            f"the model does not run on example inputs of shape {shapes}: {verify.describe_trace_error(err)}; "
            "pass example_inputs the model accepts (a tuple of positional arguments)"
        ) from None


def _report_capture(report: Report, cap, reference, example: tuple | None) -> None:
    """The capture's figures, and a warning when nothing could be traced."""
    if not cap.regions:
        report.warn(
            f"no part of {report.model} could be traced with torch.fx: it runs eager, and only activations in "
            "eager code are rewritten (see the report's eager list)"
        )
    if reference is None:
        report.stats["capture"] = {"checked": "no example_inputs: structure only"}
        return
    names = [p.rstrip(".") or "<root>" for p in cap.regions]
    unexercised = [n for n in names if n not in reference.checked]
    report.stats["capture"] = {
        "regions checked on example_inputs (train+eval)": len(reference.checked),
        "left eager by the check": len(reference.failed),
        "regions not called by example_inputs": len(unexercised),
    }
