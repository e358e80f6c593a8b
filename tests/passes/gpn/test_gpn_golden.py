"""gpn's rewritten graphs, against reviewed files (tests/golden.py says how to regenerate)."""

import math

import golden
import torch
import torch.nn.functional as F
from torch import nn

from vgpcompile import vgpcompile


class Spellings(nn.Module):
    """A module, a function, a method, a formula, and a clamp after a GELU that must stay."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.act = nn.Tanh()

    def forward(self, x):
        h = self.act(self.a(x))
        h = torch.sigmoid(self.b(h))
        z = self.c(h).relu()
        z = self.d(z)
        z = 0.5 * z * (1.0 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
        return torch.clamp(F.gelu(z), max=9.0)


def test_golden_gpn_every_spelling():
    golden.check(__file__, "spellings", vgpcompile(Spellings(), ["gpn"]))
