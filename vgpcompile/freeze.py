"""``freeze(model)``: the inference form of a compiled model.

Every module a pass inserted knows its exact plain equivalent through ``fold()`` (an
auto-rotated Linear folds its rotation into the weight, a recurrent module into its gate
weights); freeze replaces each such module by that equivalent, bakes parametrizations,
and recompiles the graphs. A function call a pass inserted (``arp_linear`` for an
``F.linear`` producer) folds the same way, through its target's ``vgp_fold(node, gm)``.
The training form is never changed unless ``inplace=True``.
"""

from __future__ import annotations

import copy

from torch import fx, nn

from .fold_gpn import fold_gpn
from .nn.orthogonal import bake_parametrizations, unhook


def freeze(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every inserted module replaced by its exact inference form."""
    out = model if inplace else copy.deepcopy(model)
    _bake_weights(out)
    _fold_modules(out)
    for module in out.modules():
        if isinstance(module, fx.GraphModule):
            _fold_calls(module)
            fold_gpn(module)
            module.recompile()
    recipe = getattr(model, "vgp_recipe", None)
    if recipe is not None:  # save/load rebuild the frozen form from the recipe
        out.vgp_recipe = {**recipe, "form": "frozen"}
    return out


def _bake_weights(root: nn.Module) -> None:
    """Bake every parametrization (orthogonal maps, row normalization) into a plain parameter
    holding its current value and drop the retraction and load hooks, before anything folds
    into those weights: no linalg op or normalization reaches the inference graph."""
    for module in list(root.modules()):
        unhook(module)
        bake_parametrizations(module)


def _fold_modules(root: nn.Module) -> None:
    """Replace, bottom-up, each submodule that has ``fold()`` by what it returns."""
    for name, child in list(root.named_children()):
        _fold_modules(child)
        fold = getattr(child, "fold", None)
        if callable(fold):
            setattr(root, name, fold())


def _fold_calls(gm: fx.GraphModule) -> None:
    """Let each inserted function call with a ``vgp_fold`` rewrite itself to its plain form."""
    for node in list(gm.graph.nodes):
        fold = getattr(node.target, "vgp_fold", None) if node.op == "call_function" else None
        if callable(fold):
            fold(node, gm)
