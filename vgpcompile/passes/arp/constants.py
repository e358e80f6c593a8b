"""arp's constants: the rotation target L per activation and the default eps.

L per research/arp.md §3.3 where it gives one (the reference's recommendations); 4 for
the rest. A user-registered activation gives its own with ``register_activation(...,
arp_L=...)``.
"""

from __future__ import annotations

from ...core.catalogue import Activation

EPS = 1e-5
DEFAULT_FLOOR = 0.25  # the pivot floor (modules.spreads); 0 is the reference's formula
DEFAULT_L = 4.0
L_BY_ACTIVATION: dict[str, float] = {
    "tanh": 2.0,
    "sigmoid": 4.0,
    "hardtanh": 1.0,  # the linear region ends at +-1: pin the pivot at its edge
    "softsign": 3.0,
    "arctan": 7.0,
}
TANH_STATE_Q = 3.0  # 2 * 1 - (-1): a tanh-bounded recurrent state lies in [-1, 1]


def default_L(activation: Activation) -> float:
    """The rotation target for ``activation``: its ``arp_L`` hint, the table, or 4."""
    return float(activation.hints.get("arp_L", L_BY_ACTIVATION.get(activation.name, DEFAULT_L)))
