"""orthogonal's lowering: bake every parametrization and drop the retraction.

Each rewritten layer becomes a plain layer holding its current (orthogonal) weight, before
anything folds into it: no linalg op or normalization reaches the inference graph.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .modules import STATE, OrthogonalState, retract_layer


def lower(model: nn.Module) -> None:
    for module in list(model.modules()):
        unhook(module)
        bake_parametrizations(module)


def unhook(module: nn.Module) -> None:
    """Drop what keeps ``module`` orthogonal (hooks; freeze bakes parametrizations itself),
    retracting the weight first: the plain layer holds an orthogonal weight however it was
    last changed."""
    state: OrthogonalState | None = getattr(module, STATE, None)
    if state is None or state.keep == "frozen":
        return
    if state.keep == "retraction":  # a no-op within tol; an edited or drifted (every > 1) weight is pulled back
        retract_layer(module)
    for handle in state.handles:
        handle.remove()
    state.handles.clear()
    state.keep, state.module = "frozen", None


@torch.no_grad()
def bake_parametrizations(module: nn.Module) -> None:
    """Replace each parametrized tensor of ``module`` by a plain parameter holding its value.

    Not ``parametrize.remove_parametrizations``: a deepcopy of a parametrized module shares
    its generated ``Parametrized<Cls>`` class with the original (torch 2.13), and removal
    deletes the property from that class, which breaks the original (freeze works on a
    copy). Here only the instance's class is changed back.
    """
    if not parametrize.is_parametrized(module):
        return
    values = {name: getattr(module, name) for name in module.parametrizations}
    # a right_inverse returning several tensors stores original0, original1, ...
    grads = {name: next(module.parametrizations[name].parameters()).requires_grad for name in values}
    module.__class__ = module.__class__.__bases__[0]
    del module._modules["parametrizations"]
    for name, value in values.items():
        module.register_parameter(name, nn.Parameter(value.detach().clone(), requires_grad=grads[name]))
