"""Freeze step for ``gpn``: fold a * phi(x) + b into the affine layer that consumes it.

    GPN(x) -> Linear(W, c)        ==>  phi(x) -> Linear(a W, c + b W 1)
    GPN(x) -> Conv(W, c)          ==>  phi(x) -> Conv(a W, c + b sum_{in, k} W)

Exact in real arithmetic; in floating point the folded weights differ by rounding only.
A Conv with zero padding sees padded zeros, not b, at its borders, so it is folded only
when b = 0 (ReLU and leaky ReLU with the default root); a GPN whose output has another
use is not folded either. Those keep one fused mul-add (addcmul).
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from ...core.catalogue import DEFAULT, Catalogue
from ...core.rewrite import replace_node
from ...core.targets import call_counts
from .modules import GPNActivation

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fold_gpn(gm: fx.GraphModule, catalogue: Catalogue = DEFAULT) -> int:
    """Fold every foldable GPN call in ``gm``; return how many were folded."""
    calls = call_counts(gm)
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), GPNActivation):
            continue
        gpn = gm.get_submodule(node.target)
        layer_node = _sole_layer_user(node, gm, calls, float(gpn.b))
        plain = catalogue.plain_call(gpn.activation.name, gpn.params)
        if layer_node is None or plain is None or calls[node.target] != 1:
            continue
        layer = gm.get_submodule(layer_node.target)
        gm.set_submodule(layer_node.target, absorb(layer, float(gpn.a), float(gpn.b)))
        target, kwargs = plain
        replace_node(node, "call_function", target, node.args, kwargs, meta_keys=tuple(node.meta))
        folded += 1
    if folded:
        gm.delete_all_unused_submodules()
    return folded


def _sole_layer_user(node: fx.Node, gm: fx.GraphModule, calls: dict[str, int], b: float) -> fx.Node | None:
    if len(node.users) != 1:
        return None
    (user,) = node.users
    if user.op != "call_module" or calls.get(user.target) != 1 or user.args[:1] != (node,):
        return None
    layer = gm.get_submodule(user.target)
    if type(layer) is nn.Linear:
        return user
    if type(layer) in _CONVS and (b == 0 or layer.padding_mode != "zeros" or _no_padding(layer)):
        return user
    return None


def _no_padding(conv: nn.Module) -> bool:
    if isinstance(conv.padding, str):
        return conv.padding == "valid"
    return all(p == 0 for p in conv.padding)


@torch.no_grad()
def absorb(layer: nn.Module, a: float, b: float) -> nn.Module:
    """``layer`` applied to a * x + b, as one layer of the same type."""
    out = copy.deepcopy(layer)
    w = layer.weight
    shift = b * w.sum(dim=tuple(range(1, w.dim())))
    out.weight.copy_(a * w)
    if layer.bias is None:
        if b == 0:
            return out
        out.bias = nn.Parameter(shift.clone())
    else:
        out.bias.copy_(layer.bias + shift)
    return out
