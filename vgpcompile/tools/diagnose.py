"""``vgpcompile.diagnose``: does a model suffer from vanishing or exploding gradients, where,
and which pass helps. Measured, not trained: one or a few forward/backward passes.

    report = vgpcompile.diagnose(model, x)                      # the model as it is
    report = vgpcompile.diagnose(model, x, passes=["bsnn"])     # ... and compiled, side by side
    print(report.verdict); report.plot("out/"); open("r.json", "w").write(report.to_json())

The per-layer figures come from :mod:`vgpcompile.tools.probes` (forward signal ‖x^l‖²/n,
‖∂E/∂W^l‖_F, backward signal ‖∂E/∂h^l‖²/n, saturation of the activation that follows, and
for recurrent layers ‖∂E/∂x_t‖ per time step). Without ``loss`` and ``targets`` the loss is
the BSNN synthetic protocol's: an independent N(0, 1) error at every output element.

How the verdict is decided (each rule that fires adds a problem; none means "ok"):

1. ``nonfinite``: a weight gradient, an output gradient or the loss is inf or nan.
2. ``vanishing_gradients`` / ``exploding_gradients`` (the BSNN figure of merit): the
   max/min ratio of the weight-gradient norms over all weight layers exceeds SPREAD = 100.
   Vanishing when the smallest norm is nearer the input (in forward call order) than the
   largest, exploding otherwise. Also ``vanishing_gradients`` when every weight-gradient
   norm is below FLOOR = 1e-12, whatever the ratio.
3. ``collapsing_signal`` / ``exploding_signal``: ‖x^l‖²/n over the layers' inputs (the
   first layer's input, the data, left out) spans more than SPREAD; collapsing when the
   last layer's input is smaller than the second layer's. This catches what a flat ratio
   hides: with orthogonal weights and no biases, forward and backward signals shrink in
   step, every ‖∂E/∂W^l‖ = ‖∂E/∂h^l‖·‖x^l‖ is about equal, and all are tiny
   (research/bsnn.md §4.2). The absolute norms are reported next to the ratio for that reason.
4. ``vanishing_in_time`` / ``exploding_in_time``: for a recurrent layer, ‖∂E/∂x_t‖ over the
   time steps spans more than SPREAD; vanishing when the smallest is earlier in time.
5. ``saturation``: an activation bounded on both sides (tanh, sigmoid, ...) has more than
   SATURATED = 50% of its pre-activations outside its dynamic region.
   ``dead_units``: a one-sided one (relu, elu, ...) has more than DEAD = 90% outside.

Recommended passes: each problem maps to candidate passes drawn from the measured evidence
(:data:`vgpcompile.tools.recommend.EVIDENCE`: the pass, the problems it targets, what the
model must have, the docs/results.md row it rests on), each with the measurement that drives
it (figure, value, threshold). A candidate is then *re-measured*: the model is compiled with
it (same example inputs, options, select/ignore) and measured with the same batches and
seeds; it is recommended only when every problem it targets improves (gone, or its figure at
least 2x better; a saturated fraction 0.1 lower), no healthy figure turns into a problem and
no problem turns the other way (:func:`vgpcompile.tools.recommend.judge`). The others are
reported as tried and not recommended, with the numbers; a compile that fails is reported
with its reason. At most ``max_candidates`` (default MAX_CANDIDATES = 3) are re-measured per
side (a candidate whose compile changes nothing costs only that compile; the evidence table
bounds how many there are); ``verify=False`` lists the candidates without trying any (and
recommends none). A healthy side gets no candidate.

The JSON form follows :data:`SCHEMA` (JSON Schema; :func:`validate` checks a document).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.catalogue import DEFAULT
from ..errors import UsageError
from ..io import files
from . import recommend as rec
from .plots import plot_all, write_text
from .probes import THRESHOLD, Loss, Measurement, measure, merge, sited_copy

SPREAD = 100.0
FLOOR = 1e-12
SATURATED = 0.5
DEAD = 0.9
MAX_CANDIDATES = 3  # candidates compiled and re-measured per side (each costs one compile + the runs)
SCHEMA_ID = "vgpcompile.diagnose/2"
# batches x seeds: each run is one forward and backward pass per side; more only costs time,
# the averages settle within a few runs
MAX_RUNS = 1000

GRADIENT_PROBLEMS = (
    "nonfinite",
    "vanishing_gradients",
    "exploding_gradients",
    "collapsing_signal",
    "exploding_signal",
    "dead_units",
)
TIME_PROBLEMS = ("vanishing_in_time", "exploding_in_time")
PROBLEMS = (*GRADIENT_PROBLEMS, *TIME_PROBLEMS, "saturation")


# ---------------------------------------------------------------------------------------
# figures and verdict


@dataclass
class Figures:
    """Model figures of one side (before or after)."""

    layers: int
    grad_ratio: float | None  # max/min ‖∂E/∂W‖_F over weight layers (inf when one is 0)
    grad_min: float | None
    grad_max: float | None
    grad_geomean: float | None
    grad_min_layer: str | None
    grad_max_layer: str | None
    signal_ratio: float | None  # max/min ‖x‖²/n over the layers' inputs, the first layer's left out
    signal_first: float | None  # at the second layer's input
    signal_last: float | None  # at the last layer's input
    backward_ratio: float | None  # max/min ‖∂E/∂h‖²/n over the layers' outputs
    saturation: float | None  # saturated fraction over all activation calls
    time_ratio: float | None  # max over recurrent layers of max/min ‖∂E/∂x_t‖
    loss: float
    depth: int | None = None  # nonlinear depth (core/graph.py)
    depth_exact: bool = True


@dataclass
class Verdict:
    status: str  # "ok" or "problem"
    problems: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    recommended: list[str] = field(default_factory=list)  # re-measured and confirmed, best first
    candidates: list[rec.Candidate] = field(default_factory=list)  # every pass considered, and why

    def line(self) -> str:
        if self.status == "ok":
            return "ok: " + (self.reasons[0] if self.reasons else "no vanishing or exploding gradients found")
        return f"{', '.join(self.problems)}: {self.reasons[0]}{self._advice()}"

    def _advice(self) -> str:
        if self.recommended:
            return f"; try passes={self.recommended} (re-measured)"
        waiting = [c.passes for c in self.candidates if c.status == rec.UNVERIFIED]
        if waiting:
            return f"; candidates, not re-measured: {waiting}"
        tried = [c for c in self.candidates if c.status in (rec.REJECTED, rec.FAILED, rec.UNCHANGED)]
        left = [c.passes for c in self.candidates if c.status == rec.NOT_TRIED]
        more = f"; over the candidate limit, not re-measured: {left}" if left else ""
        if tried:
            return "; nothing tried helps (" + ", ".join(f"{c.passes}: {c.status}" for c in tried) + ")" + more
        return more or "; no pass in the evidence applies to this model"


def _ratio(values: Sequence[float]) -> float | None:
    if not values:
        return None
    lo, hi = min(values), max(values)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return math.inf
    return hi / lo if lo > 0 else math.inf


def figures(m: Measurement) -> Figures:
    grads = [(r.name, r.grad_norm) for r in m.layers if r.grad_norm is not None]
    values = [g for _, g in grads]
    finite = [g for g in values if math.isfinite(g)]
    positive = [g for g in finite if g > 0]
    signals = [r.signal for r in m.layers[1:] if r.signal is not None]
    back = [r.out_grad for r in m.layers if r.out_grad is not None and r.out_grad > 0]
    count = sum(a.count for a in m.activations)
    time = [_ratio(r.steps) for r in m.recurrent if r.steps]
    return Figures(
        layers=len(m.layers),
        grad_ratio=_ratio(values),
        grad_min=min(values) if values else None,
        grad_max=max(values) if values else None,
        grad_geomean=math.exp(sum(math.log(g) for g in positive) / len(positive)) if positive else None,
        grad_min_layer=min(grads, key=lambda t: t[1])[0] if grads else None,
        grad_max_layer=max(grads, key=lambda t: t[1])[0] if grads else None,
        signal_ratio=_ratio(signals),
        signal_first=signals[0] if signals else None,
        signal_last=signals[-1] if signals else None,
        backward_ratio=_ratio(back),
        saturation=sum(a.saturated for a in m.activations) / count if count else None,
        time_ratio=max((t for t in time if t is not None), default=None),
        loss=m.loss,
    )


def decide(m: Measurement, f: Figures, applied: Sequence[str] = (), propose: bool = True) -> Verdict:
    """The verdict of the module docstring's rules, with the candidate passes (not yet
    re-measured: :func:`diagnose` does that and fills ``recommended``)."""
    problems: list[str] = []
    reasons: list[str] = []

    def add(code: str, reason: str) -> None:
        if code not in problems:
            problems.append(code)
        reasons.append(reason)

    _gradient_rules(m, f, add)
    _signal_rules(f, add)
    _time_rules(m, add)
    _saturation_rules(m, add)
    if not problems:
        spread = f"{f.grad_ratio:.3g}" if f.grad_ratio is not None else "n/a"
        return Verdict("ok", reasons=[f"weight-gradient norms within {spread}x of each other (max/min)"])
    cands = rec.propose(problems, m, key_figures(m, f), applied) if propose else []
    return Verdict("problem", problems, reasons, [], cands)


def key_figures(m: Measurement, f: Figures) -> dict[str, float | None]:
    """The figures the rules read, by name (recommend.drivers())."""
    return rec.key_figures(m, f.grad_ratio, f.grad_max, f.signal_ratio, f.time_ratio)


def _gradient_rules(m: Measurement, f: Figures, add) -> None:
    norms = [r.grad_norm for r in m.layers if r.grad_norm is not None]
    outs = [r.out_grad for r in m.layers if r.out_grad is not None]
    if any(not math.isfinite(v) for v in norms + outs) or not math.isfinite(m.loss):
        add("nonfinite", "non-finite gradients or loss")
        return
    if f.grad_ratio is not None and f.grad_ratio > SPREAD:
        names = [r.name for r in m.layers]
        first_min = names.index(f.grad_min_layer) < names.index(f.grad_max_layer)
        code = "vanishing_gradients" if first_min else "exploding_gradients"
        add(
            code,
            f"weight-gradient norms span {f.grad_ratio:.3g}x (max/min), from {f.grad_min:.3g} at "
            f"{f.grad_min_layer} to {f.grad_max:.3g} at {f.grad_max_layer}",
        )
    if f.grad_max is not None and f.grad_max < FLOOR:
        add("vanishing_gradients", f"every weight-gradient norm is below {FLOOR:g} (largest {f.grad_max:.3g})")


def _signal_rules(f: Figures, add) -> None:
    if f.signal_ratio is None or f.signal_ratio <= SPREAD:
        return
    collapsing = f.signal_last < f.signal_first
    code = "collapsing_signal" if collapsing else "exploding_signal"
    add(
        code,
        f"the forward signal ||x||^2/n spans {f.signal_ratio:.3g}x over the layers "
        f"({f.signal_first:.3g} at the second layer's input, {f.signal_last:.3g} at the last's)",
    )


def _time_rules(m: Measurement, add) -> None:
    for row in m.recurrent:
        ratio = _ratio(row.steps)
        if ratio is None or ratio <= SPREAD:
            continue
        early = row.steps.index(min(row.steps)) < row.steps.index(max(row.steps))
        code = "vanishing_in_time" if early else "exploding_in_time"
        add(
            code,
            f"{row.name}: ||dE/dx_t|| spans {ratio:.3g}x over {len(row.steps)} time steps "
            f"(step 0: {row.steps[0]:.3g}, step {len(row.steps) - 1}: {row.steps[-1]:.3g})",
        )


def _saturation_rules(m: Measurement, add) -> None:
    for act in m.activations:
        if act.two_sided and act.saturation > SATURATED:
            add(
                "saturation",
                f"{act.name} ({act.kind}): {act.saturation:.0%} of pre-activations outside "
                f"[{act.region[0]:g}, {act.region[1]:g}]",
            )
        elif not act.two_sided and act.saturation > DEAD:
            add(
                "dead_units",
                f"{act.name} ({act.kind}): {act.saturation:.0%} of pre-activations outside "
                f"[{act.region[0]:g}, {act.region[1]:g}] (zero gradient)",
            )


# ---------------------------------------------------------------------------------------
# the report


@dataclass
class Side:
    """One model's diagnosis: what was measured, its figures and its verdict."""

    label: str
    measurement: Measurement
    figures: Figures
    verdict: Verdict
    eager: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {
            "label": self.label,
            "figures": {k: _num(v) for k, v in vars(self.figures).items()},
            "verdict": {**vars(self.verdict), "candidates": [c.to_dict() for c in self.verdict.candidates]},
            "layers": [
                {
                    "index": i,
                    "name": r.name,
                    "type": r.type,
                    "weights": r.weights,
                    "calls": r.calls,
                    "signal": _num(r.signal),
                    "grad_norm": _num(r.grad_norm),
                    "out_grad": _num(r.out_grad),
                    "activation": r.activation,
                    "saturation": _num(r.saturation),
                }
                for i, r in enumerate(m.layers)
            ],
            "activations": [
                {
                    "name": a.name,
                    "kind": a.kind,
                    "region": [_num(a.region[0]), _num(a.region[1])],
                    "two_sided": a.two_sided,
                    "calls": a.calls,
                    "count": a.count,
                    "saturation": a.saturation,
                    "hist": list(a.hist),
                }
                for a in m.activations
            ],
            "recurrent": [
                {
                    "name": r.name,
                    "type": r.type,
                    "steps": [_num(v) for v in r.steps],
                    "ratio": _num(_ratio(r.steps)),
                    "note": r.note,
                }
                for r in m.recurrent
            ],
            "eager": list(self.eager),
        }


_num = rec.json_number


@dataclass
class DiagnoseReport:
    """``before`` (the model as given) and, with ``passes=``, ``after`` (the compiled model)."""

    model: str
    passes: list[str]
    settings: dict[str, Any]
    before: Side
    after: Side | None = None

    @property
    def sides(self) -> list[Side]:
        return [self.before] + ([self.after] if self.after else [])

    @property
    def verdict(self) -> str:
        """One line: the model's verdict, and the compiled model's when there is one."""
        line = self.before.verdict.line()
        if self.after is None:
            return line
        return f"before: {line} | after passes={self.passes}: {self.after.verdict.line()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_ID,
            "model": self.model,
            "passes": list(self.passes),
            "settings": dict(self.settings),
            "verdict": self.verdict,
            "before": self.before.to_dict(),
            "after": self.after.to_dict() if self.after else None,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_markdown(self, max_rows: int | None = None) -> str:
        return _markdown(self, max_rows)

    def __str__(self) -> str:
        return self.to_markdown(max_rows=24)

    def plot(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write gradients.png, saturation.png and (with recurrent layers) time_steps.png."""
        named = {side.label: side.measurement for side in self.sides}
        return plot_all(named, out_dir, title=self.model)

    def write(self, out_dir: str | os.PathLike) -> list[Path]:
        """report.json, report.md and the PNGs into directory ``out_dir``, replaced whole or not
        at all: written into a staging directory beside it and swapped in with one rename, as a
        checkpoint (:mod:`vgpcompile.io.files`). A directory holding other files is refused."""
        target = check_out_dir(out_dir, "DiagnoseReport.write(out_dir)")
        stage = files.stage_for(target)
        try:
            paths = [write_text(stage / "report.json", self.to_json())]
            paths += [write_text(stage / "report.md", self.to_markdown()), *self.plot(stage)]
            for path in paths:
                files.fsync(path)
            files.publish_dir(stage, target)
        finally:
            files.remove(stage)  # the unpublished new report, or the old one swapped out
        return [target / p.name for p in paths]


REPORT_FILES = ("report.json", "report.md", "gradients.png", "saturation.png", "time_steps.png")


def check_out_dir(path: Any, flag: str) -> Path:
    """``path`` as a report directory, checked before any measurement (UsageError, exit 2): not
    empty, not a file or under one, writable, and holding nothing but an earlier report."""
    target = files.output_path(path, flag, "dir")
    if target.is_symlink():  # replace the directory it points to, keep the link
        target = target.resolve()
    files.check_replaceable(target, flag, REPORT_FILES, "a diagnose report")
    return target


# ---------------------------------------------------------------------------------------
# the entry point


def diagnose(
    model: nn.Module,
    example_inputs: Any = None,
    targets: Any = None,
    loss: Loss | None = None,
    passes: Any = None,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    select: Any = None,
    ignore: Any = None,
    leaf: Any = None,
    batches: Iterable[tuple[Any, Any]] | None = None,
    seeds: int = 1,
    dtype: torch.dtype | None = None,
    inplace: bool = False,
    catalogue: Any = None,
    regions: Mapping[str, tuple[float, float]] | None = None,
    threshold: float = THRESHOLD,
    progress: bool | None = None,
    verify: bool = True,
    max_candidates: int = MAX_CANDIDATES,
) -> DiagnoseReport:
    """Measure ``model`` on ``example_inputs`` (a tensor or a tuple of positional inputs) and,
    with ``passes``, the model compiled with them; return a :class:`DiagnoseReport`.

    ``loss(output, targets)`` is the scalar differentiated; without it float ``targets`` of
    the output's shape get MSE and integer class indices cross-entropy; without targets the
    loss is the BSNN protocol's random projection (an N(0, 1) error per output element,
    redrawn for each of ``seeds`` seeds). ``batches`` replaces ``example_inputs``/``targets``
    by an iterable of ``(inputs, targets)`` pairs (targets may be None); figures are
    averaged over batches × seeds, with a tqdm bar when there is more than one run.
    ``dtype=torch.float64`` measures in double precision (deep plain nets' gradients
    underflow float32). The model is measured on a copy unless ``inplace=True`` (then
    ``dtype`` casts the model itself).
    ``options``/``select``/``ignore``/``leaf`` go to ``vgpcompile`` with ``passes``.
    A side with problems gets candidate passes from the evidence; up to ``max_candidates``
    of them are compiled and re-measured the same way, and only those the re-measurement
    confirms are recommended (``verify=False``: listed, not tried, none recommended).
    """
    from ..api import copy_model, vgpcompile

    raw = _runs(model, example_inputs, targets, batches, seeds, dtype)
    _check_runs(model, raw)
    if passes:
        _check_passes(passes, options)
    if not isinstance(max_candidates, int) or isinstance(max_candidates, bool) or max_candidates < 0:
        raise UsageError(f"diagnose(max_candidates={max_candidates!r}): a number of candidates >= 0")
    job = _Job(
        [(_cast(x, dtype), _cast(t, dtype)) for x, t in raw],
        loss,
        seeds,
        progress,
        {"catalogue": catalogue, "regions": regions, "threshold": threshold},
    )
    settings = {
        "runs": len(raw) * seeds,
        "batches": len(raw),
        "seeds": seeds,
        "dtype": str(dtype or _dtype_of(model)).replace("torch.", ""),
        "loss": _loss_name(loss, raw),
        **{"threshold": threshold, "spread": SPREAD, "floor": FLOOR, "saturated": SATURATED, "dead": DEAD},
        "verify": bool(verify),
        "max_candidates": max_candidates,
    }
    depth, exact, eager = _structure(model, leaf, catalogue)
    work = model if inplace else copy_model(model)
    before = _side("before", work.to(dtype) if dtype else work, job, depth, exact, eager, applied=())
    report = DiagnoseReport(type(model).__name__, [], settings, before)
    trial = _Trial(
        model,
        raw[0][0],
        dtype,
        options,
        {"select": select, "ignore": ignore, "leaf": leaf, "catalogue": catalogue},
        verify,
        max_candidates,
    )
    _try_candidates(before, trial, [], job)
    if passes:
        compiled = vgpcompile(
            model,
            passes,
            example_inputs=raw[0][0],  # the inputs as given: a pass may run the model in its own dtype
            options=options,
            select=select,
            ignore=ignore,
            leaf=leaf,
            catalogue=catalogue,
        )
        rep = compiled.vgp_report
        report.passes = list(rep.passes)
        compiled = compiled.to(dtype) if dtype else compiled
        report.after = _side("after", compiled, job, rep.depth_after, rep.depth_exact, rep.eager, rep.passes)
        _try_candidates(report.after, trial, list(passes) if isinstance(passes, (list, tuple)) else [passes], job)
    return report


@dataclass(frozen=True)
class _Trial:
    """How a candidate is compiled: from the model as given, the user's passes first."""

    model: nn.Module
    inputs: Any  # the first batch's inputs, as given
    dtype: torch.dtype | None
    options: Mapping[str, Mapping[str, Any]] | None
    compile_kw: dict[str, Any]
    verify: bool
    limit: int


def _try_candidates(side: Side, trial: _Trial, base: list[Any], job: _Job) -> None:
    """Re-measure ``side``'s candidates (module docstring) and fill ``recommended``."""
    figs = key_figures(side.measurement, side.figures)
    tried = 0
    for cand in side.verdict.candidates:
        if cand.status == rec.NOT_APPLICABLE:
            continue
        if not trial.verify:
            cand.status, cand.why = rec.UNVERIFIED, "not re-measured (verify=False / --no-verify)"
            continue
        if tried >= trial.limit:
            cand.status = rec.NOT_TRIED
            cand.why = f"over the limit of {trial.limit} re-measured candidates (max_candidates= / --candidates)"
            continue
        start = time.perf_counter()
        try:
            _try_one(cand, side, trial, base, job, figs)
        finally:
            cand.seconds = round(time.perf_counter() - start, 3)
        tried += cand.status != rec.UNCHANGED  # a compile that changed nothing costs no measurement
    side.verdict.recommended = rec.rank(side.verdict.candidates)


def _try_one(cand: rec.Candidate, side: Side, trial: _Trial, base: list[Any], job: _Job, figs) -> None:
    from ..api import vgpcompile
    from ..core.report import VgpWarning

    try:
        with warnings.catch_warnings():  # the user did not ask for this compile: its warnings are not theirs
            warnings.simplefilter("ignore", VgpWarning)
            compiled = vgpcompile(
                trial.model,
                [*base, cand.passes],
                example_inputs=trial.inputs,
                options=trial.options,
                **trial.compile_kw,
            )
    except Exception as err:  # a candidate that cannot compile is reported, not raised: the diagnosis stands
        cand.status, cand.why = rec.FAILED, f"compile failed: {type(err).__name__}: {_first_line(err)}"
        return
    report = compiled.vgp_report
    if not any(report.changed_count(n) for n in _members(cand.passes)):
        cand.status, cand.why = rec.UNCHANGED, "compiled, but changed nothing: " + _why_unchanged(report, cand.passes)
        return
    try:
        model = compiled.to(trial.dtype) if trial.dtype else compiled
        tried = _side(
            f"try {cand.passes}", model, job, report.depth_after, report.depth_exact, [], report.passes, propose=False
        )
    except Exception as err:
        cand.status, cand.why = rec.FAILED, f"measurement failed: {type(err).__name__}: {_first_line(err)}"
        return
    after = key_figures(tried.measurement, tried.figures)
    ok, why = rec.judge(cand, side.verdict.problems, tried.verdict.problems, figs, after)
    cand.status = rec.RECOMMENDED if ok else rec.REJECTED
    cand.why, cand.problems_after, cand.figures_after = why, list(tried.verdict.problems), after


def _members(passes: str) -> list[str]:
    from ..core.pipeline import parse_pipeline
    from ..core.registry import PRESETS

    names, _ = parse_pipeline(passes)
    return [n for name in names for n in PRESETS.get(name, (name,))]


def _why_unchanged(report, passes: str) -> str:
    """The first reason a member pass gave for leaving a site alone, if any."""
    for name in _members(passes):
        for site in report.sites:
            text = site.outcomes.get(name)
            if text:
                return f"{name} at {site.name}: {text}"
    return "no site or layer it rewrites"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 300 else line[:297] + "..."


@dataclass(frozen=True)
class _Job:
    """What every side is measured with."""

    runs: list[tuple[Any, Any]]
    loss: Loss | None
    seeds: int
    progress: bool | None
    probe_kw: dict[str, Any]


def _structure(model: nn.Module, leaf: Any, catalogue: Any) -> tuple[int | None, bool, list]:
    """(nonlinear depth, exact, modules left eager) from a plan on a copy; unknown when
    capture itself fails: the probes do not need it."""
    from ..api import plan
    from ..errors import VgpError

    try:
        planned = plan(model, leaf=leaf, catalogue=catalogue)
    except VgpError:
        return None, False, []
    return planned.depth_before, planned.depth_exact, planned.eager


def _side(label: str, model: nn.Module, job: _Job, depth, exact: bool, eager, applied, propose: bool = True) -> Side:
    bar = _progress(len(job.runs) * job.seeds, label, job.progress)
    found = []
    first = job.runs[0][0]
    args = tuple(first) if isinstance(first, (tuple, list)) else (first,)
    watched = sited_copy(model, args, job.probe_kw["catalogue"] or DEFAULT) or model  # compile's sites, tapped once
    try:
        for inputs, targets in job.runs:
            for seed in range(job.seeds):
                found.append(measure(model, inputs, targets, job.loss, seed=seed, watched=watched, **job.probe_kw))
                bar.update(1)
    finally:
        bar.close()
    m = merge(found)
    fig = figures(m)
    fig.depth, fig.depth_exact = depth, exact
    eager_rows = [{"name": e.name, "reason": e.reason} for e in eager]
    return Side(label, m, fig, decide(m, fig, applied, propose), eager_rows)


def _progress(total: int, label: str, progress: bool | None):
    from tqdm.auto import tqdm

    disable = (total <= 1) if progress is None else not progress
    return tqdm(total=total, desc=f"diagnose {label}", unit="run", disable=disable, leave=False)


def _runs(model, example_inputs, targets, batches, seeds, dtype) -> list[tuple[Any, Any]]:
    if not isinstance(model, nn.Module):
        raise UsageError(f"diagnose takes an nn.Module, got {type(model).__name__}")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise UsageError(f"diagnose(seeds={seeds!r}): a positive number of seeds")
    if seeds > MAX_RUNS:
        raise UsageError(_too_many(f"seeds={seeds}", 1, seeds))
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise UsageError(f"diagnose(dtype={dtype!r}): a floating torch dtype, e.g. torch.float64")
    if batches is not None:
        if example_inputs is not None:
            raise UsageError("diagnose: give example_inputs or batches=, not both")
        runs = []
        for i, item in enumerate(batches):
            if (i + 1) * seeds > MAX_RUNS:
                raise UsageError(_too_many(f"batches= holds more than {i} batches", i + 1, seeds))
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise UsageError(
                    f"diagnose(batches=...): item {i} must be a pair (inputs, targets); targets may be None"
                )
            runs.append((item[0], item[1]))
        if not runs:
            raise UsageError("diagnose(batches=...) is empty")
    elif example_inputs is None:
        raise UsageError("diagnose needs example_inputs (a tensor or a tuple of positional inputs) or batches=")
    else:
        runs = [(example_inputs, targets)]
    return runs


def _too_many(what: str, batches: int, seeds: int) -> str:
    return (
        f"diagnose: {what}: {batches} batch(es) x {seeds} seed(s) is more than MAX_RUNS = {MAX_RUNS} forward and "
        "backward passes (each side); the averaged figures settle within a few runs"
    )


def _check_runs(model: nn.Module, runs: Sequence[tuple[Any, Any]]) -> None:
    """The model and every batch's inputs, before any measurement, with vgpcompile's own checks
    (a model on the meta device, an empty or NaN input: one UsageError naming it)."""
    from ..api import CompileOptions, _check_arguments

    for inputs, _ in runs:
        _check_arguments(model, CompileOptions(example_inputs=inputs))


def _check_passes(passes: Any, options: Any) -> None:
    """Bad pass names or options fail before any measurement; a pass that changes how the
    model is called (rai: ``(x, idx)`` in training) is refused with what to do instead."""
    from ..core.registry import resolve

    for p in resolve(passes, options):
        if p.changes_inputs:
            raise UsageError(
                f"diagnose: pass {p.name!r} changes how the model is called and trained, not the network diagnose "
                "measures (its eval form is the plain network; in training each gradient path is one block long by "
                f"construction): diagnose the model without {p.name!r} to see the gradients it would train, and "
                f"follow its training with vgpcompile.{p.name}.fit, whose log gives the chained network's loss"
            )


def _cast(value: Any, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _dtype_of(model: nn.Module) -> torch.dtype:
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None else torch.get_default_dtype()


def _loss_name(loss, runs) -> str:
    if loss is not None:
        return getattr(loss, "__name__", type(loss).__name__)
    if all(t is None for _, t in runs):
        return "projection"
    return "default (mse / cross_entropy)"


# ---------------------------------------------------------------------------------------
# Markdown


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


_FIGURE_ROWS = [
    ("weight-gradient norm max/min (BSNN figure of merit)", "grad_ratio"),
    ("smallest weight-gradient norm", "grad_min"),
    ("largest weight-gradient norm", "grad_max"),
    ("geometric mean weight-gradient norm", "grad_geomean"),
    ("forward signal ‖x‖²/n max/min", "signal_ratio"),
    ("forward signal at 2nd layer / last layer", None),
    ("backward signal ‖∂E/∂h‖²/n max/min", "backward_ratio"),
    ("saturated pre-activations", "saturation"),
    ("recurrent ‖∂E/∂x_t‖ max/min over time", "time_ratio"),
    ("nonlinear depth", "depth"),
    ("loss", "loss"),
]


def _markdown(report: DiagnoseReport, max_rows: int | None) -> str:
    sides = report.sides
    head = [f"# vgpcompile diagnose: {report.model}", ""]
    s = report.settings
    head.append(
        f"runs {s['runs']} ({s['batches']} batch(es) x {s['seeds']} seed(s)), {s['dtype']}, loss: {s['loss']}"
        + (f", passes={report.passes}" if report.passes else "")
    )
    head += ["", f"**verdict**: {report.verdict}", ""]
    labels = [side.label for side in sides]
    lines = ["| figure | " + " | ".join(labels) + " |", "|---|" + "---|" * len(sides)]
    for title, key in _FIGURE_ROWS:
        if key is None:
            cells = [f"{_fmt(sd.figures.signal_first)} / {_fmt(sd.figures.signal_last)}" for sd in sides]
        elif key == "depth":
            cells = [_fmt(sd.figures.depth) + ("" if sd.figures.depth_exact else " (upper bound)") for sd in sides]
        else:
            cells = [_fmt(getattr(sd.figures, key)) for sd in sides]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("| problems | " + " | ".join(", ".join(sd.verdict.problems) or "none" for sd in sides) + " |")
    lines.append(
        "| recommended passes | " + " | ".join(", ".join(sd.verdict.recommended) or "–" for sd in sides) + " |"
    )
    out = head + lines + ["", "## Layers (forward call order)", ""] + _layer_table(sides, max_rows)
    for side in sides:
        for reason in side.verdict.reasons:
            out.append(f"- {side.label}: {reason}")
        for e in side.eager:
            out.append(f"- {side.label}: module {e['name']} measured eagerly (not traced: {e['reason']})")
    out += _recurrent_table(sides)
    out += _candidate_table(sides)
    return "\n".join(out) + "\n"


def _candidate_table(sides: Sequence[Side]) -> list[str]:
    rows = [(side.label, c) for side in sides for c in side.verdict.candidates]
    if not rows:
        return []
    out = [
        "",
        "## Candidate passes: the measurement behind each, and the re-measurement",
        "",
        "| side | passes | driving measurement | status | why | s |",
        "|---|---|---|---|---|---|",
    ]
    for label, c in rows:
        drive = "; ".join(
            f"{d['problem']}: {d['figure']} {_fmt(d['value'])} {'>' if d['side'] == 'above' else '<'} "
            f"{d['threshold']:g}"
            for d in c.drivers
        )
        out.append(f"| {label} | `{c.passes}` | {drive} | {c.status} | {c.why} | {c.seconds:g} |")
    out += ["", "Evidence each candidate rests on:", ""]
    seen = set()
    for _, c in rows:
        if c.passes not in seen:
            seen.add(c.passes)
            out.append(f"- `{c.passes}`: {c.evidence}")
    return out


def _layer_table(sides: Sequence[Side], max_rows: int | None) -> list[str]:
    names: list[str] = []
    for side in sides:
        names += [r.name for r in side.measurement.layers if r.name not in names]
    by = [{r.name: r for r in side.measurement.layers} for side in sides]
    keep = _pick_rows(names, sides, max_rows)
    cols = ["‖x‖²/n", "‖∂E/∂W‖_F", "saturated"]
    header = "| # | layer | type | " + " | ".join(f"{c} {sd.label}" for c in cols for sd in sides) + " |"
    lines = [header, "|---|---|---|" + "---|" * (len(cols) * len(sides))]
    for i, name in enumerate(names):
        if i not in keep:
            continue
        rows = [b.get(name) for b in by]
        kind = next(r.type for r in rows if r is not None)
        cells = [
            _fmt(getattr(r, attr)) if r is not None else "–"
            for attr in ("signal", "grad_norm", "saturation")
            for r in rows
        ]
        lines.append(f"| {i} | {name} | {kind} | " + " | ".join(cells) + " |")
    if len(keep) < len(names):
        lines.append(
            f"\n({len(keep)} of {len(names)} layers shown: first, last, smallest and largest gradient, "
            "evenly spaced others)"
        )
    return lines


def _pick_rows(names: Sequence[str], sides: Sequence[Side], max_rows: int | None) -> set[int]:
    n = len(names)
    if max_rows is None or n <= max_rows:
        return set(range(n))
    keep = {0, n - 1}
    for side in sides:
        for key in (side.figures.grad_min_layer, side.figures.grad_max_layer):
            if key in names:
                keep.add(names.index(key))
    room = max(max_rows - len(keep), 0)
    keep |= {round(k * (n - 1) / (room + 1)) for k in range(1, room + 1)}
    return keep


def _recurrent_table(sides: Sequence[Side]) -> list[str]:
    rows = [(side.label, r) for side in sides for r in side.measurement.recurrent]
    if not rows:
        return []
    out = [
        "",
        "## Recurrent layers: ‖∂E/∂x_t‖ per time step",
        "",
        "| side | layer | steps | first | last | max/min |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        if not r.steps:
            out.append(f"| {label} | {r.name} | 0 | – | – | – |" + (f" {r.note}" if r.note else ""))
            continue
        out.append(
            f"| {label} | {r.name} | {len(r.steps)} | {_fmt(r.steps[0])} | {_fmt(r.steps[-1])} | "
            f"{_fmt(_ratio(r.steps))} |"
        )
    return out


# ---------------------------------------------------------------------------------------
# the JSON schema

_REAL = {"anyOf": [{"type": "number"}, {"enum": ["inf", "-inf", "nan"]}]}
_REAL_OR_NULL = {"anyOf": [{"type": "number"}, {"enum": ["inf", "-inf", "nan"]}, {"type": "null"}]}
_STR_OR_NULL = {"type": ["string", "null"]}


def _obj(props: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": dict(props)}


_CANDIDATE = _obj(
    {
        "passes": {"type": "string"},
        "targets": {"type": "array", "items": {"enum": list(PROBLEMS)}},
        "drivers": {
            "type": "array",
            "items": _obj(
                {
                    "problem": {"enum": list(PROBLEMS)},
                    "figure": {"type": "string"},
                    "value": _REAL_OR_NULL,
                    "threshold": {"type": "number"},
                    "side": {"enum": ["above", "below"]},
                }
            ),
        },
        "evidence": {"type": "string"},
        "status": {"enum": list(rec.STATUSES)},
        "why": {"type": "string"},
        "problems_after": {"type": "array", "items": {"enum": list(PROBLEMS)}},
        "figures_after": {"type": "object"},
        "seconds": {"type": "number"},
    }
)

_SIDE = _obj(
    {
        "label": {"type": "string"},
        "figures": _obj(
            {
                "layers": {"type": "integer"},
                "grad_ratio": _REAL_OR_NULL,
                "grad_min": _REAL_OR_NULL,
                "grad_max": _REAL_OR_NULL,
                "grad_geomean": _REAL_OR_NULL,
                "grad_min_layer": _STR_OR_NULL,
                "grad_max_layer": _STR_OR_NULL,
                "signal_ratio": _REAL_OR_NULL,
                "signal_first": _REAL_OR_NULL,
                "signal_last": _REAL_OR_NULL,
                "backward_ratio": _REAL_OR_NULL,
                "saturation": _REAL_OR_NULL,
                "time_ratio": _REAL_OR_NULL,
                "loss": _REAL,
                "depth": {"type": ["integer", "null"]},
                "depth_exact": {"type": "boolean"},
            }
        ),
        "verdict": _obj(
            {
                "status": {"enum": ["ok", "problem"]},
                "problems": {"type": "array", "items": {"enum": list(PROBLEMS)}},
                "reasons": {"type": "array", "items": {"type": "string"}},
                "recommended": {"type": "array", "items": {"type": "string"}},
                "candidates": {"type": "array", "items": _CANDIDATE},
            }
        ),
        "layers": {
            "type": "array",
            "items": _obj(
                {
                    "index": {"type": "integer"},
                    "name": {"type": "string"},
                    "type": {"type": "string"},
                    "weights": {"type": "integer"},
                    "calls": {"type": "integer"},
                    "signal": _REAL_OR_NULL,
                    "grad_norm": _REAL_OR_NULL,
                    "out_grad": _REAL_OR_NULL,
                    "activation": _STR_OR_NULL,
                    "saturation": _REAL_OR_NULL,
                }
            ),
        },
        "activations": {
            "type": "array",
            "items": _obj(
                {
                    "name": {"type": "string"},
                    "kind": {"type": "string"},
                    "region": {"type": "array", "items": _REAL, "minItems": 2, "maxItems": 2},
                    "two_sided": {"type": "boolean"},
                    "calls": {"type": "integer"},
                    "count": {"type": "integer"},
                    "saturation": {"type": "number"},
                    "hist": {"type": "array", "items": {"type": "integer"}},
                }
            ),
        },
        "recurrent": {
            "type": "array",
            "items": _obj(
                {
                    "name": {"type": "string"},
                    "type": {"type": "string"},
                    "steps": {"type": "array", "items": _REAL},
                    "ratio": _REAL_OR_NULL,
                    "note": {"type": "string"},
                }
            ),
        },
        "eager": {"type": "array", "items": _obj({"name": {"type": "string"}, "reason": {"type": "string"}})},
    }
)

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "vgpcompile diagnose report",
    "description": "Written by DiagnoseReport.to_json(). Numbers that are not finite are the strings "
    "'inf', '-inf', 'nan'. 'before' is the model as given, 'after' the model compiled with 'passes' (or null). "
    "A verdict's 'candidates' are the passes the evidence proposes for its problems, each with the measurement "
    "driving it and, when re-measured, its status and why; 'recommended' lists the confirmed ones. "
    "Layer figures: signal = ||x||^2/n of the layer input, grad_norm = ||dE/dW||_F, out_grad = ||dE/dh||^2/n "
    "of its output; see vgpcompile/tools/probes.py.",
    **_obj(
        {
            "schema": {"enum": [SCHEMA_ID]},
            "model": {"type": "string"},
            "passes": {"type": "array", "items": {"type": "string"}},
            "settings": {"type": "object"},
            "verdict": {"type": "string"},
            "before": _SIDE,
            "after": {"anyOf": [_SIDE, {"type": "null"}]},
        }
    ),
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(doc: Any, schema: Mapping[str, Any] = SCHEMA, where: str = "$") -> None:
    """Raise ValueError naming the first field of ``doc`` that breaks ``schema`` (the JSON
    Schema keywords used by :data:`SCHEMA`: type, enum, anyOf, required, properties, items,
    minItems, maxItems)."""
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(doc, option, where)
                break
            except ValueError as err:
                errors.append(str(err))
        else:
            raise ValueError(f"{where}: matches none of the allowed forms ({'; '.join(errors)})")
    if "enum" in schema and doc not in schema["enum"]:
        raise ValueError(f"{where}: {doc!r} is not one of {schema['enum']}")
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_TYPES[k](doc) for k in kinds):
            raise ValueError(f"{where}: expected {' or '.join(kinds)}, got {type(doc).__name__}")
    if isinstance(doc, dict):
        missing = [k for k in schema.get("required", []) if k not in doc]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        for key, sub in schema.get("properties", {}).items():
            if key in doc:
                validate(doc[key], sub, f"{where}.{key}")
    if isinstance(doc, list):
        if len(doc) < schema.get("minItems", 0) or len(doc) > schema.get("maxItems", math.inf):
            raise ValueError(
                f"{where}: {len(doc)} items, outside [{schema.get('minItems', 0)}, {schema.get('maxItems', 'inf')}]"
            )
        if "items" in schema:
            for i, item in enumerate(doc):
                validate(item, schema["items"], f"{where}[{i}]")
