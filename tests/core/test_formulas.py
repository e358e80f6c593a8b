"""Activations written as formulas are one site; a function inside a formula is not a site."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import max_abs
from torch import nn

from vgpcompile import vgpcompile
from vgpcompile.core.catalogue import DEFAULT
from vgpcompile.core.formulas import FORMULAS
from vgpcompile.passes.gpn.constants import gpn_constants

C = math.sqrt(2.0 / math.pi)
# (kind, params, formula): each as people write it, in several spellings
WRITTEN = [
    ("gelu", {"approximate": "tanh"}, lambda x: 0.5 * x * (1.0 + torch.tanh(C * (x + 0.044715 * torch.pow(x, 3.0))))),
    ("gelu", {"approximate": "tanh"}, lambda x: x * 0.5 * (1 + torch.tanh(0.7978845608 * (x + 0.044715 * x**3)))),
    ("gelu", {"approximate": "tanh"}, lambda x: 0.5 * x * (1.0 + torch.tanh(x * C * (1.0 + 0.044715 * x * x)))),
    ("gelu", {"approximate": "none"}, lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))),
    ("silu", {}, lambda x: x * torch.sigmoid(x)),
    ("silu", {}, lambda x: torch.sigmoid(x) * x),
    ("silu", {}, lambda x: x.sigmoid().mul(x)),
    ("hardswish", {}, lambda x: x * F.relu6(x + 3) / 6),
    ("hardswish", {}, lambda x: x * F.hardtanh(x + 3, 0.0, 6.0) / 6),
    ("hardsigmoid", {}, lambda x: F.relu6(x + 3.0) / 6.0),
    ("mish", {}, lambda x: x * torch.tanh(F.softplus(x))),
]


class Written(nn.Module):
    def __init__(self, formula):
        super().__init__()
        self.fc, self.head, self.formula = nn.Linear(6, 8), nn.Linear(8, 3), formula

    def forward(self, x):
        return self.head(self.formula(self.fc(x)))


@pytest.mark.parametrize("kind,params,formula", WRITTEN)
def test_a_written_out_activation_is_one_site_rewritten_whole(kind, params, formula):
    torch.manual_seed(0)
    net = Written(formula)
    plain = vgpcompile(net)
    (row,) = plain.vgp_report.sites
    act = DEFAULT.get(kind)
    full = {**act.defaults, **params}
    assert (row.kind, row.spelling, row.producer) == (act.describe(full), "formula", "Linear fc")
    compiled = vgpcompile(net, ["gpn"])
    a, b = gpn_constants(act, full, "minus")
    x = torch.randn(5, 6)
    assert max_abs(compiled(x), net.head(a * act.fn(net.fc(x), **full) + b)) < 1e-5
    ops = [n for n in compiled.graph.nodes if n.op in ("call_function", "call_method")]
    assert ops == []  # the formula's nodes are gone: one call of the GPN module


def test_every_rule_recognises_its_own_activation_function():
    for rule in FORMULAS:
        act = DEFAULT.get(rule.kind)
        full = {**act.defaults, **rule.params}
        (row,) = vgpcompile(Written(lambda x, f=act.fn, p=full: f(x, **p))).vgp_report.sites
        assert row.kind == act.describe(full)


class GPT2MLP(nn.Module):
    """GPT-2's MLP: the GELU written out, then projected."""

    def __init__(self):
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(8, 32), nn.Linear(32, 8)

    def forward(self, x):
        h = self.c_fc(x)
        return self.c_proj(0.5 * h * (1.0 + torch.tanh(C * (h + 0.044715 * torch.pow(h, 3.0)))))


def test_the_tanh_inside_an_unknown_formula_is_not_a_site():
    class Odd(nn.Module):  # a formula no rule knows: its tanh is applied to a polynomial
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            return 0.4 * h * (1.0 + torch.tanh(0.7 * (h + 0.1 * h**3)))

    torch.manual_seed(0)
    net = Odd()
    compiled = vgpcompile(net, ["gpn"])
    assert compiled.vgp_report.sites == []
    x = torch.randn(3, 4)
    assert torch.equal(compiled(x), net(x))


def test_gpn_never_changes_the_tanh_of_gpt2s_gelu_into_something_else():
    torch.manual_seed(0)
    net = GPT2MLP()
    compiled = vgpcompile(net, ["gpn"])
    (row,) = compiled.vgp_report.sites
    assert row.kind == "gelu(approximate='tanh')" and row.changed["gpn"]
    x = torch.randn(4, 8)
    a, b = gpn_constants(DEFAULT.get("gelu"), {"approximate": "tanh"}, "minus")
    assert max_abs(compiled(x), net.c_proj(a * F.gelu(net.c_fc(x), approximate="tanh") + b)) < 1e-5


def test_scaled_and_shifted_pre_activations_are_sites_and_activations_of_activations_are_not():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            return torch.tanh(2.0 * h + 1.0) + torch.relu(torch.sigmoid(h))

    names = {r.name: r.kind for r in vgpcompile(Mixed()).vgp_report.sites}
    assert names == {"tanh()": "tanh", "sigmoid()": "sigmoid"}  # relu(sigmoid(.)) is not a pre-activation
