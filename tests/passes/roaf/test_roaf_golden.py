"""roaf's rewritten graph, against a reviewed file (tests/golden.py says how to regenerate)."""

import golden
from torch import nn

from vgpcompile import vgpcompile


def test_golden_roaf_blocks():
    layers = [nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)]
    net = nn.Sequential(*layers)
    golden.check(__file__, "blocks", vgpcompile(net, ["roaf"]))
