"""The ``orthogonal`` pass (BSNN's orthogonal weights): the rewrite, what keeps a weight
orthogonal in training (retraction, parametrizations, row normalization), the thin-shell
input module, and the lowering (baking). The helpers below are public:

    import vgpcompile
    model = vgpcompile.vgpcompile(net, passes=["bsnn"])       # gpn + orthogonal
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.5)
    ...                                                        # opt.step() retracts
    print(max(vgpcompile.orthogonal.orthogonality_error(m) for m in vgpcompile.orthogonal.layers(model)))
    print(vgpcompile.orthogonal.drift(model))                  # the largest error seen at a retraction
    print(sum(m.vgp_orthogonal.skips for m in vgpcompile.orthogonal.layers(model)))  # steps certified without a Gram
"""

from collections.abc import Iterator

from torch import nn

from .lower import bake_parametrizations, unhook
from .modules import (
    STATE,
    Layout,
    RowNorm,
    ThinShell,
    certified_bound,
    drift,
    gram_error,
    haar,
    keep_orthogonal,
    newton_schulz,
    orthogonality_error,
    polar,
    retract,
    retract_after,
)
from .rewrite import Orthogonal


def layers(model: nn.Module) -> Iterator[nn.Module]:
    """Every layer of ``model`` that the ``orthogonal`` pass rewrote."""
    return (m for m in model.modules() if hasattr(m, STATE))


__all__ = [
    "Layout",
    "Orthogonal",
    "RowNorm",
    "ThinShell",
    "bake_parametrizations",
    "certified_bound",
    "drift",
    "gram_error",
    "haar",
    "keep_orthogonal",
    "layers",
    "newton_schulz",
    "orthogonality_error",
    "polar",
    "retract",
    "retract_after",
    "unhook",
]
