"""arp's rewritten graphs, against reviewed files (tests/golden.py says how to regenerate)."""

import golden
import torch
import torch.nn.functional as F
from torch import nn

from vgpcompile import vgpcompile


class Mixed(nn.Module):
    """A Linear producer, a functional one, and a producer used twice (left alone)."""

    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(4, 4), nn.Linear(4, 4)
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = torch.sigmoid(F.linear(h, self.w))
        z = self.c(h)
        return torch.relu(z) + z


def test_golden_arp_module_and_function_producers():
    torch.manual_seed(0)
    golden.check(__file__, "mixed", vgpcompile(Mixed(), ["arp"], example_inputs=(torch.rand(8, 4),)))
