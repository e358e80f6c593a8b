"""``vgpcompile diagnose``: table, one-line verdict, JSON + Markdown + PNGs in --out."""

import json

import matplotlib.image

from vgpcompile.cli import COMMANDS, main
from vgpcompile.tools.diagnose import validate

MODELS = "examples/models.py"


def test_diagnose_prints_the_table_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report"
    args = ["diagnose", "--model", f"{MODELS}:deep_tanh_mlp", "--input-shape", "32,16", "--passes", "bsnn"]
    assert main([*args, "--out", str(out), "--rows", "6", "--dtype", "float64", "--no-verify"]) == 0
    text = capsys.readouterr().out
    assert "| weight-gradient norm max/min (BSNN figure of merit) |" in text
    assert "(6 of 22 layers shown" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("verdict: before: vanishing_gradients") and "after passes=['gpn', 'orthogonal']: ok" in last
    assert "candidates, not re-measured: ['tat', 'bsnn'" in last  # --no-verify: listed, none compiled
    doc = json.loads((out / "report.json").read_text())
    validate(doc)
    assert doc["settings"]["dtype"] == "float64" and doc["after"]["figures"]["depth"] == 22
    assert (out / "report.md").read_text().count("| Linear |") == 22
    for name in ("gradients.png", "saturation.png"):
        assert matplotlib.image.imread(out / name).size > 0


def test_diagnose_is_a_registered_command_and_rejects_a_bad_shape(capsys):
    assert "diagnose" in COMMANDS
    code = main(["diagnose", "--model", f"{MODELS}:deep_tanh_mlp", "--input-shape", "32,x"])
    assert code == 2 and "--input-shape '32,x'" in capsys.readouterr().err


def test_several_batches_and_seeds(capsys):
    args = ["diagnose", "--model", f"{MODELS}:deep_tanh_mlp", "--input-shape", "8,16", "--batches", "2", "--seeds", "2"]
    args.append("--no-verify")
    assert main(args) == 0
    assert "runs 4 (2 batch(es) x 2 seed(s))" in capsys.readouterr().out


def test_candidates_are_re_measured_up_to_the_limit(tmp_path, capsys):
    out = tmp_path / "report"
    args = ["diagnose", "--model", "examples/diagnose_sweep.py:RNN50", "--input-shape", "8,50,4", "--dtype", "float64"]
    assert main([*args, "--candidates", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "## Candidate passes: the measurement behind each, and the re-measurement" in text
    assert "| before | `arp` | vanishing_in_time: time_ratio " in text
    assert "| recommended | vanishing_in_time improved" in text
    assert "| before | `roaf` |" in text and "| not_tried | over the limit of 1" in text
    assert text.strip().splitlines()[-1].endswith("try passes=['arp'] (re-measured)")
    doc = json.loads((out / "report.json").read_text())
    validate(doc)
    assert doc["settings"]["max_candidates"] == 1 and doc["before"]["verdict"]["recommended"] == ["arp"]
    assert main([*args, "--candidates", "-1"]) == 2 and "--candidates -1" in capsys.readouterr().err
