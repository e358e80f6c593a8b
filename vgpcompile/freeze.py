"""``freeze(model)``: the inference form of a compiled model.

A generic walk: the passes of the model's recipe are lowered in :func:`lower_order`
(the reverse of the order they ran in, adjusted by what each lowering declares it reads
and writes), each through its own ``Pass.lower``. A model without a recipe (layers built
by hand) is lowered by every registered pass. Any module a pass inserted that is still
there afterwards is replaced by its declared plain equivalent, ``fold()``. Graphs are
recompiled. The training form is never changed unless ``inplace=True``.
"""

from __future__ import annotations

import copy

from torch import fx, nn

from .core.contract import fold_inserted
from .core.registry import REGISTRY, make_pass
from .core.runner import lower_order


def freeze(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every pass lowered to its exact inference form."""
    out = model if inplace else copy.deepcopy(model)
    recipe = getattr(model, "vgp_recipe", None)
    if recipe is None:
        passes = [make_pass(name) for name in REGISTRY]
    else:
        passes = [make_pass(p["name"], p.get("options", {})) for p in recipe.get("passes", [])]
    for pass_ in lower_order(passes):
        pass_.lower(out)
    fold_inserted(out)
    for module in out.modules():
        if isinstance(module, fx.GraphModule):
            module.recompile()
    if recipe is not None:  # save/load rebuild the frozen form from the recipe
        out.vgp_recipe = {**recipe, "form": "frozen"}
    return out
