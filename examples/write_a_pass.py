"""A complete pass in thirty lines: the worked example of DESIGN.md ("Writing a pass").

A real pass lives in ``vgpcompile/passes/<name>/`` and is registered by one line in
``vgpcompile/core/registry.py``; this script registers its example pass for the run only.

    python examples/write_a_pass.py
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

import vgpcompile
from vgpcompile.core.contract import SITE, Env, Pass
from vgpcompile.core.facts import Fact
from vgpcompile.core.registry import REGISTRY


class ClampedTanh(nn.Module):
    vgp_pass = "clamp"  # capture keeps it whole; freeze's default lowering finds it
    vgp_applied = ("clamp",)

    def __init__(self, bound: float) -> None:
        super().__init__()
        self.bound = bound

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-self.bound, self.bound).tanh()


@dataclass(frozen=True)
class Clamp(Pass):
    name: ClassVar[str] = "clamp"
    summary: ClassVar[str] = "tanh(x) -> tanh(clamp(x, -bound, bound))"
    matches: ClassVar[tuple[str, ...]] = (SITE,)
    writes: ClassVar[frozenset[Fact]] = frozenset({Fact.RANGES})  # values downstream change: arp runs after it

    bound: float = 3.0

    def check(self, site, env: Env) -> str | None:
        return None if site.activation.name == "tanh" else f"{site.kind} is not tanh"

    def apply(self, site, env: Env) -> str:
        env.rewriter.replace_activation(site, ClampedTanh(self.bound), "clamp")  # every change goes through it
        return f"bound={self.bound:g}"


def register() -> None:
    REGISTRY.setdefault("clamp", f"{__name__}:Clamp")


def main() -> nn.Module:
    register()
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    model = vgpcompile.vgpcompile(net, passes="clamp{bound=2}")
    print(model.vgp_report)
    return model


if __name__ == "__main__":
    main()
