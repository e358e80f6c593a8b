"""``gpn``: replace each activation phi by its Gaussian-Poincare-normalized form a * phi + b.

    act(x)            ->  GPNActivation(act)(x)      (a * act(x) + b)
    nn.Tanh() module  ->  the GPN module under the same name (called once) or <node>_gpn

a and b make E[phi(z)^2] = E[phi'(z)^2] = 1 for z ~ N(0, 1) (research/bsnn.md); they are
computed by quadrature for any elementwise activation, user-registered ones included.

Options:
- root: which of the two b roots. "plus" (default) takes E[a phi + b] > 0 for every
  activation: one rule, the authors' choice for 5 of their 6 activations, and b = 0 for
  ReLU and leaky ReLU, so they stay positively homogeneous. "paper" reproduces the
  authors' constants (the "minus" root for the GELU family only); "minus" takes E < 0.
- learnable: a and b become trained parameters (saved in the state_dict); default fixed
  buffers, as the paper.

GPN needs orthogonally scaled weights; with PyTorch's default init a deep GPN net's
gradients explode (research/bsnn.md §4). Use it with `orthogonal` (the BSNN recipe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..errors import ActivationError
from ..gaussian import gpn_constants
from ..nn.gpn import GPNActivation
from ..pipeline import Context, SitePass
from ..rewrite import replace_activation
from ..sites import Site


@dataclass(frozen=True)
class GPN(SitePass):
    name: ClassVar[str] = "gpn"
    summary: ClassVar[str] = "activation phi -> a*phi+b, Gaussian-Poincare normalized (BSNN)"

    root: Literal["plus", "minus", "paper"] = "plus"
    learnable: bool = False

    def check(self, site: Site, ctx: Context) -> str | None:
        try:
            gpn_constants(site.activation, site.params, self.root)
        except ActivationError as err:
            return str(err)
        return None

    def apply(self, site: Site, ctx: Context) -> str:
        module = GPNActivation(site.activation, site.params, root=self.root, learnable=self.learnable)
        replace_activation(site, module, ctx, "gpn")
        return f"a={float(module.a):.4f} b={float(module.b):+.4f}"
