"""The CLI's bad-input table (issue #9): for each bad input, the exit code, a substring of the one-line
message, and the state of the output path afterwards. Rows run in-process through ``cli.main``;
the rows that need a real process (an import that calls sys.exit) run as subprocesses."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import inflating
from torch import nn

from vgpcompile.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODELS = str(ROOT / "examples" / "models.py")

USER = """
import sys
import torch
from torch import nn

def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))

def wide():
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 3))

def exits():
    sys.exit(0)

def on_meta():
    return nn.Sequential(nn.Linear(6, 16, device="meta"), nn.Tanh())

class ReturnsNone(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        self.fc(x)
        return None

def returns_none():
    return ReturnsNone()

def nested200():
    net = mlp()
    for _ in range(200):
        net = nn.Sequential(net)
    return net

def birnn():
    return nn.Sequential(nn.RNN(6, 6, bidirectional=True))
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Files every row may use: a user module, a good checkpoint, a good ONNX file, state_dicts."""
    d = tmp_path_factory.mktemp("cli_errors")
    (d / "user.py").write_text(USER)
    (d / "exit_on_import.py").write_text("import sys\nsys.exit(3)\n")
    (d / "a_file").write_text("not a directory")
    (d / "mixed").mkdir()
    (d / "mixed" / "notes.txt").write_text("mine")
    (d / "a_dir.onnx").mkdir()
    torch.save(nn.Linear(6, 16).state_dict(), d / "other.pt")
    user = f"{d / 'user.py'}:mlp"
    args = ["convert", "--model", user, "--passes", "gpn", "-o", str(d / "ck"), "--input-shape", "2,6",
            "--onnx", str(d / "good.onnx"), "--exporter", "torchscript"]  # fmt: skip
    assert main(args) == 0
    torch.manual_seed(1)
    torch.save(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).state_dict(),
               d / "w.pt")  # fmt: skip
    assert main(["convert", "--model", user, "--passes", "gpn", "-o", str(d / "ck2"), "--weights", str(d / "w.pt")]) == 0  # noqa: E501
    # issue #20: weights a cast would corrupt, a zip that inflates, rai and roaf checkpoints to edit
    state = torch.load(d / "w.pt")
    for dtype in (torch.int8, torch.complex64, torch.float16):
        torch.save({k: v.to(dtype) for k, v in state.items()}, d / f"w_{str(dtype)[6:]}.pt")
    inflating(d / "bomb.pt")
    for name, passes in (("ck_rai", "rai{num_examples=16}"), ("ck_roaf", "roaf")):
        assert main(["convert", "--model", user, "--passes", passes, "-o", str(d / name), "--input-shape", "2,6"]) == 0
    return d


def corrupt(env, name, drop=(), **fields):
    """A copy of the good checkpoint with recipe fields replaced (or dropped)."""
    target = env / name
    if not target.exists():
        shutil.copytree(env / "ck", target)
        file = target / "recipe.json"
        recipe = {**json.loads(file.read_text()), **fields}
        file.write_text(json.dumps({k: v for k, v in recipe.items() if k not in drop}))
    return target


def recomputed(env, name, base, **options):
    """A copy of checkpoint ``base`` with options of its first pass edited and the digest recomputed
    (a deliberate edit that the digest cannot catch: load must still answer with the recipe error)."""
    from vgpcompile.io import checkpoint

    target = env / name
    if not target.exists():
        shutil.copytree(env / base, target)
        file = target / "recipe.json"
        recipe = json.loads(file.read_text())
        recipe["passes"][0]["options"].update(options)
        recipe["weights_digest"] = checkpoint.digest(recipe, target / "model.safetensors")
        file.write_text(json.dumps(recipe))
    return target


def swapped(env, name):
    """The good checkpoint's recipe with the weights of another save."""
    target = env / name
    if not target.exists():
        shutil.copytree(env / "ck", target)
        shutil.copy(env / "ck2" / "model.safetensors", target / "model.safetensors")
    return target


def readonly_dir(env):
    """A directory that cannot be written: chmod when not root, /sys (EPERM even for root) when root."""
    if os.geteuid() != 0:
        target = env / "readonly"
        target.mkdir(exist_ok=True)
        target.chmod(0o555)
        return target
    return Path("/sys")


def export(env, checkpoint, onnx="out.onnx", *extra):
    return ["export", "--model", f"{env / 'user.py'}:mlp", "--checkpoint", str(checkpoint), "--onnx",
            str(env / onnx), "--input-shape", "2,6", "--exporter", "torchscript", *extra]  # fmt: skip


def convert(env, *extra, out="out"):
    return ["convert", "--model", f"{env / 'user.py'}:mlp", "--passes", "gpn", "-o", str(env / out), *extra]


# (id, argv builder, exit code, message substring, output path builder, expected state of that path)
# states: "absent" (nothing there), "unchanged" (same bytes/listing as before the run)
ROWS = [
    # output paths: exit 2 before any work
    ("o-empty", lambda e: convert(e, out="") [:-1] + [""], 2, "-o/--output: the output path is empty",
     lambda e: e, "unchanged"),
    ("o-parent-is-file", lambda e: convert(e, out="a_file/ck"), 2, "is a file, not a directory",
     lambda e: e / "a_file", "unchanged"),
    ("o-is-a-file", lambda e: convert(e, out="a_file"), 2, "exists and is not a directory",
     lambda e: e / "a_file", "unchanged"),
    ("o-readonly-dir", lambda e: convert(e)[:-1] + [str(readonly_dir(e) / "ck")], 2, "cannot write",
     lambda e: readonly_dir(e) / "ck", "absent"),
    ("o-dir-with-other-files", lambda e: convert(e, out="mixed"), 2, "holds other files than a checkpoint (notes.txt)",
     lambda e: e / "mixed", "unchanged"),
    ("onnx-is-a-dir", lambda e: convert(e, "--onnx", str(e / "a_dir.onnx"), "--input-shape", "2,6"), 2,
     "a_dir.onnx' is a directory; give a file name", lambda e: e / "out", "absent"),
    ("onnx-inside-checkpoint", lambda e: convert(e, "--onnx", str(e / "out" / "m.onnx"), "--input-shape", "2,6"), 2,
     "is inside the checkpoint directory", lambda e: e / "out", "absent"),
    # shapes, ranges, demo arguments: exit 2 before any work
    ("shape-huge", lambda e: convert(e, "--input-shape", "100000,100000"), 2, "1e+10 elements (37.3 GiB)",
     lambda e: e / "out", "absent"),
    ("shape-overflow", lambda e: convert(e, "--input-shape", "99999999999999999999999,1"), 2, "elements",
     lambda e: e / "out", "absent"),
    ("shape-zero", lambda e: convert(e, "--input-shape", "0,6"), 2, "every size must be positive",
     lambda e: e / "out", "absent"),
    ("range-reversed", lambda e: convert(e, "--input-range", "1,-1"), 2, "expected finite LO <= HI",
     lambda e: e / "out", "absent"),
    ("range-nan", lambda e: convert(e, "--input-range", "nan,1"), 2, "expected finite LO <= HI",
     lambda e: e / "out", "absent"),
    ("onnx-without-shape", lambda e: convert(e, "--onnx", str(e / "x.onnx")), 2, "--onnx needs --input-shape",
     lambda e: e / "out", "absent"),
    ("demo-steps", lambda e: ["demo", "--steps", "3"], 2, "--steps 3: must be between 8 and", None, None),
    ("demo-depth", lambda e: ["demo", "--depth", "0"], 2, "--depth 0: must be between 1 and", None, None),
    ("demo-width", lambda e: ["demo", "--width", "0"], 2, "--width 0: must be between 2 and", None, None),
    ("demo-lr", lambda e: ["demo", "--lrs", "-1"], 2, "--lrs (-1.0,): must be positive numbers", None, None),
    ("demo-activation", lambda e: ["demo", "--activation", "tanhh"], 2, "unknown activation kind 'tanhh'", None, None),
    # pass options
    ("option-value", lambda e: convert(e, "--option", "gpn.root=sideways"), 2, "option 'root' of pass 'gpn'",
     lambda e: e / "out", "absent"),
    ("unknown-pass", lambda e: convert(e)[:4] + ["gnp"] + convert(e)[5:], 2, "unknown pass 'gnp'",
     lambda e: e / "out", "absent"),
    # models and weights: exit 4 (meta device: 2)
    ("factory-sys-exit", lambda e: convert(e)[:2] + [f"{e / 'user.py'}:exits"] + convert(e)[3:], 4,
     "exits() called sys.exit(0) instead of returning a model", lambda e: e / "out", "absent"),
    ("factory-meta", lambda e: convert(e)[:2] + [f"{e / 'user.py'}:on_meta"] + convert(e)[3:], 2,
     "is on the 'meta' device", lambda e: e / "out", "absent"),
    ("weights-keys", lambda e: convert(e, "--weights", str(e / "other.pt")), 4,
     "do not fit the model built by the factory: missing keys 0.bias", lambda e: e / "out", "absent"),
    ("weights-do-not-fit", lambda e: convert(e)[:2] + [f"{e / 'user.py'}:wide"] + convert(e)[3:] +
     ["--weights", str(e / "w.pt")], 4, "'0.weight' is (32, 6) in the model, (16, 6) in the weights",
     lambda e: e / "out", "absent"),
    # issue #20: weights a cast would corrupt, a zip that inflates (exit 4); pipelines and options (exit 2)
    ("weights-int8", lambda e: convert(e, "--weights", str(e / "w_int8.pt")), 4,
     "'0.weight' holds int8 values for a float32 parameter (a quantized checkpoint?)", lambda e: e / "out", "absent"),
    ("weights-complex", lambda e: convert(e, "--weights", str(e / "w_complex64.pt")), 4,
     "loading would drop the imaginary part", lambda e: e / "out", "absent"),
    ("weights-inflate", lambda e: convert(e, "--weights", str(e / "bomb.pt")), 4,
     "would inflate to 2 GiB from a 2 MiB file, over the limit of 1 GiB", lambda e: e / "out", "absent"),
    ("weights-inflate-limit-raised", lambda e: convert(e, "--weights", str(e / "bomb.pt"), "--max-unzipped-gb", "3"),
     4, "bomb.pt: cannot read checkpoint", lambda e: e / "out", "absent"),
    ("pipeline-megabyte", lambda e: convert(e)[:4] + ["gpn," * 250_000] + convert(e)[5:], 2,
     "pass 'gpn' is listed twice", lambda e: e / "out", "absent"),
    ("option-twice", lambda e: convert(e, "--option", "gpn.root=plus")[:4] + ["gpn{root=paper}"] +
     convert(e, "--option", "gpn.root=plus")[5:], 2,
     "option 'root' of pass 'gpn' is given twice: 'paper' in --passes and 'plus' in --option 'gpn.root=plus'",
     lambda e: e / "out", "absent"),
    ("roaf-beta", lambda e: convert(e)[:4] + ["roaf{beta=2}"] + convert(e)[5:], 2,
     "option 'beta' of pass 'roaf' must be at most 1 when alpha is not given", lambda e: e / "out", "absent"),
    ("recipe-rai-num-examples", lambda e: export(e, recomputed(e, "c11", "ck_rai", num_examples=2**62)), 4,
     "recipe.json: field 'passes[0].options': the recipe does not rebuild the model", lambda e: e / "out.onnx",
     "absent"),
    ("recipe-rai-num-examples-float", lambda e: export(e, recomputed(e, "c12", "ck_rai", num_examples=1e9)), 4,
     "recipe.json: field 'passes[0].options': option 'num_examples' of pass 'rai' must be int",
     lambda e: e / "out.onnx", "absent"),
    ("recipe-roaf-limit", lambda e: export(e, recomputed(e, "c13", "ck_roaf", max_buffer_mb=1e-9)), 4,
     "recipe.json: field 'passes[0].options'", lambda e: e / "out.onnx", "absent"),
    # checkpoints: corrupt recipe fields and weights that do not belong: exit 4, naming recipe.json and the field
    ("recipe-passes-type", lambda e: export(e, corrupt(e, "c1", passes="gpn")), 4,
     "recipe.json: field 'passes' must be a list, got str", lambda e: e / "out.onnx", "absent"),
    ("recipe-unknown-pass", lambda e: export(e, corrupt(e, "c2", passes=[{"name": "gnp", "options": {}}])), 4,
     "recipe.json: field 'passes[0].name': unknown pass 'gnp'", lambda e: e / "out.onnx", "absent"),
    ("recipe-options-type", lambda e: export(e, corrupt(e, "c3", passes=[{"name": "gpn", "options": "paper"}])), 4,
     "recipe.json: field 'passes[0].options' must be an object", lambda e: e / "out.onnx", "absent"),
    ("recipe-absurd-option", lambda e: export(e, corrupt(e, "c4", passes=[{"name": "arp", "options": {"L": -1}}])),
     4, "recipe.json: field 'passes[0].options': ARP L must be a positive", lambda e: e / "out.onnx", "absent"),
    ("recipe-select-type", lambda e: export(e, corrupt(e, "c5", select={"a": 1})), 4,
     "recipe.json: field 'select' must be a list of strings", lambda e: e / "out.onnx", "absent"),
    ("recipe-weights-outside", lambda e: export(e, corrupt(e, "c6", weights="../ck2/model.safetensors")), 4,
     "recipe.json: field 'weights' must name the weights file inside", lambda e: e / "out.onnx", "absent"),
    ("recipe-range-type", lambda e: export(e, corrupt(e, "c7", input_range=[0, "1"])), 4,
     "recipe.json: field 'input_range' must be [lo, hi]", lambda e: e / "out.onnx", "absent"),
    ("recipe-form-edited", lambda e: export(e, corrupt(e, "c8", form="frozen")), 4,
     "field 'form' says 'frozen' but model.safetensors holds the 'training' form", lambda e: e / "out.onnx", "absent"),
    ("recipe-not-json", lambda e: export(e, (corrupt(e, "c9") / "recipe.json").write_text("{") and e / "c9"), 4,
     "recipe.json: corrupt recipe", lambda e: e / "out.onnx", "absent"),
    ("weights-from-another-save", lambda e: export(e, swapped(e, "c10")), 4,
     "recipe.json and model.safetensors do not belong together", lambda e: e / "out.onnx", "absent"),
    ("not-a-checkpoint", lambda e: export(e, e / "mixed"), 4, "not a vgpcompile checkpoint (no recipe.json)",
     lambda e: e / "out.onnx", "absent"),
    # exports: exit 8, the previous file untouched, nothing at a new path
    ("export-opset-1", lambda e: export(e, e / "ck", "good.onnx", "--opset", "1"), 8, "the exported file",
     lambda e: e / "good.onnx", "unchanged"),
    ("export-returns-none", lambda e: convert(e, "--input-shape", "2,6", "--onnx", str(e / "none.onnx"),
     "--exporter", "torchscript", out="none_ck")[:2] + [f"{e / 'user.py'}:returns_none"] +
     convert(e, "--input-shape", "2,6", "--onnx", str(e / "none.onnx"), "--exporter", "torchscript",
             out="none_ck")[3:], 8, "the model returns None, no tensor", lambda e: e / "none.onnx", "absent"),
]  # fmt: skip


def snapshot(path: Path):
    if path is None or not path.exists():
        return None
    if path.is_dir():
        return sorted((p.name, p.stat().st_size) for p in path.iterdir())
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_table(env, row, capsys, monkeypatch):
    name, argv, code, message, where, state = row
    monkeypatch.chdir(env)
    args = argv(env)
    path = where(env) if where else None
    before = snapshot(path)
    try:
        got = main(args)
    except SystemExit as exit_:  # argparse's own errors
        got = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if ": warning: " not in line]
    assert got == code, err
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    if state == "absent":
        assert path is None or not path.exists(), path
    elif state == "unchanged":
        assert snapshot(path) == before
    assert not [p for p in env.iterdir() if ".vgp-" in p.name]  # no staging directory left


def test_the_table_covers_every_exit_code_the_issue_names():
    assert {r[2] for r in ROWS} == {2, 4, 8}
    assert len(ROWS) >= 35


def test_o_empty_writes_nothing_in_the_current_directory(env, monkeypatch, capsys):
    monkeypatch.chdir(env)
    before = sorted(os.listdir(env))
    assert main(convert(env)[:-1] + [""]) == 2
    assert sorted(os.listdir(env)) == before


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "vgpcompile.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def test_subprocess_row_import_that_exits(env):
    """A model file that calls sys.exit at import: a real process must not exit 0 having written nothing."""
    code, _, err = cli("convert", "--model", f"{env / 'exit_on_import.py'}:f", "-o", str(env / "x"))
    assert code == 4 and "called sys.exit(3) instead of returning a model" in err and len(err.splitlines()) == 1
    assert not (env / "x").exists()


def test_deep_nesting_half_weights_and_rnn_reasons_are_not_errors(env, capsys):
    """200 nested modules convert; float16 weights load with a one-line note; a bidirectional RNN's
    plan says why roaf leaves it alone (issue #20)."""
    user = env / "user.py"
    assert main(["convert", "--model", f"{user}:nested200", "--passes", "gpn", "-o", str(env / "deep"),
                 "--input-shape", "2,6"]) == 0  # fmt: skip
    assert main(convert(env, "--weights", str(env / "w_float16.pt"), out="half")) == 0
    assert "holds float16 weights for a model in float32: loaded" in capsys.readouterr().err
    assert main(["plan", "--model", f"{user}:birnn", "--passes", "roaf"]) == 0
    err = capsys.readouterr().err
    assert "no nn.RNN it can swap: '0' (bidirectional nn.RNN is not supported by ROAFRNN)" in err


def test_checkpoint_files_follow_the_umask(env):
    old = os.umask(0o022)
    try:
        assert main(convert(env, out="umask_ck")) == 0
    finally:
        os.umask(old)
    assert {(p.name, p.stat().st_mode & 0o777) for p in (env / "umask_ck").iterdir()} == {
        ("model.safetensors", 0o644), ("recipe.json", 0o644)}  # fmt: skip


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("vgpcompile 0.1.0 (torch ")


def test_debug_prints_the_traceback_with_its_cause(env, capsys):
    assert main(["--debug", *export(env, env / "ck", "dbg.onnx", "--opset", "1")]) == 8
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("vgpcompile export: error: ") and "exported file" in err.splitlines()[0]
    assert "Traceback (most recent call last)" in err and "direct cause" in err
    assert main([*export(env, env / "ck", "dbg.onnx", "--opset", "1"), "--debug"]) == 8  # after the command too
    assert "Traceback" in capsys.readouterr().err


def test_internal_errors_are_one_line_too(env, capsys, monkeypatch):
    import vgpcompile.cli.passes as passes_cmd

    def boom(args):
        raise RuntimeError("a bug\nwith two lines")

    monkeypatch.setattr(passes_cmd, "run", boom)
    assert main(["passes"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("vgpcompile passes: internal error (RuntimeError; please report it): a bug with two lines "
                   "(--debug shows the full traceback)")  # fmt: skip


def test_warnings_are_one_line(env, capsys):
    """A recipe from another version without a digest (as older versions wrote) loads, with two one-line warnings."""
    ck = corrupt(env, "old_version", drop=("weights_digest",), versions={"vgpcompile": "0.0.1"})
    assert main(export(env, ck, "old.onnx")) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vgpcompile export: warning: ")]
    assert any("written by vgpcompile 0.0.1" in w for w in warned) and any("no 'weights_digest'" in w for w in warned)
