"""rai's lifted graph, against a reviewed file (tests/golden.py says how to regenerate)."""

import golden
from torch import nn

from vgpcompile import vgpcompile


def test_golden_rai_lifted_mlp():
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    golden.check(__file__, "lifted", vgpcompile(net, ["rai"], options={"rai": {"num_examples": 4}}))
