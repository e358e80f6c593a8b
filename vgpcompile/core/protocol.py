"""What a module inserted by a pass declares about itself, so the core never lists pass classes.

A pass's runtime module (GPN's activation, arp's rotated Linear, a roaf block, ...) tells
the core what it needs through class attributes and methods with a ``vgp_`` prefix, or
the plain-layer method ``fold``:

- ``vgp_pass`` (class attribute, str): the pass that inserts it. Capture keeps such a
  module whole (a compiled model compiles again cleanly), and freeze's default lowering
  for that pass replaces it.
- ``vgp_applied`` (tuple of pass names): passes already applied to this module or the
  activation it wraps; the runner refuses to apply one twice.
- ``vgp_activation`` (property -> ``(Activation, params)``): set when the module wraps one
  catalogue activation (GPN's ``a*phi+b``). Site finding sees the activation through it
  and the nonlinear depth counts it.
- ``vgp_depth`` (int): the module's contribution to the nonlinear depth when it does not
  wrap an activation (a block holding an affine layer and an activation counts 1).
- ``vgp_output_range(*input_ranges)`` -> ``(lo, hi)`` or a reason string: the range of its
  output given the ranges of its tensor inputs, one per positional input in call order
  (None where unknown); range inference (arp's pivot) reads it.
- ``fold()`` -> nn.Module: its exact inference form (a plain torch layer, or a module
  whose forward has no training-only machinery).

Functions a pass inserts as ``call_function`` targets declare ``vgp_pass`` and
``vgp_fold(node, gm)`` (rewrite the call to its plain form) the same way.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from .catalogue import Activation
from .lookup import attribute

Range = tuple[float, float]


def inserted_by(obj: Any) -> str | None:
    """The pass that inserted ``obj`` (a module or a function), or None for the user's own."""
    return attribute(obj, "vgp_pass")


def applied(module: nn.Module) -> tuple[str, ...]:
    return tuple(attribute(module, "vgp_applied", ()))


def mark_applied_module(module: nn.Module, pass_name: str) -> None:
    """Record on a (user) module that ``pass_name`` rewrote it in place."""
    module.vgp_applied = (*applied(module), pass_name)


def wrapped_activation(module: nn.Module) -> tuple[Activation, dict[str, Any]] | None:
    """(activation, params) of a module that declares it wraps one, else None."""
    found = attribute(module, "vgp_activation")
    return None if found is None else (found[0], dict(found[1]))


def depth_of(module: nn.Module) -> int | None:
    """The nonlinear depth an inserted module declares, or None when it declares none."""
    if wrapped_activation(module) is not None:
        return 1
    depth = attribute(module, "vgp_depth")
    return None if depth is None else int(depth)


def declares_output_range(module: nn.Module) -> bool:
    return callable(attribute(module, "vgp_output_range"))


def output_range(module: nn.Module, *input_ranges: Range | None) -> Range | str | None:
    """The declared output range of ``module`` (a finite (lo, hi)) given the ranges of its
    positional tensor inputs, a reason it is unknown, or None when the module declares nothing."""
    if not declares_output_range(module):
        return None
    found = module.vgp_output_range(*input_ranges)
    if found is None:
        return f"the output of {type(module).__name__}, whose range is not bounded"
    if isinstance(found, str):
        return found
    lo, hi = (float(v) for v in found)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"the output of {type(module).__name__}, range [{lo:g}, {hi:g}]"
    return lo, hi


def affine_of_range(activation: Activation, params: dict[str, Any], scale: float, shift: float) -> Range | None:
    """The range of ``scale * phi + shift`` for an inserted activation module's
    ``vgp_output_range`` (gpn's a·φ+b, tat's γ·(φ+δ)); None when φ's own range is unbounded."""
    lo, hi = activation.output_range(params)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    ends = sorted((scale * lo + shift, scale * hi + shift))
    return ends[0], ends[1]
