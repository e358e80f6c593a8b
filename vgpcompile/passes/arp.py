"""``arp``: auto-rotate the affine pre-activation of each activation site (Saromo et al. 2019).

    act(Linear(x))             ->  act(AutoRotLinear(x))          same module name, same parameters
    act(Conv2d(x)) (1d, 3d, transposed too)  ->  act(AutoRotConv2d(x))
    act(F.linear(x, w, b))     ->  act(arp_linear(x, w, b, L=, q=, eps=))   (and F.conv*)
    nn.LSTM / nn.GRU / nn.RNN  ->  AutoRotLSTM / AutoRotGRU / AutoRotRNN   every gate rotated

A rotated layer returns rho * (W x + b), rho = L / (|q * sum(W_row) + b| + eps) per output
unit, recomputed from the weights in every step, gradients through rho, no new parameters
(vgpcompile.nn.arp and vgpcompile.nn.recurrent say where we differ from the reference).
``vgpcompile.freeze`` folds every rotation into a plain layer.

Per site: L is the activation's catalogue ``arp_L`` (sigmoid 4, tanh 2, ...) unless given;
q = 2*xmax - xmin from the range of the producer's input, which must be known: the output
of a bounded activation (tanh [-1, 1], sigmoid [0, 1], a GPN-wrapped one, a tanh RNN's
output), looked through dropout, reshapes and pooling; or the model input, from
``input_range=`` or else the min/max of ``example_inputs``. Otherwise compiling fails with
an error naming the site and the options to set. The reference takes one global range;
ours is per site.

Left alone, with the reason in the report: sites not fed directly by an affine layer (a
BatchNorm or an addition in between), producers whose output has other users or that are
called at several places, subclasses of the torch layers, ``F.linear``/``F.conv*`` calls
whose weight is computed or also used elsewhere (freeze could not fold it), LSTMs with
``proj_size``, and the model's output activation (the reference README: never rotate a
regression output).

Options:
- L: the pivot target for every rotated pre-activation (every gate of a recurrent layer
  too); None: per site from the catalogue.
- xQ: the pivot q itself, for every input (the recurrent state included); bypasses the
  range inference. None: q = 2*xmax - xmin per site.
- eps: 1e-5, added to |z_Q| before dividing.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx, nn

from ..errors import UsageError
from ..nn.arp import ROTATED_FUNCTIONS, ROTATED_MODULES, check_positive
from ..nn.gpn import GPNActivation
from ..nn.recurrent import ROTATED_RECURRENT, TANH_STATE_Q
from ..pipeline import Context, Region, SitePass, mark_applied
from ..rewrite import replace_node
from ..sites import Site, is_passthrough

_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_AVG_POOLS = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)


@dataclass(frozen=True)
class ARP(SitePass):
    name: ClassVar[str] = "arp"
    summary: ClassVar[str] = "affine pre-activation z -> rho*z, rho = L/(|z at the pivot x_Q| + eps) (auto-rotation)"

    L: float | None = None
    xQ: float | None = None
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.L is not None:
            check_positive("L", self.L)
        if self.xQ is not None and not math.isfinite(self.xQ):
            raise UsageError(f"option 'xQ' of pass 'arp' must be finite, got {self.xQ!r}")
        check_positive("eps", self.eps)

    def run(self, region: Region, ctx: Context) -> None:
        super().run(region, ctx)
        _run_recurrent(self, region, ctx)

    def check(self, site: Site, ctx: Context) -> str | None:
        gm = ctx.region.gm
        if site.producer is None:
            return f"not fed by an affine layer: its input is {_describe(_input_of(site.node), gm)}"
        if site.producer_shared:
            return (
                f"the output of {site.producer_name} has {len(site.producer.users)} users; rotating it would "
                "change the others too"
            )
        module = site.producer_module
        if module is None:
            return _functional_reason(site.producer, gm)
        if "arp" in getattr(module, "applied", ()):
            return f"{site.producer_name} is already auto-rotated ({type(module).__name__})"
        if type(module) not in ROTATED_MODULES:
            return (
                f"{site.producer_name} is a {type(module).__name__}, a subclass of a torch layer; arp swaps exact types"
            )
        if site.producer_calls > 1:
            n = site.producer_calls
            return f"{site.producer_name} is called at {n} places; rotating it would change every call"
        return None

    def apply(self, site: Site, ctx: Context) -> str:
        L = self.L if self.L is not None else site.activation.arp_L
        producer = site.producer
        q, origin = self.pivot(_input_of(producer), ctx, f"site {site.name!r} (fed by {site.producer_name})")
        if site.producer_module is not None:
            target = str(producer.target)
            new = ROTATED_MODULES[type(site.producer_module)].from_module(site.producer_module, L=L, q=q, eps=self.eps)
            ctx.region.gm.set_submodule(target, new)
        else:
            _rotate_call(producer, L, q, self.eps)
        mark_applied(site.node, site, self.name)
        return f"L={L:g} q={q:g} ({origin})"

    def pivot(self, x: fx.Node, ctx: Context, where: str) -> tuple[float, str]:
        """(q, where its range came from) for an input node; raises when the range is unknown."""
        if self.xQ is not None:
            return self.xQ, "xQ given"
        found = input_range(x, ctx)
        if isinstance(found, str):
            raise UsageError(
                f"arp cannot infer the input range of {where}: its input is {found}. Set the pivot with "
                "options={'arp': {'xQ': q}} (CLI: --option arp.xQ=q; q = 2*xmax - xmin for inputs in "
                "[xmin, xmax]), give input_range=(lo, hi) (CLI: --input-range lo,hi) if it is the model input, "
                "or leave it out with ignore=[...]"
            )
        lo, hi, origin = found
        return 2.0 * hi - lo, f"x in [{lo:g}, {hi:g}] from {origin}"


def _input_of(node: fx.Node) -> fx.Node:
    return node.args[0] if node.args else node.kwargs["input"]


def _call_count(gm: fx.GraphModule, target) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target)


def _describe(node, gm: fx.GraphModule) -> str:
    if not isinstance(node, fx.Node):
        return f"the constant {node!r}"
    if node.op == "placeholder":
        return f"the input {node.target!r}"
    if node.op == "call_module":
        return f"{type(gm.get_submodule(str(node.target))).__name__} {node.target!r}"
    if node.op == "call_method":
        return f"the method .{node.target}() ({node.name})"
    return f"{getattr(node.target, '__name__', node.target)} ({node.name})"


def _functional_reason(node: fx.Node, gm: fx.GraphModule) -> str | None:
    """Why a functional producer cannot be rotated (freeze must be able to fold its parameters)."""
    args = list(node.args[1:3]) + [node.kwargs.get(k) for k in ("weight", "bias") if k in node.kwargs]
    for arg in args:
        if isinstance(arg, fx.Node):
            if arg.op != "get_attr":
                return f"{node.name}: weight or bias {arg.name!r} is computed at run time, not a parameter"
            if len(arg.users) > 1:
                return f"{node.name}: parameter {arg.target!r} is also used elsewhere (freeze could not fold it)"
    return None


def _rotate_call(node: fx.Node, L: float, q: float, eps: float) -> None:
    kwargs = {**node.kwargs, "L": L, "q": q, "eps": eps}
    replace_node(node, "call_function", ROTATED_FUNCTIONS[node.target], node.args, kwargs)


# ---- input ranges ----


def input_range(x, ctx: Context) -> tuple[float, float, str] | str:
    """(lo, hi, origin) of the values ``x`` can take, or a description of why it is unknown."""
    gm = ctx.region.gm
    widen, index = False, []  # index: the getitem keys on the way, innermost first once reversed
    while isinstance(x, fx.Node):
        if x.op == "call_function" and x.target is operator.getitem:
            index.append(x.args[1])
        elif is_passthrough(x) or _is_pool(x, gm):
            widen |= x.op == "call_module" and isinstance(gm.get_submodule(str(x.target)), _AVG_POOLS)
        else:
            break
        x = x.args[0]
    if _is_recurrent(x, gm):
        found = _recurrent_output_range(x, index[::-1], gm)
    else:  # the remaining sources return tensors, and indexing a tensor keeps its range
        found = _node_range(x, ctx)
    if isinstance(found, tuple) and widen:  # zero padding of an average pool adds 0 to the range
        found = (min(found[0], 0.0), max(found[1], 0.0), found[2])
    return found


def _is_pool(node: fx.Node, gm: fx.GraphModule) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _POOLS + _AVG_POOLS)


def _node_range(x, ctx: Context) -> tuple[float, float, str] | str:
    gm = ctx.region.gm
    if not isinstance(x, fx.Node):
        return _describe(x, gm)
    if x.op == "placeholder":
        return _model_input_range(x, ctx)
    match = ctx.catalogue.match_node(x, gm)
    if match is not None:
        lo, hi = match.activation.output_range(match.params)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi, match.activation.describe(match.params)
        return f"the output of {match.activation.describe(match.params)} ({x.name}), range [{lo:g}, {hi:g}]"
    if x.op == "call_module" and isinstance(gm.get_submodule(str(x.target)), GPNActivation):
        return _gpn_range(gm.get_submodule(str(x.target)), x)
    return _describe(x, gm)


def _gpn_range(mod: GPNActivation, x: fx.Node) -> tuple[float, float, str] | str:
    lo, hi = mod.activation.output_range(mod.params)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"the output of GPN {mod.activation.name} ({x.name}), unbounded"
    a, b = float(mod.a), float(mod.b)
    ends = sorted((a * lo + b, a * hi + b))
    return ends[0], ends[1], f"GPN {mod.activation.name}"


def _is_recurrent(x, gm: fx.GraphModule) -> bool:
    return isinstance(x, fx.Node) and x.op == "call_module" and isinstance(gm.get_submodule(str(x.target)), nn.RNNBase)


def _recurrent_output_range(x: fx.Node, index: list, gm: fx.GraphModule) -> tuple[float, float, str] | str:
    """A tanh-state RNN/LSTM/GRU's output sequence ``[0]`` and final h (``[1]``; ``[1][0]`` for an
    LSTM) lie in [-1, 1]; an LSTM's cell state ``[1][1]`` is unbounded."""
    mod = gm.get_submodule(str(x.target))
    name = f"{type(mod).__name__} {x.target!r}"
    bounded = mod.mode != "RNN_RELU" and not getattr(mod, "proj_size", 0)
    lstm = mod.mode == "LSTM"
    if bounded and (index[:1] == [0] or (index[:1] == [1] and not lstm) or index[:2] == [1, 0]):
        return -1.0, 1.0, f"{name} output"
    return f"an output of {name} whose range is not bounded (index {index})"


def _model_input_range(x: fx.Node, ctx: Context) -> tuple[float, float, str] | str:
    if ctx.region.prefix:
        return f"the input {x.target!r} of the traced submodule {ctx.region.prefix.rstrip('.')!r}"
    if ctx.input_range is not None:
        lo, hi = (float(v) for v in ctx.input_range)
        return lo, hi, "input_range"
    inputs = ctx.example_inputs
    inputs = inputs if isinstance(inputs, (tuple, list)) else (() if inputs is None else (inputs,))
    index = [n for n in x.graph.nodes if n.op == "placeholder"].index(x)
    if index < len(inputs) and isinstance(inputs[index], torch.Tensor) and inputs[index].numel():
        t = inputs[index].detach().float()
        return float(t.min()), float(t.max()), "example_inputs"
    if not inputs:
        return f"the model input {x.target!r}, and neither input_range= nor example_inputs= is given"
    return f"the model input {x.target!r}, and example_inputs has no tensor at position {index}"


# ---- recurrent layers ----


def _run_recurrent(pass_: ARP, region: Region, ctx: Context) -> None:
    for node, name, module in ctx.layers(region, tuple(ROTATED_RECURRENT)):
        ctx.node = node
        full = region.prefix + name
        ctx.report.add_row(full, type(module).__name__, "layer")
        reason = ctx.default_layer_skip(full, module, pass_) or _recurrent_reason(module, region.gm, name)
        if reason:
            ctx.report.record(full, pass_.name, False, reason)
            continue
        ctx.report.record(full, pass_.name, True, _rotate_recurrent(pass_, node, name, module, ctx))


def _recurrent_reason(module: nn.Module, gm: fx.GraphModule, name: str) -> str | None:
    if type(module) not in ROTATED_RECURRENT:
        return f"{type(module).__name__} is a subclass of a torch recurrent layer; arp swaps exact types"
    if getattr(module, "proj_size", 0):
        return "proj_size > 0: the projected state's range is unknown"
    calls = _call_count(gm, name)
    return f"called at {calls} places; rotating it would change every call" if calls > 1 else None


def _rotate_recurrent(pass_: ARP, node: fx.Node, name: str, module: nn.RNNBase, ctx: Context) -> str:
    where = f"{type(module).__name__} {ctx.region.prefix + name!r}"
    q_x, origin = pass_.pivot(_input_of(node), ctx, where)
    q_h = pass_.xQ if pass_.xQ is not None else (None if module.mode == "RNN_RELU" else TANH_STATE_Q)
    if q_h is None:
        raise UsageError(
            f"arp: the hidden state of the relu RNN {where} is unbounded, so its pivot cannot be "
            "inferred; set options={'arp': {'xQ': q}} or leave it out with ignore=[...]"
        )
    new = ROTATED_RECURRENT[type(module)].from_module(module, L=pass_.L, q=q_x, q_h=q_h, eps=pass_.eps)
    ctx.region.gm.set_submodule(name, new)
    L = ", ".join(f"{v:g}" for v in new.gate_L)
    return f"L=({L}) q_x={q_x:g} q_h={q_h:g} ({origin})"
