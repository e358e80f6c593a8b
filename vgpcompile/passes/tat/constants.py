"""The four DKS/TAT constants of each activation, from DeepMind's ``dks`` package (extra ``tat``).

phi_hat(x) = gamma * (phi(alpha * x + beta) + delta): ``dks`` calls them input_scale,
input_shift, output_shift and output_scale (any may be absent: the identity value). For
leaky ReLU the method also chooses the negative slope, which replaces the model's own.

The package solves for the constants given the network's subnetwork maximizing function
M(x, r) (kernel.py derives it from the traced graph). We call the framework-neutral
``dks.base.activation_transform.get_transformed_activations`` (``dks.pytorch``'s version is
the same call with a torch activation getter, which has no ``swish``): the constants are the
same, and they are read from the returned callable's closure (``inspect.getclosurevars``)
and checked against that callable on a grid, so a change in the package is an error, not a
silent difference.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import UsageError

EXTRA = "pip install 'vgpcompile[tat]'"
# catalogue kind (with the params that must hold) -> dks activation name
_NAMES: dict[str, tuple[str, Mapping[str, Any]]] = {
    "tanh": ("tanh", {}),
    "sigmoid": ("sigmoid", {}),
    "softsign": ("softsign", {}),
    "arctan": ("atan", {}),
    "relu": ("relu", {}),
    "leaky_relu": ("leaky_relu", {}),
    "elu": ("elu", {"alpha": 1.0}),
    "celu": ("elu", {"alpha": 1.0}),  # celu with alpha 1 is elu
    "selu": ("selu", {}),
    "silu": ("swish", {}),
    "softplus": ("softplus", {"beta": 1.0}),
}
_KEYS = ("input_scale", "input_shift", "output_shift", "output_scale")
_SOLVED: dict[tuple, dict[str, Constants]] = {}  # solves of this process, by network fingerprint
_IDENTITY = {"input_scale": 1.0, "input_shift": 0.0, "output_shift": 0.0, "output_scale": 1.0}


@dataclass(frozen=True)
class Constants:
    """phi_hat(x) = gamma * (phi(alpha * x + beta) + delta), with ``slope`` the leaky ReLU's
    negative slope chosen by the method (None for other activations)."""

    alpha: float
    beta: float
    gamma: float
    delta: float
    slope: float | None = None

    def format(self) -> str:
        values = [self.alpha, self.beta, self.gamma, self.delta] + ([self.slope] if self.slope is not None else [])
        return ",".join(repr(float(v)) for v in values)

    @classmethod
    def parse(cls, text: str) -> Constants:
        values = [float(v) for v in text.split(",")]
        if len(values) not in (4, 5) or not all(math.isfinite(v) for v in values):
            raise ValueError(f"{text!r} is not 4 or 5 finite numbers")
        return cls(*values[:4], values[4] if len(values) == 5 else None)


def dks_name(kind: str, params: Mapping[str, Any]) -> str | None:
    """The ``dks`` name of a catalogue activation with these params, or None if dks has none."""
    if kind == "gelu":
        return "gelu" if params.get("approximate") == "tanh" else "gelu_exact"
    if kind not in _NAMES:
        return None
    name, needed = _NAMES[kind]
    if any(params.get(k, v) != v for k, v in needed.items()):
        return None
    if kind == "softplus" and params.get("threshold", 20.0) < 20.0:
        return None  # a low threshold makes it a different function near the origin
    return name


def supported_kinds() -> list[str]:
    return sorted([*_NAMES, "gelu"])


def import_dks():
    """``dks.base.activation_transform`` or a UsageError naming the extra."""
    try:
        from dks.base import activation_transform
    except ImportError as err:
        raise UsageError(f"pass 'tat' needs the dks package: {EXTRA} ({err})") from None
    return activation_transform


def solve(
    names: list[str],
    method: str,
    targets: Mapping[str, float],
    subnet_max_func: Callable[[float, Callable[[float], float]], float],
) -> dict[str, Constants]:
    """The constants of each dks activation name for this network (M = ``subnet_max_func``)."""
    at = import_dks()
    key = (tuple(names), method, tuple(sorted(targets.items())), _fingerprint(subnet_max_func))
    if key in _SOLVED:
        return dict(_SOLVED[key])
    if method == "TAT":
        kwargs = {"tat_params": {"c_val_0_target": targets["c_val_0_target"],
                                 "c_curve_target": targets["c_curve_target"]}}  # fmt: skip
    else:
        kwargs = {"dks_params": {"c_slope_1_target": targets["c_slope_1_target"]}}
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # overflow in the solver's far tails
            acts = at.get_transformed_activations(list(names), method=method, subnet_max_func=subnet_max_func, **kwargs)
    except ValueError as err:  # unreachable targets (a shallow leaky-ReLU net cannot reach C(0) = 0.9)
        hint = " (a smaller target: option c_val_0_target, c_curve_target or c_slope_1_target)"
        raise UsageError(f"pass 'tat' (method {method}): dks found no constants{hint}: {err}") from None
    _SOLVED[key] = {name: _read(name, fn) for name, fn in acts.items()}
    return dict(_SOLVED[key])


def _fingerprint(subnet_max_func) -> tuple[float, ...]:
    """M on a few fixed maps: networks with the same values get the same constants (the
    solve takes seconds; experiments compile one architecture many times)."""
    probes = (lambda y: y + 1.0, lambda y: 1.5 * y, lambda y: 0.5 + 0.5 * y * y, lambda y: math.sqrt(y))
    return tuple(round(float(subnet_max_func(x, r)), 12) for x in (0.0, 0.3, 1.7) for r in probes)


def _read(name: str, fn: Callable) -> Constants:
    """The constants inside the callable dks returned, checked against it."""
    found = inspect.getclosurevars(fn).nonlocals
    if "params" not in found or not set(_KEYS) <= set(found):
        raise RuntimeError(f"dks's transformed {name!r} has an unexpected form (closure {sorted(found)})")
    value = {k: float(_IDENTITY[k] if found[k] is None else found[k]) for k in _KEYS}
    slope = found["params"].get("negative_slope")
    out = Constants(value["input_scale"], value["input_shift"], value["output_scale"], value["output_shift"],
                    None if slope is None else float(slope))  # fmt: skip
    grid = np.linspace(-4.0, 4.0, 33)
    from dks.base.activation_getter import get_activation_function

    phi = get_activation_function(name)
    extra = {} if out.slope is None else {"negative_slope": out.slope}
    mine = out.gamma * (phi(out.alpha * grid + out.beta, **extra) + out.delta)
    if not np.allclose(mine, fn(grid), rtol=1e-10, atol=1e-12):
        raise RuntimeError(f"constants read from dks's transformed {name!r} do not reproduce it")
    return out
