"""The baseline ladder: standard inits per activation, with the right scales; the shared lr x seeds runner."""

import json
import math

import pytest
import torch
from torch import nn

from vgpcompile.tools.baselines import Arm, init_linear, ladder, plain_mlp, seeded_passes, standard_inits


@pytest.mark.parametrize(
    "activation,first", [("relu", "kaiming"), ("leaky_relu", "kaiming"), ("selu", "lecun"), ("tanh", "xavier"),
                         ("sigmoid", "xavier"), ("gelu", "kaiming")],
)  # fmt: skip
def test_standard_init_comes_first(activation, first):
    inits = standard_inits(activation)
    assert inits[0] == first and len(inits) == len(set(inits)) == 5


@pytest.mark.parametrize(
    "init,activation,std", [("kaiming", "relu", math.sqrt(2 / 512)), ("lecun", "selu", math.sqrt(1 / 512)),
                            ("xavier", "tanh", 5 / 3 * math.sqrt(2 / (512 + 256)))],
)  # fmt: skip
def test_init_scales(init, activation, std):
    torch.manual_seed(0)
    layer = nn.Linear(512, 256)
    init_linear(layer, init, activation)
    assert abs(layer.weight.std().item() / std - 1) < 0.02
    assert torch.count_nonzero(layer.bias) == 0


def test_orthogonal_init_has_the_activation_gain():
    layer = nn.Linear(64, 64)
    init_linear(layer, "orthogonal", "tanh")
    w = layer.weight.detach() / (5 / 3)
    assert torch.allclose(w @ w.T, torch.eye(64), atol=1e-5)


def test_ladder_arms_build_the_architectures_they_name():
    arms = ladder("relu")
    names = ["kaiming+batchnorm", "kaiming+layernorm", "kaiming+residual", "kaiming+layernorm+residual"]
    assert [a.name for a in arms][-4:] == names
    net = plain_mlp("relu", depth=3, width=8, d_in=2, d_out=2, arm=Arm("kaiming", norm="batch", residual=True))
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 3
    x = torch.randn(5, 2)
    assert net(x).shape == (5, 2)


def test_run_arms_picks_each_arms_lr_and_reports_mean_and_sd(tmp_path):
    from vgpcompile.tools.baselines import Comparison, Sweep, run_arms, write_json

    # a fake loop: the loss is |log10(lr) - best| + seed / 10, so arm "a" wants 1e-2 and arm "b" 1e-3
    best = {"a": -2.0, "b": -3.0}

    def build(name):
        return lambda seed: _Tagged(name)

    def train(model, lr, seed):
        loss = abs(math.log10(lr) - best[model.arm]) + seed / 10
        return {"val_loss": loss if model.arm == "a" or lr > 1e-3 else float("nan"), "test_loss": loss}

    sweep = Sweep((1e-3, 1e-2, 1e-1), seeds=(0, 1, 2))
    arms = run_arms({"a": ("plain", build("a")), "b": ("compiled", build("b"))}, train, sweep)
    a, b = arms
    assert a.best_lr == 1e-2 and a.summary("test_loss") == pytest.approx((0.1, 0.1, 0))
    assert b.best_lr == 1e-2  # its own best rate diverged (val_loss NaN), so the next one is picked
    comparison = Comparison("t", "budget", sweep, arms, {"target variance": 1.0}, ("test_loss",), {})
    assert comparison.best(("plain", "compiled"), "test_loss") is a
    table = comparison.table()
    assert "| a | plain | 0.01 | 0.1000 ± 0.1000 |" in table and "target variance 1" in table
    assert "diverged" in comparison.lr_table()
    write_json(tmp_path / "c.json", comparison.to_dict())
    back = Comparison.from_dict(json.loads((tmp_path / "c.json").read_text()))
    assert back.table() == table and back.lr_table() == comparison.lr_table()


class _Tagged(nn.Module):
    def __init__(self, arm: str) -> None:
        super().__init__()
        self.arm = arm


def test_an_arm_run_at_one_fixed_rate_joins_a_sweep():
    """A logged reference run (one lr, no selection metric) sits in a table beside swept arms."""
    from vgpcompile.tools.baselines import ArmResult, Comparison, Sweep

    sweep = Sweep((1e-3, 1e-2), (0, 1, 2))
    swept = ArmResult("xavier", "plain", sweep, {lr: [{"val_loss": lr, "acc": 0.5}] * 3 for lr in sweep.lrs})
    fixed = ArmResult("rai", "compiled", sweep, {0.1: [{"acc": 0.8}, {"acc": 0.9}, {"acc": 0.85}]})
    comparison = Comparison("t", "b", sweep, [swept, fixed], {"chance": 0.5}, ("acc",), {"acc": True})
    assert fixed.best_lr == 0.1 and fixed.summary("acc")[0] == pytest.approx(0.85)
    assert "| rai | compiled | 0.1 | 0.8500 ± 0.0500 |" in comparison.table()
    assert "| rai | not run | not run |" in comparison.lr_table("acc")
    assert comparison.verdict("acc")[0]["word"] == "wins"
    broken = ArmResult("x", "plain", sweep, {0.1: [{"val_loss": math.nan}]})
    assert broken.score(0.1) == math.inf  # a diverged run is still the worst, not a fixed-rate arm


def test_seeded_passes_give_every_random_draw_the_runs_seed():
    passes = seeded_passes(["bsnn", "roaf{beta=0.5}"], 3)
    assert [(p.name, getattr(p, "seed", None)) for p in passes] == [("gpn", None), ("orthogonal", 3), ("roaf", 3)]
    assert passes[2].beta == 0.5  # the other options are kept


def test_an_arm_compiled_with_seeded_passes_differs_between_seeds():
    from vgpcompile import vgpcompile

    def first_weight(seed: int, build_seed: int) -> torch.Tensor:
        net = plain_mlp("tanh", 3, 16, 4, 2, Arm("default"), seed=build_seed)
        return vgpcompile(net, passes=seeded_passes(["orthogonal"], seed)).state_dict()["2.0.weight"]

    assert torch.equal(first_weight(0, 0), first_weight(0, 1))  # the pass's draw alone decides the init
    assert not torch.equal(first_weight(0, 0), first_weight(1, 0))
