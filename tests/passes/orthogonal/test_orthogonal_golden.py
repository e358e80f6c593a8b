"""orthogonal's rewritten graph with the thin shell, against a reviewed file (tests/golden.py)."""

import golden
from torch import nn

from vgpcompile import vgpcompile


def test_golden_orthogonal_thin_shell():
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    golden.check(__file__, "thin_shell", vgpcompile(net, ["orthogonal"], options={"orthogonal": {"thin_shell": True}}))
