"""arp on formula sites: a written-out activation uses its pre-activation several times
(GPT-2's GELU: three); when every use is inside the recognised formula, the producer is
rotated once, and the whole formula sees the rotated value."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import max_abs
from torch import nn

from vgpcompile import freeze, vgpcompile

C = math.sqrt(2.0 / math.pi)


class GPT2MLP(nn.Module):
    def __init__(self, extra_use: bool = False):
        super().__init__()
        self.c_fc, self.c_proj, self.extra_use = nn.Linear(8, 16), nn.Linear(16, 8), extra_use

    def forward(self, x):
        h = self.c_fc(x)
        y = self.c_proj(0.5 * h * (1.0 + torch.tanh(C * (h + 0.044715 * torch.pow(h, 3.0)))))
        return y + h[..., :8] if self.extra_use else y


def test_arp_rotates_a_formula_whose_input_is_used_only_inside_it():
    torch.manual_seed(0)
    net, x = GPT2MLP(), torch.randn(16, 8)
    compiled = vgpcompile(net, ["arp"], example_inputs=(x,))
    (row,) = compiled.vgp_report.sites
    assert row.spelling == "formula" and row.changed["arp"], row.outcomes
    rotated = compiled.get_submodule("c_fc")
    z = rotated(x)
    gelu = 0.5 * z * (1.0 + torch.tanh(C * (z + 0.044715 * z**3)))
    assert max_abs(compiled(x), net.c_proj(gelu)) < 1e-6
    assert max_abs(freeze(compiled)(x), compiled(x)) < 1e-5


def test_arp_leaves_a_formula_whose_input_is_used_elsewhere():
    net = GPT2MLP(extra_use=True)
    compiled = vgpcompile(net, ["arp"], example_inputs=(torch.randn(4, 8),))
    (row,) = compiled.vgp_report.sites
    assert not row.changed["arp"] and "has 2 users" in row.outcomes["arp"]


def test_arp_rotates_all_four_gelu_sites_of_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=4, n_head=2, n_positions=32, bos_token_id=0,
                                  eos_token_id=0)
    net = transformers.GPT2Model(cfg).eval()
    ids = torch.randint(0, 64, (2, 8))
    compiled = vgpcompile(net, ["arp"], example_inputs=(ids,))
    report = compiled.vgp_report
    assert len(report.sites) == 4 and report.changed_count("arp") == 4
    out = compiled(ids).last_hidden_state
    assert torch.isfinite(out).all() and max_abs(out, net(ids).last_hidden_state) > 1e-3  # rotated: it changed
    compiled.load_state_dict(net.state_dict())  # the same parameter names and shapes
    frozen = freeze(compiled)
    assert type(frozen.get_submodule("h.0.mlp.c_fc")) is type(net.h[0].mlp.c_fc)
    assert max_abs(frozen(ids).last_hidden_state, out) < 1e-4
