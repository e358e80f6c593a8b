"""ONNX files a user can trust: self-contained, replaced only by a checked file, modes from the umask,
every failure one typed error with nothing left at the final path (issue #9, #14)."""

import os
import shutil
import stat

import numpy as np
import pytest
import torch
from torch import nn

import vgpcompile.io.onnx as ex
from vgpcompile import ExportError, ParityError, UsageError, export_onnx, freeze, vgpcompile

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 3))


def run_ort(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())  # hidden files included


def test_dynamo_file_is_self_contained_and_copies_alone(tmp_path):
    """The issue's test: export with the default exporter, copy the .onnx alone elsewhere, run it there."""
    model = vgpcompile(mlp(), passes=["gpn"]).eval()
    x = torch.randn(5, 6)
    report = export_onnx(model, tmp_path / "m.onnx", (x,))
    assert report.exporter == "dynamo" and report.data_file is None
    assert listing(tmp_path) == ["m.onnx"]  # no hidden side file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tmp_path / "m.onnx", elsewhere / "copy.onnx")
    expected = freeze(model).eval()(x).detach().numpy()
    assert np.abs(run_ort(elsewhere / "copy.onnx", x) - expected).max() <= 1e-5


def test_reexport_leaves_nothing_behind_and_respects_the_umask(tmp_path):
    model, x = vgpcompile(mlp()).eval(), torch.randn(3, 6)
    old = os.umask(0o027)
    try:
        for _ in range(2):
            export_onnx(model, tmp_path / "m.onnx", (x,), exporter="torchscript")
    finally:
        os.umask(old)
    assert listing(tmp_path) == ["m.onnx"]
    assert stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o640  # 0666 & ~027, not mkstemp's 0600


def test_above_the_limit_weights_go_to_a_stable_side_file(tmp_path, monkeypatch):
    """Above 2 GB (here: a lowered limit) one side file named <name>.data; copying both works;
    a later self-contained export removes the stale side file."""
    monkeypatch.setattr(ex, "SINGLE_FILE_LIMIT", 1000)
    model, x = vgpcompile(mlp()).eval(), torch.randn(3, 6)
    report = export_onnx(model, tmp_path / "m.onnx", (x,), exporter="torchscript")
    assert listing(tmp_path) == ["m.onnx", "m.onnx.data"] and report.data_file.endswith("m.onnx.data")
    assert (tmp_path / "m.onnx").stat().st_size < 5000  # the weights are in the side file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("m.onnx", "m.onnx.data"):
        shutil.copy(tmp_path / name, elsewhere / name)
    assert np.abs(run_ort(elsewhere / "m.onnx", x) - model(x).detach().numpy()).max() <= 1e-5
    monkeypatch.setattr(ex, "SINGLE_FILE_LIMIT", 2**31)
    export_onnx(model, tmp_path / "m.onnx", (x,), exporter="torchscript")
    assert listing(tmp_path) == ["elsewhere", "m.onnx"]


def test_failed_export_leaves_the_previous_file_untouched(tmp_path):
    model, x = vgpcompile(mlp()).eval(), torch.randn(3, 6)
    export_onnx(model, tmp_path / "m.onnx", (x,), exporter="torchscript")
    good = (tmp_path / "m.onnx").read_bytes()
    with pytest.raises(ExportError, match="the exported file is not valid ONNX|onnxruntime cannot load") as err:
        export_onnx(model, tmp_path / "m.onnx", (x,), exporter="torchscript", opset=1)
    assert "\n" not in str(err.value)
    assert (tmp_path / "m.onnx").read_bytes() == good and listing(tmp_path) == ["m.onnx"]


class Returns(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.fc, self.kind = nn.Linear(4, 4), kind

    def forward(self, x):
        y = self.fc(x)
        return {"none": None, "dict": {"a": torch.tanh(y), "b": 2 * y}, "int": (y, 3)}[self.kind]


@pytest.mark.parametrize(
    "kind,inputs,error,message",
    [
        ("none", (torch.randn(2, 4),), ExportError, "the model returns None, no tensor"),
        ("int", (torch.randn(2, 4),), ExportError, "holds a int (3) besides tensors"),
        ("dict", (torch.randn(0, 4),), ExportError, "shape (0, 4), with no elements: an empty batch"),
        ("dict", (torch.randn(2, 5),), UsageError, "does not run on example inputs of shape [(2, 5)]"),
        ("dict", (3,), UsageError, "input 0 is int; ONNX inputs are tensors"),
    ],
)
def test_unexportable_models_are_one_typed_line_and_leave_nothing(tmp_path, kind, inputs, error, message):
    with pytest.raises(error) as err:
        export_onnx(Returns(kind), tmp_path / "m.onnx", inputs, exporter="torchscript")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert listing(tmp_path) == []


def test_dict_outputs_are_compared_leaf_by_leaf(tmp_path):
    report = export_onnx(Returns("dict"), tmp_path / "m.onnx", torch.randn(2, 4), exporter="torchscript")
    assert {c["output"] for c in report.checks} == {0, 1}  # a bare tensor is taken as the one input


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"exporter": "onnxscript"}, "use 'dynamo' or 'torchscript'"),
        ({"opset": "18"}, "an ONNX opset is a positive integer"),
        ({"atol": -1.0}, "a tolerance is a finite number >= 0"),
    ],
)
def test_bad_export_options_are_usage_errors(tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=message):
        export_onnx(mlp(), tmp_path / "m.onnx", (torch.randn(2, 6),), **kwargs)


@pytest.mark.parametrize(
    "name,make,message",
    [
        ("empty", lambda d: "", "the output path is empty"),
        ("directory", lambda d: d, "is a directory; give a file name"),
        ("parent is a file", lambda d: (d / "f.txt").write_text("x") and d / "f.txt" / "m.onnx", "is a file"),
    ],
)
def test_bad_output_paths_are_usage_errors(tmp_path, name, make, message):
    with pytest.raises(UsageError, match=message):
        export_onnx(mlp(), make(tmp_path), (torch.randn(2, 6),), exporter="torchscript")


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: torch.export cannot follow it
            return torch.tanh(self.fc(x))
        return self.fc(x)


def test_dynamo_failure_is_one_line_naming_the_cause_and_the_users_line(tmp_path):
    with pytest.raises(ExportError) as err:
        export_onnx(Branchy(), tmp_path / "m.onnx", (torch.randn(2, 4),))
    text = str(err.value)
    assert "\n" not in text and "\x1b[" not in text
    assert "GuardOnDataDependentSymNode" in text and "test_onnx_files.py" in text and "if x.sum() > 0:" in text
    assert "Failed to export the model with torch.export" not in text  # the cause, not the wrapper
    assert "def forward" in err.value.log  # the exporter's dump is kept for --debug
    assert listing(tmp_path) == []


class RNNLanguageModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.out = nn.Embedding(50, 8), nn.RNN(8, 16, batch_first=True), nn.Linear(16, 50)

    def forward(self, tokens):
        h, _ = self.rnn(self.emb(tokens))
        return self.out(h)


def test_batch_first_rnn_language_model_exports_or_fails_typed(tmp_path):
    """#14: this raised a raw numpy broadcasting ValueError. torchscript keeps the sequence dynamic."""
    tokens = torch.randint(0, 50, (2, 5))
    report = export_onnx(RNNLanguageModel(), tmp_path / "lm.onnx", (tokens,), exporter="torchscript")
    assert {c["shape"][0][1] for c in report.checks} == {5, 8}


def test_output_shape_mismatch_is_a_parity_error_naming_the_shapes():
    class FixedSession:  # what a graph exported with a fixed sequence length returns
        def get_inputs(self):
            return [type("I", (), {"name": "input_0"})()]

        def run(self, names, feed):
            return [np.zeros((2, 5, 3), np.float32)]

    with pytest.raises(ParityError, match=r"output 0 has shape \(2, 5, 3\) in onnxruntime but \(2, 8, 3\) in torch"):
        ex._compare(lambda x: torch.zeros(2, 8, 3), FixedSession(), (torch.zeros(2, 8),), 1e-4, 1e-4)


class ConstSession:
    def __init__(self, out):
        self.out = out

    def get_inputs(self):
        return [type("I", (), {"name": "input_0"})()]

    def run(self, names, feed):
        return [self.out]


@pytest.mark.parametrize(
    "ref,out,ok",
    [
        ([370.0, 0.0], [370.0 + 3e-3, 1e-3], True),  # large outputs: the tolerance scales with max|ref| (#14)
        ([370.0, 0.0], [370.0, 0.2], False),  # ... but not without bound
        ([1e-6, 0.0], [1e-6, 5e-5], True),  # near-zero outputs: atol
        ([float("nan"), 1.0], [float("nan"), 1.0], True),  # NaN where torch has NaN
        ([float("inf"), 1.0], [1e30, 1.0], False),
    ],
)
def test_parity_tolerance_is_relative_to_the_output_scale(ref, out, ok):
    session = ConstSession(np.array(out, np.float32))
    model = lambda x: torch.tensor(ref)  # noqa: E731
    if ok:
        ex._compare(model, session, (torch.zeros(1),), 1e-4, 1e-4)
    else:
        with pytest.raises(ParityError):
            ex._compare(model, session, (torch.zeros(1),), 1e-4, 1e-4)


def test_large_output_model_passes_parity(tmp_path):
    """A regnet-style head with outputs in the hundreds: float32 rounding is far above an absolute 1e-4."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(40.0)
    x = torch.randn(4, 64) * 3
    report = export_onnx(model, tmp_path / "m.onnx", (x,), exporter="torchscript")
    assert max(c["ref_max"] for c in report.checks) > 300
