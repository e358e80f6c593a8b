"""Checkpoints replaced whole or not at all, weights and recipe bound together, a directory that holds
exactly what its recipe names (issue #9)."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import vgpcompile.io.files as files
from vgpcompile import LoadError, UsageError, VgpWarning, freeze, load, save, vgpcompile
from vgpcompile.io.checkpoint import load_weights

ROOT = Path(__file__).resolve().parents[2]


def mlp(width: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 3))


def compiled(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return vgpcompile(mlp(), passes=["gpn"]).eval()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_rewrite_replaces_the_whole_directory(tmp_path):
    """A .pt checkpoint written over a .safetensors one leaves no stale model.safetensors behind."""
    save(compiled(0), tmp_path / "ck")
    new = compiled(1)
    save(new, tmp_path / "ck", format="pt")
    assert listing(tmp_path / "ck") == ["model.pt", "recipe.json"]
    assert listing(tmp_path) == ["ck"]  # no staging directory left
    x = torch.randn(3, 6)
    assert torch.equal(load(mlp, tmp_path / "ck")(x), new(x))


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        save(compiled(), tmp_path / "ck")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ck").stat().st_mode) == 0o750  # not mkdtemp's 0700
    assert stat.S_IMODE((tmp_path / "ck" / "recipe.json").stat().st_mode) == 0o640


def test_a_directory_with_other_files_is_refused_not_deleted(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"holds other files than a checkpoint \(notes.txt\)"):
        save(compiled(), tmp_path)
    assert listing(tmp_path) == ["notes.txt"]


def test_an_empty_directory_becomes_the_checkpoint(tmp_path):
    (tmp_path / "ck").mkdir()
    save(compiled(), tmp_path / "ck")
    assert listing(tmp_path / "ck") == ["model.safetensors", "recipe.json"]


def test_weights_from_another_save_are_refused(tmp_path):
    save(compiled(0), tmp_path / "a")
    save(compiled(1), tmp_path / "b")
    os.replace(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(LoadError, match="recipe.json and model.safetensors do not belong together"):
        load(mlp, tmp_path / "a")


def test_an_edited_form_is_refused(tmp_path):
    """gpn's frozen form has the same keys as the training form: only the digest can tell."""
    save(compiled(), tmp_path / "ck")
    recipe = json.loads((tmp_path / "ck" / "recipe.json").read_text())
    (tmp_path / "ck" / "recipe.json").write_text(json.dumps({**recipe, "form": "frozen"}))
    with pytest.raises(LoadError, match="field 'form' says 'frozen' but model.safetensors holds the 'training' form"):
        load(mlp, tmp_path / "ck")


def test_version_mismatch_warns_and_old_recipes_without_digest_warn(tmp_path):
    model = compiled()
    save(model, tmp_path / "ck")
    file = tmp_path / "ck" / "recipe.json"
    recipe = json.loads(file.read_text())
    del recipe["weights_digest"]
    recipe["versions"]["vgpcompile"] = "0.0.1"
    file.write_text(json.dumps(recipe))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = load(mlp, tmp_path / "ck")
    texts = [str(w.message) for w in caught if issubclass(w.category, VgpWarning)]
    assert any("written by vgpcompile 0.0.1" in t for t in texts)
    assert any("has no 'weights_digest'" in t for t in texts)
    x = torch.randn(2, 6)
    assert torch.equal(back(x), model(x))


@pytest.mark.parametrize("weights", ["../model.safetensors", "/etc/passwd", "other.safetensors", 3])
def test_weights_may_not_point_outside_the_checkpoint(tmp_path, weights):
    save(compiled(), tmp_path / "ck")
    file = tmp_path / "ck" / "recipe.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), "weights": weights}))
    with pytest.raises(LoadError, match=r"recipe.json: field 'weights' must name the weights file inside"):
        load(mlp, tmp_path / "ck")


def test_state_dict_mismatch_names_keys_and_shapes_and_does_not_blame_the_file(tmp_path):
    save(compiled(), tmp_path / "ck")
    with pytest.raises(LoadError) as err:
        load(lambda: mlp(width=8), tmp_path / "ck")
    text = str(err.value)
    assert "'0.weight' is (8, 6) in the model, (16, 6) in the weights" in text
    assert "cannot read" not in text and "changed since they were saved" in text


def test_unreadable_weights_are_named(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"garbage")
    with pytest.raises(LoadError, match="w.safetensors: cannot read safetensors"):
        load_weights(mlp(), tmp_path / "w.safetensors")


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no cleanup either."""


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
@pytest.mark.parametrize("step", ["weights", "fsync", "publish", "after-publish"])
def test_a_save_that_dies_at_any_step_leaves_old_or_new(tmp_path, monkeypatch, step, exchange):
    """Deterministic version of the kill test: die just before each step of save, then look."""
    old, new = compiled(0), compiled(1)
    save(old, tmp_path / "ck")
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    import vgpcompile.io.checkpoint as ckpt

    def die(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(files, "remove", lambda path: None)  # a killed process cleans nothing up
    target = {"weights": (ckpt, "_write_weights"), "fsync": (files, "fsync"), "publish": (files, "publish_dir")}
    if step == "after-publish":
        real = files.publish_dir
        monkeypatch.setattr(files, "publish_dir", lambda s, t: (real(s, t), die()))
    else:
        monkeypatch.setattr(*target[step], die)
    with pytest.raises(Killed):
        save(new, tmp_path / "ck", format="pt")
    x = torch.randn(3, 6)
    back = load(mlp, tmp_path / "ck")
    expect = new if step == "after-publish" else old
    assert torch.equal(back(x), expect(x))
    assert listing(tmp_path / "ck") == (["model.pt", "recipe.json"] if expect is new else
                                        ["model.safetensors", "recipe.json"])  # fmt: skip


def test_staging_left_by_a_dead_process_is_removed_by_the_next_save(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".ck.vgp-{int(dead.stdout)}-0123abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    alive = tmp_path / f".ck.vgp-{os.getppid()}-0123abcd"  # a live process's staging is left alone
    alive.mkdir()
    save(compiled(), tmp_path / "ck")
    assert listing(tmp_path) == [alive.name, "ck"]


# --- the kill test: SIGKILL `convert` while it rewrites a checkpoint ---------------------------

FACTORY = """
import torch
from torch import nn

def big():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 4))
"""

DRIVER = """
import contextlib, io, sys
import torch
torch.set_num_threads(1)
from vgpcompile.cli import main
ck, a, b, model = sys.argv[1:5]
for i in range(10**6):  # alternate A (safetensors) and B (pt) into the same checkpoint until killed
    weights, fmt = (a, "safetensors") if i % 2 == 0 else (b, "pt")
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["convert", "--model", model, "--weights", weights, "--format", fmt, "-o", ck])
    if code != 0:
        sys.exit(code)
    if i == 0:
        print("ready", flush=True)
"""


def test_sigkill_during_convert_leaves_the_old_or_the_new_checkpoint(tmp_path):
    """Three `convert` loops, each SIGKILLed at another delay: every checkpoint is A whole or B whole."""
    from vgpcompile.cli.common import load_factory

    (tmp_path / "factory.py").write_text(FACTORY)
    (tmp_path / "driver.py").write_text(DRIVER)
    spec = f"{tmp_path / 'factory.py'}:big"
    states = {}
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        state = {k: torch.randn_like(v) for k, v in load_factory(spec).state_dict().items()}
        torch.save(state, tmp_path / f"{name}.pt")
        states[name] = state
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    delays = [0.1, 0.25, 0.4]
    procs = []
    for i in range(len(delays)):
        args = [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / f"ck{i}"), str(tmp_path / "a.pt"),
                str(tmp_path / "b.pt"), spec]  # fmt: skip
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env))
    try:
        for proc, delay in zip(procs, delays):
            assert proc.stdout.readline().strip() == "ready", "the convert loop did not start"
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i in range(len(delays)):
        ck = tmp_path / f"ck{i}"
        names = listing(ck)
        assert names in (["model.safetensors", "recipe.json"], ["model.pt", "recipe.json"]), names
        which = "a" if names[0] == "model.safetensors" else "b"
        back = load(lambda: load_factory(spec), ck)  # the digest check passes: weights and recipe belong together
        assert all(torch.equal(back.state_dict()[k], v) for k, v in states[which].items())


def test_frozen_checkpoint_roundtrip_still_bitwise(tmp_path):
    model = compiled()
    frozen = freeze(model)
    save(frozen, tmp_path / "ck")
    x = torch.randn(4, 6)
    assert torch.equal(load(mlp, tmp_path / "ck")(x), frozen(x))
