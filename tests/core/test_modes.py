"""Train/eval mode: the compiled model follows .train()/.eval() exactly as the original does."""

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from vgpcompile import load, save, vgpcompile


class DropBlock(nn.Module):
    """The issue's minimal case: F.dropout reading self.training."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return F.dropout(torch.tanh(self.fc(x)), 0.5, self.training)


def drop_path(x, drop_prob=0.0, training=False):
    if drop_prob == 0.0 or not training:
        return x
    keep = 1 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)


class FunctionalBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.register_buffer("mean", torch.zeros(8))
        self.register_buffer("var", torch.ones(8))

    def forward(self, x):
        h = F.batch_norm(self.fc(x), self.mean, self.var, None, None, self.training, 0.1, 1e-5)
        return F.relu(h)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.drop = nn.Linear(8, 8), DropPath(0.5)

    def forward(self, x):
        return x + self.drop(F.gelu(self.fc(x)))


class Scaled(nn.Module):
    """A mode-dependent constant that is not a bool (transformers: dropout=0.0 if not self.training else p)."""

    def forward(self, x):
        return F.dropout(x, p=0.0 if not self.training else 0.3, training=self.training)


def model():
    torch.manual_seed(0)  # every call builds the same weights
    return nn.Sequential(DropBlock(), FunctionalBN(), Residual(), Scaled(), nn.Linear(8, 2))


def _same_in_both_modes(a, b, x):
    for training in (True, False, True):
        a.train(training)
        b.train(training)
        torch.manual_seed(3)
        ya = a(x)
        torch.manual_seed(3)
        assert torch.equal(ya, b(x)), f"training={training}"


@pytest.mark.parametrize("compiled_in", ["train", "eval"])
def test_compiled_model_follows_train_and_eval(compiled_in):
    net = model()
    net.train(compiled_in == "train")
    compiled = vgpcompile(net)
    x = torch.randn(4, 8)
    compiled.eval()
    assert torch.equal(compiled(x), compiled(x))  # the issue: 0.56 apart, dropout still on
    _same_in_both_modes(compiled, model().train(compiled_in == "train"), x)


def test_one_graph_reads_the_training_flag_and_mode_dependent_modules_stay_eager():
    compiled = vgpcompile(model())
    code = compiled.code
    assert "training = True" not in code and "training = False" not in code
    assert "by_mode" in code  # p=0.0 in eval, 0.3 in train
    eager = {e.name: e.reason for e in compiled.vgp_report.eager}
    assert set(eager) == {"2.drop"} and "different things in train and eval mode" in eager["2.drop"]
    assert "test_modes.py" in eager["2.drop"]
    assert isinstance(compiled, fx.GraphModule)


def test_a_module_can_be_put_in_another_mode_than_its_parent():
    net, compiled = model(), vgpcompile(model())
    x = torch.randn(4, 8)
    net.eval()[1].train()
    compiled.eval()
    compiled.get_submodule("1").train()
    torch.manual_seed(0)
    y = compiled(x)
    torch.manual_seed(0)
    assert torch.equal(y, net(x))


@pytest.mark.parametrize("passes", [[], ["gpn"]])
def test_save_load_is_bitwise_in_both_modes(passes, tmp_path):
    x = torch.randn(4, 8)
    compiled = vgpcompile(model().eval(), passes, example_inputs=(x,))
    save(compiled, tmp_path / "ckpt")
    back = load(model, tmp_path / "ckpt")  # the factory builds in train mode
    _same_in_both_modes(back, compiled, x)


def test_batch_statistics_update_as_in_the_original():
    net, compiled = model(), vgpcompile(model())
    x = torch.randn(16, 8)
    for m in (net, compiled):
        m.train()
        torch.manual_seed(0)
        m(x)
    assert torch.equal(compiled.get_buffer("1.mean"), net.get_buffer("1.mean"))
    assert not torch.equal(net.get_buffer("1.mean"), torch.zeros(8))
