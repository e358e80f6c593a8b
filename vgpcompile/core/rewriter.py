"""The rewriter: the one way a pass changes a graph or a model (in the manner of xDSL's
PatternRewriter and onnxscript's rewriter).

The runner makes one :class:`Rewriter` per pass run and hands it to the pass as
``env.rewriter``; the functions of core/rewrite.py (``replace_activation``, ``replace_node``,
``mark_applied``) route through the active one, so a pass written against them needs no
change. Every operation

- keeps the graph valid: new nodes go next to the node they replace, uses are rewired
  before anything is erased, and a node with users is never erased (``erase``);
- stamps provenance: every node it creates carries ``meta["vgp.pass"]``;
- records what it inserted (:class:`Inserted`: the target's report name, the region and the
  module), so the compile can check that each reported change runs (core/verify_run.py);
- tells the site index which region changed (``SiteIndex.invalidate``), so sites are
  found again there and only there.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..errors import PassError
from .lookup import submodule
from .targets import META_APPLIED, META_PASS, META_SITE, Site, call_counts, output_nodes

_ACTIVE: contextvars.ContextVar[Rewriter | None] = contextvars.ContextVar("vgp_rewriter", default=None)


@dataclass
class Inserted:
    """A module a pass put into the model for one target (to count its calls later)."""

    target: str  # the report row's name (site, layer or block)
    pass_name: str
    module: nn.Module
    eager: bool = False  # it replaces a call in eager code (run only if the interception works)
    undo: Callable[[], None] | None = None  # puts the original back (a self-contained activation rewrite)
    region: nn.Module | None = None  # the traced region it sits in (to say why it never ran)


@dataclass
class Rewriter:
    """Changes made by one pass: graph edits, module swaps, their provenance."""

    pass_name: str
    index: Any = None  # core.index.SiteIndex, invalidated per changed region
    inserted: list[Inserted] = field(default_factory=list)
    changed_regions: set[str] = field(default_factory=set)

    # --- context: core/rewrite.py's functions use the active rewriter ---------------------------

    @contextlib.contextmanager
    def active(self) -> Iterator[Rewriter]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    # --- graph edits -----------------------------------------------------------------------------

    def replace_node(self, node: fx.Node, op: str, target: Any, args: tuple, kwargs: dict | None = None,
                     meta_keys=("nn_module_stack",)) -> fx.Node:
        """A new ``op`` node calling ``target`` where ``node`` was: it takes over every use,
        carries ``meta_keys`` of the old node's meta, and the old node is erased."""
        graph = node.graph
        with graph.inserting_after(node):
            new = self._stamp(graph.create_node(op, target, args, kwargs or {}))
        new.meta.update({k: v for k, v in node.meta.items() if k in meta_keys})
        node.replace_all_uses_with(new)
        self.erase(node)
        return new

    def insert_after(self, anchor: fx.Node, op: str, target: Any, args: tuple, kwargs: dict | None = None) -> fx.Node:
        """A new node right after ``anchor`` (no uses rewired)."""
        with anchor.graph.inserting_after(anchor):
            return self._stamp(anchor.graph.create_node(op, target, args, kwargs or {}))

    def insert_before(self, anchor: fx.Node, op: str, target: Any, args: tuple, kwargs: dict | None = None) -> fx.Node:
        """A new node right before ``anchor`` (no uses rewired)."""
        with anchor.graph.inserting_before(anchor):
            return self._stamp(anchor.graph.create_node(op, target, args, kwargs or {}))

    def insert_placeholder(self, gm: fx.GraphModule, name: str, default: Any = None,
                           after: fx.Node | None = None) -> fx.Node:
        """A new input of ``gm``'s graph, right after the input ``after`` (default: the last)."""
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        with gm.graph.inserting_after(after or placeholders[-1]):
            return self._stamp(gm.graph.placeholder(name, default_value=default))

    def replace_uses(self, old: fx.Node, new: fx.Node, keep: Callable[[fx.Node], bool] | None = None) -> list[fx.Node]:
        """Every use of ``old`` (but ``new`` itself, and users ``keep`` says to keep) now uses ``new``."""
        self._touch(old)
        return old.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new and not (keep and keep(user)))

    def replace_input(self, user: fx.Node, old: fx.Node, new: fx.Node) -> None:
        """``user`` reads ``new`` where it read ``old``."""
        self._touch(user)
        user.replace_input_with(old, new)

    def replace_later_uses(self, old: fx.Node, new: fx.Node) -> None:
        """Uses of ``old`` after ``new`` now use ``new`` (an in-place op's later readers)."""
        for user in list(old.users):
            if user is not new and user > new:  # fx nodes compare by position in the graph
                user.replace_input_with(old, new)

    def erase(self, node: fx.Node) -> None:
        """Erase ``node``; refuse, naming its users, while it has any."""
        if node.users:
            users = ", ".join(u.name for u in node.users)
            raise PassError(f"cannot erase node {node.name!r}: it still has users ({users})")
        self._touch(node)
        node.graph.erase_node(node)

    # --- read-only queries: what a pass may know of a graph (it never reads ``gm.graph``) -------

    def sites(self, gm: fx.GraphModule, catalogue: Any) -> list[Site]:
        """The sites of region ``gm`` from the compile's site index (found once per compile);
        for a bare graph outside a compile, found here by the same rules (core/targets.py)."""
        region = self.index.region_of(gm) if self.index is not None else None
        if region is not None:
            return self.index.sites(region)
        from .targets import find_sites

        return find_sites(gm, "", catalogue)

    @staticmethod
    def module_of(node: fx.Node) -> fx.GraphModule:
        """The traced region (GraphModule) ``node`` belongs to."""
        return node.graph.owning_module

    @staticmethod
    def nodes(gm: fx.GraphModule) -> list[fx.Node]:
        """``gm``'s nodes in execution order (a snapshot: editing while walking is safe)."""
        return list(gm.graph.nodes)

    @staticmethod
    def call_counts(gm: fx.GraphModule) -> dict[str, int]:
        """How many nodes of ``gm`` call each submodule (a fold needs a module called once)."""
        return call_counts(gm)

    @staticmethod
    def placeholders(gm: fx.GraphModule) -> list[fx.Node]:
        """``gm``'s inputs, in signature order."""
        return [n for n in gm.graph.nodes if n.op == "placeholder"]

    @staticmethod
    def outputs(gm: fx.GraphModule) -> set[fx.Node]:
        """The nodes whose values are ``gm``'s outputs (through containers and pass-through ops)."""
        return output_nodes(gm.graph)

    @staticmethod
    def input_of(site: Site | fx.Node) -> Any:
        """The current input of an activation site (a formula's x; an earlier rewrite may have
        replaced the node), or of a node (its first argument, or its ``input=``); it may be a
        constant. None for a site in eager code."""
        if isinstance(site, Site):
            if site.node is None:
                return None
            if site.nodes:
                return formula_input(site)
            site = site.node
        return site.args[0] if site.args else site.kwargs.get("input")

    @staticmethod
    def shapes(gm: fx.GraphModule, example_inputs: tuple) -> dict[fx.Node, tuple[int, ...]]:
        """Each node's output shape when ``example_inputs`` run through a copy of ``gm``
        (torch.fx's ShapeProp; running the copy leaves ``gm``'s buffers and nodes alone)."""
        from torch.fx.passes.shape_prop import ShapeProp

        probe = copy.deepcopy(gm)
        with torch.no_grad():
            ShapeProp(probe).propagate(*example_inputs)
        by_name = {n.name: n for n in gm.graph.nodes}
        return {by_name[n.name]: tuple(n.meta["tensor_meta"].shape) for n in probe.graph.nodes
                if "tensor_meta" in n.meta}

    def lint(self, gm: fx.GraphModule) -> None:
        """Check ``gm``'s graph (a lowering's last step, before ``recompile``)."""
        gm.graph.lint()

    # --- modules ---------------------------------------------------------------------------------

    def add_module(self, gm: nn.Module, base: str, module: nn.Module) -> str:
        """Register ``module`` on ``gm`` under a free name built from ``base``; return the name."""
        name = unique_name(gm, base)
        gm.add_module(name, module) if not isinstance(gm, fx.GraphModule) else gm.add_submodule(name, module)
        return name

    def swap_module(self, gm: nn.Module, target: str, module: nn.Module, report_as: str = "") -> None:
        """Put ``module`` at ``gm``'s submodule ``target`` (a layer rewritten under its own name)."""
        gm.set_submodule(target, module) if isinstance(gm, fx.GraphModule) else _set(gm, target, module)
        self.record(report_as, module)
        if isinstance(gm, fx.GraphModule):
            self._touch_gm(gm)

    def remove_module(self, gm: nn.Module, target: str) -> None:
        """Drop ``gm``'s submodule ``target`` (no node may call it any more)."""
        parent, _, child = target.rpartition(".")
        delattr(gm.get_submodule(parent) if parent else gm, child)
        if isinstance(gm, fx.GraphModule):
            self._touch_gm(gm)

    def drop_unused_modules(self, gm: fx.GraphModule) -> None:
        """Drop every submodule of ``gm`` that no node uses (after a fold replaced calls)."""
        gm.delete_all_unused_submodules()
        self._touch_gm(gm)

    def record(self, target: str, module: nn.Module, eager: bool = False, undo: Callable[[], None] | None = None,
               region: nn.Module | None = None) -> None:
        """Note that ``module`` now computes part of ``target`` (its report row); ``undo``, when
        given, puts the original back should ``module`` never run (core/verify_run.py)."""
        if target:
            self.inserted.append(Inserted(target, self.pass_name, module, eager, undo, region))

    # --- sites -----------------------------------------------------------------------------------

    def mark_applied(self, node: fx.Node, site: Site) -> None:
        """Carry the site's name and applied passes to a (replacement) node."""
        node.meta[META_SITE] = site.name
        node.meta[META_APPLIED] = tuple(sorted(set(site.applied) | {self.pass_name}))
        self._touch(node)

    def replace_activation(self, site: Site, module: nn.Module, tag: str) -> fx.Node | None:
        """Make ``site`` call ``module`` on the activation's input instead; return the new node
        (core/rewrite.py's ``replace_activation`` says how each spelling is replaced)."""
        if site.node is None:
            from .eager import replace_eager_activation

            undo = replace_eager_activation(site, module, tag)
            self.record(site.name, module, site.eager is not None and site.eager.call is not None, undo)
            if self.index is not None:
                self.index.invalidate_eager()
            return None
        node = site.node
        gm = node.graph.owning_module
        src = formula_input(site) if site.nodes else node.args[0]
        if site.spelling == "module" and site.module_calls == 1:
            target = str(node.target)
            undo = _restore_module(gm, node, submodule(gm, target), node.args, node.kwargs, site.applied, target)
            gm.set_submodule(target, module)
            new = node
            new.args, new.kwargs = (src,), {}
        else:
            original, base = _original(gm, site, src), f"{node.name}_original"  # before its nodes are erased
            name = self.add_module(gm, f"{node.name}_{tag}", module)
            new = self.replace_node(node, "call_module", name, (src,))
            for dead in reversed(site.nodes[:-1]):  # the rest of a formula, now unused
                self.erase(dead)
            undo = None if original is None else _restore_module(gm, new, original, new.args, {}, site.applied, base)
        if site.inplace:
            self.replace_later_uses(src, new)
        self.mark_applied(new, site)
        self.record(site.name, module, undo=undo, region=gm)
        return new

    # --- bookkeeping -----------------------------------------------------------------------------

    def _stamp(self, node: fx.Node) -> fx.Node:
        if self.pass_name:  # freeze's lowerings edit graphs too, outside any pass
            node.meta[META_PASS] = self.pass_name
        self._touch(node)
        return node

    def _touch(self, node: fx.Node) -> None:
        self._touch_gm(node.graph.owning_module)

    def _touch_gm(self, gm: nn.Module | None) -> None:
        if self.index is not None:
            region = self.index.region_of(gm)
            if region is not None:
                self.changed_regions.add(region)
                self.index.invalidate(region)


def active() -> Rewriter:
    """The rewriter of the pass now running, or a free-standing one (a pass run by hand)."""
    found = _ACTIVE.get()
    return found if found is not None else Rewriter("")


def unique_name(gm: nn.Module, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def formula_input(site: Site) -> fx.Node:
    """The current input of a formula site (an earlier rewrite may have replaced the node)."""
    inside = set(site.nodes)
    return next(a for n in site.nodes for a in n.all_input_nodes if a not in inside)


def _original(gm: fx.GraphModule, site: Site, src: fx.Node) -> nn.Module | None:
    """The site's original computation as a module of its input (None when it reads other
    nodes than that input): what an undone rewrite calls instead."""
    graph = fx.Graph()
    env = {src: graph.placeholder("x")}
    nodes = site.nodes or (site.node,)
    try:
        for n in nodes:
            env[n] = graph.node_copy(n, lambda a: env[a])
    except KeyError:
        return None
    graph.output(env[nodes[-1]])
    return fx.GraphModule(gm, graph, class_name="Original")


def _restore_module(gm: fx.GraphModule, node: fx.Node, original: nn.Module, args: tuple, kwargs: dict,
                    applied: frozenset[str], target: str) -> Callable[[], None]:
    """Undo a rewrite of ``node``'s site: ``node`` calls ``original`` (at ``target``, the
    original module's name or a free one built from it) again, as it did."""

    def undo() -> None:
        if str(node.target) != target:  # the replacement was added beside: drop it
            gm.delete_submodule(str(node.target))
            node.target = unique_name(gm, target)
        gm.set_submodule(str(node.target), original)
        node.args, node.kwargs = args, kwargs
        node.meta[META_APPLIED] = tuple(sorted(applied))
        node.meta.pop(META_PASS, None)
        gm.recompile()

    return undo


def _set(root: nn.Module, target: str, module: nn.Module) -> None:
    owner, _, name = target.rpartition(".")
    setattr(root.get_submodule(owner) if owner else root, name, module)
