"""The pass registry: an explicit name -> class table, loaded lazily. Nothing registers on import."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import UsageError, did_you_mean
from ..pipeline import Pass

REGISTRY: dict[str, str] = {
    "gpn": "vgpcompile.passes.gpn:GPN",
    "arp": "vgpcompile.passes.arp:ARP",
    "orthogonal": "vgpcompile.passes.orthogonal:Orthogonal",
}
# Named combinations, expanded in place.
PRESETS: dict[str, tuple[str, ...]] = {
    "bsnn": ("gpn", "orthogonal"),  # the BSNN paper (research/bsnn.md); its code's keep is "rownorm"
}


def get_pass(name: str) -> type[Pass]:
    if name not in REGISTRY:
        raise UsageError(f"unknown pass {name!r}." + did_you_mean(name, list(REGISTRY) + list(PRESETS)))
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def list_passes() -> list[tuple[str, str]]:
    """(name, one-line summary) of every pass."""
    return [(name, get_pass(name).summary) for name in REGISTRY]


def option_fields(cls: type[Pass]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def make_pass(name: str, options: Mapping[str, Any] | None = None, base: Pass | None = None) -> Pass:
    """Build pass ``name`` with type-checked ``options`` (strings are parsed, as from the CLI)."""
    cls = get_pass(name)
    fields = option_fields(cls)
    values = {}
    for key, value in (options or {}).items():
        if key not in fields:
            raise UsageError(f"pass {name!r} has no option {key!r}." + did_you_mean(key, fields))
        values[key] = coerce(name, key, value, fields[key])
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def coerce(pass_name: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` as the option's declared type, or a UsageError naming pass, option and type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    where = f"option {key!r} of pass {pass_name!r}"
    if origin is typing.Literal:
        if value not in args:
            raise UsageError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if isinstance(value, str) and hint is not str:
        value = _parse_text(value, hint, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (bool, int, float, str) and (
        not isinstance(value, hint) or (hint is not bool and isinstance(value, bool))
    ):
        raise UsageError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _parse_text(text: str, hint: Any, where: str) -> Any:
    if hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{where} must be true or false, got {text!r}")
    try:
        return hint(text)
    except (TypeError, ValueError):
        raise UsageError(f"{where} must be {getattr(hint, '__name__', hint)}, got {text!r}") from None


def resolve(passes: Sequence[str | Pass], options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Pass]:
    """Pass names or instances, plus per-pass options, as a list of pass instances."""
    if isinstance(passes, (str, Pass)):
        passes = [passes]
    options = dict(options or {})
    names = []
    for item in passes:
        if isinstance(item, str) and item in PRESETS:
            names += list(PRESETS[item])
        else:
            names.append(item)
    out: list[Pass] = []
    for item in names:
        if isinstance(item, Pass):
            out.append(make_pass(item.name, options.pop(item.name, None), base=item))
        elif isinstance(item, str):
            out.append(make_pass(item, options.pop(item, None)))
        else:
            raise UsageError(f"passes must be names or Pass instances, got {type(item).__name__}")
    seen = [p.name for p in out]
    dup = next((n for n in seen if seen.count(n) > 1), None)
    if dup:
        raise UsageError(f"pass {dup!r} is listed twice; a pass is applied once per site")
    if options:
        extra = next(iter(options))
        raise UsageError(f"options given for pass {extra!r}, which is not in passes={seen}")
    return out
