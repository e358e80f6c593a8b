"""The recipe: what ``load`` needs to rebuild a compiled model exactly, and its schema.

A recipe is JSON: the passes with every option resolved, the select/ignore/leaf/eager rules,
the capture decisions that came from example inputs (modules the check kept eager,
arguments traced as the example calls passed them), the model input range, the value
ranges each pass read from the example inputs (``observed``, by ``calibrate.key``; absent
without example inputs), the activations the compile relied on that are not built in, the
targets each pass changed (so a rebuild that rewrites other sites is refused instead of
silently giving other outputs), the versions, and the form (training or frozen).
``validate`` checks a recipe read from disk against that schema in one place and names the
field at fault.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import LoadError, UsageError
from .catalogue import BUILTIN_KINDS, Catalogue
from .contract import Pass
from .report import Report

FORMS = ("training", "frozen")
# format -> the weights file name of a checkpoint; a recipe may name nothing else.
WEIGHT_FILES = {"safetensors": "model.safetensors", "pt": "model.pt"}


def build(
    passes: Sequence[Pass],
    rules: Mapping[str, list[str]],
    input_range: list[float] | None,
    report: Report,
    catalogue: Catalogue,
    versions: Mapping[str, str],
    capture: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The recipe of one compile; ``capture`` holds the capture decisions that depended on
    the example inputs (modules the check kept eager, arguments traced as called)."""
    return {
        "passes": [{"name": p.name, "options": dataclasses.asdict(p)} for p in passes],
        "select": list(rules.get("select", [])),
        "ignore": list(rules.get("ignore", [])),
        "leaf": list(rules.get("leaf", [])),
        "eager": list(rules.get("eager", [])),
        "input_range": input_range,
        "activations": custom_activations(report, catalogue),
        "changed": {p.name: report.changed_names(p.name) for p in passes},
        "versions": dict(versions),
        "form": "training",
        "capture": dict(capture or {"eager": {}, "args": {}}),
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
    """``recipe`` if it has the recipe schema, else a LoadError naming the file and the field.

    The one place the schema lives: every field's type, every pass known and its options
    valid for it (types, and the ranges the pass itself enforces), numbers finite, the
    weights file a plain name inside the checkpoint directory.
    """
    if not isinstance(recipe, dict):
        raise LoadError(f"{file}: corrupt recipe (a JSON object is expected, got {type(recipe).__name__})")
    _check_passes(recipe.get("passes"), file)
    for key in ("select", "ignore", "leaf", "eager", "activations"):
        _check_strings(recipe.get(key), key, file)
    _check_range(recipe.get("input_range"), file)
    _check_observed(recipe.get("observed"), file)
    changed = recipe.get("changed") or {}
    if not isinstance(changed, dict) or not all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in changed.values()
    ):
        raise LoadError(f"{_where(file, 'changed')} must map pass names to lists of target names")
    versions = recipe.get("versions") or {}
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise LoadError(f"{_where(file, 'versions')} must map package names to version strings")
    _check_capture(recipe.get("capture"), file)
    if recipe.get("form", "training") not in FORMS:
        raise LoadError(f"{_where(file, 'form')} must be one of {list(FORMS)}, got {recipe.get('form')!r}")
    weights = recipe.get("weights")
    if weights is not None and weights not in WEIGHT_FILES.values():
        shown = repr(weights) if isinstance(weights, str) else type(weights).__name__
        raise LoadError(
            f"{_where(file, 'weights')} must name the weights file inside the checkpoint directory, one of "
            f"{sorted(WEIGHT_FILES.values())}; got {shown}"
        )
    if not isinstance(recipe.get("weights_digest", ""), str):
        raise LoadError(f"{_where(file, 'weights_digest')} must be a string")
    return recipe


def _check_passes(passes: Any, file: str) -> None:
    from .registry import make_pass  # the registry imports pass modules lazily

    if not isinstance(passes, list):
        raise LoadError(f"{_where(file, 'passes')} must be a list, got {type(passes).__name__}")
    seen: set[str] = set()
    for i, entry in enumerate(passes):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise LoadError(f"{_where(file, f'passes[{i}]')} must be {{'name': str, 'options': {{...}}}}")
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise LoadError(f"{_where(file, f'passes[{i}].options')} must be an object, got {type(options).__name__}")
        for key, value in options.items():
            if not _sane_number(value):
                raise LoadError(f"{_where(file, f'passes[{i}].options.{key}')} has an absurd value {value!r}")
        try:
            make_pass(entry["name"], options)
        except UsageError as err:
            field = f"passes[{i}].name" if entry["name"] not in _known_passes() else f"passes[{i}].options"
            raise LoadError(f"{_where(file, field)}: {err}") from None
        if entry["name"] in seen:
            raise LoadError(f"{_where(file, f'passes[{i}]')}: pass {entry['name']!r} is listed twice")
        seen.add(entry["name"])


def _sane_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return not isinstance(value, int) or abs(value) < 2**63


def _known_passes() -> set[str]:
    from .registry import REGISTRY

    return set(REGISTRY)


def _check_strings(value: Any, key: str, file: str) -> None:
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise LoadError(f"{_where(file, key)} must be a list of strings, got {value!r:.80}")


def _check_capture(value: Any, file: str) -> None:
    if value is None:
        return
    eager, args = (value.get("eager", {}), value.get("args", {})) if isinstance(value, dict) else (None, None)
    unrun = value.get("unrun", {}) if isinstance(value, dict) else None  # rewrites undone: they never ran
    ok = (
        isinstance(unrun, dict)
        and all(isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v)
                for k, v in unrun.items())
        and isinstance(eager, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in eager.items())
        and isinstance(args, dict)
        and all(isinstance(k, str) and isinstance(v, dict) for k, v in args.items())
    )
    if not ok:
        raise LoadError(f"{_where(file, 'capture')} must be {{'eager': {{name: reason}}, 'args': {{name: {{...}}}}, "
                       f"'unrun': {{pass: [target, ...]}}}}")


def _is_range(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and value[0] <= value[1]
    )


def _check_range(value: Any, file: str) -> None:
    if value is not None and not _is_range(value):
        raise LoadError(f"{_where(file, 'input_range')} must be [lo, hi] with finite lo <= hi, got {value!r:.80}")


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
