"""The pass registry: an explicit name -> class table, loaded lazily. Nothing registers on import."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import UsageError, did_you_mean
from .contract import Pass
from .pipeline import merge_option, parse_pipeline

# name -> "module:class", imported on first use; a new pass is one line here.
REGISTRY: dict[str, str] = {
    "gpn": "vgpcompile.passes.gpn:GPN",
    "arp": "vgpcompile.passes.arp:ARP",
    "orthogonal": "vgpcompile.passes.orthogonal:Orthogonal",
    "roaf": "vgpcompile.passes.roaf:ROAF",
    "rai": "vgpcompile.passes.rai:RAI",
    "tat": "vgpcompile.passes.tat:TAT",
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


def resolve(
    passes: Sequence[str | Pass] | str | Pass, options: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Pass]:
    """Pass names, pipeline strings (``"gpn{root=paper},arp"``) or instances, plus per-pass
    ``options``, as a list of pass instances.

    Options for a pass given as an instance are an error: the instance already carries its
    options, and silently overriding its fields would hide which value is in force.
    """
    if isinstance(passes, (str, Pass)):
        passes = [passes]
    if not isinstance(passes, Sequence) or isinstance(passes, (bytes, bytearray)):
        raise UsageError(
            f"passes must be a list of pass names or Pass instances (or a pipeline string), got {_type(passes)}"
        )
    options = _check_options(options)
    items: list[str | Pass] = []
    for item in passes:
        if isinstance(item, str):
            names, inline = parse_pipeline(item)
            for name, opts in inline.items():
                for key, value in opts.items():
                    merge_option(options, name, key, value, "the pipeline string", "options=")
            items += names
        elif isinstance(item, Pass):
            items.append(item)
        else:
            raise UsageError(f"passes must be names or Pass instances, got {_type(item)} in the list")
    names = []
    for item in items:
        if isinstance(item, str) and item in PRESETS:
            names += list(PRESETS[item])
        else:
            names.append(item)
    seen: set[str] = set()
    for item in names:  # before any pass is built: a long list costs one pass over it
        name = item.name if isinstance(item, Pass) else item
        if name in seen:
            raise UsageError(f"pass {name!r} is listed twice; a pass is applied once per site")
        seen.add(name)
    out: list[Pass] = []
    for item in names:
        if isinstance(item, Pass):
            if item.name in options:
                raise UsageError(
                    f"pass {item.name!r} is given as an instance and also in options=: set its options on the "
                    f"instance ({type(item).__name__}(...)) or pass the name {item.name!r} with options=, not both"
                )
            out.append(make_pass(item.name, None, base=item))
        else:
            out.append(make_pass(item, options.pop(item, None)))
    if options:
        extra = next(iter(options))
        raise UsageError(f"options given for pass {extra!r}, which is not in passes={[p.name for p in out]}")
    return out


def _check_options(options: Any) -> dict[str, dict[str, Any]]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise UsageError(f"options must be a dict {{pass name: {{option: value}}}}, got {_type(options)}")
    out = {}
    for name, opts in options.items():
        if not isinstance(opts, Mapping):
            raise UsageError(
                f"options[{name!r}] must be a dict of option values, e.g. {{'{name}': {{'key': value}}}}; "
                f"got {_type(opts)}"
            )
        out[name] = dict(opts)
    return out


def _type(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]
