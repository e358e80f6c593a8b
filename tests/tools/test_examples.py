"""The quickstart example runs end to end and writes real files."""

import quickstart


def test_quickstart_runs(tmp_path, capsys):
    quickstart.main(["--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "outputs equal: True" in out and "onnx.checker full check passed" in out
    assert (tmp_path / "checkpoint" / "recipe.json").is_file() and (tmp_path / "model.onnx").is_file()
