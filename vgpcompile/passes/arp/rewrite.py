"""``arp``: auto-rotate the affine pre-activation of each activation site (Saromo et al. 2019).

    act(Linear(x))             ->  act(AutoRotLinear(x))          same module name, same parameters
    act(Conv2d(x)) (1d, 3d, transposed too)  ->  act(AutoRotConv2d(x))
    act(F.linear(x, w, b))     ->  act(arp_linear(x, w, b, L=, q=, eps=))   (and F.conv*)
    nn.LSTM / nn.GRU / nn.RNN  ->  AutoRotLSTM / AutoRotGRU / AutoRotRNN   every gate rotated

A rotated layer returns rho * (W x + b), rho = L / (|q * sum(W_row) + b| + eps) per output
unit, recomputed from the weights in every step, gradients through rho, no new parameters
(modules.py and recurrent.py say where we differ from the reference). ``vgpcompile.freeze``
folds every rotation into a plain layer (lower.py).

Per site: L is the activation's default (constants.py: sigmoid 4, tanh 2, ...) unless
given; q = 2*xmax - xmin from the range of the producer's input, which must be known
(ranges.py): the output of a bounded activation, of a module that declares its output
range (a GPN-wrapped activation), a tanh RNN's output, looked through dropout, reshapes and
pooling; or the model input, from ``input_range=`` or else the min/max of
``example_inputs``. Otherwise compiling fails with an error naming the site and the
options to set. The reference takes one global range; ours is per site. Since the pivots
read value ranges (``reads={"ranges"}``), arp runs after every pass that changes them.

Left alone, with the reason in the report: sites not fed directly by an affine layer (a
BatchNorm or an addition in between), producers whose output has other users or that are
called at several places, subclasses of the torch layers, ``F.linear``/``F.conv*`` calls
whose weight is computed or also used elsewhere (freeze could not fold it), LSTMs with
``proj_size``, and the model's output activation (the reference README: never rotate a
regression output).

Options:
- L: the pivot target for every rotated pre-activation (every gate of a recurrent layer
  too); None: per site from constants.py.
- xQ: the pivot q itself, for every input (the recurrent state included); bypasses the
  range inference. None: q = 2*xmax - xmin per site.
- eps: 1e-5, added to |z_Q| before dividing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import fx

from ...core.contract import LAYER, SITE, Env, Pass
from ...core.rewrite import mark_applied, replace_node
from ...core.targets import Layer, Site
from ...errors import UsageError
from .constants import TANH_STATE_Q, default_L
from .modules import ROTATED_FUNCTIONS, ROTATED_MODULES, check_positive
from .ranges import describe, input_range
from .recurrent import ROTATED_RECURRENT


@dataclass(frozen=True)
class ARP(Pass):
    name: ClassVar[str] = "arp"
    summary: ClassVar[str] = "affine pre-activation z -> rho*z, rho = L/(|z at the pivot x_Q| + eps) (auto-rotation)"
    matches: ClassVar[tuple[str, ...]] = (SITE, LAYER)
    layer_types: ClassVar[tuple[type, ...]] = tuple(ROTATED_RECURRENT)
    reads: ClassVar[frozenset[str]] = frozenset({"ranges"})
    lower_writes: ClassVar[frozenset[str]] = frozenset({"plain-layers"})

    L: float | None = None
    xQ: float | None = None
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.L is not None:
            check_positive("L", self.L)
        if self.xQ is not None and not math.isfinite(self.xQ):
            raise UsageError(f"option 'xQ' of pass 'arp' must be finite, got {self.xQ!r}")
        check_positive("eps", self.eps)

    def check(self, target: Site | Layer, env: Env) -> str | None:
        if isinstance(target, Layer):
            return _recurrent_reason(target)
        return _site_reason(target)

    def apply(self, target: Site | Layer, env: Env) -> str:
        if isinstance(target, Layer):
            return self._rotate_recurrent(target, env)
        return self._rotate_site(target, env)

    def _rotate_site(self, site: Site, env: Env) -> str:
        L = self.L if self.L is not None else default_L(site.activation)
        producer = site.producer
        where = f"site {site.name!r} (fed by {site.producer_name})"
        q, origin = self.pivot(_input_of(producer), site.region, env, where)
        if site.producer_module is not None:
            new = ROTATED_MODULES[type(site.producer_module)].from_module(site.producer_module, L=L, q=q, eps=self.eps)
            producer.graph.owning_module.set_submodule(str(producer.target), new)
        else:
            kwargs = {**producer.kwargs, "L": L, "q": q, "eps": self.eps}
            replace_node(producer, "call_function", ROTATED_FUNCTIONS[producer.target], producer.args, kwargs)
        mark_applied(site.node, site, self.name)
        return f"L={L:g} q={q:g} ({origin})"

    def _rotate_recurrent(self, layer: Layer, env: Env) -> str:
        module = layer.module
        where = f"{type(module).__name__} {layer.full_name!r}"
        q_x, origin = self.pivot(_input_of(layer.node), layer.region, env, where)
        q_h = self.xQ if self.xQ is not None else (None if module.mode == "RNN_RELU" else TANH_STATE_Q)
        if q_h is None:
            raise UsageError(
                f"arp: the hidden state of the relu RNN {where} is unbounded, so its pivot cannot be "
                "inferred; set options={'arp': {'xQ': q}} or leave it out with ignore=[...]"
            )
        new = ROTATED_RECURRENT[type(module)].from_module(module, L=self.L, q=q_x, q_h=q_h, eps=self.eps)
        layer.gm.set_submodule(layer.name, new)
        L = ", ".join(f"{v:g}" for v in new.gate_L)
        return f"L=({L}) q_x={q_x:g} q_h={q_h:g} ({origin})"

    def pivot(self, x: fx.Node, region: str, env: Env, where: str) -> tuple[float, str]:
        """(q, where its range came from) for an input node; raises when the range is unknown."""
        if self.xQ is not None:
            return self.xQ, "xQ given"
        try:
            found = input_range(x, region, env)
        except RecursionError:  # e.g. a chain of hundreds of roaf filters, each range depending on the last
            found = "at the end of a chain of modules too long to follow"
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


def _site_reason(site: Site) -> str | None:
    gm = site.node.graph.owning_module
    if site.producer is None:
        return f"not fed by an affine layer: its input is {describe(_input_of(site.node), gm)}"
    if site.producer_shared:
        return (
            f"the output of {site.producer_name} has {len(site.producer.users)} users; rotating it would "
            "change the others too"
        )
    module = site.producer_module
    if module is None:
        return _functional_reason(site.producer)
    if "arp" in getattr(module, "vgp_applied", ()):
        return f"{site.producer_name} is already auto-rotated ({type(module).__name__})"
    if type(module) not in ROTATED_MODULES:
        return f"{site.producer_name} is a {type(module).__name__}, a subclass of a torch layer; arp swaps exact types"
    if site.producer_calls > 1:
        n = site.producer_calls
        return f"{site.producer_name} is called at {n} places; rotating it would change every call"
    return None


def _functional_reason(node: fx.Node) -> str | None:
    """Why a functional producer cannot be rotated (freeze must be able to fold its parameters)."""
    args = list(node.args[1:3]) + [node.kwargs.get(k) for k in ("weight", "bias") if k in node.kwargs]
    for arg in args:
        if isinstance(arg, fx.Node):
            if arg.op != "get_attr":
                return f"{node.name}: weight or bias {arg.name!r} is computed at run time, not a parameter"
            if len(arg.users) > 1:
                return f"{node.name}: parameter {arg.target!r} is also used elsewhere (freeze could not fold it)"
    return None


def _recurrent_reason(layer: Layer) -> str | None:
    module = layer.module
    if type(module) not in ROTATED_RECURRENT:
        return f"{type(module).__name__} is a subclass of a torch recurrent layer; arp swaps exact types"
    if getattr(module, "proj_size", 0):
        return "proj_size > 0: the projected state's range is unknown"
    return f"called at {layer.calls} places; rotating it would change every call" if layer.calls > 1 else None
