"""The zoo: every real architecture x every pass compiles and keeps what the model computes.

For each model (zoo_models.ZOO) and pass list (PASSES): compiles with example inputs, runs
in train and eval mode with a finite output; with no pass, equals the original bitwise in
both modes (train mode from the same random seed); freeze gives the training form's
output; save -> load gives it bitwise in both modes; every change the report claims ran
(helpers.check_changes_ran: what the passes inserted is called, once per changed site); the
report finds and changes the expected numbers of sites. The table (model x pass) is printed at the end of the run.
"""

from __future__ import annotations

import pytest
import torch
import zoo_models
from helpers import check_changes_ran
from zoo_models import ZOO, main_output

from vgpcompile import freeze, load, save, vgpcompile

pytestmark = pytest.mark.zoo

# One line per pass list.
PASSES: tuple[tuple[str, ...], ...] = ((), ("gpn",), ("orthogonal",), ("bsnn",), ("arp",), ("roaf",), ("tat",))

# model -> activation sites found, and per pass (changed, of which in eager code); orthogonal
# counts layers. arp leaves Conv -> BatchNorm -> activation (resnet, functional_bn) and eager
# code alone, each with its reason, and rotates GPT-2's Conv1D under its written-out GELU; roaf finds one
# shape-preserving block in these models (BERT's pooler, dense 32 -> 32 + tanh); tat refuses every
# one of these models (normalisation layers, attention, eager parts), each site with its reason. Checked by
# hand once: e.g. t5 has a ReLU per feed-forward (4) and 32
# Linear layers, the 24 of its attention modules (which fx cannot trace) in eager code.
EXPECTED: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {
    "bert": (3, {"gpn": (3, 0), "orthogonal": (13, 6), "arp": (3, 0), "roaf": (1, 0), "tat": (0, 0)}),
    "distilbert": (2, {"gpn": (2, 0), "orthogonal": (12, 8), "arp": (2, 0), "roaf": (0, 0), "tat": (0, 0)}),
    # GELU written out; Conv1D layers; lm_head tied to the token embedding
    "gpt2": (2, {"gpn": (2, 0), "orthogonal": (8, 4), "arp": (2, 0), "roaf": (0, 0), "tat": (0, 0)}),
    "t5": (4, {"gpn": (4, 0), "orthogonal": (32, 24), "arp": (4, 0), "roaf": (0, 0), "tat": (0, 0)}),
    # MambaMixer never calls its ``act`` module (it hands the activation's name to
    # causal_conv1d_fn): gpn's rewrites never run on the example inputs and are undone
    "mamba": (2, {"gpn": (0, 0), "orthogonal": (10, 10), "arp": (0, 0), "roaf": (0, 0), "tat": (0, 0)}),
    "rwkv": (6, {"gpn": (6, 6), "orthogonal": (14, 14), "arp": (0, 0), "roaf": (0, 0), "tat": (0, 0)}),
    "resnet": (5, {"gpn": (5, 0), "orthogonal": (7, 0), "arp": (0, 0), "roaf": (0, 0), "tat": (0, 0)}),
    # 2 hardswish formulas among the sites
    "mobilenetv3": (10, {"gpn": (10, 0), "orthogonal": (13, 0), "arp": (5, 0), "roaf": (0, 0), "tat": (0, 0)}),
    "stochastic_depth": (2, {"gpn": (2, 0), "orthogonal": (8, 0), "arp": (2, 0), "roaf": (0, 0), "tat": (0, 0)}),
    "functional_bn": (2, {"gpn": (2, 0), "orthogonal": (3, 0), "arp": (0, 0), "roaf": (0, 0), "tat": (0, 0)}),
    "torch_transformer": (2, {"gpn": (2, 0), "orthogonal": (6, 2), "arp": (2, 0), "roaf": (0, 0), "tat": (0, 0)}),
    "rwkv_style": (6, {"gpn": (6, 6), "orthogonal": (15, 15), "arp": (0, 0), "roaf": (0, 0), "tat": (0, 0)}),
}

FREEZE_TOL = 1e-4  # relative to the output's scale: folding a, b into the next layer rounds


def _run(model, inputs, training: bool, seed: int = 0) -> torch.Tensor:
    model.train(training)
    torch.manual_seed(seed)
    return main_output(model(*inputs)).detach()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("passes", PASSES, ids=lambda p: "+".join(p) or "none")
@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_zoo(entry, passes, tmp_path):
    if entry.needs:
        pytest.importorskip(entry.needs)
    net, inputs = entry.factory(), entry.inputs()
    compiled = vgpcompile(net, list(passes), example_inputs=inputs)
    report = compiled.vgp_report
    sites = len([r for r in report.sites if "layer" not in r.spelling])  # activation sites, not layer rows
    row = {"model": entry.name, "passes": "+".join(passes) or "none", "sites": sites}

    errors = []
    for training in (True, False):
        got = _run(compiled, inputs, training)
        assert torch.isfinite(got).all(), f"{entry.name} {passes}: non-finite output (training={training})"
        if not passes:
            ref = _run(net, inputs, training)
            errors.append(float((got - ref).abs().max()))
            assert torch.equal(got, ref), f"{entry.name}: compiled != original, training={training}"
    row["parity"] = max(errors) if errors else None

    with torch.no_grad():
        trained = _run(compiled, inputs, False)
        frozen = _run(freeze(compiled), inputs, False)
    row["freeze"] = _rel(frozen, trained)
    assert row["freeze"] <= (0 if not passes else FREEZE_TOL), f"{entry.name} {passes}: freeze differs"

    save(compiled, tmp_path / "ckpt")
    back = load(entry.factory, tmp_path / "ckpt")
    for training in (True, False):
        assert torch.equal(_run(back, inputs, training), _run(compiled, inputs, training)), (
            f"{entry.name} {passes}: load is not bitwise (training={training})"
        )

    problems = check_changes_ran(compiled, *inputs)  # what the report claims is what runs (issue 19)
    assert not problems, f"{entry.name} {passes}: " + "\n".join(problems)

    for p in report.passes:
        row[p] = (report.changed_count(p), report.changed_eager_count(p))
    row["eager_modules"] = len(report.eager)
    zoo_models.TABLE.append(row)
    expected_sites, changed = EXPECTED[entry.name]
    assert sites == expected_sites, f"{entry.name}: {sites} activation sites, expected {expected_sites}"
    for p in report.passes:
        assert row[p] == changed.get(p), f"{entry.name}: {p} changed {row[p]}, expected {changed.get(p)}"
