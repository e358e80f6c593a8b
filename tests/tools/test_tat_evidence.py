"""examples/tat_evidence.py: its models, loops and the records the cause analysis reads."""

import math

import pytest
import torch

pytest.importorskip("dks")
pytest.importorskip("sklearn")

import tat_evidence  # noqa: E402 (examples/ is on the path; needs the extras above)

from vgpcompile import vgpcompile  # noqa: E402
from vgpcompile.tools.baselines import Arm  # noqa: E402


def test_deep_cnn_is_vanilla_and_tat_compiles_it_whole():
    net = tat_evidence.deep_cnn(6, 4, Arm("kaiming"), seed=0)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, tat_evidence.Residual)) for m in net.modules())
    model = vgpcompile(net, passes=["tat"], options={"tat": {"c_val_0_target": 0.5}})
    changed = [r for r in model.vgp_report.sites if r.changed.get("tat")]
    assert len(changed) == 7 + 8  # every activation and every weight layer
    metrics = tat_evidence.conv_train(model, 0.01, 0, steps=3)
    assert set(metrics) == {"val_loss", "train_loss", "test_acc"} and 0 <= metrics["test_acc"] <= 1


def test_digits_are_standardised_and_split_by_seed():
    a, b = tat_evidence.digits(0), tat_evidence.digits(1)
    x = torch.cat([a["x_train"], a["x_val"], a["x_test"]])
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.pow(2).mean()) - 1) < 1e-4
    assert [len(a[k]) for k in ("x_train", "x_val", "x_test")] == [1197, 300, 300]
    assert not torch.equal(a["x_test"], b["x_test"])


def test_robustness_runs_record_divergence_and_spectral_norm():
    net = tat_evidence.gpn_net(0, ["gpn"])
    fine = tat_evidence.moons_train(net, 1e-3, 0, steps=3, n_train=200, clip=1.0)
    assert fine["diverged_at"] is None and fine["max_sigma"] == pytest.approx(1.0, abs=0.05)
    blown = tat_evidence.moons_train(tat_evidence.gpn_net(0, ["gpn"]), 1e3, 0, steps=20, n_train=200, clip=None)
    assert blown["diverged_at"] is not None and math.isnan(blown["test_acc"])


@pytest.mark.experiment
@pytest.mark.parametrize("experiment", ["conv", "gpn"])
def test_full_size_runs(experiment):
    data = tat_evidence.conv(False) if experiment == "conv" else tat_evidence.gpn_robustness(False)
    names = {a["name"] for a in data["comparison"]["arms"]}
    assert "tat" in names and len(data["comparison"]["sweep"]["seeds"]) == 3
