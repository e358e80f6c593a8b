"""arp's lowering: every rotation folded into plain weights (freeze).

Rotated modules fold themselves (``fold()``: the plain torch layer with rho folded into
its weight and bias); a rotated functional call (``arp_linear`` for an ``F.linear``
producer) folds through :func:`fold_call`, which rewrites the parameters it reads.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ...core.runner import get_attr
from ...errors import UsageError
from .constants import EPS
from .modules import groups_of, rotate_parameters


def fold_call(node: fx.Node, gm: fx.GraphModule) -> None:
    """freeze's step for a rotated functional call: fold rho into the parameters it reads.

    The pass only rotates calls whose weight (and bias) are parameters read by that call
    alone, so the frozen copy may overwrite them under the same names.
    """
    kwargs = dict(node.kwargs)
    L, q, eps, floor = kwargs.pop("L"), kwargs.pop("q"), kwargs.pop("eps", EPS), kwargs.pop("floor", 0.0)
    kwargs.pop("save_output", None)  # how the training form saved for backward; the plain call has no such option
    w_node = node.args[1] if len(node.args) > 1 else kwargs.get("weight")
    b_node = node.args[2] if len(node.args) > 2 else kwargs.get("bias")
    for arg in (w_node, b_node):
        if isinstance(arg, fx.Node) and arg.op != "get_attr":
            raise UsageError(
                f"cannot freeze {node.name!r}: its weight or bias is computed at run time, not a parameter"
            )
    weight = get_attr(gm, str(w_node.target))
    bias = get_attr(gm, str(b_node.target)) if isinstance(b_node, fx.Node) else b_node
    groups = groups_of(tuple(node.args[3:]), kwargs) if node.target.vgp_transposed else 1
    with torch.no_grad():
        w, b = rotate_parameters(
            weight, bias, q=q, L=L, eps=eps, floor=floor, transposed=node.target.vgp_transposed, groups=groups
        )
    _replace_tensor(gm, w_node.target, w)
    if isinstance(b_node, fx.Node):
        _replace_tensor(gm, b_node.target, b)
    node.target, node.kwargs = node.target.vgp_plain, kwargs


def _replace_tensor(gm: nn.Module, target: str, value: torch.Tensor) -> None:
    owner_name, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_name)
    old = getattr(owner, name)
    if name in owner._parameters:
        setattr(owner, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
    elif name in owner._buffers:
        owner._buffers[name] = value.detach().clone()
    else:
        setattr(owner, name, value.detach().clone())
