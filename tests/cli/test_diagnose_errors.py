"""``diagnose``'s bad-input table (issue #20), as convert's (tests/cli/test_cli_errors.py): for
each bad input the exit code, a substring of the one-line message and the state of --out
afterwards; then the same inputs through the API (typed errors, not the user's bare
RuntimeError), the report directory replaced whole, and models that update tensors in place."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vgpcompile import UsageError, diagnose
from vgpcompile.cli import main
from vgpcompile.tools import diagnose as diagnose_mod

ROOT = Path(__file__).resolve().parents[2]

USER = """
import torch
from torch import nn

def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))

class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        raise RuntimeError("the user's own bug")

def raises():
    return Raises()

def on_meta():
    return nn.Sequential(nn.Linear(6, 16, device="meta"), nn.Tanh())

class Cached(nn.Module):
    '''Keeps its state in a buffer updated in place in eval mode, as transformers' RWKV does.'''

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.register_buffer("state", torch.zeros(6))

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        s = self.state.expand_as(h) * 1.0
        y = h * s
        if not self.training:
            s.add_(h)
        return y + h

def cached():
    return Cached().eval()
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("diagnose_errors")
    (d / "user.py").write_text(USER)
    (d / "a_file").write_text("not a directory")
    (d / "mixed").mkdir()
    (d / "mixed" / "notes.txt").write_text("mine")
    return d


def readonly_dir(env):
    if os.geteuid() != 0:
        target = env / "readonly"
        target.mkdir(exist_ok=True)
        target.chmod(0o555)
        return target
    return Path("/sys")


def diag(env, *extra, model="mlp", shape="4,6", out="report"):
    args = ["diagnose", "--model", f"{env / 'user.py'}:{model}", "--input-shape", shape, *extra]
    return args + (["--out", out if out == "" else str(env / out)] if out is not None else [])


# (id, argv builder, exit code, message substring, path builder, expected state of that path)
ROWS = [
    # --out, checked before the model is loaded or measured
    ("out-empty", lambda e: diag(e, out=""), 2, "--out: the output path is empty", lambda e: e, "unchanged"),
    ("out-is-a-file", lambda e: diag(e, out="a_file"), 2, "exists and is not a directory",
     lambda e: e / "a_file", "unchanged"),
    ("out-under-a-file", lambda e: diag(e, out="a_file/report"), 2, "is a file, not a directory",
     lambda e: e / "a_file", "unchanged"),
    ("out-readonly", lambda e: diag(e, out=None) + ["--out", str(readonly_dir(e) / "report")], 2, "cannot write",
     lambda e: readonly_dir(e) / "report", "absent"),
    ("out-holds-other-files", lambda e: diag(e, out="mixed"), 2,
     "holds other files than a diagnose report (notes.txt)", lambda e: e / "mixed", "unchanged"),
    # runs: bounded
    ("batches-too-many", lambda e: diag(e, "--batches", "100000"), 2, "--batches 100000 x --seeds 1: more than 1000",
     lambda e: e / "report", "absent"),
    ("seeds-times-batches", lambda e: diag(e, "--batches", "40", "--seeds", "40"), 2, "more than 1000",
     lambda e: e / "report", "absent"),
    ("seeds-zero", lambda e: diag(e, "--seeds", "0"), 2, "--batches and --seeds must be positive",
     lambda e: e / "report", "absent"),
    # the model and its inputs: exit 2 like convert, naming the cause and the user's line
    ("shape-does-not-fit", lambda e: diag(e, shape="4,7"), 2, "the model does not run on inputs [(4, 7)]",
     lambda e: e / "report", "absent"),
    ("forward-raises", lambda e: diag(e, model="raises"), 2, "RuntimeError: the user's own bug (",
     lambda e: e / "report", "absent"),
    ("meta-device", lambda e: diag(e, model="on_meta"), 2, "'0.weight' is on the 'meta' device",
     lambda e: e / "report", "absent"),
    ("shape-zero", lambda e: diag(e, shape="0,6"), 2, "every size must be positive", lambda e: e / "report", "absent"),
    ("inplace-state", lambda e: diag(e, model="cached"), 2,
     "backward failed: one of the variables needed for gradient computation has been modified by an inplace",
     lambda e: e / "report", "absent"),
    # passes: checked before measuring; rai gets advice
    ("unknown-pass", lambda e: diag(e, "--passes", "gnp"), 2, "unknown pass 'gnp'", lambda e: e / "report", "absent"),
    ("rai", lambda e: diag(e, "--passes", "rai{num_examples=8}"), 2,
     "diagnose the model without 'rai' to see the gradients it would train", lambda e: e / "report", "absent"),
]  # fmt: skip


def snapshot(path: Path):
    if path is None or not path.exists():
        return None
    if path.is_dir():
        return sorted((p.name, p.stat().st_size) for p in path.iterdir())
    return path.read_bytes()


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_diagnose_bad_input_table(env, row, capsys, monkeypatch):
    name, argv, code, message, where, state = row
    monkeypatch.chdir(env)
    path = where(env)
    before = snapshot(path)
    got = main(argv(env))
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if ": warning: " not in line]
    assert got == code, err
    assert len(lines) == 1 and message in lines[0], err
    assert "internal error" not in err and "Traceback" not in err
    if state == "absent":
        assert not path.exists(), path
    else:
        assert snapshot(path) == before
    assert not [p for p in env.iterdir() if ".vgp-" in p.name]


def test_the_user_line_is_named(env, capsys):
    assert main(diag(env, model="raises")) == 2
    assert f"{env / 'user.py'}:" in capsys.readouterr().err
    assert main(diag(env, model="cached")) == 2
    err = capsys.readouterr().err
    assert f"(the tensor is computed at {env / 'user.py'}:" in err and "in forward" in err
    assert "the model's own backward pass fails the same way" in err


def test_out_empty_writes_nothing(env, monkeypatch, capsys):
    monkeypatch.chdir(env)
    before = sorted(os.listdir(env))
    assert main(diag(env, out="")) == 2
    assert sorted(os.listdir(env)) == before


# ---- the API: the same inputs, typed errors --------------------------------------------


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x[:, :7].reshape(len(x), 7))  # a shape error in the user's code


@pytest.mark.parametrize(
    "model,args,kwargs,message",
    [
        (mlp, (torch.randn(4, 7),), {}, "the model does not run on inputs [(4, 7)]"),
        (lambda: Raises(), (torch.randn(4, 6),), {}, "RuntimeError: shape '[4, 7]' is invalid"),
        (lambda: nn.Sequential(nn.Linear(6, 3, device="meta")), (torch.randn(4, 6),), {}, "'meta' device"),
        (mlp, (torch.randn(0, 6),), {}, "is empty (shape (0, 6))"),
        (mlp, (torch.full((4, 6), float("nan")),), {}, "contains NaN"),
        (mlp, (torch.randn(4, 6),), {"seeds": 10**9}, "seeds=1000000000: 1 batch(es) x 1000000000 seed(s)"),
        (mlp, (), {"batches": ((torch.randn(4, 6), None) for _ in range(10**9))}, "more than MAX_RUNS = 1000"),
        (mlp, (torch.randn(4, 6),), {"passes": "rai{num_examples=8}"}, "diagnose the model without 'rai'"),
        (mlp, (torch.randn(4, 6),), {"passes": "gpn{rot=1}"}, "pass 'gpn' has no option 'rot'"),
        (mlp, (torch.randn(4, 6), torch.randn(4, 3)), {"loss": lambda out, y: out @ y}, "loss(output, targets) raised"),
    ],
)
def test_api_bad_inputs_are_usage_errors(model, args, kwargs, message):
    with pytest.raises(UsageError) as err:
        diagnose(model(), *args, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_shape_error_names_the_users_line():
    with pytest.raises(UsageError) as err:
        diagnose(Raises(), torch.randn(4, 6))
    assert f"{__file__}:" in str(err.value)


# ---- the report directory --------------------------------------------------------------


@pytest.fixture(scope="module")
def report():
    return diagnose(mlp(), torch.randn(8, 6), passes=["gpn"])


def test_write_to_a_file_is_a_usage_error(report, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        report.write(tmp_path / "f")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        report.write(tmp_path / "f" / "sub")
    with pytest.raises(UsageError, match="the output path is empty"):
        report.write("")
    assert (tmp_path / "f").read_text() == "x"


def test_write_replaces_the_directory_whole(report, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "time_steps.png").write_bytes(b"an older report's")  # not written this time: must not survive
    (out / "report.json").write_text("{}")
    paths = report.write(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    assert {p.name for p in paths} == {"report.json", "report.md", "gradients.png", "saturation.png"}
    assert json.loads((out / "report.json").read_text())["schema"] == diagnose_mod.SCHEMA_ID
    assert not [p for p in tmp_path.iterdir() if ".vgp-" in p.name]
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in paths} == {0o666 & ~umask}


def test_a_failing_write_leaves_the_old_report(report, tmp_path, monkeypatch):
    out = tmp_path / "r"
    report.write(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(diagnose_mod.DiagnoseReport, "plot", boom)
    with pytest.raises(OSError):
        report.write(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if ".vgp-" in p.name]


KILLED = """
import sys, torch
from torch import nn
from vgpcompile import diagnose
from vgpcompile.tools import plots
report = diagnose(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)), torch.randn(8, 6))
real = plots.save_figure
def save_then_die(fig, path):
    real(fig, path)
    print("wrote", path, flush=True)
    sys.stdin.readline()  # killed here, after the first PNG of the new report
plots.save_figure = save_then_die
report.write(sys.argv[1])
"""


def test_a_kill_mid_write_leaves_the_old_report_whole(report, tmp_path):
    out = tmp_path / "r"
    report.write(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    try:
        assert proc.stdout.readline().startswith("wrote")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old report, whole
    report.write(out)  # the next write removes the dead process's staging directory
    assert not [p for p in tmp_path.iterdir() if ".vgp-" in p.name]


# ---- models that update tensors in place -----------------------------------------------


class InPlace(nn.Module):
    """In-place updates the backward pass allows: the probes must not break them."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.act(self.fc1(x))
        h = self.fc2(h)
        h.mul_(0.5)
        h = torch.tanh_(h)
        return self.fc3(h).add_(1.0)


def test_probes_measure_models_that_update_tensors_in_place():
    torch.manual_seed(0)
    net = InPlace().double()
    x = torch.randn(8, 6, dtype=torch.float64)
    report = diagnose(net, x)
    # the reference: the same loss (the projection with seed 0) without any probe
    from vgpcompile.tools.probes import projection_loss

    net.zero_grad()
    projection_loss(net(x), 0).backward()
    want = [net.fc1.weight.grad.norm().item(), net.fc2.weight.grad.norm().item(), net.fc3.weight.grad.norm().item()]
    got = [r.grad_norm for r in report.before.measurement.layers]
    assert got == pytest.approx(want, rel=1e-12)


def test_a_model_whose_backward_fails_on_its_own_is_named(env):
    sys.path.insert(0, str(env))
    try:
        import user
    finally:
        sys.path.remove(str(env))
    with pytest.raises(UsageError) as err:
        diagnose(user.cached(), torch.randn(4, 6))
    text = str(err.value)
    assert "modified by an inplace operation" in text and "user.py:" in text and "in forward" in text
    assert diagnose(user.cached().train(), torch.randn(4, 6)).before.verdict.status in ("ok", "problem")


@pytest.mark.zoo
def test_transformers_rwkv_is_measured_in_train_mode_and_named_in_eval_mode():
    """transformers' RwkvModel updates its recurrent state in place in eval mode (use_cache): its own
    backward fails there, and diagnose says where; in train mode it is measured."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.RwkvConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                                  intermediate_size=64, context_length=32)  # fmt: skip
    torch.manual_seed(0)
    model, ids = transformers.RwkvModel(cfg), torch.randint(0, 50, (2, 8))
    assert diagnose(model.train(), ids).before.figures.layers > 0
    with pytest.raises(UsageError) as err:
        diagnose(model.eval(), ids)
    text = str(err.value)
    assert "modified by an inplace operation" in text and "modeling_rwkv.py:" in text
    assert "the model's own backward pass fails the same way (the probes are not involved)" in text
