"""Write docs/results.md (and the results block of README.md) from the examples' JSON outputs.

    python examples/make_results.py            # rewrite docs/results.md and README's block
    python examples/make_results.py --check    # exit 1 if either is not what the JSON says

The JSON files in docs/results/ are written by the commands listed in ``RUNS`` (each
records its configuration and wall time); the PNGs next to them are the plots those
commands write, committed with them (.gitignore ignores *.png except docs/results/*.png).
Every number in docs/results.md and in README's block between the ``results`` markers comes
from these files, so the prose cannot drift from what the code measured: a test in the
default suite runs ``--check``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
from pathlib import Path

from vgpcompile.tools.baselines import Comparison

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
START, END = "<!-- results:start (examples/make_results.py writes this block) -->", "<!-- results:end -->"
RAI_START = "<!-- rai-results:start (examples/make_results.py writes this block) -->"
RAI_END = "<!-- rai-results:end -->"
# The rai logs (one JSON line per logged point, examples/rai_moons.py) and the commands that wrote them
RAI_LOG = RESULTS / "rai_moons.jsonl"
RAI_LOG_RUNS = (
    "python examples/rai_moons.py full --arms rai --seeds 0,1,2,3,4 --log docs/results/rai_moons.jsonl",
    "python examples/rai_moons.py full --arms plain --steps 2000 --seeds 0,1,2,3,4 --log docs/results/rai_moons.jsonl",
    "python examples/rai_moons.py minibatch --seeds 0,1,2 --epochs 25 --log docs/results/rai_moons.jsonl",
)
RUNS = {
    "demo_sgd": "vgpcompile demo --full --seeds 3 --json docs/results/demo_sgd.json",
    "demo_adam": "vgpcompile demo --full --seeds 3 --optimizer adam --json docs/results/demo_adam.json",
    "arp_rastrigin": "python examples/arp_rastrigin.py --json docs/results/arp_rastrigin.json "
    "--plot docs/results/arp_rastrigin.png",
    "bsnn_table": "python examples/bsnn_table.py --json docs/results/bsnn_table.json "
    "--plot docs/results/bsnn_table.png",
    "gradient_norms": "python examples/gradient_norms.py --json docs/results/gradient_norms.json",
    "rai_ladder": "python examples/rai_moons.py ladder --seeds 0,1,2 --log docs/results/rai_moons.jsonl "
    "--json docs/results/rai_ladder.json",
    "roaf_sequence": "python examples/roaf_sequence.py --json docs/results/roaf_sequence.json",
}
# Quick-size runs (fewer seeds than RUNS' three where the CPU budget said so; the full size is the
# `experiment` test's): the tat pass's evidence (examples/tat_evidence.py)
QUICK_RUNS = {
    "tat_conv": "python examples/tat_evidence.py conv --quick --json docs/results/tat_conv.json",
    "tat_gpn_robustness": "python examples/tat_evidence.py gpn --quick --json docs/results/tat_gpn_robustness.json",
    "tat_conv_kernel": "python examples/tat_evidence.py kernel --json docs/results/tat_conv_kernel.json",
    "tat_conv_32": "python examples/tat_evidence.py conv --quick --channels 32 --seeds 0 --arms tat "
    "kaiming+batchnorm+residual --json docs/results/tat_conv_32.json",
    "tat_conv_8_600": "python examples/tat_evidence.py conv --quick --steps 600 --seeds 0 --arms tat "
    "--json docs/results/tat_conv_8_600.json",
    "tat_conv_32_600": "python examples/tat_evidence.py conv --quick --channels 32 --steps 600 --seeds 0 --arms tat "
    "--json docs/results/tat_conv_32_600.json",
    # one seed at one rate (not a Comparison): roaf's 10 000-layer MLP (both filters) against the plain net
    "roaf_deep_mlp": "python examples/roaf_deep_mlp.py --arms plain roaf roaf-hadamard "
    "--json docs/results/roaf_deep_mlp.json",
}
# What was checked before accepting the deep CNN's result (tests/tools/test_tat_evidence.py pins the first three)
TAT_CONV_CHECKS = (
    "Checked before accepting the CNN result: the constants are the hand derivation's for this net (51 leaky "
    "ReLUs and a global average pool: M = r composed 51 times, slope 0.435015 with C(0) composed 51 times = 0.9, "
    "γ = √(2/(1+s²)) = 1.296823); the convs get dks's delta-orthogonal init (the centre tap orthogonal, scaled by "
    "max(√(out/in), 1), zeros elsewhere, as `scaled_uniform_orthogonal_` draws it); zero padding does not enter "
    "the network at init (only centre taps are non-zero: circular padding gives the same outputs). What differs "
    "from the methods' assumption is the width: at init a layer multiplies each location's q by a random factor "
    "whose spread shrinks with the channel count, and 50 such factors compound, so at 8 channels q and c leave the "
    "prediction whatever the input (the Gaussian rows), at 128 they stay near it (q within 0.9 to 1.8, c within "
    "0.05). With one input channel the digits "
    "add a degeneracy (every location's vector starts on one line, so through the positively homogeneous leaky "
    "ReLU all of them stay on two rays and the spread over locations is that of two random walks: 30 at 8 "
    "channels). The training result is the budget more than the width: at 600 steps (one seed) tat reaches 0.86 at "
    "8 channels and 0.97 at 32, as BatchNorm + residual does, while Kaiming init stays at chance; at 120 steps it "
    "had not started at either width."
)
KIND_LABEL = {"plain": "best plain rung (same architecture)", "architectural": "best architectural fix",
              "paper": "the paper's plain row"}  # fmt: skip


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(mean: float, sd: float, digits: int) -> str:
    return "diverged" if mean is None or not math.isfinite(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def headline_row(label: str, comparison: Comparison, key: str, digits: int, kinds=("plain", "architectural")) -> str:
    """One row: the compiled arm, each best rival, and the verdict, on ``key``."""
    verdicts = {v["kind"]: v for v in comparison.verdict(key, kinds)}
    if not verdicts:
        return f"| {label} | no compiled arm | | | |"
    first = next(iter(verdicts.values()))
    cells = [label, f"{first['compiled']}: {fmt(first['compiled_mean'], first['compiled_sd'], digits)} "
             f"(lr {first['compiled_lr']:g})"]  # fmt: skip
    for kind in kinds:
        v = verdicts.get(kind)
        cells.append(
            "—" if v is None else f"{v['other']}: {fmt(v['other_mean'], v['other_sd'], digits)} (lr {v['other_lr']:g})"
            f" — compiled **{v['word']}**"
        )
    refs = ", ".join(f"{k} {val:.4g}" for k, val in comparison.reference.items())
    return "| " + " | ".join(cells + [refs]) + " |"


def headline() -> str:
    """The table README quotes: every experiment's compiled arm against the two best rivals."""
    head = ["experiment (metric)", "compiled arm", KIND_LABEL["plain"], KIND_LABEL["architectural"], "reference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, label in (("demo_sgd", "demo, SGD"), ("demo_adam", "demo, Adam")):
        data = load(name)
        if data:
            comparison = Comparison.from_dict(data["comparison"])
            lines.append(headline_row(f"{label} (test accuracy)", comparison, "test_acc", 3))
    data = load("arp_rastrigin")
    if data:
        lines.append(headline_row("arp, Rastrigin (test MSE)", Comparison.from_dict(data["comparison"]), "test_mse", 4))
    data = load("rai_ladder")
    if data:
        steps = data["config"]["steps"]
        label = f"rai, moons, 101 sigmoid layers, {steps} full-batch steps (test accuracy)"
        lines.append(headline_row(label, Comparison.from_dict(data["comparison"]), "test_acc", 3))
    data = load("bsnn_table")
    if data:
        for act, comp in data["comparisons"].items():
            lines.append(headline_row(f"bsnn, digits, {act} (test acc. %)", Comparison.from_dict(comp), "test_acc", 1))
    data = load("tat_conv")
    if data:
        cfg = data["config"]
        label = f"tat, deep vanilla CNN ({cfg['depth'] + 2} layers), digits (test accuracy)"
        lines.append(headline_row(label, Comparison.from_dict(data["comparison"]), "test_acc", 3))
    lines += roaf_headline_rows()
    return "\n".join(lines)


SAME_RUN = {"roaf_deep_mlp": "the same configuration, data and seed; the script refuses another"}  # what --merge keeps


def describe(name: str, data: dict) -> str:
    cfg = data.get("config", {})
    threads = data.get("threads", cfg.get("threads"))
    seconds = data.get("seconds")
    when = f"; wall time {seconds / 60:.0f} min" if seconds else ""
    command = RUNS.get(name) or QUICK_RUNS[name]
    same = SAME_RUN.get(name, "the same loop, sweep and seeds")
    added = "".join(f" The `{arm}` arm was {'rerun' if a.get('rerun') else 'added'} by `{a['command']}` ({same})."
                    for arm, a in data.get("added", {}).items())  # fmt: skip
    return (f"Command: `{command}` (threads: {threads or 'torch default'}{when}; JSON: "
            f"`docs/results/{name}.json`).{added}")


def gradient_section(data: dict) -> list[str]:
    rows = data.get("gradients") or []
    if not rows:
        return []
    lines = ["Hidden-layer weight-gradient norms at step 0 (batch 256, float64, one value per seed; "
             "`orthogonal1` is the compiled arm's own init without the pass, the like-with-like reference):", "",
             "| arm | max/min over hidden layers | smallest norm | largest norm |", "|---|---|---|---|"]  # fmt: skip
    for row in rows:
        cells = [" ".join(f"{s[k]:.2g}" for s in row["seeds"]) for k in ("ratio", "min", "max")]
        lines.append(f"| {row['arm']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def comparison_section(comparison: Comparison, key: str) -> list[str]:
    return [comparison.table(), "", comparison.lr_table(key), ""]


def page() -> str:
    out = ["# Results", "",
           "Generated by `python examples/make_results.py` from the JSON files in `docs/results/`; do not edit by "
           "hand. Every arm of a comparison is trained by the same loop with the same budget, over the same "
           "learning-rate sweep and seeds; each arm's rate is the one with the best mean validation metric; the "
           "tables give mean ± sd over the seeds at that rate, next to the level that means \"learnt nothing\" "
           "(chance accuracy, or the target variance for a regression). Kinds: *plain* = the same architecture "
           "with a standard initialisation (the ladder of `vgpcompile.tools.baselines`), *architectural* = a plain "
           "fix that changes the model (BatchNorm, LayerNorm, residual connections), *compiled* = vgpcompile.",
           "", "## Headline", "", headline(), ""]  # fmt: skip
    for name, title in (("demo_sgd", "`vgpcompile demo`, SGD"), ("demo_adam", "`vgpcompile demo`, Adam")):
        data = load(name)
        if data:
            out += [f"## {title}", "", describe(name, data), "", *gradient_section(data),
                    *comparison_section(Comparison.from_dict(data["comparison"]), "test_acc")]  # fmt: skip
    data = load("arp_rastrigin")
    if data:
        out += ["## arp: 2-D Rastrigin regression", "", describe("arp_rastrigin", data), "",
                *comparison_section(Comparison.from_dict(data["comparison"]), "test_mse"),
                "![test MSE per arm](results/arp_rastrigin.png)", ""]  # fmt: skip
    data = load("gradient_norms")
    if data:
        out += ["## Gradient norms at step 0, like with like", "", describe("gradient_norms", data), "",
                gradient_summary(), ""]
        for act, rows in data["tables"].items():
            out += [f"### {act}, every init", "", *gradient_section({"gradients": rows})]
    out += rai_section()
    out += tat_section()
    out += roaf_sequence_section()
    out += roaf_deep_mlp_section()
    data = load("bsnn_table")
    if data:
        out += ["## bsnn: the BSNN paper's table on digits", "", describe("bsnn_table", data), ""]
        for act, comp in data["comparisons"].items():
            paper = data["paper_mnist"][act]
            paper_line = f"The paper (MNIST, depth 200, width 500) train / test %: plain {paper[0]}, GPN {paper[1]}."
            out += [f"### {act}", "", *comparison_section(Comparison.from_dict(comp), "test_acc"), paper_line, ""]
        out += ["![test accuracy per arm and activation](results/bsnn_table.png)", ""]
    return "\n".join(out)


def fit_rates(comparison: Comparison, level: float = 0.9) -> list[str]:
    """Per arm: the rates at which every seed ends above ``level`` test accuracy, and diverged runs."""
    lines = [f"| arm | rates where every seed reaches test accuracy > {level} | diverged runs (of "
             f"{len(comparison.sweep.lrs) * len(comparison.sweep.seeds)}) |", "|---|---|---|"]  # fmt: skip
    for arm in comparison.arms:
        ok = [f"{lr:g}" for lr in comparison.sweep.lrs
              if all(math.isfinite(v) and v > level for v in arm.values("test_acc", lr))]  # fmt: skip
        bad = sum(not math.isfinite(v) for lr in comparison.sweep.lrs for v in arm.values("test_acc", lr))
        lines.append(f"| {arm.name} | {', '.join(ok) or 'none'} | {bad} |")
    return lines


def divergence_lines(data: dict) -> list[str]:
    """Where each run of the robustness experiment diverged, and the largest spectral norm of a
    hidden weight at its last finite step: what the cause analysis reads."""
    lines = ["| arm | lr | diverged at step (per seed) | largest hidden ‖W‖₂ (per seed) |", "|---|---|---|---|"]
    for arm in data["comparison"]["arms"]:
        for lr, runs in arm["runs"].items():
            steps = " ".join("—" if r.get("diverged_at") is None else str(r["diverged_at"]) for r in runs)
            sigma = " ".join(f"{r['max_sigma']:.2f}" for r in runs)
            lines.append(f"| {arm['name']} | {float(lr):g} | {steps} | {sigma} |")
    return lines


def tat_section() -> list[str]:
    out = []
    data = load("tat_conv")
    if data:
        comparison = Comparison.from_dict(data["comparison"])
        out += ["## tat: a deep vanilla CNN (no normalisation, no skips)", "", describe("tat_conv", data), "",
                *comparison_section(comparison, "test_acc"), *fit_rates(comparison), ""]  # fmt: skip
    data = load("tat_conv_32")
    if data:
        comparison = Comparison.from_dict(data["comparison"])
        out += [f"The same net at {data['config']['channels']} channels, tat and the best architectural fix, one "
                "seed (the width check).", "", describe("tat_conv_32", data), "",
                *comparison_section(comparison, "test_acc")]  # fmt: skip
    for name in ("tat_conv_8_600", "tat_conv_32_600"):
        data = load(name)
        if data:
            comparison = Comparison.from_dict(data["comparison"])
            out += [f"At {data['config']['channels']} channels with {data['config']['steps']} steps, one seed.", "",
                    describe(name, data), "", *comparison_section(comparison, "test_acc")]  # fmt: skip
    data = load("tat_conv_kernel")
    if data:
        lines = [f"The tat-compiled CNN ({data['config']['depth'] + 2} layers) at init, per channel count, against "
                 "the wide-net prediction: q, the mean square of an activation's input (TAT's leaky ReLU keeps each "
                 "location's q at the input's in a wide net), every 10th layer; the spread of q over locations and "
                 "examples at the last layer (geometric sd of q_L / q_0; 1 is the prediction); and the mean |c − C "
                 "map| of the cosine between two examples at a location against the C map applied to theirs at the "
                 "input. On 64 digits (one channel: q = x² at a location) and on Gaussian inputs with as many "
                 f"channels as the net (q = 1 per location). Command: `{QUICK_RUNS['tat_conv_kernel']}`.", "",
                 "| channels | input | q at layers 1, 11, 21, ... | min .. max | spread of q_L / q_0 | "
                 "\\|c − C map\\| at layers 11, 21, ... |", "|---|---|---|---|---|---|"]  # fmt: skip
        for name, row in data["rows"].items():
            width, _, kind = name.partition(" ")
            qs = " ".join(f"{q:.2f}" for q in row["q_every_10"])
            errs = " ".join(f"{e:.3f}" for e in row["c_error_every_10"][1:])
            lines.append(f"| {width} | {kind} | {qs} | {row['q_min']:.2f} .. {row['q_max']:.2f} | "
                         f"{row['q_ratio_geo_sd_last']:.2f} | {errs} |")  # fmt: skip
        out += [*lines, "", TAT_CONV_CHECKS, ""]
    data = load("tat_gpn_robustness")
    if data:
        comparison = Comparison.from_dict(data["comparison"])
        out += ["## Robustness of the demo's headline: gpn on a variation of the demo", "",
                describe("tat_gpn_robustness", data), "", *comparison_section(comparison, "test_acc"),
                *fit_rates(comparison), "", *divergence_lines(data), ""]  # fmt: skip
    return out


ROAF_TASKS = {"digits": "Permuted sequential digits", "recall T=100": "Long-delay recall, T = 100",
              "recall T=1000": "Long-delay recall, T = 1000"}  # fmt: skip


def roaf_headline_rows() -> list[str]:
    data = load("roaf_sequence")
    if not data:
        return []
    hidden, comparisons = data["config"]["hidden"], data["comparisons"]
    return [headline_row(f"roaf, {title[0].lower() + title[1:]}, RNN hidden {hidden} (test accuracy)",
                         Comparison.from_dict(comparisons[task]), "test_acc", 3)
            for task, title in ROAF_TASKS.items() if task in comparisons]  # fmt: skip


def solved_line(comparison: Comparison, level: float = 0.95) -> str:
    cells = [f"{a.name} {sum(v >= level for v in a.values('test_acc'))}/{len(a.values('test_acc'))}"
             for a in comparison.arms]  # fmt: skip
    return f"Seeds that solve it (test accuracy ≥ {level}) at each arm's rate: {', '.join(cells)}."


def roaf_sequence_section() -> list[str]:
    """roaf's Elman RNN against the recurrent baselines (examples/roaf_sequence.py), one
    Comparison per task; a task the JSON lacks is said to be not run."""
    data = load("roaf_sequence")
    if not data:
        return []
    commands = sorted({r["command"] for r in data["runs"].values()})
    split = "" if commands == [RUNS["roaf_sequence"]] else (
        " This JSON was written by " + " and ".join(f"`{c}`" for c in commands)
        + " (run side by side; together the same runs as the command; the wall time is their sum, on a "
        "shared machine).")  # fmt: skip
    out = ["## roaf: recurrent nets against LSTM, GRU and orthogonal RNNs", "", describe("roaf_sequence", data) + split,
           "", "One tanh Elman RNN layer (`nn.RNN`) and a Linear readout of the last state, the same width for every "
           "arm: `roaf` is it compiled with `passes=[\"roaf\"]` (β = 1/T); `rnn` is it with PyTorch's default init, "
           "`rnn-orthogonal` with W_hh orthogonal (gain 1); `lstm` is `nn.LSTM` with the default init, `lstm-fb1` "
           "with forget-gate bias 1 (b_ih's forget slice 1, b_hh's 0: the effective bias, their sum, is 1); `gru` is "
           "`nn.GRU`. Adam with gradient-norm clipping at 1 for all. The recurrent baselines that change the cell "
           "count as *architectural*.", ""]  # fmt: skip
    for task, title in ROAF_TASKS.items():
        raw = data["comparisons"].get(task)
        if raw is None:
            out += [f"### {title}", "", "Not run.", ""]
            continue
        comparison = Comparison.from_dict(raw)
        out += [f"### {title}", "", *comparison_section(comparison, "test_acc")]
        if task.startswith("recall"):
            out += [solved_line(comparison), ""]
    return out


ROAF_MLP_ARMS = {"plain": "`plain` is the net with PyTorch's default init.",
                 "plain-xavier": "`plain-xavier` is it with tanh's standard init (Glorot, gain 5/3).",
                 "roaf": "`roaf` is the plain net compiled (β = 1/depth).",
                 "roaf-hadamard": "`roaf-hadamard` is it compiled with `filter=hadamard`."}  # fmt: skip


def roaf_deep_mlp_section() -> list[str]:
    """roaf's seed experiment (examples/roaf_deep_mlp.py): one seed, one rate, arms side by side."""
    data = load("roaf_deep_mlp")
    if not data:
        return []
    cfg, arms = data["config"], data["arms"]
    depth, tenth = cfg["depth"], max(1, cfg["steps"] // 10)

    def row(label: str, cell) -> str:
        return "| " + " | ".join([label, *(cell(a) for a in arms)]) + " |"

    def number(value, spec: str) -> str:
        return "inf/NaN" if value is None else format(value, spec)

    def window(losses: list, start: int) -> str:
        part = [v for v in losses[start : start + tenth] if v is not None]
        return f"{statistics.mean(part):.3f}" if len(part) == len(losses[start : start + tenth]) else "inf/NaN"

    lines = [f"## roaf: a {depth:,}-layer tanh MLP".replace(",", " "), "", describe("roaf_deep_mlp", data), "",
             f"Width {cfg['width']}, tanh, scikit-learn digits; Adam lr {cfg['lr']:g}, batch {cfg['batch']}, "
             f"{cfg['steps']} steps, seed {cfg['seed']} (one seed: one run of each arm at this depth costs minutes). "
             f"{' '.join(ROAF_MLP_ARMS[a['name']] for a in arms)} Gradient norms ‖dL/dW‖ at initialisation on one "
             "batch; early/late = "
             "the mean over the first 10 blocks over the mean over the last 10; losses are means over a tenth of the "
             "run. Times are one process on a shared machine (the CPU time is the load-independent figure).", "",
             "| | " + " | ".join(a["name"] for a in arms) + " |", "|---|" + "---|" * len(arms),
             row("compile s (wall / cpu)", lambda a: f"{a['compile_s']:.1f} / {a['compile_cpu_s']:.1f}"
                 if "compile_s" in a else "—"),
             row("train step s (median wall / cpu)", lambda a: f"{a['step_s']:.2f} / {a['step_cpu_s']:.2f}"),
             row("‖dL/dW‖ block 1", lambda a: number(a["norm_first"], ".2e")),
             row(f"‖dL/dW‖ block {depth // 2}", lambda a: number(a["norm_mid"], ".2e")),
             row(f"‖dL/dW‖ block {depth}", lambda a: number(a["norm_last"], ".2e")),
             row("early/late gradient ratio", lambda a: number(a["ratio"], ".3g"))]  # fmt: skip
    if cfg["steps"]:
        lines += [row(f"loss, steps {s + 1}-{min(s + tenth, cfg['steps'])}", lambda a, s=s: window(a["losses"], s))
                  for s in (0, cfg["steps"] - tenth)]  # fmt: skip
        lines.append(row("test accuracy", lambda a: f"{a['test_acc']:.3f}"))
    lines.append(row("peak RSS MB (process, so far)", lambda a: f"{a['peak_mb']:.0f}"))
    return [*lines, ""]


@functools.cache
def rai_rows() -> list[dict]:
    """The rai log, read once per run (the page and README's block both use it)."""
    import rai_moons  # examples/ is this script's directory

    return rai_moons.read_log(RAI_LOG)


def rai_section() -> list[str]:
    """The seed experiment from the logs (full batch at three budgets, mini-batch remedies), then
    the plain ladder at the same step count."""
    import rai_moons

    rows = rai_rows()
    if not rows:
        return []

    def upto(at: int) -> list[dict]:
        return [r for r in rows if r["at"] <= at]

    out = ["## rai: the 101-layer sigmoid net on two moons (seed 002)", "",
           "Logs: `docs/results/rai_moons.jsonl`, written by", "",
           *(f"    {c}" for c in RAI_LOG_RUNS), "",
           "Full batch (the reference: 100 points, Rprop lr 0.1; the plain arm is the same net without the pass, "
           "stopped at 2 000 steps), the chained network's accuracy at 1 000 and 2 000 steps and at the end:",
           ""]  # fmt: skip
    for at in (1000, 2000, 10_000):
        out += [f"At step {at}:", "", rai_moons.table(upto(at), "full"), ""]
    out += ["Mini-batch (n = 1 000, batch 32, Adam lr 1e-3 for the weights unless the arm says lr1e-2, SparseAdam "
            "for the table rows; one remedy of research/rai.md §8 per arm), at epoch 25 (800 steps):", "",
            rai_moons.table(upto(25), "minibatch"), ""]  # fmt: skip
    data = load("rai_ladder")
    if data:
        out += ["### Against the plain ladder", "", describe("rai_ladder", data), "",
                *comparison_section(Comparison.from_dict(data["comparison"]), "test_acc")]  # fmt: skip
    return out


def rai_summary() -> str:
    """README's lines on rai: what the logs and the ladder say, in numbers."""
    import rai_moons

    rows = rai_rows()
    if not rows:
        return "No rai results yet (docs/results/rai_moons.jsonl)."
    final = [r for r in rai_moons.latest(rows) if r["experiment"] == "full" and r["arm"] == "rai"]
    tests = [r["test_acc"] for r in final]
    sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
    mini = [r for r in rai_moons.latest([r for r in rows if r["at"] <= 25]) if r["experiment"] == "minibatch"]
    learnt = sum(r["test_acc"] > 0.6 for r in mini)
    lines = [f"Seed experiment (docs/results.md): full batch, the chained 101-layer sigmoid net trained through "
             f"`rai` reaches test accuracy {statistics.mean(tests):.3f} ± {sd:.3f} after {final[0]['at']} Rprop "
             f"steps over {len(tests)} seeds ({' '.join(f'{t:.3f}' for t in tests)}; ≥ 0.95 in "
             f"{sum(t >= 0.95 for t in tests)} of {len(tests)}), where the plain net stays at 0.5. With "
             f"mini-batches (n = 1 000, batch 32, Adam) {learnt} of the {len(mini)} runs "
             f"({len({r['arm'] for r in mini})} arms: plain, rai and each remedy of research/rai.md §8) rise above "
             "0.6 test accuracy after 25 epochs."]  # fmt: skip
    data = load("rai_ladder")
    if data:
        comparison = Comparison.from_dict(data["comparison"])
        for v in comparison.verdict("test_acc"):
            lines.append(f"At {data['config']['steps']} full-batch steps `rai` ({v['compiled_mean']:.3f}, the "
                         "reference's fixed Rprop rate 0.1, not swept) "
                         f"**{v['word']}** against the {KIND_LABEL[v['kind']]}, {v['other']} "
                         f"({v['other_mean']:.3f} ± {v['other_sd']:.3f}, Adam lr {v['other_lr']:g}).")
    return " ".join(lines)


def gradient_summary() -> str:
    """Step-0 gradient norms per activation: the standard init, the compiled arm's own init
    without the pass (like with like), and with it; ranges over the seeds."""
    data = load("gradient_norms")
    if not data:
        return ""
    cfg = data["config"]
    lines = [f"Hidden-layer weight-gradient norms at step 0 ({cfg['depth'] + 2}-layer MLPs, width {cfg['width']}, "
             "ranges over 3 seeds; `orthogonal1` is the compiled arm's own init without the pass):", "",
             "| activation | init | max/min over hidden layers | smallest .. largest norm |",
             "|---|---|---|---|"]  # fmt: skip
    for act, rows in data["tables"].items():
        for row in (rows[0], *rows[-2:]):  # the standard init, orthogonal1, gpn on orthogonal1
            seeds = row["seeds"]
            ratio = f"{min(s['ratio'] for s in seeds):.2g} .. {max(s['ratio'] for s in seeds):.2g}"
            norms = f"{min(s['min'] for s in seeds):.1e} .. {max(s['max'] for s in seeds):.1e}"
            lines.append(f"| {act} | {row['arm']} | {ratio} | {norms} |")
    return "\n".join(lines)


def readme_with_block(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} block")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    text = f"{before}{START}\n{headline()}\n\n{gradient_summary()}\n{END}{after}"
    if RAI_START not in text or RAI_END not in text:
        raise SystemExit(f"README.md has no {RAI_START} ... {RAI_END} block")
    before, rest = text.split(RAI_START, 1)
    _, after = rest.split(RAI_END, 1)
    return f"{before}{RAI_START}\n{rai_summary()}\n{RAI_END}{after}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = ap.parse_args(argv)
    wanted = {PAGE: page() + "\n", README: readme_with_block(README.read_text())}
    stale = [p for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(ROOT)} is not what docs/results/*.json say: run python examples/make_results.py")
        return 1 if stale else 0
    for p in stale:
        p.write_text(wanted[p])
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
