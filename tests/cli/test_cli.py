"""The command line: subcommands, messages and exit codes, through a real subprocess."""

import importlib.util
import json
import subprocess
import sys

import pytest

from vgpcompile.cli import main
from vgpcompile.core.pipeline import parse_pipeline as parse_passes
from vgpcompile.errors import UsageError

MODELS = "examples/models.py"


def run(*args):
    proc = subprocess.run([sys.executable, "-m", "vgpcompile.cli", *args], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_passes_lists_every_pass():
    code, out, _ = run("passes")
    assert code == 0
    assert any(line.startswith("gpn ") for line in out.splitlines())


def test_subprocess_error_is_one_line_with_exit_code():
    code, _, err = run("plan", "--model", f"{MODELS}:deep_tanh_mlp", "--passes", "gpn", "--select", "fc9")
    assert code == 3 and err.startswith("vgpcompile plan: error: select rule 'fc9'") and "Traceback" not in err


def test_plan_prints_the_per_site_plan():
    code, out, err = run("plan", "--model", f"{MODELS}:deep_tanh_mlp", "--passes", "gpn")
    assert code == 0, err
    assert "gpn: changed 21 of 22 sites" in out
    assert "model output activation" in out


def test_plan_json_and_options(capsys):
    assert main(["plan", "--model", f"{MODELS}:deep_tanh_mlp", "--passes", "gpn{root=plus}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "plan" and report["sites"][0]["outcomes"]["gpn"] == "a=1.4674 b=+0.3885"


def test_plan_on_partly_untraceable_model(capsys):
    assert main(["plan", "--model", f"{MODELS}:tiny_transformer", "--passes", "gpn"]) == 0
    out = capsys.readouterr().out
    assert "left eager" in out and "<root>: TraceError" in out


@pytest.mark.parametrize(
    "args,code,message",
    [
        (
            ["plan", "--model", f"{MODELS}:deep_tanh_mlp", "--passes", "gnp"],
            2,
            "unknown pass 'gnp'. Did you mean 'gpn'",
        ),
        (["plan", "--model", f"{MODELS}:deep_tanh_mlp", "--passes", "gpn", "--select", "fc9"], 3, "select rule 'fc9'"),
        (["plan", "--model", f"{MODELS}:nope", "--passes", "gpn"], 4, "has no callable 'nope'"),
        (["plan", "--model", "missing.py:f", "--passes", "gpn"], 4, "no such file 'missing.py'"),
        (["plan", "--model", "examples.models", "--passes", "gpn"], 2, "expected 'pkg.module:factory'"),
        (["plan", "--model", f"{MODELS}:deep_tanh_mlp", "--option", "gpn.roots=x", "--passes", "gpn"], 2, "no option"),
        (["plan", "--model", f"{MODELS}:deep_tanh_mlp", "--passes", "gpn{root=plus"], 2, "unbalanced braces"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_errors_have_one_line_and_exit_codes(args, code, message, capsys):
    try:
        got = main(args)
    except SystemExit as exit_:  # argparse's own usage errors
        got = exit_.code
    err = capsys.readouterr().err
    assert got == code, err
    assert message in err
    assert len(err.strip().splitlines()) <= 2  # argparse adds its usage line; ours is one line
    assert "Traceback" not in err


def test_parse_passes():
    assert parse_passes("gpn{root=paper, learnable=true},arp") == (
        ["gpn", "arp"],
        {"gpn": {"root": "paper", "learnable": "true"}},
    )
    with pytest.raises(UsageError, match="key=value"):
        parse_passes("gpn{root}")


def test_help_shows_examples_and_grammar(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "examples/models.py:deep_tanh_mlp" in out and "re:<regex>" in out


def test_demo_small_run_shows_the_ladder_next_to_chance(capsys, tmp_path):
    args = ["demo", "--depth", "4", "--width", "8", "--steps", "8", "--lrs", "0.01", "--json", str(tmp_path / "d.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "max/min over hidden layers" in out and "| orthogonal1 |" in out  # like-with-like gradient row
    kinds = (" | plain | ", " | architectural | ", " | compiled | ")
    rows = [line.split(" | ")[0].strip("| ") for line in out.splitlines() if any(k in line for k in kinds)]
    tat = ["tat"] if importlib.util.find_spec("dks") else []  # the tat arm needs the extra
    assert rows == ["kaiming", "orthogonal", "orthogonal1", "kaiming+layernorm+residual", "gpn", *tat]
    assert "chance accuracy 0.5" in out and "the best plain init of the same architecture" in out
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["comparison"]["reference"]["chance accuracy"] == 0.5 and len(saved["gradients"]) == 7
