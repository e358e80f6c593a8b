"""The recipe: what ``load`` needs to rebuild a compiled model exactly, and its schema.

A recipe is JSON: the passes with every option resolved, the selection rules, the model
input range, the value ranges each pass read from the example inputs (``observed``, by
``calibrate.key``; absent without example inputs), the activations the compile relied on
that are not built in, the targets each pass changed (so a rebuild that rewrites other
sites is refused instead of silently giving other outputs), the versions, and the form
(training or frozen). ``validate`` checks a recipe read from disk against that schema in
one place and names the field at fault.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import LoadError
from .catalogue import BUILTIN_KINDS, Catalogue
from .contract import Pass
from .report import Report

FORMS = ("training", "frozen")


def build(
    passes: Sequence[Pass],
    rules: Mapping[str, list[str]],
    input_range: list[float] | None,
    report: Report,
    catalogue: Catalogue,
    versions: Mapping[str, str],
) -> dict[str, Any]:
    """The recipe of one compile."""
    return {
        "passes": [{"name": p.name, "options": dataclasses.asdict(p)} for p in passes],
        "select": list(rules.get("select", [])),
        "ignore": list(rules.get("ignore", [])),
        "leaf": list(rules.get("leaf", [])),
        "input_range": input_range,
        "activations": custom_activations(report, catalogue),
        "changed": {p.name: report.changed_names(p.name) for p in passes},
        "versions": dict(versions),
        "form": "training",
    }


def custom_activations(report: Report, catalogue: Catalogue) -> list[str]:
    """Activation kinds the report's sites use that are not built in (user-registered): a
    rebuild needs them registered again."""
    kinds = {r.kind.split("(")[0] for r in report.sites if r.spelling != "layer"}
    return sorted(k for k in kinds if k in catalogue.kinds and k not in BUILTIN_KINDS)


def missing_activations(recipe: Mapping[str, Any], catalogue: Catalogue) -> list[str]:
    return [k for k in recipe.get("activations") or [] if k not in catalogue.kinds]


def _where(file: str, field: str) -> str:
    return f"{file}: field {field!r}"


def validate(recipe: Any, file: str = "recipe.json") -> dict[str, Any]:
    """``recipe`` if it has the recipe schema, else a LoadError naming the file and the field."""
    if not isinstance(recipe, dict):
        raise LoadError(f"{file}: corrupt recipe (a JSON object is expected, got {type(recipe).__name__})")
    passes = recipe.get("passes")
    if not isinstance(passes, list):
        raise LoadError(f"{_where(file, 'passes')} must be a list, got {type(passes).__name__}")
    for i, entry in enumerate(passes):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise LoadError(f"{_where(file, f'passes[{i}]')} must be {{'name': str, 'options': {{...}}}}")
        if not isinstance(entry.get("options", {}), dict):
            raise LoadError(f"{_where(file, f'passes[{i}].options')} must be an object")
    for key in ("select", "ignore", "leaf"):
        value = recipe.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise LoadError(f"{_where(file, key)} must be a list of strings")
    _check_range(recipe.get("input_range"), file)
    for key in ("activations",):
        value = recipe.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise LoadError(f"{_where(file, key)} must be a list of strings")
    _check_observed(recipe.get("observed"), file)
    changed = recipe.get("changed") or {}
    if not isinstance(changed, dict) or not all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in changed.values()
    ):
        raise LoadError(f"{_where(file, 'changed')} must map pass names to lists of target names")
    if recipe.get("form", "training") not in FORMS:
        raise LoadError(f"{_where(file, 'form')} must be one of {list(FORMS)}, got {recipe.get('form')!r}")
    weights = recipe.get("weights")
    if weights is not None and not isinstance(weights, str):
        raise LoadError(f"{_where(file, 'weights')} must be a file name, got {type(weights).__name__}")
    return recipe


def _is_range(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and value[0] <= value[1]
    )


def _check_range(value: Any, file: str) -> None:
    if value is not None and not _is_range(value):
        raise LoadError(f"{_where(file, 'input_range')} must be [lo, hi] with finite lo <= hi, got {value!r}")


def _check_observed(value: Any, file: str) -> None:
    if value is None:
        return
    ok = isinstance(value, dict) and all(
        isinstance(m, dict) and all(_is_range(r) for r in m.values()) for m in value.values()
    )
    if not ok:
        raise LoadError(f"{_where(file, 'observed')} must map pass names to {{node: [lo, hi]}} with finite lo <= hi")


def check_rebuild(recipe: Mapping[str, Any], report: Report, file: str) -> None:
    """Refuse a rebuild whose passes changed other targets than the saved model's."""
    saved = recipe.get("changed")
    if not saved:
        return  # recipes written before this field existed
    for name, names in saved.items():
        now = report.changed_names(name)
        if sorted(now) != sorted(names):
            lost = sorted(set(names) - set(now))
            new = sorted(set(now) - set(names))
            parts = ([f"not rewritten now: {lost[:3]}"] if lost else []) + (
                [f"rewritten now only: {new[:3]}"] if new else []
            )
            raise LoadError(
                f"{file}: rebuilding with pass {name!r} does not reproduce the saved model ({'; '.join(parts)}); "
                "was the model factory, a select/ignore rule or a registered activation changed?"
            )
