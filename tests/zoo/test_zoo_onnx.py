"""The zoo through ONNX with the default (dynamo) exporter: every zoo model that torch.onnx
exports uncompiled exports compiled, with a dynamic batch and, where the model has one, a
dynamic sequence axis (export_onnx checks onnxruntime against torch at batch 1, 2, 7 and at
a second length). The dynamo exporter takes 2-20 s per model here: the full model x pass
matrix is marked ``slow``; the default run exports a representative few.

Not exportable by torch.onnx even uncompiled (so not in the matrix): T5 (torch 2.13 +
transformers 5: "Cannot view a tensor with shape [2, 7, 2, 16] ... as (2, 7, 32)" in its
attention's reshape, at any shapes, dynamic or not); checked by ``test_t5_is_not_exportable_uncompiled_either``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from zoo_models import ZOO, Entry, main_output

from vgpcompile import ExportError, export_onnx, vgpcompile

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.zoo


@dataclass(frozen=True)
class HowToExport:
    kwargs: dict | None = None  # constant keyword arguments of every call (transformers' use_cache)
    sequence: bool = True  # the file keeps a dynamic sequence axis


NO_CACHE = {"use_cache": False}
EXPORTS: dict[str, HowToExport] = {
    "bert": HowToExport(),
    "distilbert": HowToExport(),
    "gpt2": HowToExport(NO_CACHE),
    # their CPU reference paths loop over time in Python: the length is fixed (uncompiled too)
    "mamba": HowToExport(sequence=False),
    "rwkv": HowToExport(sequence=False),
    "resnet": HowToExport(sequence=False),
    "mobilenetv3": HowToExport(sequence=False),
    "stochastic_depth": HowToExport(sequence=False),
    "functional_bn": HowToExport(sequence=False),
    "torch_transformer": HowToExport(sequence=False),  # float features: give seq_dim=1 for a dynamic length
    "rwkv_style": HowToExport(sequence=False),  # a Python loop over x.size(1): unrolled at the example's length
}
PASSES: tuple[tuple[str, ...], ...] = ((), ("gpn",), ("bsnn",), ("arp",), ("roaf",))
# The default run: the issue's failures (DistilBERT's guard, GPT-2's cache) and a CNN.
QUICK = {("distilbert", ("gpn",)), ("gpt2", ("bsnn",)), ("resnet", ("gpn",))}


def entry(name: str) -> Entry:
    found = next(e for e in ZOO if e.name == name)
    if found.needs:
        pytest.importorskip(found.needs)
    return found


def export_compiled(name: str, passes: tuple[str, ...], path) -> tuple:
    e, how = entry(name), EXPORTS[name]
    inputs = e.inputs()
    compiled = vgpcompile(e.factory(), list(passes), example_inputs=inputs)
    return export_onnx(compiled, path, inputs, kwargs=how.kwargs), inputs


def check(report, inputs, how: HowToExport) -> None:
    assert report.exporter == "dynamo" and report.checks
    batches = {c["shape"][0][0] for c in report.checks}
    assert {1, 2, 7} <= batches
    axes = report.dynamic_axes["input_0"]
    assert 0 in axes, report.dynamic_axes
    if how.sequence:
        assert 1 in axes, f"the sequence axis is fixed: {report.dynamic_axes}"
        lengths = {c["shape"][0][1] for c in report.checks}
        assert lengths == {inputs[0].shape[1], inputs[0].shape[1] + 3}  # checked at a second length


CASES = [(n, p) for n in EXPORTS for p in PASSES]


@pytest.mark.parametrize(
    "name,passes",
    [pytest.param(n, p, marks=() if (n, p) in QUICK else pytest.mark.slow) for n, p in CASES],
    ids=[f"{n}-{'+'.join(p) or 'none'}" for n, p in CASES],
)
def test_zoo_model_exports_compiled_with_dynamic_axes(name, passes, tmp_path):
    report, inputs = export_compiled(name, passes, tmp_path / "m.onnx")
    print(report)
    check(report, inputs, EXPORTS[name])


def test_cache_outputs_name_the_fix(tmp_path):
    pytest.importorskip("transformers")
    e = entry("gpt2")
    compiled = vgpcompile(e.factory(), ["gpn"], example_inputs=e.inputs())
    with pytest.raises(ExportError, match=r"DynamicCache .*kwargs=\{'use_cache': False\}"):
        export_onnx(compiled, tmp_path / "m.onnx", e.inputs())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_t5_is_not_exportable_uncompiled_either(tmp_path):
    e = entry("t5")
    for model in (e.factory(), vgpcompile(e.factory(), ["gpn"], example_inputs=e.inputs())):
        with pytest.raises(ExportError, match="Cannot view a tensor"):
            export_onnx(model, tmp_path / "m.onnx", e.inputs(), kwargs=NO_CACHE)  # a None input is passed on


def test_distilbert_compiled_on_unpadded_ids_takes_a_padded_mask():
    """transformers passes its blocks None for an unpadded batch and a mask tensor for a padded
    one (and under torch.export): the compiled model follows the original on both."""
    e = entry("distilbert")
    (ids,) = e.inputs()
    net = e.factory().eval()
    compiled = vgpcompile(net, ["gpn"], example_inputs=(ids,)).eval()
    plain = vgpcompile(net, [], example_inputs=(ids,)).eval()
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    with torch.no_grad():
        assert torch.equal(main_output(plain(ids, attention_mask=mask)), main_output(net(ids, attention_mask=mask)))
        padded, unpadded = (main_output(compiled(ids, attention_mask=m)) for m in (mask, None))
    assert torch.isfinite(padded).all() and not torch.equal(padded[0], unpadded[0])  # the mask is applied
    assert torch.equal(padded[1], unpadded[1])  # the unpadded row is unchanged
    # the block only hands its mask on (to its attention, left eager): traced with the mask as an
    # input, not guarded to None
    block = compiled.get_submodule("transformer.layer.0")
    assert isinstance(block, torch.fx.GraphModule) and "attention_mask=None" not in block.code
