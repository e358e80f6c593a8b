"""examples/tat_evidence.py: its models, loops and the records the cause analysis reads."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("dks")
pytest.importorskip("sklearn")

import tat_evidence  # noqa: E402 (examples/ is on the path; needs the extras above)

from vgpcompile import vgpcompile  # noqa: E402
from vgpcompile.passes.tat import TATActivation  # noqa: E402
from vgpcompile.tools.baselines import ORTHOGONAL1, Arm  # noqa: E402
from vgpcompile.tools.demo import DemoConfig, compiled_rival  # noqa: E402

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def first_conv_weight(model) -> torch.Tensor:
    return next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)


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


def test_every_tat_and_orthogonal_arm_draws_its_init_from_the_runs_seed():
    """The passes' own draws follow the run's seed: without it an arm's seeds differ only in
    data and batch order (and a full-batch arm's sd is 0)."""
    cfg = DemoConfig(depth=3, width=8, rivals=("tat",))
    demo = [compiled_rival(seed, cfg, "tat").state_dict()["2.0.weight"] for seed in (0, 0, 1)]
    assert torch.equal(demo[0], demo[1]) and not torch.equal(demo[0], demo[2])
    mlp = [dict(tat_evidence.gpn_net(seed, ["gpn", "orthogonal"]).named_parameters())["2.0.weight"] for seed in (0, 1)]
    assert not torch.equal(*mlp)
    cnn = [first_conv_weight(vgpcompile(tat_evidence.deep_cnn(3, 4, Arm(ORTHOGONAL1), 0),
                                        passes=tat_evidence.seeded_passes(["tat{c_val_0_target=0.5}"], seed)))
           for seed in (0, 1)]  # fmt: skip
    assert not torch.equal(*cnn)


def test_deep_cnn_constants_are_the_hand_derivation():
    """52 weight layers, 51 leaky ReLUs, global average pooling: M = r composed 51 times, so the
    slope is the one whose C map composed 51 times takes 0 to eta = 0.9, and gamma = sqrt(2 / (1 + s^2))."""
    model = vgpcompile(tat_evidence.deep_cnn(50, 8, Arm(ORTHOGONAL1), 0), passes=["tat"])
    stats = model.vgp_report.stats["tat"]
    assert stats["kernel_depth"] == 51
    act = next(m for m in model.modules() if isinstance(m, TATActivation))
    slope = act.params["negative_slope"]
    c = torch.tensor(0.0, dtype=torch.float64)
    for _ in range(51):
        c = tat_evidence.leaky_relu_c_map(c, slope)
    assert float(c) == pytest.approx(0.9, abs=1e-6)
    assert act.gamma == pytest.approx(math.sqrt(2 / (1 + slope**2)), rel=1e-6) and act.alpha == 1 and act.beta == 0


def test_zero_padding_does_not_change_the_network_at_init():
    """Delta-orthogonal convs have only their centre tap: the padded border never enters a
    product at init, so zero padding and any other padding give the same function."""
    torch.manual_seed(0)
    model = vgpcompile(tat_evidence.deep_cnn(4, 4, Arm(ORTHOGONAL1), 0), passes=["tat{c_val_0_target=0.5}"])
    other = copy.deepcopy(model)
    for m in other.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.padding_mode = "circular"
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(model(x), other(x))


def test_kernel_figures_measure_q_and_c_against_the_prediction():
    data = tat_evidence.conv_kernel(depth=4, widths=(4,), tat="tat{c_val_0_target=0.5}")
    assert set(data["rows"]) == {"4 digits", "4 gaussian"}
    for row in data["rows"].values():
        assert row["c_error_every_10"][0] == 0.0  # the first site's input is the conv of the data: c as predicted
        assert row["q_min"] - 1e-3 <= row["q_every_10"][0] <= row["q_max"] + 1e-3
        assert row["q_every_10"][0] == pytest.approx(1.0, abs=0.01) and row["q_ratio_geo_sd_last"] >= 1


def test_rerunning_some_arms_keeps_the_others_and_says_so(tmp_path):
    saved = json.loads((RESULTS / "tat_conv.json").read_text())
    new = copy.deepcopy(saved)
    arm = next(a for a in new["comparison"]["arms"] if a["name"] == "tat")
    arm["runs"]["0.001"][0]["test_acc"] = 0.5
    new["comparison"]["arms"], new["seconds"] = [arm], 12.0
    path = tmp_path / "c.json"
    path.write_text(json.dumps(saved))
    merged = tat_evidence.rerun_into(path, new, "python examples/tat_evidence.py conv --quick --arms tat")
    names = [a["name"] for a in merged["comparison"]["arms"]]
    assert names == [a["name"] for a in saved["comparison"]["arms"]]
    got = next(a for a in merged["comparison"]["arms"] if a["name"] == "tat")
    assert got["runs"]["0.001"][0]["test_acc"] == 0.5 and merged["added"]["tat"]["rerun"] is True
    assert [a for a in merged["comparison"]["arms"] if a["name"] != "tat"] == \
        [a for a in saved["comparison"]["arms"] if a["name"] != "tat"]  # fmt: skip
    other = copy.deepcopy(arm)
    other["name"] = "tat (another arm)"
    new["comparison"]["arms"] = [other]
    path.write_text(json.dumps(merged))
    grown = tat_evidence.rerun_into(path, new, "python examples/tat_evidence.py conv --quick --arms x")
    assert [a["name"] for a in grown["comparison"]["arms"]] == [*names, "tat (another arm)"]
    assert grown["added"]["tat (another arm)"]["rerun"] is False  # an arm added, not rerun
    new["config"] = {**new["config"], "channels": 99}
    with pytest.raises(SystemExit, match="rerun it whole"):
        tat_evidence.rerun_into(path, new, "x")


@pytest.mark.experiment
@pytest.mark.parametrize("experiment", ["conv", "gpn"])
def test_full_size_runs(experiment):
    data = tat_evidence.conv(False) if experiment == "conv" else tat_evidence.gpn_robustness(False)
    names = {a["name"] for a in data["comparison"]["arms"]}
    assert "tat" in names and len(data["comparison"]["sweep"]["seeds"]) == 3
