"""``freeze(model)``: the inference form of a compiled model.

Every module a pass inserted knows its exact plain equivalent through ``fold()`` (an
auto-rotated Linear folds its rotation into the weight, a recurrent module into its gate
weights); freeze replaces each such module by that equivalent, bakes parametrizations,
and recompiles the graphs. The training form is never changed unless ``inplace=True``.
"""

from __future__ import annotations

import copy

from torch import fx, nn


def freeze(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every inserted module replaced by its exact inference form."""
    out = model if inplace else copy.deepcopy(model)
    _fold_modules(out)
    for module in out.modules():
        if isinstance(module, fx.GraphModule):
            module.recompile()
    return out


def _fold_modules(root: nn.Module) -> None:
    """Replace, bottom-up, each submodule that has ``fold()`` by what it returns."""
    for name, child in list(root.named_children()):
        _fold_modules(child)
        fold = getattr(child, "fold", None)
        if callable(fold):
            setattr(root, name, fold())
