"""rai from the command line: convert needs num_examples; plan shows the cuts and the table memory."""

import json

import models

from vgpcompile import load, rai
from vgpcompile.cli import main

MODEL = "examples/models.py:deep_tanh_mlp"


def test_convert_without_num_examples_is_a_clear_error(tmp_path, capsys):
    assert main(["convert", "--model", MODEL, "--passes", "rai", "-o", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert "pass 'rai' needs option 'num_examples'" in err and "--option rai.num_examples=N" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "ck").exists()


def test_convert_with_num_examples_writes_a_loadable_lifted_model(tmp_path, capsys):
    ck = str(tmp_path / "ck")
    args = ["convert", "--model", MODEL, "--passes", "rai", "--option", "rai.num_examples=32", "-o", ck]
    assert main([*args, "--onnx", str(tmp_path / "m.onnx"), "--input-shape", "2,16"]) == 0
    recipe = json.loads((tmp_path / "ck" / "recipe.json").read_text())
    assert recipe["passes"][0]["options"]["num_examples"] == 32 and (tmp_path / "m.onnx").is_file()
    back = load(models.deep_tanh_mlp, tmp_path / "ck")
    assert len(rai.cuts(back)) == 22 and rai.cuts(back)[0].num_examples == 32
    assert not any(c.seen.any() for c in rai.cuts(back))  # no row visited yet


def test_plan_shows_cut_points_and_table_memory(capsys):
    assert main(["plan", "--model", MODEL, "--passes", "rai{num_examples=60000,every=2}"]) == 0
    out = capsys.readouterr().out
    assert "cut 1/11: Z 60000 x 64, 14.6 MB" in out
    assert "not lifted: every=2" in out
    assert "rai: cuts=11, floats_per_example=641, table_floats=38460000, table_mb=146.7" in out
