"""``orthogonal``: make each Linear/Conv weight (semi-)orthogonal and keep it so in training.

With ``gpn`` this is the BSNN recipe (Lu, Gould, Ajanthan; research/bsnn.md): the preset
``passes=["bsnn"]`` expands to ``["gpn", "orthogonal"]``. GPN's norm preservation assumes
orthogonal weights; under PyTorch's default init a deep GPN net's gradients explode.

What "orthogonal" means: the weight read as (fan_out, fan_in) matrices — a Conv's
flattened (out, in/groups * k) filter matrix per group, not torch's per-kernel-slice
default — has orthonormal rows when fan_out <= fan_in, orthonormal columns otherwise,
times ``gain`` (see vgpcompile.nn.orthogonal.Layout).

Options:
- init: "haar" (default; a seeded random orthogonal matrix, as the paper trains from
  scratch) or "project" (the nearest orthogonal matrix to the current weight, by polar
  decomposition, for pretrained models; the report gives each layer's step-0 output change).
- keep: how orthogonality survives training.
  - "retraction" (default): the weight stays a plain parameter and Newton–Schulz pulls it
    back inside every ``optimizer.step()`` of a torch.optim optimizer that holds it (a
    global post-step hook), and after ``load_state_dict``; ``freeze`` and
    ``vgpcompile.orthogonal.retract(model)`` retract too (call it after editing a weight by
    other means). The stored parameter is orthogonal however it is read, and the forward is
    the plain layer's (torch.compile(fullgraph=True) compiles it whole). After each step
    ‖WᵀW − I‖₂ <= ``tol``. Chosen as default because it is the cheapest mode that keeps
    orthogonality and it keeps parameter names, so original state_dicts load and the
    unfrozen model exports. It costs two n³ matmuls per layer and step, about
    1 + n / (3·batch) x a plain step in flops (docs/performance.md has the measurements),
    more when a step moves the weight far (several Newton–Schulz steps); keep="rownorm"
    and "init" are cheaper but do not keep orthogonality. A step whose update is small
    enough is certified without the Gram matrix: ‖W − W_r‖_F against the weight as last
    retracted bounds the error (vgpcompile.orthogonal.certified_bound); that pays in
    fine-tuning (tiny learning rates), not at usual ones, where every step leaves the
    tol-ball and the retraction costs what it did.
  - "rownorm": the BSNN authors' code (research/bsnn.md §2.2): orthogonal init, then each
    output unit's fan-in vector rescaled to unit length on every forward. **This is the
    mode that reproduces the paper.** It keeps unit rows, not orthogonality.
  - "parametrization": torch.nn.utils.parametrizations.orthogonal with ``map`` (cayley,
    matrix_exp, householder) on the flattened matrix. Exact, slowest.
  - "init": orthogonal at the start only.
  Parametrized modes change the state_dict keys to ``parametrizations.weight.original``
  (and ``...weight.0.base``); a plain ``weight`` key still loads through a load hook.
- map: the orthogonal map for keep="parametrization". "auto" (default): cayley, the
  cheapest for square matrices (matrix_exp 3x, householder 10x slower at 256x256), or
  householder for far-from-square ones, where cayley's square embedding costs more.
- gain: scale, W = gain * Q, for activations that need it (GPN activations need 1).
- seed: Haar draws are seeded per layer by (seed, layer name), so independent of order.
- tol: the bound on ‖WᵀW − I‖₂ that keep="retraction" maintains after every optimizer
  step (proved from a measured Gram matrix, or from ‖W − W_r‖_F when that is small).
- every: keep="retraction" retracts (or certifies) after every ``every``-th optimizer step
  (default 1): k times less retraction work, while the weight drifts for up to k steps;
  ``vgpcompile.orthogonal.drift(model)`` reports the largest error bound seen then.
- thin_shell: rescale the model input to ‖x‖² = n per sample, as the paper's theory
  assumes (its code does not); needs a traced top-level forward.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from ...core.affine import declared
from ...core.contract import LAYER, MODEL, Env, Pass, PassResult
from ...core.facts import Fact
from ...core.protocol import mark_applied_module
from ...core.rewriter import active
from ...core.select import target_of
from ...core.targets import Layer, ModelTarget
from ...errors import UsageError
from . import lower as lowering
from .modules import (
    DEFAULT_TOL,
    LAYER_TYPES,
    Layout,
    ThinShell,
    haar,
    keep_orthogonal,
    polar,
    resolve_map,
)

NO_ROOT_GRAPH = "thin_shell needs a traced top-level forward; the root stayed eager"


@dataclass(frozen=True)
class Orthogonal(Pass):
    name: ClassVar[str] = "orthogonal"
    summary: ClassVar[str] = "Linear/Conv weights (semi-)orthogonal, kept so in training (BSNN with gpn)"
    layer_types: ClassVar[tuple[type, ...]] = LAYER_TYPES
    # new weights change every value downstream: passes that read ranges (arp) run after it
    writes: ClassVar[frozenset[str]] = frozenset({Fact.WEIGHTS, Fact.RANGES, Fact.LAYERS})
    lower_writes: ClassVar[frozenset[str]] = frozenset({Fact.PLAIN_LAYERS})
    rewrites_eager: ClassVar[bool] = True  # a layer is changed in place, traced or not

    init: Literal["haar", "project"] = "haar"
    keep: Literal["init", "rownorm", "parametrization", "retraction"] = "retraction"
    map: Literal["auto", "cayley", "matrix_exp", "householder"] = "auto"
    gain: float = 1.0
    seed: int = 0
    tol: float = DEFAULT_TOL
    thin_shell: bool = False
    every: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gain) and self.gain > 0):
            raise UsageError(f"option 'gain' of pass 'orthogonal' must be a positive number, got {self.gain!r}")
        if not 0 < self.tol < 0.5:
            raise UsageError(f"option 'tol' of pass 'orthogonal' must be in (0, 0.5), got {self.tol!r}")
        if not self.every >= 1:
            raise UsageError(f"option 'every' of pass 'orthogonal' must be a number of steps >= 1, got {self.every!r}")

    @property
    def matches(self) -> tuple[str, ...]:
        """Layers; and the model itself when the input is to be put on the thin shell."""
        return (LAYER, MODEL) if self.thin_shell else (LAYER,)

    def prepare(self, targets: list, env: Env) -> PassResult:
        result = PassResult(self.name)
        if not any(isinstance(t, Layer) for t in targets):
            result.warnings.append(
                "orthogonal: no affine layer (Linear/Conv) found to make orthogonal; declare another library's "
                "affine layer with vgpcompile.register_affine(cls, layout=...)"
            )
        model = next((t for t in targets if isinstance(t, ModelTarget)), None)
        if model is not None and model.root_graph is None:
            result.warnings.append(f"orthogonal: {NO_ROOT_GRAPH}")
        return result

    def check(self, target: Layer | ModelTarget, env: Env) -> str | None:
        if isinstance(target, ModelTarget):
            return thin_shell_reason(target.root_graph)
        module = target.module
        tied = env.tied.get(target.full_name)
        if tied and not env.selection.explicitly_selected(target_of([target.full_name], [module])):
            return (
                f"its weight is tied to {', '.join(tied)} (a shared parameter): making it orthogonal would change "
                "that module too; untie the weights or select it explicitly to accept that"
            )
        spec = declared(module)
        if spec is not None and (spec.weight != "weight" or getattr(module.weight, "dim", lambda: 0)() != 2):
            return f"declared affine layer {type(module).__name__}: orthogonal needs a 2-D weight named 'weight'"
        weight = getattr(module, "weight", None)
        if parametrize.is_parametrized(module, "weight"):
            kinds = ", ".join(type(p).__name__ for p in module.parametrizations.weight)
            return f"weight is already parametrized ({kinds}); remove that parametrization first"
        if not isinstance(weight, nn.Parameter) or isinstance(weight, nn.parameter.UninitializedParameter):
            return "weight is not an initialized parameter"
        if not weight.is_floating_point() or weight.numel() == 0:
            return f"weight is {weight.dtype} with {weight.numel()} elements; needs a non-empty real float tensor"
        return None

    def apply(self, target: Layer | ModelTarget, env: Env) -> str:
        if isinstance(target, ModelTarget):
            return insert_thin_shell(target.root_graph)
        module, full = target.module, target.full_name
        layout = Layout.of(module)
        with torch.no_grad():
            # in the weight's dtype: large float32 layers take the fast checked factorizations
            weight = module.weight.detach()
            if self.init == "haar":
                gen = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{full}".encode()))
                target = haar(layout, gen, weight.dtype) * self.gain
                change = None
            else:
                before = layout.to_matrix(weight)
                target = layout.from_matrix(polar(before)) * self.gain
                change = output_change(before, layout.to_matrix(target))
            module.weight.copy_(target)
        keep_orthogonal(
            module, self.keep, orthogonal_map=self.map, gain=self.gain, tol=self.tol, seed=self.seed, every=self.every
        )
        mark_applied_module(module, self.name)
        return self._describe(layout, change)

    def _describe(self, layout: Layout, change: float | None) -> str:
        mapped = resolve_map(layout, self.map)
        keep = f"keep={self.keep}" + (f"({mapped})" if self.keep == "parametrization" else "")
        text = f"{self.init}, {layout.describe()}, {keep}"
        if change is not None:
            text += f", step-0 output change {change:.1%}"
        return text

    def lower(self, model: nn.Module) -> None:
        lowering.lower(model)


def output_change(before: torch.Tensor, after: torch.Tensor) -> float:
    """‖W' − W‖_F / ‖W‖_F over the (groups, fan_out, fan_in) matrices: the root-mean-square
    relative change of the layer's (pre-bias) output for isotropic input, exactly what
    Gaussian probes would estimate, without their noise."""
    norm = torch.linalg.vector_norm(before, dtype=torch.float64)
    if norm == 0:
        return math.inf
    return float(torch.linalg.vector_norm(after - before, dtype=torch.float64) / norm)


def thin_shell_reason(gm: fx.GraphModule | None) -> str | None:
    """Why the model input cannot be (or need not be) put on the thin shell, or None."""
    if gm is None:
        return NO_ROOT_GRAPH
    placeholders = active().placeholders(gm)
    if not placeholders:
        return "the model takes no input"
    users = placeholders[0].users
    if any(u.op == "call_module" and isinstance(gm.get_submodule(str(u.target)), ThinShell) for u in users):
        return "already rewritten by 'orthogonal'; the input is on the thin shell"
    return None


def insert_thin_shell(gm: fx.GraphModule) -> str:
    """Call a ThinShell on the first input of ``gm``; return the report text."""
    rewriter = active()
    placeholders = rewriter.placeholders(gm)
    x = placeholders[0]
    name = rewriter.add_module(gm, "thin_shell", ThinShell())
    rewriter.replace_uses(x, rewriter.insert_after(placeholders[-1], "call_module", name, (x,)))
    return f"input {x.name!r} rescaled to ||x||^2 = n per sample"
