"""Incremental calibration (core/calibrate.Incremental): after a change at one node, the
ranges read downstream equal a whole new run, and arp's compile runs each node about once."""

from __future__ import annotations

import torch
from torch import fx, nn

from vgpcompile import vgpcompile
from vgpcompile.core import calibrate


def _mlp(pairs: int = 6) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(pairs) for m in (nn.Linear(8, 8), nn.ReLU())], nn.Linear(8, 1))


def test_ranges_after_a_change_equal_a_whole_run():
    gm = fx.symbolic_trace(_mlp())
    x = (torch.randn(16, 8),)
    whole = calibrate.Observed(lambda: calibrate.observe(gm, {"": gm}, x))
    step = calibrate.Observed(lambda: calibrate.observe(gm, {"": gm}, x), calibrate.Incremental(gm, x))
    keys = list(whole)
    assert [step[k] for k in keys] == [whole[k] for k in keys]
    node = next(n for n in gm.graph.nodes if n.target == "4")
    with torch.no_grad():
        gm.get_submodule("4").weight.mul_(3.0)
    whole.refresh()
    step.refresh(node)
    for k in keys:
        assert step[k] == whole[k], k


def test_arp_on_a_deep_relu_mlp_runs_each_node_about_once(monkeypatch):
    runs = []
    original = calibrate.Incremental._upto

    def counted(self, last):
        runs.append(last + 1 - int(self.stale))
        return original(self, last)

    monkeypatch.setattr(calibrate.Incremental, "_upto", counted)
    x = torch.randn(8, 8)
    compiled = vgpcompile(_mlp(40), ["arp"], example_inputs=(x,))
    assert compiled.vgp_report.changed_count("arp") == 40
    nodes = len(compiled.graph.nodes)
    assert sum(runs) <= 2 * nodes  # one whole run, then only the nodes downstream of each rotation
