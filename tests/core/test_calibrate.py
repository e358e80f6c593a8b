"""Calibration (core/calibrate.py): per-node ranges seen on the example inputs, without side effects."""

import copy

import pytest
import torch
from torch import nn

from vgpcompile import UsageError
from vgpcompile.core import calibrate
from vgpcompile.core.capture import capture


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.drop = nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)

    def forward(self, x, scale=1.0):
        return self.drop(torch.relu(self.bn(self.fc(x)))) * scale


class Eager(nn.Module):
    """An untraceable root (data-dependent branch) calling a shared traced block twice, by keyword."""

    def __init__(self):
        super().__init__()
        self.block, self.head = Block(), nn.Linear(4, 2)

    def forward(self, x):
        h = self.block(x)
        if h.sum() > -1e9:  # data-dependent: the root stays eager
            h = self.block(x=h, scale=2.0)
        return self.head(h)


def _captured(model):
    return capture(model)


def test_ranges_are_each_nodes_min_and_max_in_execution_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).eval()
    cap = _captured(model)
    x = torch.randn(7, 3) * 4
    seen = calibrate.observe(cap.root, cap.regions, (x,))
    h0 = model[0](x)
    expected = {"|input_1": x, "|_0": h0, "|_1": torch.tanh(h0), "|_2": model[2](torch.tanh(h0))}
    assert list(seen) == list(expected)  # keys "<region>|<node>", in the order the run reached them
    for key, value in expected.items():
        assert seen[key] == (pytest.approx(value.min().item()), pytest.approx(value.max().item()))


def test_a_shared_region_records_the_union_and_keywords_bind_as_in_python():
    torch.manual_seed(0)
    model = Eager().train()
    cap = _captured(model)
    assert set(cap.regions) == {"block."} and cap.eager[0].name == "<root>"
    x = torch.rand(8, 4)
    seen = calibrate.observe(cap.root, cap.regions, (x,))
    key = calibrate.key("block.", "mul")  # relu * scale: called with scale 1, then 2 (by keyword)
    lo, hi = seen[key]
    assert lo == 0.0 and hi > 0
    assert calibrate.key("block.", "scale") not in seen  # a float input, not a tensor


def test_the_run_leaves_no_trace_buffers_rng_mode_and_forward():
    torch.manual_seed(0)
    model = Eager().train()
    cap = _captured(model)
    before = {k: v.clone() for k, v in cap.root.state_dict().items()}
    x = torch.rand(8, 4)
    torch.manual_seed(123)
    calibrate.observe(cap.root, cap.regions, (x,))
    after_rng = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after_rng, torch.rand(3))  # the dropout draws did not advance the caller's RNG
    for k, v in cap.root.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running stats and num_batches_tracked restored
    assert cap.root.training and "forward" not in cap.regions["block."].__dict__


def test_observed_runs_lazily_refreshes_and_logs_what_was_read():
    cap = _captured(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    x = torch.rand(4, 3)
    live = calibrate.Observed(lambda: calibrate.observe(cap.root, cap.regions, (x,)))
    assert live.runs == 0
    first = live["|_0"]
    assert live.runs == 1 and live.take_used() == {"|_0": first} and live.used == {}
    assert live.get("|missing") is None and live.position("|_0") == 1 and live.position("|missing") == float("inf")
    with torch.no_grad():
        cap.root.get_submodule("0").weight.mul_(2)
    assert live["|_0"] == first and live.runs == 1  # cached until refreshed
    calibrate.refresh(live)
    assert live["|_0"] != first and live.runs == 2
    fixed = {"|_0": (0.0, 1.0)}
    calibrate.refresh(fixed)  # a recorded mapping stays as it is
    assert calibrate.position(fixed, "|_0") == 0


def test_a_model_that_fails_on_the_example_inputs_is_a_usage_error_and_restored():
    cap = _captured(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    with pytest.raises(UsageError, match="calibration: the captured model raised RuntimeError"):
        calibrate.observe(cap.root, cap.regions, (torch.rand(4, 5),))
    assert "forward" not in cap.root.__dict__


def test_a_batch_of_one_through_batchnorm_in_training_mode_is_observed_in_eval_mode():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5)).train()
    reference = copy.deepcopy(model).eval()
    cap = _captured(model)
    x = torch.rand(1, 3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cap.root(x)  # what training mode does with one sample
    seen = calibrate.observe(cap.root, cap.regions, (x,))
    with torch.no_grad():
        expected = reference(x)
    assert seen["|_3"] == (pytest.approx(expected.min().item()), pytest.approx(expected.max().item()))
    assert all(m.training for m in cap.root.modules())
