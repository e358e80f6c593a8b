"""Public helpers for models compiled with the ``orthogonal`` pass.

    import vgpcompile
    model = vgpcompile.vgpcompile(net, passes=["bsnn"])       # gpn + orthogonal
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.5)
    vgpcompile.orthogonal.retract_after(opt, model)            # optional, see retract()
    ...
    print(max(vgpcompile.orthogonal.orthogonality_error(m) for m in vgpcompile.orthogonal.layers(model)))

This module is the user-facing name; the pass itself is ``vgpcompile.passes.orthogonal``
(handle ``"orthogonal"``) and the runtime pieces live in ``vgpcompile.nn.orthogonal``.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from .nn.orthogonal import (
    STATE,
    Layout,
    RowNorm,
    ThinShell,
    gram_error,
    haar,
    keep_orthogonal,
    newton_schulz,
    orthogonality_error,
    polar,
    retract,
    retract_after,
)


def layers(model: nn.Module) -> Iterator[nn.Module]:
    """Every layer of ``model`` that the ``orthogonal`` pass rewrote."""
    return (m for m in model.modules() if hasattr(m, STATE))


__all__ = [
    "Layout",
    "RowNorm",
    "ThinShell",
    "gram_error",
    "haar",
    "keep_orthogonal",
    "layers",
    "newton_schulz",
    "orthogonality_error",
    "polar",
    "retract",
    "retract_after",
]
