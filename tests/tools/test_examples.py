"""The quickstart example runs end to end and writes real files."""

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
