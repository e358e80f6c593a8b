"""``arp``: auto-rotate the affine pre-activation of each activation site (Saromo et al. 2019).

    act(Linear(x))             ->  act(AutoRotLinear(x))          same module name, same parameters
    act(Conv2d(x)) (1d, 3d, transposed too)  ->  act(AutoRotConv2d(x))
    act(F.linear(x, w, b))     ->  act(arp_linear(x, w, b, L=, q=, eps=, floor=))   (and F.conv*)
    nn.LSTM / nn.GRU / nn.RNN  ->  AutoRotLSTM / AutoRotGRU / AutoRotRNN   every gate rotated

A rotated layer returns rho * (W x + b) per output unit, with

    z_Q = q * sum(W_row) + b                       the pre-activation at the pivot x = q*1
    rho = L / (max(|z_Q|, floor * |q| * ||W_row||) + eps)

recomputed from the weights in every step, gradients through rho, no new parameters
(modules.py and recurrent.py say where we differ from the reference). ``vgpcompile.freeze``
folds every rotation into a plain layer (lower.py).

**The floor** (the bounded form; conditioning.py). ``floor = 0`` is the reference formula,
rho = L / (|z_Q| + eps): |q| * ||W_row|| is the typical size of z_Q, and at a default init a
few units per layer have z_Q near 0, so rho reaches 1e2-1e3 there (L/eps = 4e5 at worst).
Those units act as steps, rounding near their zero crossings is amplified, and a deep net
is ill-conditioned: a 50-layer default-initialised tanh MLP's float32 and float64 outputs
differ by 0.06-0.97 (widths 64 and 256, 3 seeds each; outputs up to 0.7-1.2), and freeze
by as much. The default ``floor = 0.25`` caps rho at L / (0.25 * |q| * ||W_row||): units
whose pivot is not near-degenerate get exactly the reference rho, every rotated weight row
has norm <= L / (0.25 |q|), and the same nets agree in float32 and float64 to 3e-6-5e-5.
Measured, floor in {0, 0.1, 0.25, 0.5}: 0.1 still leaves 2e-3-4e-2; 0.5 flattens the
50-layer net (output sd 0.001-0.015 against 0.1-0.26 at 0.25 and 0.24-0.34 at 0). The
Rastrigin experiment (examples/arp_rastrigin.py, 30 pairs) is unchanged: test MSE
0.0175 +- 0.0008 at 0.25 against 0.0177 +- 0.0010 at 0 (classic 0.0353; 30 of 30 wins).
With floor = 0, arp warns (PassResult warnings: the report and ``warnings.warn``) when
units have rho >= 20x its typical value.

**The pivot q** = 2*xmax - xmin of the producer's input range, per site, in this order:

1. the ``xQ`` option, for every site;
2. a range known statically (ranges.py): the output of a bounded activation, of a module
   that declares its output range (a GPN-wrapped activation), a tanh RNN's output, looked
   through dropout, reshapes and pooling; the model input from ``input_range=`` or the
   min/max of ``example_inputs``;
3. calibration, when ``example_inputs`` are given: the range seen at that node when they
   run through the model (core/calibrate.py, as a quantization observer). Sites are visited
   in the order the example run reaches them (``dataflow_order``), and after a rotation the
   next site that needs an observed range runs the examples again (one forward per such
   site), so each site is calibrated on its already-rotated predecessors: a ReLU CNN's
   pivots follow the rotated activations, not the original ones. On a 12-layer ReLU CNN
   every rotated pre-activation stays within 3.3 L on the calibration batch (0.8-1.3 L past
   the first layer; up to 19 L with floor 0), within 1.6 L in a BERT encoder's GELU MLPs
   (tests/passes/arp/test_arp_calibration.py). The ranges read are stored in the recipe, so ``load`` needs no
   example. A site the example run never reaches is left alone with that reason.

Without a static range and without example inputs compiling fails with an error naming the
site and what to give (example_inputs, xQ, input_range, ignore).

**Order.** arp's pivots read value ranges (``reads={"ranges"}``) that gpn changes
(``writes={"ranges"}``: GPN's a*phi+b has another range than phi). The runner orders passes
by these declarations, so gpn runs before arp whatever order the user writes:
``["arp", "gpn"]`` and ``["gpn", "arp"]`` compile the same model, with pivots from GPN's
output ranges. A pass that changes ranges must declare ``writes={"ranges"}``.

Left alone, with the reason in the report: activations whose pre-activation is a
normalization of an affine layer's output (conv -> BatchNorm -> act; ranges.normalized_affine
says why: BatchNorm cancels a rotation of the conv in training, and rotating the normalized
pre-activation did not help, measured in examples/arp_batchnorm.py), other sites not fed
directly by an affine layer (an addition in between), producers whose output has other users
or that are called at several places, subclasses of the torch layers,
``F.linear``/``F.conv*`` calls whose weight is computed or also used elsewhere (freeze could
not fold it), LSTMs with ``proj_size``, and the model's output activation (the reference
README: never rotate a regression output).

Options:
- L: the pivot target for every rotated pre-activation (every gate of a recurrent layer
  too); None: per site from constants.py (sigmoid 4, tanh 2, ...).
- xQ: the pivot q itself, for every input (the recurrent state included); bypasses range
  inference and calibration. None: q = 2*xmax - xmin per site.
- eps: 1e-5, added before dividing.
- floor: 0.25; 0 is the reference formula (see above).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import fx

from ...core import calibrate, protocol
from ...core.affine import declared
from ...core.contract import LAYER, SITE, Env, Pass, PassResult
from ...core.facts import Fact
from ...core.rewriter import active
from ...core.targets import Layer, Site
from ...errors import UsageError
from .conditioning import conditioning_warning
from .constants import DEFAULT_FLOOR, TANH_STATE_Q, default_L
from .declared import rotatable, rotate_declared
from .modules import ROTATED_FUNCTIONS, ROTATED_MODULES, AutoRotLinear, check_floor, check_positive
from .ranges import describe, input_range, normalized_affine
from .recurrent import ROTATED_RECURRENT

Pivot = tuple[float, str]


@dataclass(frozen=True)
class ARP(Pass):
    name: ClassVar[str] = "arp"
    summary: ClassVar[str] = "affine pre-activation z -> rho*z, rho = L/(|z at the pivot x_Q| + eps) (auto-rotation)"
    matches: ClassVar[tuple[str, ...]] = (SITE, LAYER)
    layer_types: ClassVar[tuple[type, ...]] = tuple(ROTATED_RECURRENT)
    reads: ClassVar[frozenset[str]] = frozenset({Fact.RANGES})
    writes: ClassVar[frozenset[str]] = frozenset({Fact.RANGES, Fact.LAYERS})  # rho*z; a rotated layer
    lower_writes: ClassVar[frozenset[str]] = frozenset({Fact.PLAIN_LAYERS})
    dataflow_order: ClassVar[bool] = True  # each site calibrates on its rotated predecessors

    L: float | None = None
    xQ: float | None = None
    eps: float = 1e-5
    floor: float = DEFAULT_FLOOR

    def __post_init__(self) -> None:
        if self.L is not None:
            check_positive("L", self.L)
        if self.xQ is not None and not math.isfinite(self.xQ):
            raise UsageError(f"option 'xQ' of pass 'arp' must be finite, got {self.xQ!r}")
        check_positive("eps", self.eps)
        try:
            check_floor(self.floor)
        except UsageError:
            raise UsageError(
                f"option 'floor' of pass 'arp' must be a finite number >= 0 (0: the reference formula), "
                f"got {self.floor!r}"
            ) from None

    def check(self, target: Site | Layer, env: Env) -> str | None:
        reason = _recurrent_reason(target) if isinstance(target, Layer) else _site_reason(target)
        if reason:
            return reason
        found = self._pivot_of(target, env)
        if env.state is not None:  # apply reads it back: the model did not change in between
            env.state.pivot = (target, found)
        return found if isinstance(found, str) else None

    def apply(self, target: Site | Layer, env: Env) -> str:
        kept = getattr(env.state, "pivot", None)
        found = kept[1] if kept is not None and kept[0] is target else self._pivot_of(target, env)
        if isinstance(found, str):  # check() said otherwise a moment ago; the model did not change since
            raise UsageError(f"arp: {found}")
        text = self._rotate_recurrent(target, found) if isinstance(target, Layer) else self._rotate_site(target, found)
        # values downstream changed: later sites calibrate on this rotation (re-run from its node on)
        calibrate.refresh(env.observed, target.node if isinstance(target, Layer) else target.producer)
        return text

    def finish(self, targets: list, env: Env) -> PassResult:
        result = PassResult(self.name)
        warning = conditioning_warning(targets, env.depth, self.floor)
        if warning:
            result.warnings.append(warning)
        return result

    def _pivot_of(self, target: Site | Layer, env: Env) -> Pivot | str:
        if isinstance(target, Layer):
            where = f"{type(target.module).__name__} {target.full_name!r}"
            return self.pivot(_input_of(target.node), target.region, env, where)
        where = f"site {target.name!r} (fed by {target.producer_name})"
        return self.pivot(_input_of(target.producer), target.region, env, where)

    def _rotate_site(self, site: Site, pivot: Pivot) -> str:
        q, origin = pivot
        L = self.L if self.L is not None else default_L(site.activation)
        producer, module, rewriter = site.producer, site.producer_module, active()
        if module is not None:
            if type(module) in ROTATED_MODULES:
                new = ROTATED_MODULES[type(module)].from_module(module, L=L, q=q, eps=self.eps, floor=self.floor)
            else:  # a declared affine layer (GPT-2's Conv1D)
                new = rotate_declared(module, L=L, q=q, eps=self.eps, floor=self.floor)
            if site.inplace and isinstance(new, AutoRotLinear):  # its backward must not read an overwritten output
                new.save_output = False
            rewriter.swap_module(rewriter.module_of(producer), str(producer.target), new, site.name)
        else:
            kwargs = {**producer.kwargs, "L": L, "q": q, "eps": self.eps, "floor": self.floor}
            if site.inplace:
                kwargs["save_output"] = False
            rewriter.replace_node(producer, "call_function", ROTATED_FUNCTIONS[producer.target], producer.args, kwargs)
        rewriter.mark_applied(site.node, site)
        return f"L={L:g} q={q:g} ({origin})"

    def _rotate_recurrent(self, layer: Layer, pivot: Pivot) -> str:
        module = layer.module
        q_x, origin = pivot
        q_h = self.xQ if self.xQ is not None else (None if module.mode == "RNN_RELU" else TANH_STATE_Q)
        if q_h is None:
            raise UsageError(
                f"arp: the hidden state of the relu RNN {type(module).__name__} {layer.full_name!r} is unbounded, "
                "so its pivot cannot be inferred; set options={'arp': {'xQ': q}} or leave it out with ignore=[...]"
            )
        new = ROTATED_RECURRENT[type(module)].from_module(
            module, L=self.L, q=q_x, q_h=q_h, eps=self.eps, floor=self.floor
        )
        active().swap_module(layer.gm, layer.name, new, layer.full_name)
        L = ", ".join(f"{v:g}" for v in new.gate_L)
        return f"L=({L}) q_x={q_x:g} q_h={q_h:g} ({origin})"

    def pivot(self, x: fx.Node, region: str, env: Env, where: str) -> Pivot | str:
        """(q, where its range came from) for the input node ``x`` of a producer.

        In order: the ``xQ`` option; the static range (ranges.py: a bounded activation, a
        declared output range, the model input's ``input_range``); the range seen on the
        example inputs (calibration). Without any of them, a UsageError naming the site and
        the options; with example inputs that never reached ``x``, the reason to skip it.
        """
        if self.xQ is not None:
            return self.xQ, "xQ given"
        try:
            found = input_range(x, region, env)
        except RecursionError:  # e.g. a chain of hundreds of roaf filters, each range depending on the last
            found = "at the end of a chain of modules too long to follow"
        if isinstance(found, tuple):
            lo, hi, origin = found
            return 2.0 * hi - lo, f"x in [{lo:g}, {hi:g}] from {origin}"
        calibrating = env.example_inputs is not None or bool(env.observed)
        if not calibrating:
            raise UsageError(
                f"arp cannot infer the input range of {where}: its input is {found}. Give example_inputs= "
                "(arp calibrates each site on them; CLI: --input-shape), set the pivot with "
                "options={'arp': {'xQ': q}} (CLI: --option arp.xQ=q; q = 2*xmax - xmin for inputs in "
                "[xmin, xmax]), give input_range=(lo, hi) (CLI: --input-range lo,hi) if it is the model input, "
                "or leave it out with ignore=[...]"
            )
        seen = env.observed.get(calibrate.key(region, x.name)) if isinstance(x, fx.Node) else None
        if seen is None:
            return f"its input ({found}) was not reached when the example inputs ran, so its range is unknown"
        if not calibrate.finite(seen):
            return f"its input ({found}) took non-finite values on the example inputs"
        lo, hi = seen
        return 2.0 * hi - lo, f"x in [{lo:.4g}, {hi:.4g}] seen on example_inputs"


def _input_of(node: fx.Node) -> fx.Node:
    return active().input_of(node)


def _site_reason(site: Site) -> str | None:
    gm = active().module_of(site.node)
    if site.producer is None:
        source = _input_of(site.node)
        normalized = normalized_affine(source, gm)
        if normalized is not None:
            return normalized
        return f"not fed by an affine layer: its input is {describe(source, gm)}"
    if site.producer_shared:
        users = len(site.producer.users)
        if site.nodes:  # a formula's own uses of its input count as one
            users = 1 + sum(1 for u in site.producer.users if u not in site.nodes)
        return f"the output of {site.producer_name} has {users} users; rotating it would change the others too"
    module = site.producer_module
    if module is None:
        return _functional_reason(site.producer)
    if "arp" in protocol.applied(module):
        return f"{site.producer_name} is already auto-rotated ({type(module).__name__})"
    if declared(module) is not None and type(module) not in ROTATED_MODULES:
        return rotatable(module)
    if type(module) not in ROTATED_MODULES:
        kind = type(module).__name__
        if isinstance(module, tuple(ROTATED_MODULES)):
            return f"{site.producer_name} is a {kind}, a subclass of a torch layer; arp swaps exact types"
        return f"{site.producer_name} is a {kind}; arp rotates torch's Linear and convolutions only"
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
