"""Pipeline strings: ``"gpn{root=paper},arp"``, the same in Python and on the CLI.

Grammar: passes separated by commas; each is a registered name or preset, optionally
followed by ``{key=value,...}`` options whose values are parsed to the option's declared
type. ``format_pipeline`` writes the inverse string for a list of pass instances.
"""

from __future__ import annotations

import dataclasses

from ..errors import UsageError


def parse_pipeline(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """``"gpn{root=paper},arp"`` -> (["gpn", "arp"], {"gpn": {"root": "paper"}})."""
    names: list[str] = []
    options: dict[str, dict[str, str]] = {}
    depth, start = 0, 0
    text_ = text + ","
    for i, ch in enumerate(text_):  # one scan, tokens sliced out: linear in the length of the string
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            raise UsageError(f"passes {_short(text)}: '}}' without '{{'")
        if ch == "," and depth == 0:
            _add(text_[start:i].strip(), names, options, text)
            start = i + 1
    if depth != 0:
        raise UsageError(f"passes {_short(text)}: unbalanced braces")
    return names, options


def _short(text: str) -> str:
    """``text`` quoted for a message, cut in the middle when long (a message stays one readable line)."""
    return repr(text) if len(text) <= 120 else f"{text[:60]!r}...{text[-40:]!r} ({len(text)} characters)"


def _add(token: str, names: list[str], options: dict[str, dict[str, str]], text: str) -> None:
    if not token:
        return
    name, _, body = token.partition("{")
    name = name.strip()
    if not name:
        raise UsageError(f"passes {_short(text)}: options {{{body} without a pass name")
    if body and not body.endswith("}"):
        raise UsageError(f"passes {_short(text)}: text after the options of {name!r}")
    names.append(name)
    if body:
        pairs = [split_option(kv, name) for kv in body[:-1].split(",") if kv.strip()]
        for key, value in pairs:
            merge_option(options, name, key, value, "the pipeline string", "the pipeline string")


def merge_option(options: dict, name: str, key: str, value, where: str, given: str) -> None:
    """Set option ``key`` of pass ``name``; the same key set twice with different values is a
    UsageError naming both places (which one wins would be a rule to remember: there is none)."""
    opts = options.setdefault(name, {})
    if key in opts and opts[key] != value:
        raise UsageError(
            f"option {key!r} of pass {name!r} is given twice: {opts[key]!r} in {given} and {value!r} in {where}; "
            "give it once"
        )
    opts[key] = value


def split_option(text: str, where: str) -> tuple[str, str]:
    """``"key=value"`` -> ("key", "value"); anything else is a UsageError naming ``where``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"option {text.strip()!r} for {where!r} must be key=value")
    return key.strip(), value.strip()


def format_pipeline(passes) -> str:
    """The pipeline string for pass instances, options that differ from their defaults only."""
    parts = []
    for p in passes:
        changed = {
            f.name: getattr(p, f.name)
            for f in dataclasses.fields(p)
            if f.init and getattr(p, f.name) != _default(f)
        }
        opts = ",".join(f"{k}={_text(v)}" for k, v in changed.items())
        parts.append(p.name + (f"{{{opts}}}" if opts else ""))
    return ",".join(parts)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
