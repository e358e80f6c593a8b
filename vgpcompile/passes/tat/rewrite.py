"""``tat``: Deep Kernel Shaping / Tailored Activation Transformation from the traced graph.

    act(x)        ->  TATActivation: gamma * (act(alpha x + beta) + delta)
    Linear/Conv   ->  orthogonal weights (delta-orthogonal for convs), zero bias (init="orthogonal")

(Martens et al. 2021, "Deep Kernel Shaping"; Zhang et al. 2022, "Deep Learning without
Shortcuts"; research/tat.md.) The constants come from DeepMind's ``dks`` package (extra
``tat``) given the network's subnetwork maximizing function M(x, r), which kernel.py derives
from the graph: chains compose, sums of branches are read as normalised sums (their weights
are in the report), concatenations weight branches by width, and what the rules do not
cover (max pooling, normalisation layers, average pooling before an activation, an unknown
module) refuses the model, with the reason on every site. A constant factor that reaches an
activation (the sqrt(2) of ``x + f(x)``) is divided out by that activation's alpha, so the
architecture is analysed as written; nothing but the activations and the init changes.

Options (the papers' names and defaults):
- method: "TAT" (default) or "DKS".
- c_val_0_target: TAT's eta for leaky ReLU, the largest C_f(0) over subnetworks (0.9).
  The leaky ReLU's negative slope is chosen by the method and replaces the model's.
- c_curve_target: TAT's tau for smooth activations, the largest C''_f(1) (0.3).
- c_slope_1_target: DKS's zeta, the largest C'_f(1) (1.5).
- init: "orthogonal" (default: what DKS/TAT assume; delta-orthogonal convs, zero biases,
  scaled by max(sqrt(fan_out / fan_in), 1) so q is kept) or "keep" (the model's own weights).
- seed: the orthogonal draws are seeded per layer by (seed, layer name).
- constants: the solved constants per dks activation, recorded by the compile so ``load``
  rebuilds without solving again; given by hand, dks is not called.

Refused, per site with the reason: activations dks has no transform for (mish, hardswish,
relu6, ...), plain ReLU under TAT (use leaky ReLU, or method="DKS"), leaky ReLU together
with another activation under TAT, sites already rewritten by another pass, and every site
of a model the kernel rules do not cover. Data should have q = 1 per location (mean square
1 per example, per position), as the methods assume.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import fx, nn

from ...core.catalogue import DEFAULT, Catalogue
from ...core.contract import LAYER, SITE, Env, Pass, PassResult
from ...core.facts import Fact
from ...core.protocol import mark_applied_module
from ...core.rewrite import replace_activation
from ...core.rewriter import active
from ...core.seeding import seeded
from ...core.targets import Layer, Site
from ...errors import UsageError
from . import constants as C
from .kernel import AFFINE, CONVS, Refusal, Structure, derive
from .lower import fold_tat
from .modules import TATActivation

_PER_WEIGHT = 1e-12


@dataclass
class _Run:
    """What ``prepare`` decided for one compile, read by ``check`` and ``apply``."""

    reasons: dict[str, str] = field(default_factory=dict)  # site name -> why it is left alone
    model_reason: str | None = None
    solved: dict[str, C.Constants] = field(default_factory=dict)  # dks name -> constants
    structure: Structure | None = None


@dataclass(frozen=True)
class TAT(Pass):
    name: ClassVar[str] = "tat"
    summary: ClassVar[str] = "phi -> gamma*(phi(alpha*x+beta)+delta), DKS/TAT derived from the graph; orthogonal init"
    matches: ClassVar[tuple[str, ...]] = (SITE, LAYER)
    layer_types: ClassVar[tuple[type, ...]] = AFFINE
    writes: ClassVar[frozenset[str]] = frozenset({Fact.RANGES, Fact.WEIGHTS})  # the init rewrites weights
    lower_reads: ClassVar[frozenset[str]] = frozenset({Fact.PLAIN_LAYERS})

    method: Literal["TAT", "DKS"] = "TAT"
    c_val_0_target: float = 0.9
    c_curve_target: float = 0.3
    c_slope_1_target: float = 1.5
    init: Literal["orthogonal", "keep"] = "orthogonal"
    seed: int = 0
    constants: str | None = None

    def __post_init__(self) -> None:
        where = "of pass 'tat'"
        if not (0.0 <= self.c_val_0_target <= 1.0):
            raise UsageError(f"option 'c_val_0_target' {where} must be in [0, 1], got {self.c_val_0_target!r}")
        if not (math.isfinite(self.c_curve_target) and self.c_curve_target > 0):
            raise UsageError(f"option 'c_curve_target' {where} must be a positive number, got {self.c_curve_target!r}")
        if not (math.isfinite(self.c_slope_1_target) and self.c_slope_1_target > 1):
            raise UsageError(f"option 'c_slope_1_target' {where} must be a number > 1, got {self.c_slope_1_target!r}")
        if self.constants is not None:
            parse_constants(self.constants)

    # ---- the whole compile -------------------------------------------------------------------

    def prepare(self, targets: list, env: Env) -> PassResult:
        """Derive M from the graph, check every site, solve the constants once."""
        result = PassResult(self.name)
        run = _Run()
        if env.state is not None:  # the pass run's namespace: the frozen pass is not written
            env.state.tat = run
        sites = [t for t in targets if isinstance(t, Site)]
        if not sites:
            result.warnings.append("tat: no activation site to transform")
            return result
        gm = _root_graph(sites, targets)
        if gm is None:
            run.model_reason = ("the model's top-level forward must be traced as one graph (parts of it are in "
                                "other regions or eager code); DKS/TAT need the whole network's kernel")  # fmt: skip
            return result
        every = active().sites(gm, env.catalogue)
        run.reasons = self._site_reasons(sites)
        if run.reasons:
            bad = next(iter(run.reasons.items()))
            run.model_reason = f"not transformed: site {bad[0]!r} cannot be ({bad[1]}); DKS/TAT shape the whole network"
            return result
        try:
            run.structure = derive(gm, every, {s.name for s in sites}, _shapes(gm, env.example_inputs))
        except Refusal as err:
            run.model_reason = str(err)
            return result
        names = sorted({C.dks_name(s.activation.name, s.params) for s in sites})
        run.solved = self._solve(names, run.structure)
        result.resolved["constants"] = format_constants(run.solved)
        self._stats(run, result)
        return result

    def _site_reasons(self, sites: list[Site]) -> dict[str, str]:
        reasons: dict[str, str] = {}
        kinds = {s.activation.name for s in sites if C.dks_name(s.activation.name, s.params)}
        for site in sites:
            name = C.dks_name(site.activation.name, site.params)
            if site.applied:
                reasons[site.name] = f"already rewritten by {sorted(site.applied)}; tat transforms plain activations"
            elif name is None:
                reasons[site.name] = (f"{site.kind} has no DKS/TAT transform in the dks package (supported: "
                                      f"{', '.join(C.supported_kinds())})")  # fmt: skip
            elif self.method == "TAT" and name == "relu":
                reasons[site.name] = "plain ReLU is not supported by TAT: use leaky_relu (or method='DKS')"
            elif self.method == "TAT" and "leaky_relu" in kinds and len(kinds) > 1:
                reasons[site.name] = (f"under TAT a leaky ReLU must be the only activation; this network also has "
                                      f"{', '.join(sorted(kinds - {'leaky_relu'}))}")  # fmt: skip
        return reasons

    def _solve(self, names: list[str], structure: Structure) -> dict[str, C.Constants]:
        if self.constants is not None:
            given = parse_constants(self.constants)
            missing = [n for n in names if n not in given]
            if not missing:
                return {n: given[n] for n in names}
        targets = {"c_val_0_target": self.c_val_0_target, "c_curve_target": self.c_curve_target,
                   "c_slope_1_target": self.c_slope_1_target}  # fmt: skip
        return C.solve(names, self.method, targets, structure.subnet_max)

    def _stats(self, run: _Run, result: PassResult) -> None:
        structure = run.structure
        result.stats["method"] = self.method
        # the most nonlinear layers on a path, sums weighting their branches by w^2
        result.stats["kernel_depth"] = round(structure.subnet_max(0.0, lambda y: y + 1.0), 4)
        if structure.sums:
            result.stats["joins"] = "; ".join(structure.sums)
        if "leaky_relu" in run.solved and self.method == "TAT":
            result.stats["negative_slope"] = round(run.solved["leaky_relu"].slope, 6)

    def _state(self, env: Env) -> _Run:
        run = getattr(env.state, "tat", None)
        if run is None:
            raise UsageError("pass 'tat' derives its constants from the whole graph: run it through vgpcompile()")
        return run

    # ---- one target ----------------------------------------------------------------------------

    def check(self, target: Site | Layer, env: Env) -> str | None:
        run = self._state(env)
        if isinstance(target, Layer):
            if run.model_reason or run.structure is None:
                return run.model_reason or "no activation site was transformed"
            if target.region != "" or target.name not in run.structure.layers:
                return "not on the network's signal path"
            if self.init == "keep":
                return "init='keep': the model's own weights are kept (DKS/TAT assume orthogonal weights, zero bias)"
            return None
        return run.reasons.get(target.name) or run.model_reason

    def apply(self, target: Site | Layer, env: Env) -> str:
        run = self._state(env)
        if isinstance(target, Layer):
            return init_layer(target.module, self.seed, target.full_name)
        return self._transform(target, run)

    def _transform(self, site: Site, run: _Run) -> str:
        k = run.solved[C.dks_name(site.activation.name, site.params)]
        scale = run.structure.site_scale.get(site.name, 1.0)
        params = dict(site.params) if k.slope is None else {**site.params, "negative_slope": k.slope}
        module = TATActivation(site.activation, params, alpha=k.alpha / scale, beta=k.beta, gamma=k.gamma,
                               delta=k.delta)  # fmt: skip
        replace_activation(site, module, self.name, "tat")
        # short enough for the report's 48-character column: α β γ δ, the slope, the input scale s
        text = f"α={module.alpha:.4g} β={module.beta:+.4g} γ={module.gamma:.4g} δ={module.delta:+.4g}"
        if k.slope is not None:
            text += f" slope={k.slope:.4g}"
        if abs(scale - 1.0) > 1e-9:
            text += f" s={scale:.4g}"
        return text

    def lower(self, model: nn.Module) -> None:
        """Fold alpha, beta into the producer and gamma, delta into the consumer where exact."""
        for module in model.modules():
            if isinstance(module, fx.GraphModule):
                fold_tat(module)


def _root_graph(sites: list[Site], targets: list) -> fx.GraphModule | None:
    """The root region's graph when every site is in it."""
    if any(s.node is None or s.region != "" for s in sites):
        return None
    return active().module_of(sites[0].node)


def subnet_max_function(model: nn.Module, example_inputs: tuple | None = None, catalogue: Catalogue = DEFAULT):
    """M(x, r) of ``model`` as the pass derives it (every activation but the output's
    transformed), to hand to ``dks`` by hand or to check; raises Refusal where not covered."""
    gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    sites = active().sites(gm, catalogue)
    rewritten = {s.name for s in sites if not s.is_output}
    return derive(gm, sites, rewritten, _shapes(gm, example_inputs)).subnet_max


def _shapes(gm: fx.GraphModule, example_inputs: tuple | None) -> dict | None:
    """Each node's output shape, from the example inputs (only when a concatenation needs it)."""
    queries = active()
    cats = [n for n in queries.nodes(gm) if n.op == "call_function" and n.target in (torch.cat, torch.concat)]
    if not cats or example_inputs is None:
        return None
    return queries.shapes(gm, example_inputs)  # on a copy: running it must not touch the model's buffers


def format_constants(solved: dict[str, C.Constants]) -> str:
    """``"tanh=a,b,c,d;leaky_relu=a,b,c,d,slope"``: the ``constants`` option's form."""
    return ";".join(f"{name}={k.format()}" for name, k in sorted(solved.items()))


def parse_constants(text: str) -> dict[str, C.Constants]:
    out = {}
    for part in filter(None, text.split(";")):
        name, _, values = part.partition("=")
        try:
            out[name.strip()] = C.Constants.parse(values)
        except ValueError as err:
            raise UsageError(f"option 'constants' of pass 'tat': {part!r}: {err}") from None
    return out


@torch.no_grad()
def init_layer(module: nn.Module, seed: int, name: str) -> str:
    """Orthogonal (Linear) or delta-orthogonal (Conv) weights that keep q, zero bias.

    ``dks.pytorch.parameter_sampling_functions.scaled_uniform_orthogonal_`` reads the
    weight as (in, out, ...), but torch stores (out, in, ...): its q-keeping rescale
    max(sqrt(out / in), 1) comes out as max(sqrt(in / out), 1), so we pass the ratio of the
    two as its gain (1 for square layers)."""
    # dks is the extra vgpcompile[tat]; prepare() has refused the compile already without it
    from dks.pytorch.parameter_sampling_functions import scaled_uniform_orthogonal_

    weight = module.weight
    fan_out, fan_in = weight.shape[0], weight.shape[1]
    gain = max(math.sqrt(fan_out / fan_in), 1.0) / max(math.sqrt(fan_in / fan_out), 1.0)
    with seeded(zlib.crc32(f"{seed}:{name}".encode()), weight.device):
        # the dense draw for the (out, in) centre tap; dks's own delta branch indexes with a
        # list, which torch deprecates, so the tap is placed here
        centre = scaled_uniform_orthogonal_(weight.new_empty(fan_out, fan_in), gain=gain, delta=False)
    weight.zero_()
    weight[(slice(None), slice(None), *((k - 1) // 2 for k in weight.shape[2:]))] = centre
    if getattr(module, "bias", None) is not None:
        module.bias.zero_()
    mark_applied_module(module, "tat")
    kind = "delta-orthogonal" if isinstance(module, CONVS) else "orthogonal"
    return f"{kind} {fan_out}x{fan_in}, scale {max(math.sqrt(fan_out / fan_in), 1.0):.4g}, zero bias"
