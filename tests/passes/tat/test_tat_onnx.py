"""tat's frozen form through ONNX: alpha, beta folded into the producer and gamma, delta into the
consumer leave the plain activation, so the file has the plain model's op counts and
onnxruntime computes what the compiled (training-form) model computes."""

from __future__ import annotations

import pytest
import torch
from test_tat import CNN, SHALLOW, Residual, chain
from torch import nn

from vgpcompile import export_onnx, vgpcompile

pytest.importorskip("dks")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.mark.parametrize(
    "factory,shape,same_ops",
    [(lambda: chain(6, 16, act=nn.LeakyReLU, d_in=5, d_out=3), (7, 5), True),
     (lambda: chain(6, 16, d_in=5, d_out=3), (7, 5), True),
     (lambda: CNN(), (3, 3, 8, 8), True),
     (lambda: Residual(0.8, 0.6), (7, 16), False)],
    ids=["leaky-chain", "tanh-chain", "cnn", "residual"],
)  # fmt: skip
def test_exported_tat_model_matches_the_training_form(factory, shape, same_ops, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    plain = factory()
    compiled = vgpcompile(plain, passes=["tat"], example_inputs=(x,), options=SHALLOW)
    assert any(r.changed.get("tat") for r in compiled.vgp_report.sites)
    report = export_onnx(compiled, tmp_path / "tat.onnx", (x,))
    compiled.eval()
    # export_onnx compared onnxruntime with the frozen model; the frozen model with the training form:
    assert report.checks and report.max_abs <= 1e-4
    with torch.no_grad():
        import onnxruntime as ort

        session = ort.InferenceSession(str(tmp_path / "tat.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        want = compiled(x)
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)
    if same_ops:  # every tat constant folded away: the plain model's ops, one for one
        base = export_onnx(plain, tmp_path / "plain.onnx", (x,))
        assert report.op_types == base.op_types, (report.op_types, base.op_types)
