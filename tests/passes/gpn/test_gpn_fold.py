"""freeze folds GPN into the Linear/Conv that consumes it, exactly, zero-padded convs included,
through pools and reshapes; what cannot fold keeps one addcmul."""

import operator

import pytest
import torch
import torch.nn.functional as F
from helpers import max_abs
from torch import nn

from vgpcompile import freeze, vgpcompile
from vgpcompile.nn import GPNActivation

CONVS = {
    "pad1": lambda: nn.Conv2d(4, 6, 3, padding=1),
    "same-even-kernel-1d": lambda: nn.Conv1d(4, 6, 4, padding="same", bias=False),
    "stride-dilation-asym": lambda: nn.Conv2d(4, 6, (3, 2), stride=2, padding=(2, 1), dilation=2),
    "grouped": lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2),
    "3d": lambda: nn.Conv3d(4, 6, 3, padding=1),
    "reflect": lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
    "valid": lambda: nn.Conv2d(4, 6, 3),
}
SHAPES = {nn.Conv1d: (3, 4, 11), nn.Conv2d: (3, 4, 9, 10), nn.Conv3d: (2, 4, 5, 6, 7)}
ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "selu": nn.SELU, "sigmoid": nn.Sigmoid}


def gpn_left(model: nn.Module) -> int:
    return sum(isinstance(m, GPNActivation) for m in model.modules())


def frozen_pair(net: nn.Module, root: str = "minus"):
    torch.manual_seed(0)
    model = vgpcompile(net.double(), passes=["gpn"], options={"gpn": {"root": root}}).eval()
    return model, freeze(model)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("conv", CONVS)
def test_gpn_folds_exactly_into_every_conv(conv, act):
    torch.manual_seed(0)
    layer = CONVS[conv]()
    net = nn.Sequential(type(layer)(4, 4, 1), ACTS[act](), layer, nn.Identity())  # the first conv makes a site
    model, frozen = frozen_pair(net)
    x = torch.randn(*SHAPES[type(layer)], dtype=torch.float64)
    assert max_abs(frozen(x), model(x)) < 1e-12
    assert gpn_left(frozen) == 0
    shifts = [n for n in frozen.graph.nodes if n.target is operator.add]
    clamps = [n for n in frozen.graph.nodes if n.target is torch.clamp]
    zero_padded = conv in ("pad1", "same-even-kernel-1d", "stride-dilation-asym", "grouped", "3d")
    # the one Add of b/a a zero-padded conv needs; relu(z) + b/a = clamp(z + b/a, min=b/a) instead
    # puts b/a in the first conv's bias and the clamp's bound, leaving no op beyond the plain ones
    assert len(shifts) == (zero_padded and act != "relu")
    assert len(clamps) == (zero_padded and act == "relu")


def test_zero_b_keeps_the_convs_own_padding():
    net = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    model, frozen = frozen_pair(net, root="plus")  # ReLU's plus root has b = 0
    assert float(model.get_submodule("1").b) == 0
    assert not any(n.target is operator.add for n in frozen.graph.nodes)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    assert max_abs(frozen(x), model(x)) < 1e-12


class PoolNet(nn.Module):
    """The usual CNN: act -> max pool -> conv, act -> functional pool -> view(size(0), -1) -> Linear."""

    def __init__(self, tail: str) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2, padding=1)
        self.fc = nn.Linear(8 * 4 if tail == "max" else 8, 5)
        self.tail = tail

    def forward(self, x):
        x = self.c2(self.pool(F.relu(self.c1(x))))
        x = F.gelu(x)
        if self.tail == "max":
            x = F.max_pool2d(x, 2)
            return self.fc(x.reshape(x.size(0), -1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("tail", ["max", "avg"])
def test_gpn_folds_through_pools_and_reshapes(tail):
    model, frozen = frozen_pair(PoolNet(tail))
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    assert max_abs(frozen(x), model(x)) < 1e-12
    assert gpn_left(frozen) == 0


class Unfoldable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
        self.c4 = nn.Conv2d(8, 8, 1)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1)  # counts padded zeros in its mean

    def forward(self, x):
        h = torch.tanh(self.c1(x))  # read twice
        y = self.c3(self.avg(torch.relu(self.c2(h))))
        # (sigmoid straight on tanh's output would not be an activation site: its input is not a layer's)
        return y + torch.sigmoid(self.c4(h)).sum()  # a sum is not a mean


def test_what_cannot_fold_keeps_one_addcmul_and_stays_exact():
    model, frozen = frozen_pair(Unfoldable())
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    assert max_abs(frozen(x), model(x)) < 1e-12
    assert gpn_left(model) == 3 and gpn_left(frozen) == 3


def test_max_pool_needs_a_positive_scale():
    net = nn.Sequential(
        nn.Linear(4, 4), nn.Tanh(), nn.Unflatten(1, (1, 4)), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(2, 3)
    )
    model = vgpcompile(net.double(), passes=["gpn"], options={"gpn": {"learnable": True}})
    with torch.no_grad():
        model.get_submodule("1").a.neg_()  # trained into a negative scale: max(a x + b) = a min(x) + b
    frozen = freeze(model)
    x = torch.randn(6, 4, dtype=torch.float64)
    assert max_abs(frozen(x), model(x)) < 1e-12 and gpn_left(frozen) == 1


def test_frozen_cnn_onnx_has_the_plain_ops_plus_one_add_per_padded_conv_after_a_non_clamp(tmp_path):
    pytest.importorskip("onnxruntime")
    from vgpcompile import export_onnx

    def cnn():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
        )  # fmt: skip

    x = torch.randn(2, 3, 16, 16)
    plain = export_onnx(vgpcompile(cnn()), tmp_path / "plain.onnx", (x,))
    compiled = export_onnx(vgpcompile(cnn(), passes=["gpn"]), tmp_path / "gpn.onnx", (x,))
    # ReLU -> Clip(min=b/a) with b/a in the first conv's bias; GELU keeps its Add of b/a; no Mul
    want = {**plain.op_types, "Add": 1, "Clip": 1}
    del want["Relu"]
    assert compiled.op_types == want
    assert compiled.nodes == plain.nodes + 1 and compiled.max_abs < 1e-5


class ClampNet(nn.Module):
    """producer -> clamp activation -> zero-padded conv, in the spellings the shift must handle."""

    def __init__(self, producer: str, act: str) -> None:
        super().__init__()
        bias = producer != "conv-no-bias"
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
        self.norm = nn.BatchNorm2d(6, affine=producer != "bn-no-affine") if producer.startswith("bn") else None
        self.act = {"relu": nn.ReLU(), "relu-inplace": nn.ReLU(inplace=True), "relu6": nn.ReLU6()}[act]
        self.next = nn.Conv2d(6, 6, 3, padding=1)
        self.shared = producer == "shared"

    def forward(self, x):
        z = self.conv(x)
        z = self.norm(z) if self.norm is not None else z
        y = self.next(self.act(z))
        return y + z.mean() if self.shared else y  # z read twice: the bias cannot take the shift


CLAMP_CASES = [(p, a) for p in ("conv", "conv-no-bias", "bn", "bn-no-affine", "shared")
               for a in ("relu", "relu-inplace", "relu6") if (p, a) != ("shared", "relu-inplace")]
# (an in-place ReLU on a value read again changes that other read too: another model, not a shared producer)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("producer,act", CLAMP_CASES)
def test_clamp_activation_takes_the_shift_into_its_producer(producer, act, training):
    torch.manual_seed(0)
    net = ClampNet(producer, act)
    model, frozen = frozen_pair(net)
    model.train(training), frozen.train(training)
    x = torch.randn(4, 3, 7, 7, dtype=torch.float64)
    assert max_abs(frozen(x), model(x)) < 1e-12
    assert gpn_left(frozen) == 0
    adds = [n for n in frozen.graph.nodes if n.target is operator.add and n.args[1].__class__ is float]
    clamps = [n for n in frozen.graph.nodes if n.target is torch.clamp]
    shifted = producer in ("conv", "conv-no-bias", "bn")
    assert (len(adds), len(clamps)) == ((0, 1) if shifted else (1, 0))
    if shifted and act == "relu6":
        assert clamps[0].kwargs["max"] - clamps[0].kwargs["min"] == 6.0
