"""The examples run end to end (quick modes) and write real files."""

import json

import pytest
import quickstart
import torch


def test_quickstart_runs(tmp_path, capsys):
    quickstart.main(["--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "outputs equal: True" in out and "onnx.checker full check passed" in out
    assert (tmp_path / "checkpoint" / "recipe.json").is_file() and (tmp_path / "model.onnx").is_file()


def test_the_worked_example_pass_of_design_md(monkeypatch):
    import write_a_pass

    from vgpcompile import freeze
    from vgpcompile.core.registry import REGISTRY

    monkeypatch.setitem(REGISTRY, "clamp", "write_a_pass:Clamp")
    model = write_a_pass.main()
    report = model.vgp_report
    assert report.site("1").outcomes["clamp"] == "bound=2"
    assert report.site("3").outcomes["clamp"] == "relu is not tanh"
    x = torch.randn(16, 4) * 10
    net = model  # the compiled module computes tanh(clamp(W x + b, -2, 2)) at site 1
    z = net.get_submodule("0")(x)
    expected = net.get_submodule("4")(torch.relu(net.get_submodule("2")(torch.tanh(z.clamp(-2, 2)))))
    assert torch.allclose(model(x), expected)
    assert torch.equal(freeze(model)(x), model(x))  # no fold(): the module is its own inference form


def test_arp_rastrigin_quick_mode_reports_the_target_variance(tmp_path, capsys):
    import arp_rastrigin

    files = ["--json", str(tmp_path / "arp.json"), "--plot", str(tmp_path / "a.png")]
    comparison = arp_rastrigin.main(["--quick", *files])
    out = capsys.readouterr().out
    assert "target variance (predict the mean) 0.035" in out and "| arp | compiled | 0.001 |" in out
    assert [a.name for a in comparison.arms] == ["classic (default init)", "arp"]
    assert all(len(runs) == 3 for a in comparison.arms for runs in a.runs.values())  # three seeds
    saved = json.loads((tmp_path / "arp.json").read_text())
    assert saved["comparison"]["reference"]["target variance (predict the mean)"] == pytest.approx(0.035, abs=1e-3)
    assert (tmp_path / "a.png").stat().st_size > 5_000


def test_bsnn_table_quick_mode_runs_the_ladder_and_honours_threads(tmp_path, capsys):
    import bsnn_table

    before = torch.get_num_threads()
    args = ["--quick", "--seeds", "1", "--epochs", "1", "--activations", "gelu,tanh"]
    args += ["--json", str(tmp_path / "b.json")]
    comparisons = bsnn_table.main(args + ["--plot", str(tmp_path / "b.png")])
    assert torch.get_num_threads() == before  # no --threads: the user's setting stands
    names = [a.name for a in comparisons["gelu"].arms]
    assert names == ["paper (orthogonal, unit rows)", "bsnn (gpn + orthogonal)", "kaiming", "orthogonal",
                     "kaiming+layernorm+residual"]  # fmt: skip
    assert "chance accuracy % 10" in capsys.readouterr().out
    assert [a.name for a in comparisons["tanh"].arms][2] == "xavier"  # each activation's own standard init
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["config"]["depth"] == 20 and saved["comparisons"]["gelu"]["sweep"]["lrs"] == [0.01, 0.1]
    assert (tmp_path / "b.png").stat().st_size > 5_000
