"""``gpn``: replace each activation phi by its Gaussian-Poincare-normalized form a * phi + b.

    act(x)            ->  GPNActivation(act)(x)      (a * act(x) + b)
    nn.Tanh() module  ->  the GPN module under the same name (called once) or <node>_gpn

a and b make E[phi(z)^2] = E[phi'(z)^2] = 1 for z ~ N(0, 1) (research/bsnn.md); they are
computed by quadrature for any elementwise activation, user-registered ones included.

Options:
- root: which of the two b roots. "minus" (default) takes E[a phi + b] < 0 for every
  activation. Measured (depth 200, width 256, Haar weights, thin-shell input, float64):
  with "minus" ||x||^2/n stays within [0.8, 1.35] at every layer for all 15 catalogue
  activations; with "plus" it collapses for relu, leaky_relu, relu6 (4e-4), gelu (0.013)
  and mish (0.025) and explodes for silu (2e17) and softplus (1e36), the tanh-like ones
  being indifferent. "paper" reproduces the authors' constants ("plus", except "minus"
  for the GELU family, which is what keeps their GELU stable); "plus" takes E > 0.
- learnable: a and b become trained parameters (saved in the state_dict); default fixed
  buffers, as the paper.

GPN needs orthogonally scaled weights; with PyTorch's default init a deep GPN net's
gradients explode (research/bsnn.md §4). Use it with `orthogonal` (the BSNN recipe).

It changes the range of every activation's output (``writes={"ranges"}``), so passes that
read ranges (arp's pivots) run after it. Lowering folds a and b into the next plain layer
(``lower_reads={"plain-layers"}``: after the lowerings that make layers plain).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import fx, nn

from ...core.contract import SITE, Env, Pass, PassResult
from ...core.facts import Fact
from ...core.rewrite import mutation_free, replace_activation
from ...core.targets import Site
from ...errors import ActivationError
from .constants import gpn_constants
from .lower import fold_gpn
from .modules import GPNActivation

MIN_WARN_DEPTH = 10


@dataclass(frozen=True)
class GPN(Pass):
    name: ClassVar[str] = "gpn"
    summary: ClassVar[str] = "activation phi -> a*phi+b, Gaussian-Poincare normalized (BSNN)"
    matches: ClassVar[tuple[str, ...]] = (SITE,)
    writes: ClassVar[frozenset[str]] = frozenset({Fact.RANGES})
    lower_reads: ClassVar[frozenset[str]] = frozenset({Fact.PLAIN_LAYERS})
    rewrites_eager: ClassVar[bool] = True  # replace_activation swaps or intercepts eager sites too

    root: Literal["minus", "plus", "paper"] = "minus"
    learnable: bool = False

    def prepare(self, targets: list, env: Env) -> PassResult | None:
        """GPN's norm preservation assumes orthogonal weights (research/bsnn.md §4): under
        PyTorch's default init a deep GPN net's gradient ratio explodes."""
        result = PassResult(self.name)
        deep = (env.depth or 0) >= MIN_WARN_DEPTH
        if deep and "orthogonal" not in env.passes and any(self.check(t, env) is None for t in targets):
            result.warnings.append(
                f"gpn without orthogonal on a stack of nonlinear depth {env.depth}: GPN assumes "
                "orthogonal weights, and under PyTorch's default init a deep GPN net's gradients explode; "
                "add 'orthogonal' (passes=['bsnn']) unless the weights are orthogonal already"
            )
        return result

    def check(self, site: Site, env: Env) -> str | None:
        try:
            gpn_constants(site.activation, site.params, self.root)
        except ActivationError as err:
            return str(err)
        return None

    def apply(self, site: Site, env: Env) -> str:
        module = GPNActivation(site.activation, site.params, root=self.root, learnable=self.learnable)
        new = replace_activation(site, module, self.name, "gpn")
        if new is None or not mutation_free(new, env.rewriter.module_of(new)):
            # the output-form backward reads y: a consumer that may change y in place (or eager code,
            # which the pass cannot see) would make autograd refuse it; the plain path saves phi(x) instead
            module.from_output = None
        return f"a={module.a.item():.4f} b={module.b.item():+.4f}"

    def lower(self, model: nn.Module) -> None:
        """Fold a, b into the next Linear/Conv where exact; the rest keep one addcmul."""
        for module in model.modules():
            if isinstance(module, fx.GraphModule):
                fold_gpn(module)
