"""Every pass under ``torch.compile(fullgraph=True)``, training form and frozen form.

Each case trains a tiny compiled model for STEPS optimizer steps next to an eager twin and
checks, from dynamo's counters, one graph and no graph break (fullgraph would raise) and no
recompilation (one unique graph over every step), and that the two twins compute the same
losses. The many-steps runs use the ``aot_eager`` backend (dynamo and AOTAutograd, which
is where breaks and recompiles come from; inductor's codegen on CPU costs tens of seconds a
graph); one test compiles with inductor itself.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import vgpcompile
from vgpcompile import freeze, rai
from vgpcompile.orthogonal import drift, layers, orthogonality_error

STEPS = 100
BATCH, N = 8, 64  # rai: one table row per example

CASES = {
    "gpn": (["gpn"], {}),
    "arp": (["arp"], {}),
    "arp+gpn": (["arp", "gpn"], {}),
    "orthogonal": (["orthogonal"], {}),
    "orthogonal every=3": (["orthogonal"], {"orthogonal": {"every": 3}}),
    "bsnn": (["bsnn"], {}),
    "roaf": (["roaf"], {}),
    "roaf hadamard": (["roaf"], {"roaf": {"filter": "hadamard"}}),
    "rai": (["rai"], {"rai": {"num_examples": N, "sparse": False}}),
    "tat": (["tat"], {}),
}


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)
    )


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 8, generator=g), torch.randint(0, 4, (N,), generator=g)


def build(passes: list[str], options: dict) -> nn.Module:
    x, _ = data()
    example = (x[:BATCH],) if "rai" not in passes else None
    return vgpcompile.vgpcompile(mlp(), passes=passes, options=options, example_inputs=example)


def step_fn(model: nn.Module, forward, lifted: bool):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    x, y = data()

    def step(i: int) -> float:
        idx = torch.arange(i * BATCH, (i + 1) * BATCH) % N
        out = forward(x[idx], idx) if lifted else forward(x[idx])
        loss = F.cross_entropy(out, y[idx]) + (rai.loss(model) if lifted else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def fresh_counters() -> None:
    torch._dynamo.reset()
    counters.clear()


def assert_one_graph(label: str) -> None:
    assert not counters["graph_break"], f"{label}: graph breaks {dict(counters['graph_break'])}"
    assert counters["stats"]["unique_graphs"] == 1, f"{label}: {dict(counters['stats'])} (recompiled)"


@pytest.mark.parametrize("case", list(CASES))
def test_training_and_frozen_forms_compile_whole_without_recompiling(case):
    passes, options = CASES[case]
    lifted = "rai" in passes
    model = build(passes, options)
    twin = copy.deepcopy(model)
    fresh_counters()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    step, twin_step = step_fn(model, compiled, lifted), step_fn(twin, twin, lifted)
    losses = [(step(i), twin_step(i)) for i in range(STEPS)]
    assert_one_graph(f"{case}, training form")
    # the same math, and where the compiled form sums in another order (arp takes rho's gradient
    # from dW under compile) float32 rounding apart, which training amplifies over steps: tight
    # over the first 20, then within what that growth reaches (arp+gpn: 4e-7 at step 20, 2e-4 at 100)
    early = max(abs(a - b) for a, b in losses[:20])
    worst = max(abs(a - b) for a, b in losses)
    assert early < 1e-5, f"{case}: compiled and eager losses differ by {early:.1e} within 20 steps"
    assert worst < 1e-2, f"{case}: compiled and eager losses differ by {worst:.1e}"
    assert losses[-1][0] < losses[0][0]  # it trained
    if "orthogonal" in passes or "bsnn" in passes:  # step() retracted, compiled or not
        every = options.get("orthogonal", {}).get("every", 1)
        bound = 1e-4 if STEPS % every == 0 else drift(model)
        assert max(orthogonality_error(m) for m in layers(model)) <= bound

    frozen = freeze(model).eval()
    fresh_counters()
    compiled_frozen = torch.compile(frozen, fullgraph=True, backend="aot_eager")
    x, _ = data()
    with torch.no_grad():
        for i in range(5):
            batch = x[i * BATCH : (i + 1) * BATCH]
            assert torch.allclose(compiled_frozen(batch), frozen(batch), atol=1e-5, rtol=1e-5)
    assert_one_graph(f"{case}, frozen form")


class SmallCNN(nn.Module):
    """Zero-padded 'same' convs (gpn's frozen form adds b/a before each), a conv block roaf
    filters (channels mixed by the structured filter), pooling and a readout."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.tanh(self.c2(torch.tanh(self.c1(x))))
        return self.fc(h.mean((2, 3)))


CNN_CASES = {
    "gpn": (["gpn"], {}),
    "arp+gpn": (["arp", "gpn"], {}),
    "bsnn": (["bsnn"], {}),
    "roaf hadamard": (["roaf"], {"roaf": {"filter": "hadamard"}}),
}


def train_ten_steps(model: nn.Module, compiled, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(10):
        loss = F.cross_entropy(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("case", list(CNN_CASES))
def test_conv_models_compile_whole_too(case):
    passes, options = CNN_CASES[case]
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 4, (4,), generator=g)
    model = vgpcompile.vgpcompile(SmallCNN(), passes=passes, options=options, example_inputs=(x,))
    if "roaf" in passes:
        assert any(getattr(m, "structured", False) for m in model.modules())  # c2's block is filtered
    fresh_counters()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    train_ten_steps(model, compiled, x, y)
    assert_one_graph(f"{case} CNN, training form")
    frozen = freeze(model).eval()
    fresh_counters()
    with torch.no_grad():
        assert torch.allclose(torch.compile(frozen, fullgraph=True, backend="aot_eager")(x), frozen(x), atol=1e-5)
    assert_one_graph(f"{case} CNN, frozen form")


def test_roaf_rnn_compiles_whole():
    """ROAFRNN's Python time loop unrolls into one graph (per sequence length)."""

    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 8, num_layers=2, batch_first=True)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    model = vgpcompile.vgpcompile(Seq(), passes=["roaf"], options={"roaf": {"horizon": 10}})
    assert type(model.rnn).__name__ == "ROAFRNN"
    x, y = torch.randn(4, 6, 3), torch.randint(0, 2, (4,))
    fresh_counters()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    train_ten_steps(model, compiled, x, y)
    assert_one_graph("roaf RNN")
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-6)


def test_rai_frozen_form_compiles_whole():
    """The frozen form of a lifted model, the plain network, compiles whole too."""
    frozen = freeze(build(["rai"], CASES["rai"][1])).eval()
    fresh_counters()
    compiled = torch.compile(frozen, fullgraph=True, backend="aot_eager")
    x, _ = data()
    with torch.no_grad():
        assert torch.allclose(compiled(x[:BATCH]), frozen(x[:BATCH]), atol=1e-6)
        compiled(x[BATCH : 2 * BATCH])
    assert_one_graph("rai, frozen form")


@pytest.mark.parametrize("sparse", [False, True])
def test_rai_compiled_training_writes_the_same_tables(sparse):
    """rai's lazy row fill runs in the graph (no branch on the seen-mask): after compiled steps
    that first fill every row and then revisit them, the tables, seen-masks and weights equal
    the eager twin's bitwise; the sparse form (SparseAdam, rai.optimizers) compiles as well."""
    model = build(["rai"], {"rai": {"num_examples": N, "sparse": sparse}})
    twin = copy.deepcopy(model)
    fresh_counters()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x, y = data()

    def stepper(m, forward):
        opts = rai.optimizers(m, "adam", lr=0.01)

        def step(i: int) -> float:
            idx = torch.arange(i * BATCH, (i + 1) * BATCH) % N
            loss = F.cross_entropy(forward(x[idx], idx), y[idx]) + rai.loss(m)
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            for opt in opts:
                opt.step()
            return loss.item()

        return step

    step, twin_step = stepper(model, compiled), stepper(twin, twin)
    losses = [(step(i), twin_step(i)) for i in range(N // BATCH + 4)]
    assert_one_graph(f"rai sparse={sparse}")
    assert all(a == b for a, b in losses), losses
    for cut, other in zip(rai.cuts(model), rai.cuts(twin)):
        assert cut.seen.all() and torch.equal(cut.seen, other.seen)
        assert torch.equal(cut.table, other.table)
        assert cut.table.grad.is_sparse == sparse
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_rai_compiled_refuses_ids_out_of_range():
    """Inside the graph the id check is an assertion (a RuntimeError with the eager UsageError's
    message; torch raises it chained under its own error for a compiled GraphModule)."""
    model = build(*CASES["rai"])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x, _ = data()
    compiled(x[:BATCH], torch.arange(BATCH))
    with pytest.raises(Exception) as info:
        compiled(x[:BATCH], torch.arange(BATCH) + N - 1)
    chain, err = [], info.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    assert any(f"idx holds ids outside [0, {N})" in text for text in chain), chain


def test_inductor_compiles_the_frozen_passes_together():
    """One real inductor compile (CPU codegen) in the default run: gpn + orthogonal + roaf
    (hadamard), frozen form, the same outputs as eager."""
    frozen = freeze(build(["bsnn", "roaf"], {"roaf": {"filter": "hadamard"}})).eval()
    fresh_counters()
    compiled = torch.compile(frozen, fullgraph=True)
    x, _ = data()
    with torch.no_grad():
        for i in range(3):
            batch = x[i * BATCH : (i + 1) * BATCH]
            assert torch.allclose(compiled(batch), frozen(batch), atol=1e-5, rtol=1e-5)
    assert_one_graph("inductor, frozen")


@pytest.mark.slow
def test_inductor_compiles_the_training_passes_together():
    """Inductor on the training form (forward and backward codegen: about a minute on CPU):
    gpn + orthogonal + roaf (hadamard), three steps, the same losses as eager."""
    model = build(["bsnn", "roaf"], {"roaf": {"filter": "hadamard"}})
    twin = copy.deepcopy(model)
    fresh_counters()
    compiled = torch.compile(model, fullgraph=True)
    step, twin_step = step_fn(model, compiled, False), step_fn(twin, twin, False)
    losses = [(step(i), twin_step(i)) for i in range(3)]
    assert_one_graph("inductor")
    assert max(abs(a - b) for a, b in losses) < 1e-4, losses
