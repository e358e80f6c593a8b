"""The ``roaf`` pass (random orthogonal additive filters): the rewrite, the filter and the
ROAF RNN it inserts (usable by hand), and its constants. Lowering is the default: both
modules are their own inference form (the filter is part of the function)."""

from .constants import DEFAULT_C, DEFAULT_HORIZON, DEFAULT_MAX_BUFFER_MB
from .modules import ROAFRNN, ROAFFilter, ROAFHadamard, ROAFMatrix, haar_orthogonal, seed_for
from .rewrite import ROAF

__all__ = [
    "DEFAULT_C",
    "DEFAULT_HORIZON",
    "DEFAULT_MAX_BUFFER_MB",
    "ROAF",
    "ROAFRNN",
    "ROAFFilter",
    "ROAFHadamard",
    "ROAFMatrix",
    "haar_orthogonal",
    "seed_for",
]
