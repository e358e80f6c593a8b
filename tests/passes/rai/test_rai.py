"""The rai pass: lifting, local losses, gradient paths, row sparsity, lowering, options, errors."""

from __future__ import annotations

import copy
import inspect

import models
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vgpcompile import UsageError, freeze, load, plan, rai, save, vgpcompile
from vgpcompile.core.registry import make_pass
from vgpcompile.core.runner import lower_order, order


def mlp(widths=(2, 8, 8, 1)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.Sigmoid()]
    return nn.Sequential(*layers[:-1])


def lift(net: nn.Module, n: int = 10, **options) -> nn.Module:
    return vgpcompile(net, passes=["rai"], options={"rai": {"num_examples": n, **options}})


def test_init_local_losses_are_zero_and_lifted_output_is_plain_output():
    net = mlp((2, 16, 16, 16, 1))
    lifted = lift(net, 10)
    x, ids = torch.randn(10, 2), torch.arange(10)
    out = lifted.train()(x, ids)
    assert torch.equal(out, net(x))
    assert [c.local.item() for c in rai.cuts(lifted)] == [0.0] * 4
    (F.binary_cross_entropy_with_logits(out, torch.ones_like(out)) + rai.loss(lifted)).backward()
    # zero local terms have zero gradient: only the output table moves in the first step
    assert all(not p.grad.any() for p in rai.weight_parameters(lifted))
    assert [bool(c.table.grad.coalesce().values().any()) for c in rai.cuts(lifted)] == [False] * 3 + [True]


def test_eval_mode_is_the_plain_chained_network():
    net = mlp()
    lifted = lift(net)
    x = torch.randn(5, 2)
    assert torch.equal(lifted.eval()(x), net(x))
    assert torch.equal(lifted(x, torch.arange(5)), net(x))  # idx is ignored in eval mode
    assert all(not c.seen.any() for c in rai.cuts(lifted))


def test_report_and_plan_show_cuts_and_memory():
    net = mlp((2, 100, 100, 100, 1))
    report = plan(net, passes=["rai"], options={"rai": {"num_examples": 1000}})
    cuts = [r for r in report.sites if r.spelling == "cut"]
    assert [r.name for r in cuts] == ["0", "2", "4", "6"]
    assert cuts[0].outcomes["rai"] == "cut 1/4: Z 1000 x 100, 391 KB"
    assert report.stats["rai"]["table_floats"] == 1000 * 301
    assert report.stats["rai"]["floats_per_example"] == 301
    assert "table_mb=1.148" in str(report)


def test_plan_allocates_nothing():
    # 2e7 examples x 301 floats = 24 GB: a plan only reports it
    report = plan(mlp((2, 100, 100, 100, 1)), passes=["rai"],
                  options={"rai": {"num_examples": 20_000_000, "max_table_mb": 1e6}})  # fmt: skip
    assert report.stats["rai"]["table_mb"] > 20_000


def test_table_size_over_the_limit_is_an_error_naming_the_option():
    with pytest.raises(UsageError, match=r"over option 'max_table_mb' = 1; raise 'max_table_mb', lift fewer"):
        lift(mlp((2, 100, 100, 1)), 10_000, max_table_mb=1.0)


def test_num_examples_is_required_to_compile_but_not_to_plan():
    with pytest.raises(UsageError, match=r"pass 'rai' needs option 'num_examples'"):
        vgpcompile(mlp(), passes=["rai"])
    with pytest.warns(UserWarning, match="num_examples"):
        report = plan(mlp(), passes=["rai"])
    assert report.stats["rai"] == {"cuts": 3, "floats_per_example": 17}


def test_gradient_of_each_block_comes_only_from_its_local_term():
    torch.manual_seed(1)
    net = mlp((3, 4, 4, 2))  # 3 blocks: Linear, sigmoid, Linear, sigmoid, Linear
    lifted = lift(net, 6)
    x, ids = torch.randn(6, 3), torch.arange(6)
    lifted.train()(x, ids)
    with torch.no_grad():  # move every table off the chained values: every local term non-zero
        for cut in rai.cuts(lifted):
            cut.table.add_(torch.randn_like(cut.table))
    out = lifted(x, ids)
    task = F.cross_entropy(out, torch.tensor([0, 1, 0, 1, 0, 1]))
    locals_ = [c.local for c in rai.cuts(lifted)]
    assert all(v > 0 for v in locals_)
    blocks = [[dict(lifted.named_parameters())[f"{i}.{n}"] for n, _ in net[i].named_parameters()] for i in (0, 2, 4)]
    total = task + sum(locals_)
    for t, params in enumerate(blocks):
        full = torch.autograd.grad(total, params, retain_graph=True)
        own = torch.autograd.grad(locals_[t], params, retain_graph=True)
        assert all(torch.equal(a, b) for a, b in zip(full, own)), f"block {t}"
        assert all(g.abs().sum() > 0 for g in own)
        others = [task] + [v for s, v in enumerate(locals_) if s != t]
        for term in others:
            assert torch.autograd.grad(term, params, retain_graph=True, allow_unused=True) == (None, None)
    # both arguments of a local term get gradient: Z_t, and through f_t the previous table
    tables = [c.table for c in rai.cuts(lifted)]
    g = torch.autograd.grad(locals_[1], tables, retain_graph=True, allow_unused=True)
    assert g[0] is not None and g[1] is not None and g[2] is None
    assert torch.autograd.grad(task, tables, retain_graph=True, allow_unused=True)[:2] == (None, None)


def _visit_all(lifted, x):
    lifted.train()(x, torch.arange(len(x)))


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse+SparseAdam", "dense+Rprop"])
def test_rows_outside_the_batch_are_bitwise_unchanged(sparse):
    torch.manual_seed(0)
    x, y = torch.randn(20, 2), torch.randint(0, 2, (20, 1)).float()
    lifted = lift(mlp((2, 8, 8, 1)), 20, sparse=sparse)
    opts = rai.optimizers(lifted, "adam" if sparse else "rprop", lr=1e-2)
    assert [type(o).__name__ for o in opts] == (["Adam", "SparseAdam"] if sparse else ["Rprop"])

    def step(ids):
        for o in opts:
            o.zero_grad()
        out = lifted(x[ids], ids)
        (F.binary_cross_entropy_with_logits(out, y[ids]) + rai.loss(lifted)).backward()
        for o in opts:
            o.step()

    _visit_all(lifted, x)
    for ids in (torch.arange(0, 10), torch.arange(10, 20), torch.arange(20)):
        step(ids)  # every row has a value and optimiser state
    before = [c.table.detach().clone() for c in rai.cuts(lifted)]
    batch = torch.tensor([3, 7, 11, 19])
    step(batch)
    outside = torch.ones(20, dtype=torch.bool)
    outside[batch] = False
    for cut, old in zip(rai.cuts(lifted), before):
        assert torch.equal(cut.table[outside], old[outside])
        assert not torch.equal(cut.table[batch], old[batch])


def test_rows_are_initialised_lazily_to_the_chained_values():
    torch.manual_seed(0)
    x, y = torch.randn(12, 2), torch.randint(0, 2, (12, 1)).float()
    lifted = lift(mlp(), 12)
    opts = rai.optimizers(lifted, "adam", lr=1e-1)
    first = torch.arange(6)
    for _ in range(5):
        for o in opts:
            o.zero_grad()
        out = lifted.train()(x[first], first)
        (F.binary_cross_entropy_with_logits(out, y[first]) + rai.loss(lifted)).backward()
        for o in opts:
            o.step()
    cut = rai.cuts(lifted)[0]
    assert cut.seen.tolist() == [True] * 6 + [False] * 6
    assert not cut.table[6:].any()
    new = torch.arange(6, 12)
    out = lifted(x[new], new)
    assert all(c.local.item() == 0.0 for c in rai.cuts(lifted))
    assert torch.equal(out, lifted.eval()(x[new]))  # the chained network under the current weights


def test_freeze_is_the_plain_network_with_the_trained_weights():
    torch.manual_seed(0)
    x, y = torch.randn(16, 2), torch.randint(0, 2, (16, 1)).float()
    net = mlp((2, 8, 8, 8, 1))
    lifted = lift(net, 16)
    rai.fit(lifted, x, y, epochs=5, batch_size=4, lr=1e-2)
    frozen = freeze(lifted)
    original = mlp((2, 8, 8, 8, 1))
    original.load_state_dict(frozen.state_dict())  # strict: original names, nothing extra
    assert list(frozen.state_dict()) == list(net.state_dict())
    assert list(inspect.signature(frozen.forward).parameters) == ["input"]
    assert not any(isinstance(m, rai.RAICut) for m in frozen.modules())
    assert torch.equal(lifted.eval()(x), frozen(x))
    assert torch.equal(frozen(x), original(x))
    assert not torch.equal(original(x), net(x))  # the weights did train


def test_freeze_after_a_forward_without_backward():
    lifted = lift(mlp())
    lifted.train()(torch.randn(3, 2), torch.arange(3))  # the cuts hold losses with graphs
    frozen = freeze(lifted)
    assert torch.equal(frozen(torch.ones(1, 2)), lifted.eval()(torch.ones(1, 2)))


class WithOptionalArgs(nn.Module):
    """A forward with optional arguments after the input, as timm's ViT (forward(x, attn_mask=None))."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()

    def forward(self, x, mask=None, scale: float = 1.0):
        return self.body(x) * scale


def test_idx_follows_the_required_inputs_so_fit_can_pass_it_positionally():
    torch.manual_seed(0)
    x, y = torch.randn(6, 2), torch.randint(0, 2, (6, 1)).float()
    net = WithOptionalArgs()
    lifted = vgpcompile(net, passes=["rai"], options={"rai": {"num_examples": 6}}, example_inputs=(x,))
    assert list(inspect.signature(lifted.forward).parameters)[:2] == ["x", "idx"]
    assert torch.equal(lifted.train()(x, torch.arange(6)), net(x))  # ids in idx's place, not in mask's
    rai.fit(lifted, x, y, epochs=1, batch_size=3, lr=1e-2)  # fit calls model(x, ids)
    frozen = freeze(lifted)
    assert list(inspect.signature(frozen.forward).parameters)[:1] == ["x"] and "idx" not in str(frozen.code)


def test_every_k_keeps_every_kth_cut_from_the_output():
    net = mlp((2, 4, 4, 4, 4, 4, 1))  # 6 cuts: 0 2 4 6 8 10
    lifted = lift(net, 3, every=2)
    assert [c.label for c in rai.cuts(lifted)] == ["2", "6", "10"]
    report = lifted.vgp_report
    assert report.site("4").outcomes["rai"].startswith("not lifted: every=2")
    assert [c.label for c in rai.cuts(lift(net, 3, every=4))] == ["2", "10"]


def test_select_and_ignore_choose_cuts():
    net = mlp((2, 4, 4, 4, 1))
    assert [c.label for c in rai.cuts(vgpcompile(net, passes=["rai"], ignore=["2"],
                                                 options={"rai": {"num_examples": 2}}))] == ["0", "4", "6"]  # fmt: skip
    assert [c.label for c in rai.cuts(vgpcompile(net, passes=["rai"], select=["act:sigmoid"],
                                                 options={"rai": {"num_examples": 2}}))] == ["0", "2", "4"]  # fmt: skip


def test_functional_spellings_and_in_place_activations():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(8, 3))
            self.fc2 = nn.Linear(8, 8)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            h = torch.tanh(F.linear(x, self.w1))
            h = F.relu(self.fc2(h), inplace=True)
            return self.out(h)

    net = Net()
    lifted = lift(net, 5)
    assert [c.label for c in rai.cuts(lifted)] == ["linear()", "fc2", "out"]
    x, ids = torch.randn(5, 3), torch.arange(5)
    out = lifted.train()(x, ids)
    assert torch.equal(out, net(x))
    (out.sum() + rai.loss(lifted)).backward()  # the in-place ReLU works on a copy of Z
    assert torch.equal(freeze(lifted)(x), net(x))
    # only the cut feeding the in-place ReLU, and the one feeding the model output, copy Z[idx]
    assert [c.copy_out for c in rai.cuts(lifted)] == [False, True, True]


def test_cuts_copy_only_what_may_be_mutated():
    lifted = lift(mlp((2, 8, 8, 1)), 6)
    assert [c.copy_out for c in rai.cuts(lifted)] == [False, False, True]  # sigmoid, sigmoid, the output
    x, ids = torch.randn(6, 2), torch.arange(6)
    lifted.train()(x, ids)
    copied = copy.deepcopy(lifted)
    for c in rai.cuts(copied):
        c.copy_out = True
    for model in (lifted, copied):
        model.zero_grad()
        (model(x, ids).square().sum() + rai.loss(model)).backward()
    for a, b in zip(lifted.parameters(), copied.parameters()):
        assert torch.equal(a.grad.to_dense(), b.grad.to_dense())


def test_conv_shapes_come_from_example_inputs_and_are_recorded(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    net = models.small_cnn().eval()
    lifted = vgpcompile(net, passes=["rai"], example_inputs=(x,), options={"rai": {"num_examples": 4}})
    assert [(c.label, c.shape) for c in rai.cuts(lifted)] == [("bn1", (16, 8, 8)), ("conv2", (32, 8, 8)), ("fc", (10,))]
    assert lifted.vgp_recipe["passes"][0]["options"]["shapes"] == "16x8x8;32x8x8;10"
    lifted.train()(x, torch.arange(4))
    save(lifted, tmp_path / "ck")
    back = load(models.small_cnn, tmp_path / "ck")  # rebuilt without example inputs
    assert all(torch.equal(a.table, b.table) for a, b in zip(rai.cuts(lifted), rai.cuts(back)))
    assert torch.equal(back.eval()(x), lifted.eval()(x))


def test_conv_without_example_inputs_names_the_fix():
    with pytest.raises(UsageError, match=r"cannot tell the per-example shape at cut 'bn1' .*example_inputs="):
        vgpcompile(models.small_cnn(), passes=["rai"], options={"rai": {"num_examples": 4}})


def test_training_without_idx_and_bad_ids_are_clear_errors():
    lifted = lift(mlp(), 4).train()
    with pytest.raises(UsageError, match=r"in training mode the lifted model takes \(x, idx\)"):
        lifted(torch.randn(2, 2))
    with pytest.raises(UsageError, match=r"idx holds ids outside \[0, 4\)"):
        lifted(torch.randn(2, 2), torch.tensor([1, 4]))
    with pytest.raises(UsageError, match="idx has 3 ids for a batch of 2"):
        lifted(torch.randn(2, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(UsageError, match="no local losses recorded"):
        rai.loss(lift(mlp()))


def test_rai_runs_after_other_passes_and_is_lowered_first():
    passes = [make_pass("rai", {"num_examples": 2}), make_pass("gpn")]
    assert [p.name for p in order(passes)] == ["gpn", "rai"]
    assert [p.name for p in lower_order(order(passes))] == ["rai", "gpn"]
    net = models.deep_tanh_mlp(depth=3, width=8)
    lifted = vgpcompile(net, passes=["rai", "gpn"], options={"rai": {"num_examples": 4}})
    assert lifted.vgp_report.passes == ["gpn", "rai"]
    x = torch.randn(4, 16)
    assert (freeze(lifted)(x) - lifted.eval()(x)).abs().max() < 1e-6


def test_a_model_is_lifted_once():
    lifted = lift(mlp())
    again = vgpcompile(lifted, passes=["rai"], options={"rai": {"num_examples": 10}})
    assert len(rai.cuts(again)) == 3
    assert "already lifted" in again.vgp_report.site("<model>").outcomes["rai"]


def test_eager_root_is_an_error():
    with pytest.raises(UsageError, match="needs the model's top-level forward traced"):
        vgpcompile(models.tiny_transformer(), passes=["rai"], options={"rai": {"num_examples": 4}})


def test_resync_sets_rows_to_the_chained_values():
    torch.manual_seed(0)
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8, 1)).float()
    lifted = lift(mlp(), 8)
    rai.fit(lifted, x, y, epochs=3, batch_size=4, lr=1e-1)
    lifted.train()(x, torch.arange(8))
    assert rai.loss(lifted) > 0
    tables = [c.table for c in rai.cuts(lifted)]
    rai.resync(lifted, x)
    assert all(a is c.table for a, c in zip(tables, rai.cuts(lifted)))  # in place: optimisers keep them
    out = lifted.train()(x, torch.arange(8))
    assert rai.loss(lifted).item() == 0.0
    assert torch.equal(out, lifted.eval()(x))


def test_fit_logs_lifted_and_chained_metrics_and_grows_lam():
    torch.manual_seed(0)
    x, y = torch.randn(16, 2), torch.randint(0, 2, (16, 1)).float()
    lifted = lift(mlp(), 16, lam_growth=2.0, resync_every=2)
    history = rai.fit(lifted, x, y, epochs=4, batch_size=8, x_test=x, y_test=y, log_every=2)
    assert [r.epoch for r in history.records] == [2, 4] and history.final.steps == 8
    r = history.final
    assert r.lam == 16.0 and abs(r.lifted - (r.task + r.local)) < 1e-9
    assert 0 <= r.chained_acc <= 1 and r.test_acc == r.chained_acc and r.violation >= 0
    assert not lifted.training


def test_fit_refuses_rprop_on_sparse_tables_and_wrong_sizes():
    lifted = lift(mlp(), 4)
    with pytest.raises(UsageError, match="Rprop does not take sparse gradients"):
        rai.fit(lifted, torch.randn(4, 2), torch.zeros(4, 1), epochs=1, optimizer="rprop")
    with pytest.raises(UsageError, match="x has 5 examples, the tables 4 rows"):
        rai.fit(lifted, torch.randn(5, 2), torch.zeros(5, 1), epochs=1)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"num_examples": 0}, "option 'num_examples' of pass 'rai' must be >= 1"),
        ({"every": 0}, "option 'every' of pass 'rai' must be >= 1"),
        ({"lam": -1.0}, "option 'lam' of pass 'rai' must be a positive number"),
        ({"shapes": "4;x"}, "option 'shapes' of pass 'rai' must be per-cut shapes"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(UsageError, match=message):
        make_pass("rai", options)


def test_shapes_option_must_match_the_cuts():
    with pytest.raises(UsageError, match=r"gives 2 shapes for 3 cuts \(0, 2, 4\)"):
        lift(mlp(), 4, shapes="8;8")
    assert rai.parse_shapes(rai.format_shapes([(4,), (), (2, 3)])) == [(4,), (), (2, 3)]


def test_deepcopy_and_state_dict_of_the_lifted_model():
    lifted = lift(mlp(), 4)
    lifted.train()(torch.randn(4, 2), torch.arange(4))
    keys = set(copy.deepcopy(lifted).state_dict())
    assert {"rai_cut_0.table", "rai_cut_0.seen", "0.weight"} <= keys


def test_run_pass_on_a_bare_graph_module_lifts_it():
    from torch import fx

    from vgpcompile import run_pass

    net = mlp()
    gm = fx.symbolic_trace(net)
    result = run_pass(rai.RAI(num_examples=3), gm)
    assert result.changed == 4 and result.resolved == {"shapes": "8;8;1"}
    x = torch.randn(3, 2)
    assert torch.equal(gm.train()(x, torch.arange(3)), net(x)) and len(rai.cuts(gm)) == 3


def test_the_benchmarks_hand_written_rai_computes_what_the_lifted_model_computes():
    """benchmarks/step_overhead_rai.py compares like with like: same output and local loss."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    import step_overhead_rai

    out = step_overhead_rai.main(["--steps", "1", "--batch", "4", "--depth", "2", "--width", "8", "--examples", "16"])
    assert out[4]["diff"] < 1e-6 and out[4]["rai"] > 0 and out[4]["plain"] > 0


def test_the_traced_fill_writes_what_the_eager_fill_writes():
    """``_fill`` (the branch-free lazy init torch.compile traces) against ``_write``: on a table
    with some rows seen, only the unseen rows of the batch take h's rows, bitwise the same."""
    torch.manual_seed(0)
    cut = rai.cuts(lift(mlp(), 12))[0]
    with torch.no_grad():
        cut.table.normal_()
    cut.seen[torch.tensor([1, 4, 5, 9])] = True
    other = copy.deepcopy(cut)
    idx, h = torch.tensor([0, 4, 5, 7, 9, 11]), torch.randn(6, 8)
    cut._fill(idx, h)
    other._write(idx, h, everywhere=False)
    assert torch.equal(cut.table, other.table) and torch.equal(cut.seen, other.seen)
    assert torch.equal(cut.table[[0, 7, 11]], h[[0, 3, 5]]) and not torch.equal(cut.table[4], h[1])
