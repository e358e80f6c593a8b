"""What a compile did, per site and per pass, and why not where it did nothing."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .capture import EagerModule

if TYPE_CHECKING:
    from .contract import PassResult


class VgpWarning(UserWarning):
    """A compile finished, but something in it deserves the user's attention."""


@dataclass
class SiteRecord:
    """One activation site as the report shows it."""

    name: str
    kind: str
    spelling: str
    producer: str | None
    is_output: bool
    notes: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)  # pass -> what it did or why not
    changed: dict[str, bool] = field(default_factory=dict)
    eager: bool = False  # in eager code (a module whose forward was not traced), not in a graph


@dataclass
class Report:
    """Printable (``str(report)``) and JSON-able (``report.to_dict()``) compile report."""

    model: str
    mode: str  # "compile" or "plan"
    passes: list[str]
    sites: list[SiteRecord] = field(default_factory=list)
    eager: list[EagerModule] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    depth_before: int | None = None
    depth_after: int | None = None
    depth_exact: bool = True
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # pass -> figures it reported
    requested: list[str] = field(default_factory=list)  # the passes as given; ``passes`` is the order that ran
    _index: dict[str, SiteRecord] = field(default_factory=dict, repr=False, compare=False)

    def site(self, name: str) -> SiteRecord:
        if len(self._index) != len(self.sites):  # rows are appended by the compile; index lazily
            self._index = {rec.name: rec for rec in self.sites}
        return self._index[name]

    def add_row(self, name: str, kind: str, spelling: str, producer: str | None = None) -> SiteRecord:
        """A row for a target that is not an activation site (a layer a layer pass rewrites)."""
        try:
            return self.site(name)
        except KeyError:
            pass
        rec = SiteRecord(name, kind, spelling, producer, False, eager=spelling.startswith("eager"))
        self.sites.append(rec)
        if len(self._index) == len(self.sites) - 1:  # the index was whole: keep it so (no rebuild per row)
            self._index[name] = rec
        return rec

    def record(self, name: str, pass_name: str, changed: bool, text: str) -> None:
        rec = self.site(name)
        rec.outcomes[pass_name] = text
        rec.changed[pass_name] = changed

    def changed_count(self, pass_name: str) -> int:
        return sum(1 for r in self.sites if r.changed.get(pass_name))

    def changed_eager_count(self, pass_name: str) -> int:
        return sum(1 for r in self.sites if r.changed.get(pass_name) and r.eager)

    def changed_names(self, pass_name: str) -> list[str]:
        return [r.name for r in self.sites if r.changed.get(pass_name)]

    def add(self, result: PassResult) -> None:
        """Record what one pass did: its outcomes as rows, its warnings, figures and time."""
        for o in result.outcomes:
            if o.row_kind:
                self.add_row(o.target, o.row_kind, o.row_spelling)
            self.record(o.target, result.pass_name, o.changed, o.text)
        for text in result.warnings:
            self.warn(text)
        if result.stats:
            self.stats[result.pass_name] = dict(result.stats)
        self.seconds[result.pass_name] = result.seconds

    def warn(self, text: str) -> None:
        """Add a warning to the report and emit it with ``warnings.warn`` for Python users."""
        self.warnings.append(text)
        warnings.warn(text, VgpWarning, stacklevel=6)  # the user's vgpcompile()/plan() call

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("_index")
        return out

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        return "\n".join(self._header() + self._table() + self._footer())

    def _header(self) -> list[str]:
        depth = "?" if self.depth_before is None else str(self.depth_before)
        after = "?" if self.depth_after is None else str(self.depth_after)
        approx = "" if self.depth_exact else " (upper bound: eager modules are summed)"
        lines = [
            f"vgpcompile {self.mode}: {self.model}, passes: {', '.join(self.passes) or '(none)'}",
            f"  sites: {len(self.sites)}   traced regions: {len(self.regions)}   "
            f"nonlinear depth: {depth} -> {after}{approx}",
        ]
        if self.requested and self.requested != self.passes:
            lines.append(f"  run order: {', '.join(self.passes)} (by the facts they read and write; given: "
                         f"{', '.join(self.requested)}; the order given never changes the result)")
        for p in self.passes:
            n, eager = self.changed_count(p), self.changed_eager_count(p)
            split = f" ({n - eager} in traced graphs, {eager} in eager code)" if eager else ""
            lines.append(f"  {p}: changed {n} of {len(self.sites)} sites{split}")
        return lines

    def _table(self) -> list[str]:
        if not self.sites:
            return ["  (no activation sites found)"]
        head = ["site", "activation", "spelling", "producer"] + self.passes
        rows = [
            [r.name, r.kind, ("eager " if r.eager and not r.spelling.startswith("eager") else "") + r.spelling,
             r.producer or "-"] + [r.outcomes.get(p, "-") for p in self.passes]
            for r in self.sites
        ]
        widths = [min(max(len(str(x)) for x in col), 48) for col in zip(head, *rows)]

        def fmt(row: list[str]) -> str:
            return "  " + "  ".join(str(c)[:48].ljust(w) for c, w in zip(row, widths)).rstrip()

        return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]

    def _footer(self) -> list[str]:
        lines = []
        if self.eager:
            lines.append("  left eager (not traced; their activation modules, calls and layers are eager sites):")
            lines += [f"    {e.name}: {e.reason}" for e in self.eager]
        for name, stats in self.stats.items():
            lines.append(f"  {name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in stats.items()))
        lines += [f"  warning: {w}" for w in self.warnings]
        return lines


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
