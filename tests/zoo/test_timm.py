"""timm models (``timm.create_model(..., pretrained=False)``, no downloads) x every pass.

timm needs torchvision, which the suite's CPU torch cannot import; CI runs this file in its
own virtual environment (``.ci/run``'s timm stage: torch 2.14.1 + torchvision + timm) with
``-m timm``. Without timm it is skipped; the default run deselects the marker anyway.

Per model and pass list: compiles with example inputs; train and eval outputs finite; with
no pass equal to the original bitwise in both modes; freeze gives the training form's
output; save -> load is bitwise; the report's counts are those checked by hand once.
timm's own entry points on the compiled model are in ``test_timm_entry_points``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from vgpcompile import freeze, load, rai, save, vgpcompile

timm = pytest.importorskip("timm")
pytestmark = [pytest.mark.timm, pytest.mark.zoo]

BATCH = 2
# Small inputs where the model allows them (a ViT's patch grid follows img_size).
MODELS: dict[str, dict] = {
    "resnet10t": {},
    "convnext_atto": {},
    "vit_tiny_patch16_224": {"img_size": 32, "patch_size": 8},
    "mobilenetv3_small_050": {},
}
PASSES: tuple[tuple[str, ...], ...] = ((), ("gpn",), ("orthogonal",), ("bsnn",), ("arp",), ("roaf",), ("rai",))
# model -> per pass (changed, of which in eager code). arp leaves conv -> BatchNorm -> act
# sites alone (resnet10t; mobilenetv3's are its SE and head ones); roaf finds no
# shape-preserving affine -> activation block in these models. mobilenetv3's classifier is
# timm's Linear (an nn.Linear subclass, traced through when inlined): get_classifier names it,
# so it is a region of its own, called as a module, and orthogonal finds it as a layer (54).
# convnext_atto's head (NormMlpClassifierHead) is split off for forward_head, which may pass
# pre_logits=True; its graph depends on it, so it stays eager and its fc is changed there.
EXPECTED: dict[str, dict[str, tuple[int, int]]] = {
    "resnet10t": {"gpn": (11, 0), "orthogonal": (15, 0), "arp": (0, 0), "roaf": (0, 0)},
    "convnext_atto": {"gpn": (12, 0), "orthogonal": (41, 1), "arp": (12, 0), "roaf": (0, 0)},
    "vit_tiny_patch16_224": {"gpn": (12, 0), "orthogonal": (50, 0), "arp": (12, 0), "roaf": (0, 0)},
    "mobilenetv3_small_050": {"gpn": (42, 0), "orthogonal": (54, 0), "arp": (18, 0), "roaf": (0, 0)},
}
FREEZE_TOL = 1e-9  # relative to the output's scale, in float64


def factory(name: str):
    def build() -> torch.nn.Module:
        torch.manual_seed(1234)
        return timm.create_model(name, pretrained=False, num_classes=10, **MODELS[name])

    return build


def image() -> torch.Tensor:
    return torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def options(passes) -> dict:
    return {"rai": {"num_examples": BATCH}} if "rai" in passes else {}


def run(model, x, training: bool, seed: int = 0) -> torch.Tensor:
    model.train(training)
    torch.manual_seed(seed)
    with torch.no_grad():
        if training and getattr(model, "vgp_recipe", None) and "rai" in model.vgp_report.passes:
            return model(x, torch.arange(len(x)))  # the lifted model's training forward takes the ids
        return model(x)


@pytest.mark.parametrize("passes", PASSES, ids=lambda p: "+".join(p) or "none")
@pytest.mark.parametrize("name", MODELS)
def test_timm_model(name, passes, tmp_path):
    build, x = factory(name), image()
    net = build()
    compiled = vgpcompile(net, list(passes), example_inputs=(x,), options=options(passes))
    for training in (False, True):  # eval first: a training forward moves BatchNorm's statistics
        got = run(compiled, x, training)
        assert torch.isfinite(got).all(), f"{name} {passes}: non-finite output (training={training})"
        if not passes or passes == ("rai",):  # rai changes how one trains, not what the net computes
            if training and passes:
                continue  # the lifted training forward hands the tables' rows on, not the chained values
            assert torch.equal(got, run(net, x, training)), f"{name}: compiled != original (training={training})"

    frozen = freeze(compiled)
    # The fold is checked in float64, where it is exact: in float32 gpn alone on a default-init
    # MobileNetV3 (outputs ~1e5) lets the folded model's rounding reach 7e-3 of the output.
    compiled64, x64 = copy.deepcopy(compiled).double(), x.double()
    trained, folded = run(compiled64, x64, False), run(freeze(compiled64), x64, False)
    rel = float((folded - trained).abs().max() / trained.abs().max())
    assert rel <= (0 if not passes else FREEZE_TOL), f"{name} {passes}: freeze differs by {rel:.2e}"
    if passes == ("rai",):
        assert set(frozen.state_dict()) == set(net.state_dict())  # tables gone, original names

    save(compiled, tmp_path / "ckpt")
    back = load(build, tmp_path / "ckpt")
    for training in (True, False):
        assert torch.equal(run(back, x, training), run(compiled, x, training)), f"{name} {passes}: load not bitwise"

    report = compiled.vgp_report
    for p in report.passes:
        if p in EXPECTED[name]:
            got = (report.changed_count(p), report.changed_eager_count(p))
            assert got == EXPECTED[name][p], f"{name}: {p} changed {got}, expected {EXPECTED[name][p]}"


@pytest.mark.parametrize("name", MODELS)
def test_timm_trains_a_step_compiled(name):
    """One SGD step on the bsnn-compiled model moves every weight and keeps the output finite."""
    x, y = image(), torch.tensor([1, 3])
    model = vgpcompile(factory(name)(), ["bsnn"], example_inputs=(x,)).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    opt.step()
    assert torch.isfinite(model(x)).all()


def test_timm_rai_trains_with_its_tables():
    """rai on a timm CNN: the lifted training forward takes ids, the local losses start at 0."""
    x, y = image(), torch.tensor([1, 3])
    lifted = vgpcompile(factory("resnet10t")(), ["rai"], example_inputs=(x,), options=options(["rai"])).train()
    ids = torch.arange(BATCH)
    out = lifted(x, ids)
    assert float(rai.loss(lifted).detach()) == 0.0  # rows start at the chained forward values
    (torch.nn.functional.cross_entropy(out, y) + rai.loss(lifted)).backward()
    assert all(p.grad is not None for p in rai.weight_parameters(lifted))


@pytest.mark.parametrize("passes", [(), ("gpn",), ("bsnn",)], ids=lambda p: "+".join(p) or "none")
@pytest.mark.parametrize("name", MODELS)
def test_timm_entry_points(name, passes):
    """timm's own methods keep working on the compiled and the frozen model (issue 21: the
    compiled model keeps the user's class, so its methods call the compiled submodules)."""
    build, x = factory(name), image()
    net = build().eval()
    compiled = vgpcompile(net, list(passes), example_inputs=(x,)).eval()
    if not isinstance(compiled, type(net)):
        pytest.skip("the compiled model is not the user's class yet (issue 21's class preservation, branch hf)")
    for model in (compiled, freeze(compiled).eval()):
        assert isinstance(model, type(net)), f"{name}: the frozen model is a {type(model).__name__}, not {type(net)}"
        with torch.no_grad():
            features = model.forward_features(x)
            logits = model.forward_head(features)
            assert torch.allclose(logits, model(x), rtol=1e-5, atol=1e-6)  # forward = head(features)
            if not passes:
                assert torch.equal(features, net.forward_features(x))
        assert model.get_classifier() is not None
        model.reset_classifier(5)
        assert model.get_classifier().out_features == 5
        with torch.no_grad():
            assert model(x).shape == (BATCH, 5)  # the new head is the one forward calls


@pytest.mark.parametrize("name", MODELS)
def test_timm_forward_head_pre_logits(name):
    """forward_head(x, pre_logits=True): the pooled features before the classifier (timm's embedding).
    convnext_atto's head is a module of its own that forward calls with pre_logits=False: it is
    kept eager (core/arguments.py, other_callers), not traced with a guard on that value."""
    x = image()
    net = factory(name)().eval()
    compiled = vgpcompile(net, ["gpn"], example_inputs=(x,)).eval()
    if not isinstance(compiled, type(net)):
        pytest.skip("the compiled model is not the user's class yet (issue 21's class preservation, branch hf)")
    with torch.no_grad():
        pooled = compiled.forward_head(compiled.forward_features(x), pre_logits=True)
        reference = net.forward_head(net.forward_features(x), pre_logits=True)
    assert pooled.shape == reference.shape and torch.isfinite(pooled).all()
    plain = vgpcompile(net, [], example_inputs=(x,)).eval()
    with torch.no_grad():
        assert torch.equal(plain.forward_head(plain.forward_features(x), pre_logits=True), reference)
