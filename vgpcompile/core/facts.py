"""Facts: what a pass's rewrite (or lowering) reads or changes, as a checked vocabulary.

A pass declares ``reads`` / ``writes`` (and ``lower_reads`` / ``lower_writes``) as sets of
:class:`Fact`. The runner orders passes by them (a reader after every writer); between
passes that do not depend on each other it uses one fixed order (:func:`rank`, the
registry's), so the order of ``passes=[...]`` never changes the result: the report lists
the order that ran. A name outside the vocabulary is an error naming the pass.

With example inputs, :func:`observe` and :func:`changed` detect which facts a pass actually
changed: weights (a layer's effective weight differs), layers (an affine layer was replaced
or wrapped) and ranges (a node's value range on the example inputs differs). The compile
checks a pass's declarations against them when ``VGPCOMPILE_CHECK_FACTS=1`` (the test suite
sets it): an undeclared change is a :class:`~vgpcompile.errors.PassError`.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import PassError

CHECK_ENV = "VGPCOMPILE_CHECK_FACTS"


class Fact(str, enum.Enum):
    """One fact of a model a pass may read or change (a ``str``: ``Fact.RANGES == "ranges"``)."""

    RANGES = "ranges"  # the value range of a node's output (arp's pivots read it)
    WEIGHTS = "weights"  # the values of a layer's weight
    LAYERS = "layers"  # which module computes an affine layer (replaced, wrapped, parametrized)
    PLAIN_LAYERS = "plain-layers"  # lowering: every layer is a plain torch layer again

    def __str__(self) -> str:
        return self.value


def facts(values: Iterable[str], owner: str, attribute: str) -> frozenset[Fact]:
    """``values`` as Facts, or a PassError naming the pass, the attribute and the vocabulary."""
    out = set()
    for value in values:
        try:
            out.add(Fact(value))
        except ValueError:
            known = ", ".join(f.value for f in Fact)
            raise PassError(f"pass {owner!r} declares {attribute} {value!r}, not a fact; facts are: {known}") from None
    return frozenset(out)


def rank(name: str, registered: Iterable[str]) -> tuple[int, str]:
    """The fixed position of pass ``name`` among passes that do not depend on each other:
    the registry's order, then other passes by name."""
    names = list(registered)
    return (names.index(name), "") if name in names else (len(names), name)


def checking() -> bool:
    return os.environ.get(CHECK_ENV, "") not in ("", "0")


@dataclass
class Snapshot:
    """What the fact check compares: effective weights, affine layers' types, value ranges."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: dict[str, type] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)


def observe(root: nn.Module, ranges: Mapping[str, tuple[float, float]] | None) -> Snapshot:
    """The facts of ``root`` now; ``ranges`` as calibrate.observe reports them (None: unknown)."""
    from .affine import is_affine

    snap = Snapshot(ranges=dict(ranges or {}))
    for name, module in root.named_modules():
        if is_affine(module) or isinstance(module, nn.RNNBase):
            snap.layers[name] = type(module)
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor):
                snap.weights[name] = weight.detach().clone()
    return snap


def changed(before: Snapshot, after: Snapshot, rtol: float = 1e-4) -> set[Fact]:
    """The facts that differ between two snapshots of one model (for names in both)."""
    out: set[Fact] = set()
    for name, kind in before.layers.items():
        if after.layers.get(name) is not kind:
            out.add(Fact.LAYERS)
    for name, w in before.weights.items():
        new = after.weights.get(name)
        if new is not None and (new.shape != w.shape or not torch.allclose(new, w, rtol=rtol, atol=1e-6)):
            out.add(Fact.WEIGHTS)
    for key, (lo, hi) in before.ranges.items():
        new = after.ranges.get(key)
        if new is not None and not (_close(lo, new[0], rtol) and _close(hi, new[1], rtol)):
            out.add(Fact.RANGES)
    return out


def _close(a: float, b: float, rtol: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=1e-6)


def check(pass_name: str, declared: Iterable[str], found: set[Fact]) -> None:
    """A PassError when the pass changed a fact it does not declare in ``writes``."""
    missing = sorted(f.value for f in found - set(declared))
    if missing:
        raise PassError(
            f"pass {pass_name!r} changed {', '.join(missing)} on the example inputs but does not declare it: "
            f"add {missing} to its writes, so the runner orders the passes that read it after it"
        )
