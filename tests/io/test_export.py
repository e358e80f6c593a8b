"""freeze parity, save/load round trips, ONNX export with onnxruntime parity, and the CLI end to end."""

import json
import os
import subprocess
import sys

import models
import pytest
import torch
from helpers import max_abs
from torch import nn

from vgpcompile import LoadError, ParityError, UsageError, export_onnx, freeze, load, save, vgpcompile
from vgpcompile.cli import main
from vgpcompile.core.registry import REGISTRY
from vgpcompile.nn import GPNActivation

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def combos() -> list[list[str]]:
    """Every pass alone, and the combinations the issue names, for the passes that exist."""
    wanted = [[p] for p in REGISTRY] + [["arp", "gpn"], ["gpn", "orthogonal"], ["gpn", "rai"]]
    return [c for c in wanted if all(p in REGISTRY for p in c)]


class RNNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(torch.tanh(self.fc(out[:, -1])))


def rnn_model() -> nn.Module:
    return RNNModel()


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 3))


CASES = [(mlp, (5, 6)), (models.small_cnn, (3, 3, 8, 8)), (rnn_model, (3, 5, 4))]


def compile_for(factory, passes, shape):
    torch.manual_seed(0)
    x = torch.rand(*shape)
    # ReLU-fed sites have no known input range: a fixed arp pivot (range inference is tested in test_arp);
    # rai needs the number of examples
    options = {k: v for k, v in {"arp": {"xQ": 2.0}, "rai": {"num_examples": 5}}.items() if k in passes}
    return vgpcompile(factory(), passes=passes, example_inputs=(x,), options=options).eval(), x


@pytest.mark.parametrize("passes", combos(), ids=lambda c: "+".join(c))
@pytest.mark.parametrize("factory,shape", CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_freeze_parity_and_save_load_roundtrip(factory, shape, passes, tmp_path):
    model, x = compile_for(factory, passes, shape)
    frozen = freeze(model).eval()
    err = max_abs(frozen(x), model(x))
    print(f"{factory.__name__} {passes}: freeze max abs error {err:.2e}")
    assert err <= (1e-4 if "arp" in passes else 1e-5)  # arp's rho (x140 here) amplifies float32 rounding
    assert not any(isinstance(m, GPNActivation) for m in frozen.modules()) or factory is not mlp
    for form, obj in (("training", model), ("frozen", frozen)):
        save(obj, tmp_path / form)
        back = load(factory, tmp_path / form).eval()
        assert torch.equal(back(x), obj(x)), form
        saved = json.loads((tmp_path / form / "recipe.json").read_text())["passes"]
        assert [p["name"] for p in saved] == model.vgp_report.passes  # the run order


def test_frozen_gpn_mlp_has_the_plain_op_count():
    plain = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16, bias=False), nn.ReLU(), nn.Linear(16, 3))
    frozen = freeze(vgpcompile(plain, passes=["gpn"]))
    ops = [n.op for n in frozen.graph.nodes if n.op not in ("placeholder", "output")]
    assert len(ops) == 5 and not any(isinstance(m, GPNActivation) for m in frozen.modules())


@pytest.mark.parametrize("passes", combos(), ids=lambda c: "+".join(c))
@pytest.mark.parametrize("factory,shape", CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_onnx_parity(factory, shape, passes, tmp_path):
    model, x = compile_for(factory, passes, shape)
    report = export_onnx(model, tmp_path / "m.onnx", (x,), exporter="torchscript")
    print(report)
    assert report.max_abs <= 1e-4
    sizes = {c["shape"][0][0] for c in report.checks}  # every case is batch-first
    assert {1, 2, 7} <= sizes
    if factory is rnn_model:
        assert {c["shape"][0][1] for c in report.checks} == {5, 8}  # two sequence lengths
        assert "LSTM" in report.op_types
    onnx.checker.check_model(onnx.load(tmp_path / "m.onnx"), full_check=True)


def test_onnx_dynamo_exporter_and_node_count(tmp_path):
    model, x = compile_for(mlp, ["gpn"], (5, 6))
    report = export_onnx(model, tmp_path / "m.onnx", (x,))
    assert report.exporter == "dynamo" and report.max_abs <= 1e-4
    plain = export_onnx(vgpcompile(mlp()), tmp_path / "p.onnx", (x,))
    assert report.op_types == plain.op_types  # gpn folded away: same ops as the plain model


def test_export_wrong_shape_is_a_clear_error_and_writes_nothing(tmp_path):
    model, _ = compile_for(mlp, ["gpn"], (5, 6))
    with pytest.raises(UsageError, match=r"does not run on example inputs of shape \[\(2, 7\)\]"):
        export_onnx(model, tmp_path / "m.onnx", (torch.randn(2, 7),))
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_keeps_the_file_and_says_so(tmp_path, monkeypatch):
    import vgpcompile.io.onnx as ex

    model, x = compile_for(mlp, ["gpn"], (5, 6))
    export_onnx(model, tmp_path / "m.onnx", (x,), exporter="torchscript")
    good = (tmp_path / "m.onnx").read_bytes()
    real = ex._compare

    def skewed(frozen, session, probe, atol, rtol, first=False):
        return real(lambda *a: frozen(*a) + 1.0, session, probe, atol, rtol, first)

    monkeypatch.setattr(ex, "_compare", skewed)
    with pytest.raises(ParityError, match=r"kept for inspection as .*m\.parity-failed\.onnx"):
        export_onnx(model, tmp_path / "m.onnx", (x,), exporter="torchscript")
    assert (tmp_path / "m.onnx").read_bytes() == good  # never over the good file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.parity-failed.onnx"]


def test_save_needs_a_compiled_model_and_load_checks_files(tmp_path):
    with pytest.raises(UsageError, match="carries the recipe"):
        save(nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(LoadError, match="not a vgpcompile checkpoint"):
        load(mlp, tmp_path)
    model, _ = compile_for(mlp, ["gpn"], (5, 6))
    save(model, tmp_path / "ck")
    with pytest.raises(LoadError, match="do not fit the model built by the factory: missing keys"):
        load(lambda: nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 3),
                                   nn.Linear(3, 3)), tmp_path / "ck")  # fmt: skip
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LoadError, match="do not belong together"):  # the digest catches it first
        load(mlp, tmp_path / "ck")


# --- CLI end to end -------------------------------------------------------------------------

MODELS = "examples/models.py"


def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "vgpcompile.cli", *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_convert_plan_export_end_to_end(tmp_path):
    weights = tmp_path / "cnn.pt"
    torch.save(models.small_cnn().state_dict(), weights)
    out = tmp_path / "out"
    code, stdout, err = cli("convert", "--model", f"{MODELS}:small_cnn", "--weights", str(weights), "--passes",
                            "gpn", "-o", str(out), "--onnx", str(tmp_path / "a.onnx"), "--input-shape", "1,3,8,8",
                            "--exporter", "torchscript")  # fmt: skip
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["model.safetensors", "recipe.json"]
    assert "onnx.checker full check passed" in stdout
    onnx_file = str(tmp_path / "b.onnx")
    code, stdout, err = cli("export", "--model", f"{MODELS}:small_cnn", "--checkpoint", str(out), "--onnx",
                            onnx_file, "--input-shape", "2,3,8,8", "--exporter", "torchscript")  # fmt: skip
    assert code == 0, err
    assert "max abs" in stdout and (tmp_path / "b.onnx").is_file()
    back = load(models.small_cnn, out).eval()
    original = models.small_cnn()
    original.load_state_dict(torch.load(weights))
    assert torch.equal(back.get_parameter("conv1.weight"), original.conv1.weight)


def run_main(args, capsys):
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def bad_inputs(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(models.small_cnn().state_dict(), good)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    pickled = tmp_path / "whole.pt"
    torch.save(nn.Linear(2, 2), pickled)
    other = tmp_path / "other.pt"
    torch.save(nn.Linear(2, 2).state_dict(), other)
    base = ["convert", "--model", f"{MODELS}:small_cnn", "--passes", "gpn", "-o", str(tmp_path / "out")]
    return [
        (base + ["--weights", str(tmp_path / "missing.pt")], 4, "missing.pt: no such file"),
        (base + ["--weights", str(truncated)], 4, "trunc.pt: cannot read checkpoint"),
        (base + ["--weights", str(pickled)], 4, "refusing to unpickle it (pass --allow-pickle"),
        (base + ["--weights", str(other)], 4, "do not fit the model built by the factory: missing keys bn1.bias"),
        (base + ["--weights", str(good), "--passes", "gnp"], 2, "unknown pass 'gnp'"),
        (base + ["--weights", str(good), "--select", "conv9"], 3, "select rule 'conv9' matches no"),
        (base + ["--weights", str(good), "--onnx", str(tmp_path / "x.onnx"), "--input-shape", "1,4,8,8"], 2,
         "does not run on example inputs of shape [(1, 4, 8, 8)]"),  # fmt: skip
        (base + ["--weights", str(tmp_path / "p.pt2")], 4, "no such file"),
    ]


def test_cli_bad_inputs_exit_codes_and_no_output_left(tmp_path, capsys):
    (tmp_path / "p.pt2").write_bytes(b"x")
    cases = bad_inputs(tmp_path)
    cases[-1] = (cases[-1][0], 4, "torch.export program cannot be made trainable again")
    for args, code, message in cases:
        got, err = run_main(args, capsys)
        assert got == code, (args, err)
        assert message in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_save_as_pt_state_dict_roundtrip(tmp_path):
    model, x = compile_for(mlp, ["gpn"], (5, 6))
    save(model, tmp_path / "ck", format="pt")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["model.pt", "recipe.json"]
    assert isinstance(torch.load(tmp_path / "ck" / "model.pt", weights_only=True), dict)
    assert torch.equal(load(mlp, tmp_path / "ck").eval()(x), model(x))


def test_load_rebuilds_arp_without_example_inputs(tmp_path):
    """Regression (found by the property tests): arp inferred the model-input range from
    example_inputs, which load() does not have; the recipe now keeps the range it saw."""
    torch.manual_seed(0)
    x = torch.rand(4, 6) * 3 - 1
    model = vgpcompile(mlp(), passes=["arp"], example_inputs=(x,)).eval()
    assert model.vgp_recipe["input_range"] == [pytest.approx(x.min().item()), pytest.approx(x.max().item())]
    save(model, tmp_path / "ck")
    assert torch.equal(load(mlp, tmp_path / "ck").eval()(x), model(x))


class RNNLanguageModel(nn.Module):
    """The issue's case: token ids -> embedding -> nn.RNN -> per-step logits (batch, length, vocab)."""

    def __init__(self, cell=nn.RNN):
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.rnn = cell(16, 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, 100)

    def forward(self, ids):
        out, _ = self.rnn(self.emb(ids))
        return self.head(torch.tanh(out))


@pytest.mark.parametrize(
    "cell,passes",
    [(nn.RNN, ["gpn"]), pytest.param(nn.RNN, ["arp"], marks=pytest.mark.slow),
     pytest.param(nn.LSTM, ["gpn"], marks=pytest.mark.slow)],
    ids=["rnn-gpn", "rnn-arp", "lstm-gpn"],
)  # fmt: skip
def test_recurrent_language_model_exports_with_a_dynamic_length(cell, passes, tmp_path):
    """The dynamo exporter unrolled nn.RNN at the example's length (8 steps out for 11 in, the
    uncompiled model too); io/onnx_rnn.py hands it ONNX's RNN op."""
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 8))
    model = vgpcompile(RNNLanguageModel(cell), passes, example_inputs=(ids,))
    report = export_onnx(model, tmp_path / "lm.onnx", (ids,))
    assert {c["shape"][0] for c in report.checks} >= {(1, 8), (7, 8), (2, 11)}
    assert report.dynamic_axes["input_0"].keys() == {0, 1}
    assert ("RNN" if cell is nn.RNN else "LSTM") in report.op_types


@pytest.mark.slow
def test_a_length_the_exporter_unrolls_is_fixed_not_failed(tmp_path):
    """roaf's RNN is a Python loop over time: exported at the example's length (the report says
    which axes are dynamic) instead of failing the check at a second length."""
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 8))
    model = vgpcompile(RNNLanguageModel(), ["roaf"], example_inputs=(ids,))
    report = export_onnx(model, tmp_path / "lm.onnx", (ids,))
    assert report.dynamic_axes["input_0"] == {0: report.dynamic_axes["input_0"][0]}  # batch only
    assert {c["shape"][0][1] for c in report.checks} == {8}
