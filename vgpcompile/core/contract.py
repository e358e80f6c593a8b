"""The pass contract: what a pass declares, what it sees, and what it returns.

A pass is a frozen dataclass: ``name`` is its CLI handle, its fields are its typed options.
It declares which kinds of target it matches (``matches``: activation sites, layers of
``layer_types``, blocks, the model) and for each target answers ``check`` (a reason to
leave it alone, or None) and ``apply`` (rewrite it; return a line for the report);
``prepare`` and ``finish`` run once before and after them. The
runner (:mod:`vgpcompile.core.runner`) does the bookkeeping: it finds the targets, applies
the default rules (selection, the model's output activation, a pass applied twice), lints
and recompiles each graph, stamps every new node with the pass, wraps any failure with
the pass and node, and collects a :class:`PassResult`.

A pass also declares what its rewrite reads and changes (``reads``/``writes``, e.g. arp
reads the value ranges that gpn changes) so the runner can order passes, what its
lowering reads and changes (``lower_reads``/``lower_writes``), whether it changes the
model's inputs (``changes_inputs``: such a pass runs after every other pass, since the
others expect the original call signature, and so is lowered first), whether it can
rewrite targets in eager code (``rewrites_eager``: sites and layers of modules whose
forward was not traced have no graph node, ``target.node is None``; core/eager.py), and
how it lowers (``lower``: the exact inverse used by ``freeze``). A pass whose decision at
one target depends on what it did upstream (calibrating on the example inputs after each
rewrite) sets ``dataflow_order``: the runner then visits its targets in the order the
example run reaches them, not in region order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from . import protocol
from .catalogue import DEFAULT, Catalogue
from .select import Selection
from .targets import Block, Layer, ModelTarget, Site

SITE, LAYER, BLOCK, MODEL = "site", "layer", "block", "model"
KINDS = (SITE, LAYER, BLOCK, MODEL)
Target = Site | Layer | Block | ModelTarget


@dataclass(frozen=True)
class Env:
    """What a pass sees besides its target; the same for every pass of one compile.

    ``passes`` names every pass of the compile, in run order; ``depth`` is the model's
    nonlinear depth before any pass; ``observed`` holds the (min, max) of every node's
    output seen when the example inputs run through the model as the pass receives it, by
    node name within a region (``calibrate.key``: ``"<prefix>|<node>"``); empty without
    example inputs. It is computed at the first read; a pass that rewrites values that it
    reads again downstream calls ``calibrate.refresh(env.observed)`` after each rewrite
    (:mod:`vgpcompile.core.calibrate`). When a saved model is rebuilt it holds the ranges
    the pass read in the original compile. ``tied`` maps a module's name to the other
    modules that hold one of its parameters (tied weights: rewriting one changes the others).
    ``planning`` is True when the compile only plans (``plan``): a pass may then skip costly
    allocations (rai puts its tables on the meta device); the report must stay the same.
    ``rewriter`` and ``state`` are the pass run's own (see the fields).
    """

    catalogue: Catalogue = DEFAULT
    selection: Selection = field(default_factory=Selection)
    example_inputs: tuple | None = None
    input_range: tuple[float, float] | None = None
    passes: tuple[str, ...] = ()
    depth: int | None = None
    observed: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    tied: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    planning: bool = False
    # set by the runner for each pass run: the rewriter every change goes through
    # (core/rewriter.py), and a fresh namespace for what the pass computes once per compile in
    # ``prepare`` and reads in ``check`` / ``apply`` / ``finish`` (the pass itself stays frozen)
    rewriter: Any = None
    state: Any = None


@dataclass
class Outcome:
    """What one pass did to one target, or why it did not."""

    target: str
    changed: bool
    text: str
    row_kind: str = ""  # report row kind for targets that are not activation sites (a layer's class)
    row_spelling: str = ""  # "layer", "block", "model", ...


@dataclass
class PassResult:
    """What a pass did in one compile: per-target outcomes, warnings, figures, a new root."""

    pass_name: str
    outcomes: list[Outcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    root: nn.Module | None = None  # set when the pass replaced the model's root (it changes inputs)
    # option values the pass resolved in this compile (e.g. rai's shapes, inferred from the example
    # inputs); the recipe records them, so load() rebuilds the same model without the examples
    resolved: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    inserted: list[Any] = field(default_factory=list)  # core.rewriter.Inserted: what each change put in

    @property
    def changed(self) -> int:
        return sum(1 for o in self.outcomes if o.changed)

    def record(self, target: str, changed: bool, text: str, kind: str = "", spelling: str = "") -> None:
        self.outcomes.append(Outcome(target, changed, text, kind, spelling))


@dataclass(frozen=True)
class Pass:
    """A rewrite. Subclasses are frozen dataclasses: ``name`` is the CLI handle, fields are options."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    matches: ClassVar[tuple[str, ...]] = (SITE,)
    layer_types: ClassVar[tuple[type, ...]] = ()
    reads: ClassVar[frozenset[str]] = frozenset()
    writes: ClassVar[frozenset[str]] = frozenset()
    lower_reads: ClassVar[frozenset[str]] = frozenset()
    lower_writes: ClassVar[frozenset[str]] = frozenset()
    changes_inputs: ClassVar[bool] = False
    rewrites_eager: ClassVar[bool] = False
    dataflow_order: ClassVar[bool] = False  # visit targets in the order the example inputs reach them

    def prepare(self, targets: list[Target], env: Env) -> PassResult | None:
        """Called once with every target that passed the default rules, before any ``apply``:
        room to estimate memory (and refuse over a limit) or to warn about the whole model."""
        return None

    def finish(self, targets: list[Target], env: Env) -> PassResult | None:
        """Called once after every ``apply``, with the targets ``prepare`` saw: room for
        warnings about the rewritten model as a whole (its conditioning, say)."""
        return None

    def check(self, target: Target, env: Env) -> str | None:
        """The reason to leave ``target`` alone, or None to rewrite it."""
        return None

    def apply(self, target: Target, env: Env) -> str:
        """Rewrite ``target``; return a short description for the report.

        A model target's ``apply`` may replace the root: it sets ``target.root`` to the new
        module and the runner hands that on (a pass that changes the inputs does this)."""
        raise NotImplementedError(f"pass {self.name!r} matches {self.matches} but has no apply()")

    def lower(self, model: nn.Module) -> None:
        """Lower this pass's training form in ``model`` (a copy) to its exact inference form.

        The default replaces every module this pass inserted by its ``fold()`` and lets each
        function call it inserted rewrite itself (``vgp_fold``)."""
        fold_inserted(model, self.name)


def fold_inserted(model: nn.Module, pass_name: str | None = None) -> None:
    """Replace, bottom-up, each module inserted by ``pass_name`` (any pass when None) that
    declares ``fold()``, then fold the function calls that pass inserted."""
    _fold_modules(model, pass_name)
    for module in model.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in list(module.graph.nodes):
                target = node.target if node.op == "call_function" else None
                fold = getattr(target, "vgp_fold", None)
                if callable(fold) and pass_name in (None, protocol.inserted_by(target)):
                    fold(node, module)
            module.recompile()


def _fold_modules(root: nn.Module, pass_name: str | None) -> None:
    for name, child in list(root.named_children()):
        _fold_modules(child, pass_name)
        fold = getattr(child, "fold", None)
        owner = protocol.inserted_by(child)
        if callable(fold) and owner is not None and pass_name in (None, owner):
            setattr(root, name, fold())
