"""Which pass to try for a diagnosed problem, from the measured evidence, and whether the
re-measurement confirms it. Used by :mod:`vgpcompile.tools.diagnose`.

A problem code of the verdict maps to candidate passes through :data:`EVIDENCE`: each row
names the pass (a pipeline string, options inline), the problems it is a candidate for,
what the model must have for it to apply, and the row of ``docs/results.md`` (or the
research note, where no table exists yet) it rests on. :func:`propose` draws the
candidates for a verdict, each with the measurement that drives it (figure, value,
threshold); :func:`judge` compares a candidate's re-measurement with the model's: it is
recommended only when every problem it targets improves (gone, or its driving figure at
least IMPROVE = 2x better; a fraction at least 0.1 lower), no figure that was healthy turns
into a problem, no other problem gets worse by the same margin, and no problem turns the
other way (vanishing into exploding: the pass overshot, the figure is still a problem). A
figure the probes can no longer read after the pass (roaf's RNN is not stepped through) is
not "gone": the candidate is rejected as not re-measurable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .probes import Measurement

IMPROVE = 2.0  # a ratio figure must shrink by this factor to count as improved (or worse)
IMPROVE_FRACTION = 0.1  # a saturated fraction must drop by this much

# status of a candidate in the report
RECOMMENDED = "recommended"  # re-measured: its problems improve, nothing healthy breaks
REJECTED = "rejected"  # re-measured: it does not help, or breaks something
FAILED = "failed"  # the compile (or the measurement) raised: the reason is kept
UNCHANGED = "unchanged"  # compiled, but the pass changed nothing in this model
NOT_APPLICABLE = "not_applicable"  # the model lacks what the pass rewrites (no compile tried)
NOT_TRIED = "not_tried"  # over the candidate limit
UNVERIFIED = "unverified"  # verification switched off (verify=False / --no-verify)
STATUSES = (RECOMMENDED, REJECTED, FAILED, UNCHANGED, NOT_APPLICABLE, NOT_TRIED, UNVERIFIED)


@dataclass(frozen=True)
class Evidence:
    """One row of the evidence table: a pass, what it is a candidate for, and why."""

    passes: str  # pipeline string: "bsnn", "tat{method=DKS}"
    targets: tuple[str, ...]  # problem codes
    needs: str  # "activations" | "one_sided" | "smooth" | "recurrent_or_activations" | "rnn_or_activations" | "layers"
    row: str  # where in docs/results.md (or research/) and the numbers


_BSNN_TABLE = "docs/results.md, 'bsnn: the BSNN paper's table on digits' (depth 30, width 128)"
_NORMS = "docs/results.md, 'Gradient norms at step 0, like with like' (102-layer MLPs)"
_ROBUST = "docs/results.md, 'Robustness of the demo's headline' (52-layer GELU MLP)"

# Order is preference: the strongest measured arm first. A pass is tried only for the
# problems its row targets and only when the model has what it rewrites.
EVIDENCE: tuple[Evidence, ...] = (
    Evidence(
        "tat",
        ("vanishing_gradients", "exploding_gradients", "collapsing_signal", "exploding_signal", "saturation"),
        "smooth",
        f"{_BSNN_TABLE}: tat has the best mean test accuracy of every arm, tanh 97.5 ± 0.6 % against "
        "the best plain init (lecun) 92.4 ± 0.6 % and bsnn 95.8 ± 1.5 %; "
        f"{_ROBUST}: tat 0.999 ± 0.001 at lr 1e-3 (diverges at 1e-2)",
    ),
    Evidence(
        "tat{method=DKS}",
        ("dead_units", "vanishing_gradients", "exploding_gradients", "collapsing_signal", "exploding_signal"),
        "one_sided",
        f"{_BSNN_TABLE}, relu: tat with method DKS (TAT refuses ReLU) 96.6 ± 0.4 % against the best plain "
        "init (orthogonal) 74.3 ± 4.0 % and bsnn 66.4 ± 19.0 %",
    ),
    Evidence(
        "bsnn",
        (
            "vanishing_gradients",
            "exploding_gradients",
            "collapsing_signal",
            "exploding_signal",
            "saturation",
            "dead_units",
        ),
        "activations",
        f"{_NORMS}: tanh weight-gradient max/min 7.3e+03 .. 8.9e+03 with xavier, 2.8 .. 4 with gpn on "
        "orthogonal weights; gelu smallest norm 2.4e-30 (orthogonal) -> 0.88 (gpn); "
        f"{_BSNN_TABLE}, tanh: bsnn 95.8 ± 1.5 % against xavier 85.7 ± 2.0 %; {_ROBUST}: bsnn never "
        "diverged (0 of 9 runs) where gpn alone diverged in 7 of 9",
    ),
    Evidence(
        "arp",
        ("saturation", "vanishing_in_time", "exploding_in_time", "collapsing_signal", "vanishing_gradients"),
        "recurrent_or_activations",
        "docs/results.md, 'arp: 2-D Rastrigin regression' (sigmoid MLP): arp 0.0185 ± 0.0007 test MSE against "
        "xavier 0.0378 ± 0.0031 (target variance 0.035); recurrent gates: no generated table yet "
        "(research/arp.md, the ARNN paper), the re-measurement is the evidence",
    ),
    Evidence(
        "roaf",
        ("vanishing_in_time", "exploding_in_time", "vanishing_gradients", "collapsing_signal"),
        "rnn_or_activations",
        "research/roaf.md: a single-layer ROAF RNN above 94 % on permuted sequential MNIST (Ceni, the paper); "
        "no generated table in docs/results.md yet, the re-measurement is the evidence",
    ),
    Evidence(
        "orthogonal",
        ("exploding_gradients", "exploding_signal", "nonfinite", "vanishing_gradients", "exploding_in_time"),
        "layers",
        f"{_NORMS}, tanh: weight-gradient max/min 1.1 .. 1.2 with orthogonal gain-1 weights against "
        "7.3e+03 .. 8.9e+03 with xavier; but alone it flattens the ratio, not the scale (gelu: every norm "
        "near 3e-30), so the signal rules must stay quiet after it",
    ),
)


def drivers() -> dict[str, tuple[str, float, str]]:
    """Problem code -> (driving figure, threshold, the side of it that is a problem); the
    thresholds are diagnose's module constants (read at call time: one source)."""
    from .diagnose import DEAD, FLOOR, SATURATED, SPREAD

    return {
        "nonfinite": ("nonfinite", 0.0, "above"),
        "vanishing_gradients": ("grad_ratio", SPREAD, "above"),
        "exploding_gradients": ("grad_ratio", SPREAD, "above"),
        "collapsing_signal": ("signal_ratio", SPREAD, "above"),
        "exploding_signal": ("signal_ratio", SPREAD, "above"),
        "vanishing_in_time": ("time_ratio", SPREAD, "above"),
        "exploding_in_time": ("time_ratio", SPREAD, "above"),
        "saturation": ("saturation_max", SATURATED, "above"),
        "dead_units": ("dead_max", DEAD, "above"),
        "_floor": ("grad_max", FLOOR, "below"),  # every weight-gradient norm below the floor
    }


FRACTIONS = ("saturation_max", "dead_max")


def key_figures(
    m: Measurement,
    grad_ratio: float | None,
    grad_max: float | None,
    signal_ratio: float | None,
    time_ratio: float | None,
) -> dict[str, float | None]:
    """The figures the problem rules read, by name (see drivers())."""
    two = [a.saturation for a in m.activations if a.two_sided and a.count]
    one = [a.saturation for a in m.activations if not a.two_sided and a.count]
    values = [r.grad_norm for r in m.layers if r.grad_norm is not None]
    values += [r.out_grad for r in m.layers if r.out_grad is not None]
    return {
        "nonfinite": float(sum(1 for v in values if not math.isfinite(v)) + (not math.isfinite(m.loss))),
        "grad_ratio": grad_ratio,
        "grad_max": grad_max,
        "signal_ratio": signal_ratio,
        "time_ratio": time_ratio,
        "saturation_max": max(two, default=None),
        "dead_max": max(one, default=None),
    }


@dataclass
class Candidate:
    """A pass tried (or not) for a verdict's problems, and what the re-measurement showed."""

    passes: str
    targets: list[str]
    drivers: list[dict[str, Any]]  # per target: problem, figure, value, threshold
    evidence: str
    status: str = UNVERIFIED
    why: str = ""
    problems_after: list[str] = field(default_factory=list)
    figures_after: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "passes": self.passes,
            "targets": list(self.targets),
            "drivers": [dict(d, value=json_number(d["value"])) for d in self.drivers],
            "evidence": self.evidence,
            "status": self.status,
            "why": self.why,
            "problems_after": list(self.problems_after),
            "figures_after": {k: json_number(v) for k, v in self.figures_after.items()},
            "seconds": self.seconds,
        }


def json_number(value: Any) -> Any:
    """JSON has no inf/nan: write them as the strings "inf", "-inf", "nan" (diagnose's reports too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def driver(code: str, figs: Mapping[str, float | None]) -> dict[str, Any]:
    """The measurement behind problem ``code``: figure, value, threshold, side."""
    table = drivers()
    key, threshold, side = table[code]
    if code == "vanishing_gradients" and not _over(figs.get(key), threshold):
        key, threshold, side = table["_floor"]  # fired by the floor rule, not the ratio
    return {"problem": code, "figure": key, "value": figs.get(key), "threshold": threshold, "side": side}


def _over(value: float | None, threshold: float) -> bool:
    return value is not None and (math.isnan(value) or value > threshold)


def applies(needs: str, m: Measurement) -> str | None:
    """None when the model has what the pass rewrites; otherwise why not (no compile tried)."""
    kinds = {a.kind for a in m.activations}
    rnn = any(r.type == "RNN" for r in m.recurrent)
    if needs == "layers":
        return None if m.layers else "the probes see no weight layer"
    if not kinds and needs in ("activations", "smooth", "one_sided"):
        return "the probes see no activation site (activations in fused kernels are not rewritten)"
    if needs == "activations":
        return None
    if needs == "smooth":
        return None if kinds - {"relu", "relu6"} else "needs an activation other than plain ReLU (TAT refuses ReLU)"
    if needs == "one_sided":
        return None if any(not a.two_sided for a in m.activations) else "needs a ReLU-family activation site"
    if needs == "recurrent_or_activations":
        return None if kinds or m.recurrent else "the probes see neither an activation site nor a recurrent layer"
    if needs == "rnn_or_activations":
        return None if kinds or rnn else "no nn.RNN and no activation site (roaf rewrites nn.RNN and affine blocks)"
    raise ValueError(f"unknown requirement {needs!r}")


def propose(
    problems: Sequence[str], m: Measurement, figs: Mapping[str, float | None], applied: Sequence[str] = ()
) -> list[Candidate]:
    """Candidates for ``problems``, in EVIDENCE order: the registered ones not already
    applied, whose rows target one of the problems; one not applicable is listed so."""
    from ..core.pipeline import parse_pipeline
    from ..core.registry import PRESETS, REGISTRY

    done = set(applied)
    out: list[Candidate] = []
    for row in EVIDENCE:
        targets = [p for p in problems if p in row.targets]
        if not targets:
            continue
        names, _ = parse_pipeline(row.passes)
        members = [n for name in names for n in PRESETS.get(name, (name,))]
        if not all(n in REGISTRY for n in members) or set(members) & done:
            continue
        cand = Candidate(row.passes, targets, [driver(t, figs) for t in targets], row.row)
        reason = applies(row.needs, m)
        if reason is not None:
            cand.status, cand.why = NOT_APPLICABLE, reason
        out.append(cand)
    return out


def judge(
    cand: Candidate,
    before: Sequence[str],
    after: Sequence[str],
    figs_before: Mapping[str, float | None],
    figs_after: Mapping[str, float | None],
) -> tuple[bool, str]:
    """(recommend?, why with numbers): every target improves, nothing healthy turns into a
    problem and no other problem gets worse."""
    new = [p for p in after if p not in before]
    if new:
        return False, "; ".join(_new_problem(p, before, figs_before, figs_after) for p in new)
    worse = [p for p in before if p in after and p not in cand.targets and _worse(driver(p, figs_before), figs_after)]
    if worse:
        shown = "; ".join(_change(driver(p, figs_before), figs_after, before_side=True) for p in worse)
        return False, f"makes {', '.join(worse)} worse ({shown})"
    lines, stuck = [], []
    for target in cand.targets:
        d = driver(target, figs_before)
        text = _change(d, figs_after, before_side=True)
        if figs_after.get(d["figure"]) is None:  # not "gone": the probes no longer see what drove it
            stuck.append(f"{target} cannot be re-measured ({text}: the probes do not see the rewritten layers)")
        elif target not in after:
            lines.append(f"{target} gone ({text})")
        elif _better(d, figs_after):
            lines.append(f"{target} improved ({text})")
        else:
            stuck.append(f"{target} not improved ({text})")
    if stuck:
        return False, "; ".join(stuck + lines)
    return True, "; ".join(lines)


def _new_problem(code: str, before: Sequence[str], figs_before, figs_after) -> str:
    """Why a problem the model did not have is one now: a healthy figure broken, or a
    problem turned the other way (vanishing into exploding) by overshooting."""
    d = driver(code, figs_after)
    flipped = [p for p in before if driver(p, figs_before)["figure"] == d["figure"]]
    shown = _change(d, figs_before)
    if flipped:
        return f"turns {flipped[0]} into {code} ({shown})"
    return f"turns a healthy figure into {code} ({shown})"


def _change(d: Mapping[str, Any], other: Mapping[str, float | None], before_side: bool = False) -> str:
    """'figure a -> b (threshold t)', before -> after."""
    key, value = d["figure"], d["value"]
    a, b = (value, other.get(key)) if before_side else (other.get(key), value)
    return f"{key} {_fmt(a)} -> {_fmt(b)}, threshold {d['threshold']:g}"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _better(d: Mapping[str, Any], after: Mapping[str, float | None]) -> bool:
    return _moved(d, after, better=True)


def _worse(d: Mapping[str, Any], after: Mapping[str, float | None]) -> bool:
    return _moved(d, after, better=False)


def _moved(d: Mapping[str, Any], after: Mapping[str, float | None], better: bool) -> bool:
    key, old, new = d["figure"], d["value"], after.get(d["figure"])
    if old is None or new is None or math.isnan(old) or math.isnan(new):
        return False
    if d["side"] == "below":  # a floor: bigger is better
        old, new = -math.log(max(old, 1e-300)), -math.log(max(new, 1e-300))
        gap = math.log(IMPROVE)
    elif key in FRACTIONS:
        gap = IMPROVE_FRACTION
    else:
        if math.isinf(old) or math.isinf(new):
            return (new < old) if better else (new > old)
        old, new, gap = math.log(max(old, 1e-300)), math.log(max(new, 1e-300)), math.log(IMPROVE)
    return new <= old - gap if better else new >= old + gap


def rank(cands: Sequence[Candidate]) -> list[str]:
    """The recommended candidates' pass strings, fewest remaining problems first."""
    good = [c for c in cands if c.status == RECOMMENDED]
    return [c.passes for c in sorted(good, key=lambda c: len(c.problems_after))]
