"""Freeze step for ``gpn``: fold a * phi(x) + b into the affine layer that consumes it.

    GPN(x) -> Linear(W, c)               ==>  phi(x) -> Linear(a W, c + b W 1)
    GPN(x) -> declared affine (Conv1D)   ==>  the same on its own weight layout (core/affine.py)
    GPN(x) -> Conv(W, c), no zero pads   ==>  phi(x) -> Conv(a W, c + b sum_{in, k} W)
    GPN(x) -> Conv(W, c), zero pads      ==>  phi(x) + b/a -> Conv(a W, c)
    GPN(x) -> pool/flatten/... -> layer  ==>  phi(x) -> pool/flatten/... -> folded layer

A zero-padded Conv sees padded zeros, not a * phi + b, at its borders, so b cannot go into
its bias; b = 0 (ReLU with ``root="plus"``) folds completely, any other b keeps one Add of
the constant b/a (zero padding and a constant shift do not commute, so some elementwise op
is unavoidable; an explicit Pad with the value -b/a and b folded into the bias is just as
exact, and measured slower in onnxruntime: benchmarks/inference_cnn.py) -- unless phi is a
clamp whose input comes from a layer with a bias that feeds nothing else:

    Layer(z) -> relu  + b/a   ==>  Layer'(z) (bias + b/a) -> clamp(min=b/a)          (relu6: max 6 + b/a)

relu(z) + c = max(z + c, c), so the shift rides in the producer's bias (Linear, Conv, or an
affine BatchNorm: conv -> BN -> ReLU -> conv) and the clamp's bound, and no op is added. Between the GPN
and the layer there may be ops f with f(a x + b) = a f(x) + b (reshapes, means, average
pools without zero padding, and for a > 0 max pools): the usual CNN's act -> max pool ->
conv and act -> global pool -> flatten -> Linear. Exact in real arithmetic; in floating
point the folded weights differ by rounding only.

So a GPN that reaches one Linear or Conv leaves no Mul and no Add in the frozen graph,
except the one Add before a zero-padded conv when b != 0. A GPN whose value has any other
use (a residual add, a model output, a second consumer) keeps one fused mul-add (addcmul).
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...core.affine import declared
from ...core.catalogue import DEFAULT, Catalogue
from ...core.rewriter import active
from .modules import GPNActivation

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LAYERS = (nn.Linear, *_CONVS)
# f(a x + b) = a f(x) + b for every a, b (for a > 0 with the max ops)
_SHIFT_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                  nn.AdaptiveAvgPool3d)  # fmt: skip
_MAX_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                nn.AdaptiveMaxPool3d)  # fmt: skip
_AVG_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_SHIFT_FUNCTIONS = (torch.flatten, torch.reshape, torch.mean, torch.permute, torch.transpose, torch.squeeze,
                    torch.unsqueeze, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)  # fmt: skip
_MAX_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d)
_SHIFT_METHODS = ("flatten", "view", "reshape", "mean", "permute", "transpose", "squeeze", "unsqueeze", "contiguous")


def fold_gpn(gm: fx.GraphModule, catalogue: Catalogue = DEFAULT) -> int:
    """Fold every foldable GPN call in ``gm``; return how many were folded."""
    rewriter = active()
    calls, folded = rewriter.call_counts(gm), 0
    for node in rewriter.nodes(gm):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), GPNActivation):
            continue
        gpn = gm.get_submodule(node.target)
        plain = catalogue.plain_call(gpn.activation.name, gpn.params)
        if plain is None:
            continue
        target, kwargs = plain
        replace = lambda n=node, t=target, k=kwargs: rewriter.replace_node(  # noqa: E731
            n, "call_function", t, n.args, k, meta_keys=tuple(n.meta))
        folded += fold_into_consumer(node, gm, calls, gpn.a.item(), gpn.b.item(), replace)
    if folded:
        rewriter.drop_unused_modules(gm)
    return folded


def fold_into_consumer(node: fx.Node, gm: fx.GraphModule, calls: dict[str, int], a: float, b: float, replace) -> bool:
    """Fold ``y -> a * y + b`` at ``node`` (a module called once) into the one Linear/Conv
    its value reaches through shift-equivariant ops; ``replace()`` puts the node's plain
    form (without a, b) in its place and returns it. False (nothing changed) when no such
    layer exists. Used by gpn and by tat (its output scale and shift)."""
    found = _consuming_layer(node, gm, calls, a) if calls[node.target] == 1 and a != 0 else None
    if found is None:
        return False
    last, layer_node = found
    layer = gm.get_submodule(layer_node.target)
    shift_input = b != 0 and _pads_with_zeros(layer)
    rewriter = active()
    rewriter.swap_module(gm, layer_node.target, absorb(layer, a, 0.0 if shift_input else b))
    phi = replace()
    if shift_input and _shift_into_producer(phi, gm, calls, b / a):
        return True
    if shift_input:  # after the pools and reshapes, where the tensor is smallest
        last = phi if last is node else last
        shifted = rewriter.insert_after(last, "call_function", operator.add, (last, b / a))
        shifted.meta.update({k: v for k, v in layer_node.meta.items() if k == "nn_module_stack"})
        rewriter.replace_input(layer_node, last, shifted)
    return True


# clamps phi with phi(z) + c = clamp(z + c, lo + c, hi + c): the activation -> (lo, hi)
_CLAMPS = {F.relu: (0.0, None), torch.relu: (0.0, None), F.relu6: (0.0, 6.0)}
# layers whose output a shift folds into exactly: the bias (one value per output channel, dim 1)
_SHIFTABLE = (nn.Linear, *_CONVS, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _shift_into_producer(phi: fx.Node, gm: fx.GraphModule, calls: dict[str, int], c: float) -> bool:
    """clamp(Layer(x) + c, lo + c, hi + c) in place of phi(Layer(x)) + c, with c in Layer's bias,
    when phi is a clamp (relu, relu6) and Layer feeds phi only; False (nothing changed) otherwise."""
    bounds = _CLAMPS.get(phi.target) if phi.op == "call_function" and not phi.kwargs else None
    src = sole_producer(phi, calls) if bounds is not None and len(phi.args) == 1 else None
    layer = gm.get_submodule(str(src.target)) if src is not None else None
    if type(layer) not in _SHIFTABLE or getattr(layer, "weight", None) is None:  # BatchNorm(affine=False)
        return False
    rewriter = active()
    rewriter.swap_module(gm, str(src.target), scale_output(layer, 1.0, c))
    lo, hi = bounds
    clamp = {"min": lo + c} | ({} if hi is None else {"max": hi + c})
    rewriter.replace_node(phi, "call_function", torch.clamp, (src,), clamp, meta_keys=tuple(phi.meta))
    return True


def sole_producer(node: fx.Node, calls: dict[str, int]) -> fx.Node | None:
    """The module call that produces ``node``'s input, when that module is called once and its
    value feeds ``node`` only (so its bias or scale may change); else None."""
    src = active().input_of(node) if node.args else None
    alone = isinstance(src, fx.Node) and src.op == "call_module" and calls.get(src.target) == 1
    return src if alone and len(src.users) == 1 else None


def _consuming_layer(node: fx.Node, gm: fx.GraphModule, calls: dict[str, int], a: float):
    """(the last node before the layer, the layer's node) when ``node``'s value reaches one
    Linear/Conv only, through shift-equivariant ops only; else None."""
    current = node
    while True:
        users = [u for u in current.users if not _reads_shape_only(u)]
        if len(users) != 1 or not _takes_only_as_first_argument(users[0], current):
            return None
        (user,) = users
        if user.op == "call_module" and calls.get(user.target) == 1 and _absorbs(gm.get_submodule(user.target)):
            return current, user
        if not _commutes_with_affine(user, gm, a):
            return None
        current = user


def _reads_shape_only(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in ("size", "dim")
    return node.op == "call_function" and node.target is getattr and node.args[1:] in (("shape",), ("ndim",))


def _takes_only_as_first_argument(user: fx.Node, value: fx.Node) -> bool:
    others: list[fx.Node] = []
    fx.node.map_arg((user.args[1:], user.kwargs), others.append)
    return user.args[:1] == (value,) and value not in others


def _commutes_with_affine(node: fx.Node, gm: fx.GraphModule, a: float) -> bool:
    """f(a x + b) = a f(x) + b for this op."""
    if node.op == "call_method":
        return node.target in _SHIFT_METHODS
    if node.op == "call_function":
        if node.target in _MAX_FUNCTIONS:
            return a > 0 and not node.kwargs.get("return_indices", False)
        return node.target in _SHIFT_FUNCTIONS
    if node.op != "call_module":
        return False
    module = gm.get_submodule(node.target)
    if isinstance(module, _MAX_MODULES):
        return a > 0 and not module.return_indices
    if isinstance(module, _AVG_MODULES):  # zero padding counted in the mean, or other divisors, break it
        pads = module.padding if isinstance(module.padding, tuple) else (module.padding,)
        plain_mean = not any(pads) or not module.count_include_pad
        return plain_mean and not module.ceil_mode and getattr(module, "divisor_override", None) is None
    return type(module) in _SHIFT_MODULES


def _pads_with_zeros(layer: nn.Module) -> bool:
    if type(layer) not in _CONVS or layer.padding_mode != "zeros":
        return False
    # torch's own resolved form of the padding ('same' included)
    return any(int(p) for p in layer._reversed_padding_repeated_twice)


def _absorbs(layer: nn.Module) -> bool:
    """torch's Linear and Conv, and declared affine layers (core/affine.py: transformers' Conv1D)
    that have a bias to take b (or none, when b is 0 anyway, is decided in absorb's caller)."""
    if type(layer) in _LAYERS:
        return True
    spec = declared(layer)
    return spec is not None and spec.bias is not None and getattr(layer, spec.bias, None) is not None


@torch.no_grad()
def absorb(layer: nn.Module, a: float, b: float) -> nn.Module:
    """``layer`` applied to a * x + b, as one layer of the same type."""
    out = copy.deepcopy(layer)
    spec = declared(layer)
    if spec is not None:  # x @ W + c ("in_out", Conv1D) or x @ W.T + c: the input dim is 0 or 1
        w, bias = getattr(layer, spec.weight), getattr(layer, spec.bias)
        getattr(out, spec.weight).copy_(a * w)
        getattr(out, spec.bias).copy_(bias + b * w.sum(dim=0 if spec.layout == "in_out" else 1))
        return out
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


@torch.no_grad()
def scale_output(layer: nn.Module, a: float, b: float) -> nn.Module:
    """``a * layer(x) + b`` as one layer of the same type (Linear, ConvNd, affine BatchNorm)."""
    out = copy.deepcopy(layer)
    out.weight.mul_(a)
    if out.bias is None:
        if b != 0:
            out.bias = nn.Parameter(torch.full((layer.weight.shape[0],), b, dtype=layer.weight.dtype,
                                               device=layer.weight.device))  # fmt: skip
    else:
        out.bias.mul_(a).add_(b)
    return out
