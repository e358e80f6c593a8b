"""The pass contract, and the pipeline that runs passes over every traced region.

The pipeline, not the pass, does the bookkeeping: it applies the default rules (selection,
the final output activation, sites a pass already touched), stamps every node a pass
creates with ``meta["vgp.pass"]``, lints each graph after each pass, and wraps any failure
with the pass name and the node it was working on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import fx, nn

from .activations import Catalogue
from .errors import PassError, VgpError
from .report import Report
from .selection import Selection, Target, target_of
from .sites import META_APPLIED, META_PASS, META_SITE, Site, find_sites


@dataclass(frozen=True)
class Pass:
    """A rewrite. Subclasses are frozen dataclasses: ``name`` is the CLI handle, fields are options."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def run(self, region: Region, ctx: Context) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class SitePass(Pass):
    """A pass that rewrites activation sites one at a time: check, then apply."""

    def check(self, site: Site, ctx: Context) -> str | None:
        """The reason to leave ``site`` alone, or None to rewrite it."""
        return None

    def apply(self, site: Site, ctx: Context) -> str:
        """Rewrite ``site`` in ``ctx.region``; return a short description for the report."""
        raise NotImplementedError

    def run(self, region: Region, ctx: Context) -> None:
        for site in ctx.sites(region):
            ctx.node = site.node
            reason = ctx.default_skip(site, self) or self.check(site, ctx)
            if reason:
                ctx.report.record(site.name, self.name, False, reason)
                continue
            ctx.report.record(site.name, self.name, True, self.apply(site, ctx))


@dataclass(frozen=True)
class LayerPass(Pass):
    """A pass that rewrites modules of ``layer_types`` (e.g. Linear, Conv2d) called in a region.

    Each call_module node whose module is one of ``layer_types`` is a layer; a module called
    at several nodes is visited once. Rows appear in the report under the module's name.
    """

    layer_types: ClassVar[tuple[type, ...]] = ()

    def check(self, name: str, module: nn.Module, ctx: Context) -> str | None:
        return None

    def apply(self, name: str, module: nn.Module, ctx: Context) -> str:
        """Rewrite the layer ``name`` (relative to ``ctx.region``); return a report line."""
        raise NotImplementedError

    def run(self, region: Region, ctx: Context) -> None:
        for node, name, module in ctx.layers(region, self.layer_types):
            ctx.node = node
            full = region.prefix + name
            ctx.report.add_row(full, type(module).__name__, "layer")
            reason = ctx.default_layer_skip(full, module, self) or self.check(name, module, ctx)
            if reason:
                ctx.report.record(full, self.name, False, reason)
                continue
            ctx.report.record(full, self.name, True, self.apply(name, module, ctx))


@dataclass
class Region:
    """A traced part of the model: its name prefix and its GraphModule."""

    prefix: str
    gm: fx.GraphModule


@dataclass
class Context:
    """What a pass sees besides its region."""

    catalogue: Catalogue
    selection: Selection
    report: Report
    wrappers: tuple[type, ...]
    example_inputs: tuple | None = None
    input_range: tuple[float, float] | None = None
    current: Pass | None = None
    region: Region | None = None
    node: fx.Node | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def sites(self, region: Region) -> list[Site]:
        return find_sites(region.gm, region.prefix, self.catalogue, self.wrappers)

    def site_target(self, site: Site) -> Target:
        names = (site.name, site.module_name, site.producer_name)
        mod = site.node.graph.owning_module.get_submodule(site.node.target) if site.module_name else None
        return target_of(names, (mod, site.producer_module), site.activation.name)

    def layers(self, region: Region, types: tuple[type, ...]):
        """(node, name, module) for each distinct module of ``types`` called in ``region``."""
        seen: set[str] = set()
        for node in list(region.gm.graph.nodes):
            if node.op == "call_module" and node.target not in seen:
                module = region.gm.get_submodule(str(node.target))
                if isinstance(module, types):
                    seen.add(node.target)
                    yield node, str(node.target), module

    def default_layer_skip(self, full_name: str, module: nn.Module, pass_: Pass) -> str | None:
        reason = self.selection.decide(target_of([full_name], [module]))
        if reason:
            return reason
        if pass_.name in getattr(module, "applied", ()):
            return f"already rewritten by {pass_.name!r}; a pass is applied once per layer"
        return None

    def default_skip(self, site: Site, pass_: Pass) -> str | None:
        if site.unusable:
            return site.unusable
        target = self.site_target(site)
        reason = self.selection.decide(target)
        if reason:
            return reason
        if site.is_output and not self.selection.explicitly_selected(target):
            return "model output activation (left alone by default; select it by name to rewrite it)"
        if pass_.name in site.applied:
            return f"already rewritten by {pass_.name!r}; a pass is applied once per site"
        return None


def mark_applied(node: fx.Node, site: Site, pass_name: str) -> None:
    """Carry the site's name and applied passes to a (replacement) node."""
    node.meta[META_SITE] = site.name
    node.meta[META_APPLIED] = tuple(sorted(set(site.applied) | {pass_name}))


def run_passes(passes: list[Pass], regions: dict[str, fx.GraphModule], ctx: Context) -> None:
    for pass_ in passes:
        ctx.current = pass_
        start = time.perf_counter()
        for prefix, gm in regions.items():
            _run_one(pass_, Region(prefix, gm), ctx)
        ctx.report.seconds[pass_.name] = time.perf_counter() - start


def _run_one(pass_: Pass, region: Region, ctx: Context) -> None:
    ctx.region, ctx.node = region, None
    before = set(region.gm.graph.nodes)
    try:
        pass_.run(region, ctx)
        for node in region.gm.graph.nodes:
            if node not in before:
                node.meta.setdefault(META_PASS, pass_.name)
        region.gm.graph.lint()
        _check_targets(region.gm)
        region.gm.recompile()
    except VgpError as err:
        if isinstance(err, PassError):
            raise
        raise type(err)(f"pass {pass_.name!r}{_where(ctx)}: {err}") from err
    except Exception as err:
        raise PassError(f"pass {pass_.name!r} failed{_where(ctx)}: {type(err).__name__}: {err}") from err


def _where(ctx: Context) -> str:
    prefix = ctx.region.prefix if ctx.region else ""
    if ctx.node is None:
        return f" in region {prefix or '<root>'!r}"
    site = ctx.node.meta.get(META_SITE, "")
    return f" at node {ctx.node.name!r}" + (f" (site {site!r})" if site else "") + f" in region {prefix or '<root>'!r}"


def _check_targets(gm: fx.GraphModule) -> None:
    """Every call_module and get_attr target resolves (fx's lint checks this only partly)."""
    for node in gm.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            try:
                gm.get_submodule(str(node.target)) if node.op == "call_module" else _get_attr(gm, str(node.target))
            except AttributeError as err:
                raise PassError(f"node {node.name!r} refers to missing {node.target!r}: {err}") from None


def _get_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
