"""Input-range inference for arp's pivot: the range of values a node's output can take.

Looked through dropout, reshapes, pooling and indexing, a node's range is known when it is
the output of a bounded activation (tanh [-1, 1], sigmoid [0, 1]), of an inserted module
that declares its output range (a GPN-wrapped activation, ``vgp_output_range``), of a
tanh-state recurrent layer, or the model input (``input_range=`` or the min/max of
``example_inputs``). Otherwise the answer is a description of the node, for the error.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...core import protocol
from ...core.contract import Env
from ...core.lookup import submodule
from ...core.rewriter import active
from ...core.targets import AFFINE_FUNCTIONS, AFFINE_MODULES, is_passthrough

_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_AVG_POOLS = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
Found = tuple[float, float, str] | str
_NORM_MODULES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_NORM_FUNCTIONS = {F.batch_norm: "F.batch_norm", F.layer_norm: "F.layer_norm", F.group_norm: "F.group_norm"}


def describe(node, gm: fx.GraphModule) -> str:
    """A short description of what ``node`` is, for messages."""
    if not isinstance(node, fx.Node):
        return f"the constant {node!r}"
    if node.op == "placeholder":
        return f"the input {node.target!r}"
    if node.op == "call_module":
        return f"{type(submodule(gm, str(node.target))).__name__} {node.target!r}"
    if node.op == "call_method":
        return f"the method .{node.target}() ({node.name})"
    return f"{getattr(node.target, '__name__', node.target)} ({node.name})"


def input_range(x, region: str, env: Env) -> Found:
    """(lo, hi, origin) of the values ``x`` can take, or a description of why it is unknown."""
    gm = active().module_of(x) if isinstance(x, fx.Node) else None
    widen, index = False, []  # index: the getitem keys on the way, innermost first once reversed
    while isinstance(x, fx.Node):
        if x.op == "call_function" and x.target is operator.getitem:
            index.append(x.args[1])
        elif is_passthrough(x) or _is_pool(x, gm):
            widen |= x.op == "call_module" and isinstance(submodule(gm, str(x.target)), _AVG_POOLS)
        else:
            break
        x = x.args[0]
    if _is_recurrent(x, gm):
        found = _recurrent_output_range(x, index[::-1], gm)
    else:  # the remaining sources return tensors, and indexing a tensor keeps its range
        found = _node_range(x, gm, region, env)
    if isinstance(found, tuple) and widen:  # zero padding of an average pool adds 0 to the range
        found = (min(found[0], 0.0), max(found[1], 0.0), found[2])
    return found


def _is_pool(node: fx.Node, gm: fx.GraphModule) -> bool:
    return node.op == "call_module" and isinstance(submodule(gm, str(node.target)), _POOLS + _AVG_POOLS)


def _node_range(x, gm: fx.GraphModule | None, region: str, env: Env) -> Found:
    if not isinstance(x, fx.Node):
        return describe(x, gm)
    if x.op == "placeholder":
        return _model_input_range(x, region, env)
    match = env.catalogue.match_node(x, gm)
    if match is not None:
        lo, hi = match.activation.output_range(match.params)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi, match.activation.describe(match.params)
        return f"the output of {match.activation.describe(match.params)} ({x.name}), range [{lo:g}, {hi:g}]"
    if x.op == "call_module" and protocol.declares_output_range(submodule(gm, str(x.target))):
        module = submodule(gm, str(x.target))
        sources = [input_range(a, region, env) for a in x.args if isinstance(a, fx.Node)]
        known = [s[:2] if isinstance(s, tuple) else None for s in sources] or [None]
        declared = protocol.output_range(module, *known)
        if isinstance(declared, tuple):
            return declared[0], declared[1], f"{type(module).__name__} {x.target!r}"
        if isinstance(declared, str):
            return f"{declared} ({x.name})"
    return describe(x, gm)


def _is_recurrent(x, gm: fx.GraphModule | None) -> bool:
    return isinstance(x, fx.Node) and x.op == "call_module" and isinstance(submodule(gm, str(x.target)), nn.RNNBase)


def _recurrent_output_range(x: fx.Node, index: list, gm: fx.GraphModule) -> Found:
    """A tanh-state RNN/LSTM/GRU's output sequence ``[0]`` and final h (``[1]``; ``[1][0]`` for an
    LSTM) lie in [-1, 1]; an LSTM's cell state ``[1][1]`` is unbounded."""
    mod = submodule(gm, str(x.target))
    name = f"{type(mod).__name__} {x.target!r}"
    bounded = mod.mode != "RNN_RELU" and not getattr(mod, "proj_size", 0)
    lstm = mod.mode == "LSTM"
    if bounded and (index[:1] == [0] or (index[:1] == [1] and not lstm) or index[:2] == [1, 0]):
        return -1.0, 1.0, f"{name} output"
    return f"an output of {name} whose range is not bounded (index {index})"


def _model_input_range(x: fx.Node, region: str, env: Env) -> Found:
    if region:
        return f"the input {x.target!r} of the traced submodule {region.rstrip('.')!r}"
    if env.input_range is not None:
        lo, hi = (float(v) for v in env.input_range)
        return lo, hi, "input_range"
    inputs = env.example_inputs or ()
    queries = active()
    index = queries.placeholders(queries.module_of(x)).index(x)
    if index < len(inputs) and isinstance(inputs[index], torch.Tensor):
        t = inputs[index].detach().float()
        if not t.numel():
            return f"the model input {x.target!r}, and example_inputs[{index}] is empty (shape {tuple(t.shape)})"
        if not bool(torch.isfinite(t).all()):
            return f"the model input {x.target!r}, and example_inputs[{index}] holds NaN or Inf values"
        return float(t.min()), float(t.max()), "example_inputs"
    if not inputs:
        return f"the model input {x.target!r}, and neither input_range= nor example_inputs= is given"
    return f"the model input {x.target!r}, and example_inputs has no tensor at position {index}"


def normalized_affine(x, gm: fx.GraphModule) -> str | None:
    """The reason arp leaves a site alone when its pre-activation ``x`` is a normalization
    (BatchNorm, LayerNorm, GroupNorm) of an affine layer's output, else None.

    conv -> BatchNorm -> act is the common CNN block. In training a BatchNorm divides each
    channel by its batch standard deviation, so rotating the conv (rho * z per channel) is
    cancelled exactly (measured: 5e-7); the normalization already sets the pre-activation's
    scale (gamma), the job auto-rotation does without it. Rotating the normalized
    pre-activation instead (rho from the BN-folded affine map, calibrated) did not help on a
    4-conv BatchNorm CNN on scikit-learn digits (examples/arp_batchnorm.py; 3 seeds, lr chosen
    on validation from 3e-4..3e-2, 20 epochs; test accuracy / loss):

        relu: BatchNorm 0.987 +- 0.009 / 0.048;  BN rotated 0.984 +- 0.002 / 0.067
        tanh: BatchNorm 0.983 +- 0.006 / 0.055;  BN rotated 0.980 +- 0.011 / 0.086

    nor did arp in place of BatchNorm (relu 0.954 / 0.181; tanh 0.983 / 0.061), so neither is
    offered and such sites keep their BatchNorm, with this reason in the report.
    """
    norm = _named(x, gm, _NORM_MODULES, _NORM_FUNCTIONS)
    if norm is None:
        return None
    affine = _named(x.args[0] if x.args else x.kwargs.get("input"), gm, AFFINE_MODULES, AFFINE_FUNCTIONS)
    if affine is None:
        return None
    return (
        f"pre-activation normalized by {norm} after {affine}: the normalization sets its scale and, in "
        "training, cancels any per-channel rotation of the affine layer (arp leaves normalized "
        "pre-activations alone; see ranges.normalized_affine)"
    )


def _named(x: Any, gm: fx.GraphModule, modules: tuple[type, ...], functions: Mapping) -> str | None:
    """How a report names ``x`` when it is a call of one of ``modules`` or ``functions``, else None."""
    if not isinstance(x, fx.Node):
        return None
    if x.op == "call_module" and isinstance(submodule(gm, str(x.target)), modules):
        return f"{type(submodule(gm, str(x.target))).__name__} {x.target!r}"
    if x.op == "call_function" and x.target in functions:
        return f"{functions[x.target]} ({x.name})"
    return None
