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
import warnings

from torch import fx, nn

from .core import protocol
from .core.contract import fold_inserted
from .core.registry import REGISTRY, make_pass
from .core.report import VgpWarning
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
    left = unfolded(out)
    kept = [f"{name} ({owner})" for name, (owner, by_design) in left.items() if not by_design]
    if kept:
        shown = ", ".join(kept[:5]) + (f" (+{len(kept) - 5} more)" if len(kept) > 5 else "")
        warnings.warn(
            f"freeze: {len(kept)} inserted module(s) could not be folded into a plain layer and stay in the frozen "
            f"model: {shown}; it is not the original architecture (its state_dict loaded into the original class "
            "computes another function): save it with vgpcompile.save, or export it with export_onnx",
            VgpWarning,
            stacklevel=2,
        )
    return out


def unfolded(model: nn.Module) -> dict[str, tuple[str, bool]]:
    """Name -> (pass, whether it is its own inference form) of every module a pass inserted that is
    still in ``model`` after freeze, and of every function call a pass inserted (``<region>:<node>``).
    Empty: the frozen model computes with the original architecture's modules and functions only
    (one exception, not listed: the Add that gpn keeps before a zero-padded conv)."""
    out: dict[str, tuple[str, bool]] = {}
    for name, module in model.named_modules():
        owner = protocol.inserted_by(module)
        if owner is not None:
            out[name] = (owner, callable(getattr(module, "fold", None)))
        if isinstance(module, fx.GraphModule):
            for node in module.graph.nodes:
                owner = protocol.inserted_by(node.target) if node.op == "call_function" else None
                if owner is not None:
                    out[f"{name or '<root>'}:{node.name}"] = (owner, True)
    return out
