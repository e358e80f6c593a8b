"""The lifted forward's first node: refuse a training-mode call without ``idx`` before any layer runs."""

from __future__ import annotations

from typing import Any

from ...errors import UsageError


def require_idx(idx: Any, training: bool, num_examples: int) -> Any:
    """The lifted forward's first step: in training mode ``idx`` is required, and refusing a
    call without it here, before any layer has run, leaves BatchNorm's running statistics
    and every other buffer as they were (the cuts' own check would come after the first block)."""
    if training and idx is None:
        raise UsageError(
            f"rai: in training mode the lifted model takes (x, idx), idx being the batch's example ids in "
            f"[0, {num_examples}); call model.eval() for the plain chained network (refused before any layer ran)"
        )
    return idx
