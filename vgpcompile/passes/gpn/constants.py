"""Gaussian moments of activations, and the GPN constants built from them.

Gauss-Hermite converges slowly on kinked integrands (ReLU's derivative jumps), so we use
composite Gauss-Legendre on a fine fixed grid of [-R, R] whose breakpoints include every
multiple of 1/4 and every declared kink: the integrand is then smooth on each piece and
the rule is exact to rounding. Each result is computed at two grid widths; a disagreement
above 1e-7 means an undeclared kink and raises instead of returning a wrong constant.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import ActivationError, UsageError

_R = 12.0  # the N(0,1) density is below 1e-31 beyond here
_NODES = 16
_TOL = 1e-7


@dataclass(frozen=True)
class Moments:
    """E psi(z), E psi(z)^2 and E psi'(z)^2 for z ~ N(0, 1)."""

    mean: float
    second: float
    deriv_second: float

    @property
    def var(self) -> float:
        return self.second - self.mean**2


def _grid(step: float, kinks: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (including the Gaussian density) of the composite rule."""
    edges = np.arange(-_R, _R + step / 2, step)
    inner = [k for k in kinks if -_R < k < _R]
    edges = np.unique(np.concatenate([edges, np.asarray(inner, dtype=float)]))
    x, w = np.polynomial.legendre.leggauss(_NODES)
    lo, hi = edges[:-1, None], edges[1:, None]
    nodes = (lo + hi) / 2 + (hi - lo) / 2 * x
    weights = (hi - lo) / 2 * w * np.exp(-(nodes**2) / 2) / math.sqrt(2 * math.pi)
    return nodes.ravel(), weights.ravel()


def _moments_on(fn: Callable[[torch.Tensor], torch.Tensor], nodes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    z = torch.tensor(nodes, dtype=torch.float64, requires_grad=True)
    y = fn(z)
    dy = torch.autograd.grad(y.sum(), z, allow_unused=True)[0] if y.requires_grad else None
    y, dy = y.detach().numpy(), (np.zeros_like(nodes) if dy is None else dy.numpy())
    return np.array([weights @ y, weights @ y**2, weights @ dy**2])


def gaussian_moments(fn: Callable[[torch.Tensor], torch.Tensor], kinks: Sequence[float] = ()) -> Moments:
    """Moments of an elementwise ``fn`` under N(0, 1), accurate to about 1e-12."""
    coarse = _moments_on(fn, *_grid(0.25, kinks))
    fine = _moments_on(fn, *_grid(0.125, kinks))
    if not np.all(np.isfinite(fine)):
        raise ActivationError("its Gaussian moments are not finite (the function grows too fast)")
    if np.max(np.abs(fine - coarse)) > _TOL:
        raise ActivationError(
            "quadrature did not converge: the function likely has a kink or jump that was not declared; "
            "pass its location with kinks=[...] when registering it"
        )
    return Moments(*(float(v) for v in fine))


def gpn_from_moments(m: Moments, root: str) -> tuple[float, float]:
    """(a, b) with E[(a psi + b)^2] = E[(a psi')^2] = 1; ``root`` is "plus" or "minus".

    b solves b^2 + 2 a mu b + a^2 m2 - 1 = 0, so b = -a mu +- sqrt(1 - a^2 Var psi): the
    "plus" root gives E[a psi + b] > 0, the "minus" root E[a psi + b] < 0.
    """
    if not m.deriv_second > 1e-12:
        raise ActivationError("E[psi'(z)^2] is zero: the derivative vanishes almost everywhere")
    a = 1.0 / math.sqrt(m.deriv_second)
    disc = 1.0 - a * a * m.var
    if disc < -1e-12:
        raise ActivationError(
            f"no real GPN shift exists: Var psi = {m.var:.6g} exceeds E psi'^2 = {m.deriv_second:.6g} "
            "(the Gaussian-Poincare inequality fails, e.g. for a function with a jump)"
        )
    half = math.sqrt(max(disc, 0.0))
    b = -a * m.mean + (half if root == "plus" else -half)
    return a, (0.0 if abs(b) < 1e-12 else b)  # ReLU's b is 0 exactly, not -1e-17


@functools.cache
def _cached(key: tuple, root: str) -> tuple[float, float]:
    fn, kinks = _CACHE_INPUTS[key]
    return gpn_from_moments(gaussian_moments(fn, kinks), root)


_CACHE_INPUTS: dict[tuple, tuple[Callable[[torch.Tensor], torch.Tensor], tuple[float, ...]]] = {}


ROOTS = ("minus", "plus", "paper")


def resolve_root(root: str, activation) -> str:
    """The b root to use: "paper" is the authors' convention (minus for the GELU family only)."""
    if root not in ROOTS:
        raise UsageError(f"gpn option 'root' must be one of {ROOTS}, got {root!r}")
    if root == "paper":
        return "minus" if activation.family == "gelu" else "plus"
    return root


def gpn_constants(activation, params: dict, root: str) -> tuple[float, float]:
    """Cached (a, b) for a catalogue activation with the given parameters; ``root`` in ROOTS."""
    root = resolve_root(root, activation)
    key = (activation.name, id(activation.fn), tuple(sorted(params.items())))
    if key not in _CACHE_INPUTS:
        kinks = tuple(activation.kinks(params))
        _CACHE_INPUTS[key] = (functools.partial(activation.fn, **params), kinks)
    try:
        return _cached(key, root)
    except ActivationError as err:
        raise ActivationError(f"GPN constants for {activation.describe(params)}: {err}") from None
