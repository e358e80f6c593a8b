"""The network's kernel structure, read from the traced graph: the subnetwork maximizing
function M(x, r) that ``dks`` asks for (TAT paper, appendix "Additional details and pseudocode").

Every tensor node that depends on a model input gets an expression in x (the input's
c value, or slope, or curvature, depending on which map dks evaluates) and a scale s (the
node's value is s times a signal of q = 1):

- an input: x, s = 1;
- an affine layer (Linear, Conv, groups 1; orthogonal / delta-orthogonal init, zero bias):
  the expression and s pass through;
- an activation site: r(expr); the transformed activation divides its input by s, so its
  output has s = 1 whatever constant factor reached it;
- reshapes, flatten, permute, dropout, Identity: pass through;
- a constant factor (``0.5 * x``, ``x / 2``, ``-x``): s times that factor;
- a sum of branches s_1 y_1 + s_2 y_2: the normalised sum w_1 y_1 + w_2 y_2 with
  w_i = s_i / S and S = sqrt(sum s_i^2); the expression is sum w_i^2 expr_i and s = S. This
  needs the branches uncorrelated at init, i.e. all but one of them pass through a weight
  layer after the point where they fork (else the sum is refused);
- a concatenation along the feature dimension: the average of the branches' expressions
  weighted by their widths (needs example inputs for the widths, and equal s);
- average pooling, a mean over positions: pass through when only affine layers follow it
  (the readout's global pooling); before an activation it would change q by a factor that
  depends on the spatial correlations, which DKS does not cover: refused;
- max pooling, BatchNorm/LayerNorm/GroupNorm, any other module or op on the signal: refused
  with the reason.

M(x, r) is the largest of the expressions at the model outputs and at every branch of
every sum or concatenation taken as a network of its own (from the node where the branches
fork, its immediate dominator), evaluated at x.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from ...core.rewriter import active
from ...core.targets import Site

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
AFFINE = (nn.Linear, *CONVS)
_PASS_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.AlphaDropout)  # fmt: skip
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveAvgPool3d)  # fmt: skip
_MAX_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                nn.AdaptiveMaxPool3d)  # fmt: skip
_NORM_MODULES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)
_PASS_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
                   F.dropout, torch.clone}  # fmt: skip
_PASS_METHODS = {"flatten", "view", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "contiguous", "clone"}
_POOL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                   F.adaptive_avg_pool3d, torch.mean}  # fmt: skip
_MAX_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                  torch.amax, torch.max}  # fmt: skip
_ADDS = {operator.add, torch.add, operator.sub, torch.sub, operator.iadd, operator.isub}
_SHAPE_READS = {"size", "dim"}
_SAME_SHAPE = {operator.mul, torch.mul, operator.truediv, torch.div, operator.neg, torch.neg, F.dropout, torch.clone,
               "mul", "div", "neg", "clone", "contiguous"}  # fmt: skip
_SAME_SHAPE_MODULES = (nn.Identity, nn.Dropout, nn.AlphaDropout)


class Refusal(Exception):
    """The model is outside what the DKS/TAT kernel rules cover; the message says where and why."""


@dataclass
class _Value:
    op: str  # "in", "r", "id", "sum"
    args: tuple = ()  # ("r"/"id": child node) or ("sum": ((w2, node), ...))
    scale: float = 1.0
    pooled: str = ""  # the pooling op on its path (an activation may not follow it)


@dataclass
class Structure:
    """What the graph says: the expressions, each site's input scale, the sums' weights."""

    values: dict[fx.Node, _Value] = field(default_factory=dict)
    outputs: list[fx.Node] = field(default_factory=list)
    branches: list[tuple[fx.Node | None, fx.Node]] = field(default_factory=list)  # (fork or None: input, operand)
    site_scale: dict[str, float] = field(default_factory=dict)  # site name -> s of its input
    sums: list[str] = field(default_factory=list)  # "add_3: w = 0.707, 0.707" for the report
    layers: list[str] = field(default_factory=list)  # names of the affine modules on the signal path
    width: dict[fx.Node, int] = field(default_factory=dict)  # feature width where a layer fixes it
    ndim: dict[fx.Node, int] = field(default_factory=dict)

    def subnet_max(self, x: float, r: Callable[[float], float]) -> float:
        """M(x, r): the largest value over the outputs and every branch as its own network."""
        found = [self._evaluate(x, r, None, out) for out in self.outputs]
        found += [self._evaluate(x, r, fork, operand) for fork, operand in self.branches]
        return max(found)

    def _evaluate(self, x: float, r, source: fx.Node | None, target: fx.Node) -> float:
        memo: dict[fx.Node, float] = {}
        # iterative post-order: deep chains would overflow Python's recursion limit
        stack = [target]
        while stack:
            node = stack[-1]
            if node in memo:
                stack.pop()
                continue
            value = self.values[node]
            if node is source or value.op == "in":
                memo[node] = x
                stack.pop()
                continue
            kids = [value.args[0]] if value.op in ("r", "id") else [n for _, n in value.args[0]]
            todo = [k for k in kids if k not in memo]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            if value.op == "r":
                memo[node] = r(memo[kids[0]])
            elif value.op == "id":
                memo[node] = memo[kids[0]]
            else:
                memo[node] = sum(w2 * memo[n] for w2, n in value.args[0])
        return memo[target]


def derive(gm: fx.GraphModule, sites: list[Site], rewritten: set[str], shapes: dict | None) -> Structure:
    """The kernel structure of ``gm``; ``rewritten`` names the sites the pass transforms
    (others must be the model output's activation); ``shapes`` maps nodes to output shapes
    (from the example inputs; None without). Raises Refusal."""
    by_node = {s.node: s for s in sites if s.node is not None}
    inside = {n for s in sites for n in s.nodes[:-1]}  # a formula's inner nodes
    out = Structure()
    graph = nx.DiGraph()
    for node in active().nodes(gm):
        if node.op == "output":
            fx.node.map_arg(node.args, lambda n: out.outputs.append(n) if n in out.values else None)
            continue
        if node in inside:
            continue
        value = _value(node, gm, by_node, rewritten, out, shapes)
        if value is not None:
            out.values[node] = value
            _track_width(node, gm, value, out)
            graph.add_node(node)
            for kid in _kids(value):
                graph.add_edge(kid, node)
    if not out.outputs:
        raise Refusal("no model output depends on the input")
    _check_sums(out, graph)
    return out


def _track_width(node: fx.Node, gm: fx.GraphModule, value: _Value, out: Structure) -> None:
    """Feature width and rank: set by an affine layer, kept by activations and elementwise ops."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if type(module) in AFFINE:
            linear = isinstance(module, nn.Linear)
            out.width[node] = module.out_features if linear else module.out_channels
            out.ndim[node] = 2 if linear else 2 + len(module.kernel_size)
            return
        same = isinstance(module, _SAME_SHAPE_MODULES)
    else:
        same = node.target in _SAME_SHAPE or node.target in _ADDS
    kids = _kids(value)
    if (value.op == "r" or same) and kids and kids[0] in out.width:
        out.width[node], out.ndim[node] = out.width[kids[0]], out.ndim[kids[0]]


def _kids(value: _Value) -> list[fx.Node]:
    if value.op in ("r", "id"):
        return [value.args[0]]
    if value.op == "sum":
        return [n for _, n in value.args[0]]
    return []


def _signal_args(node: fx.Node, values: dict) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if n in values else None)
    return found


def _value(node, gm, by_node, rewritten, out: Structure, shapes) -> _Value | None:
    """The expression of one node, None when it does not carry the signal; raises Refusal."""
    if node.op == "placeholder":
        return _Value("in")
    if node.op == "get_attr":
        return None
    signal = _signal_args(node, out.values)
    if node in by_node:
        return _site_value(by_node[node], out, rewritten)
    if not signal:
        return None
    if node.op == "call_method" and node.target in _SHAPE_READS:
        return None
    if node.op == "call_function" and node.target is getattr:
        return None
    first = out.values[signal[0]]
    where = f"node {node.name!r}"
    if node.op == "call_module":
        return _module_value(node, gm.get_submodule(str(node.target)), signal, out)
    target = node.target
    if target in _ADDS:
        return _sum_value(node, signal, out)
    if target in (operator.mul, torch.mul, operator.truediv, torch.div, operator.neg, torch.neg) or (
        node.op == "call_method" and target in ("mul", "div", "neg")
    ):
        return _scaled(node, signal, first, where)
    if target in (torch.cat, torch.concat):
        return _concat_value(node, signal, out, shapes)
    if len(signal) == 1 and (target in _PASS_FUNCTIONS or (node.op == "call_method" and target in _PASS_METHODS)):
        return _Value("id", (signal[0],), first.scale, first.pooled)
    if len(signal) == 1 and (target in _POOL_FUNCTIONS or (node.op == "call_method" and target == "mean")):
        return _Value("id", (signal[0],), first.scale, f"{getattr(target, '__name__', target)} at {where}")
    if target in _MAX_FUNCTIONS or (node.op == "call_method" and target in ("max", "amax")):
        raise Refusal(f"max-pooling at {where}: not covered by the DKS/TAT kernel maps")
    if target in (F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, F.rms_norm):
        raise Refusal(f"{target.__name__} at {where}: DKS/TAT assume no normalisation layers (the dks package "
                      "refuses BatchNorm); remove it, or use gpn/bsnn")  # fmt: skip
    if target in (F.linear, F.conv1d, F.conv2d, F.conv3d):
        raise Refusal(f"functional {target.__name__} at {where}: tat initialises and folds module layers only")
    name = getattr(target, "__name__", str(target))
    raise Refusal(f"{node.op} {name!r} at {where} is not covered by the DKS/TAT kernel rules")


def _site_value(site: Site, out: Structure, rewritten: set[str]) -> _Value:
    src = site.input
    if src is None or src not in out.values:
        raise Refusal(f"site {site.name!r}: its input does not come from the model input")
    value = out.values[src]
    if site.name not in rewritten:
        if site.is_output:  # the model's own output activation: DKS shapes the network up to it
            return _Value("id", (src,), value.scale, value.pooled)
        raise Refusal(f"site {site.name!r} ({site.kind}) stays plain; DKS/TAT transform every activation")
    if value.pooled:
        raise Refusal(
            f"site {site.name!r} follows {value.pooled}: average pooling before an activation changes q by a factor "
            "that depends on the spatial correlations, which DKS/TAT do not cover"
        )
    out.site_scale[site.name] = value.scale
    return _Value("r", (src,))


def _module_value(node: fx.Node, module: nn.Module, signal: list, out: Structure) -> _Value:
    where = f"{type(module).__name__} {node.target!r}"
    first = out.values[signal[0]]
    if len(signal) != 1 or node.args[:1] != (signal[0],):
        raise Refusal(f"{where} takes the signal in another argument than its first")
    if isinstance(module, _NORM_MODULES):
        raise Refusal(f"{where}: DKS/TAT assume no normalisation layers (the dks package refuses BatchNorm); "
                      "remove it, or use gpn/bsnn")  # fmt: skip
    if type(module) in AFFINE:  # exact types: a subclass (arp's rotated layers) computes something else
        if parametrize.is_parametrized(module):
            raise Refusal(f"{where} has a parametrized weight (another pass keeps it): tat cannot set its init")
        if getattr(module, "groups", 1) != 1:
            raise Refusal(f"{where} has groups={module.groups}: no orthogonal init keeps its q and c maps")
        if isinstance(module, CONVS) and any(k % 2 == 0 for k in module.kernel_size):
            raise Refusal(f"{where} has an even kernel {tuple(module.kernel_size)}: no centre tap for a "
                          "delta-orthogonal init")  # fmt: skip
        out.layers.append(str(node.target))
        return _Value("id", (signal[0],), first.scale, first.pooled)
    if isinstance(module, _PASS_MODULES):
        return _Value("id", (signal[0],), first.scale, first.pooled)
    if isinstance(module, _POOL_MODULES):
        return _Value("id", (signal[0],), first.scale, where)
    if isinstance(module, _MAX_MODULES):
        raise Refusal(f"max-pooling at {where}: not covered by the DKS/TAT kernel maps")
    raise Refusal(f"{where} is not covered by the DKS/TAT kernel rules")


def _number(arg) -> float | None:
    return float(arg) if isinstance(arg, (int, float)) and not isinstance(arg, bool) else None


def _scaled(node: fx.Node, signal: list, first: _Value, where: str) -> _Value:
    if len(signal) != 1:
        raise Refusal(f"{where} multiplies two signals")
    if node.target in (operator.neg, torch.neg, "neg"):
        return _Value("id", (signal[0],), first.scale, first.pooled)
    other = [a for a in node.args if a is not signal[0]]
    factor = _number(other[0]) if len(other) == 1 and not node.kwargs else None
    if factor is None or factor == 0 or not math.isfinite(factor):
        raise Refusal(f"{where} scales the signal by something other than a nonzero number")
    if node.target in (operator.truediv, torch.div, "div"):
        if node.args[0] is not signal[0]:
            raise Refusal(f"{where} divides by the signal")
        factor = 1.0 / factor
    return _Value("id", (signal[0],), first.scale * abs(factor), first.pooled)


def _sum_value(node: fx.Node, signal: list, out: Structure) -> _Value:
    where = f"node {node.name!r}"
    if len(signal) != 2 or len(node.args) != 2 or any(a not in signal for a in node.args):
        raise Refusal(f"{where} adds a constant or non-signal tensor to the signal (it changes q)")
    alpha = node.kwargs.get("alpha", 1)
    scales = [out.values[signal[0]].scale, out.values[signal[1]].scale * abs(float(alpha))]
    total = math.sqrt(sum(s * s for s in scales))
    weights = [s / total for s in scales]
    out.sums.append(f"{node.name}: w = {weights[0]:.4g}, {weights[1]:.4g}")
    pooled = next((out.values[n].pooled for n in signal if out.values[n].pooled), "")
    return _Value("sum", (tuple((w * w, n) for w, n in zip(weights, signal)),), total, pooled)


def _concat_value(node: fx.Node, signal: list, out: Structure, shapes) -> _Value:
    where = f"torch.cat at node {node.name!r}"
    parts = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(parts, (list, tuple)) or any(p not in out.values for p in parts):
        raise Refusal(f"{where} joins the signal with a tensor that does not depend on the input")
    if shapes is not None:
        ndim = len(shapes[parts[0]])
        widths = [shapes[p][1] for p in parts]
    else:  # without example inputs: from the layers that produce each branch
        ndim = out.ndim.get(parts[0])
        widths = [out.width.get(p) for p in parts]
    if ndim is None or None in widths:
        raise Refusal(f"{where}: the branch widths are unknown (pass example_inputs)")
    if dim % ndim != 1:
        raise Refusal(f"{where} joins along dim {dim}, not the feature dimension 1")
    scales = {round(out.values[p].scale, 9) for p in parts}
    if len(scales) != 1:
        raise Refusal(f"{where} joins branches of different scales {sorted(scales)}")
    total = sum(widths)
    out.sums.append(f"{node.name}: concat widths {widths}")
    pooled = next((out.values[n].pooled for n in parts if out.values[n].pooled), "")
    return _Value("sum", (tuple((w / total, n) for w, n in zip(widths, parts)),), out.values[parts[0]].scale, pooled)


def _check_sums(out: Structure, graph: nx.DiGraph) -> None:
    """Record each branch of each join as a subnetwork, and refuse sums whose branches are
    correlated at init (two of them reach the sum from their fork without a weight layer)."""
    source = "<input>"
    graph.add_node(source)
    for node, value in out.values.items():
        if value.op == "in":
            graph.add_edge(source, node)
    doms = nx.immediate_dominators(graph, source)
    layers = {n for n in out.values if n.op == "call_module" and str(n.target) in out.layers}
    bare = graph.subgraph([n for n in graph if n not in layers])
    for node, value in out.values.items():
        if value.op != "sum":
            continue
        fork = doms[node]
        operands = [n for _, n in value.args[0]]
        is_cat = node.target in (torch.cat, torch.concat)
        direct = [n for n in operands if n is fork or (n in bare and fork in bare and nx.has_path(bare, fork, n))]
        if not is_cat and len(direct) > 1:
            raise Refusal(
                f"the sum at node {node.name!r}: branches {[n.name for n in direct]} reach it from "
                f"{getattr(fork, 'name', 'the input')!r} without a weight layer, so they are correlated at init"
            )
        start = None if fork == source else fork
        for n in operands:  # a branch without a nonlinear layer (the shortcut) is no subnetwork of interest
            if n is not fork and out._evaluate(0.0, lambda y: y + 1.0, start, n) > 0:
                out.branches.append((start, n))
