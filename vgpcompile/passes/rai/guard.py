"""The lifted forward's first call: refuse a training-mode call without ``idx`` before any layer runs."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...errors import UsageError


class RAIGuard(nn.Module):
    """``idx = guard(idx)`` at the start of the lifted forward. The cuts check ``idx`` too, but
    only after the layers before the first cut have run (and updated BatchNorm's running
    statistics); this refuses the call first. A module (a leaf that capture keeps whole, not
    run while tracing) that follows ``.train()``/``.eval()`` with the model."""

    vgp_pass = "rai"
    vgp_applied = ("rai",)

    def __init__(self, num_examples: int) -> None:
        super().__init__()
        self.num_examples = num_examples

    def forward(self, idx: Any = None) -> Any:
        if self.training and idx is None:
            raise UsageError(
                f"rai: in training mode the lifted model takes (x, idx), idx being the batch's example ids in "
                f"[0, {self.num_examples}); call model.eval() for the plain chained network (refused before any "
                "layer ran)"
            )
        return idx

    def extra_repr(self) -> str:
        return f"num_examples={self.num_examples}"
