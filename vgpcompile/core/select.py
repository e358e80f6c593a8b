"""``select=`` / ``ignore=`` rules.

Grammar (the same in Python and on the CLI):

- ``fc1`` or ``encoder.block3``: an exact module name; it also matches everything inside
  that module, so ``ignore=["decoder"]`` leaves a whole subtree alone. A function call
  site is named ``owner.nodename()`` (see the report).
- ``re:<regex>``: a Python regex that must match a whole name.
- ``type:<Class>``: the class name (or a base class name) of the activation module or of
  the affine layer feeding it, e.g. ``type:Conv2d``.
- ``act:<kind>``: an activation kind from the catalogue, e.g. ``act:gelu``; it matches
  module, function and method spellings alike.

A target is selected when ``select`` is empty or any select rule matches it, and no
ignore rule matches it: ignore wins. A rule that matches nothing is an error.

Regexes are user input, and Python's ``re`` backtracks: ``re:(.*.*)*Z`` takes minutes on a
20-character name. They are matched with the ``regex`` package (the same syntax) under a
time limit instead: each ``re:`` rule gets ``REGEX_BUDGET_S`` seconds in all for one
compile, and a rule that exceeds it is a SelectorError naming the rule (simplify its
nested repetitions).
"""

from __future__ import annotations

import difflib
import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import regex

from ..errors import SelectorError, UsageError

PREFIXES = ("re:", "type:", "act:")
REGEX_BUDGET_S = 2.0  # per re: rule and compile; a sane pattern needs microseconds per name


@dataclass(frozen=True)
class Target:
    """What a rule can see of a site or layer."""

    names: tuple[str, ...]
    classes: tuple[str, ...]
    kind: str | None = None


@dataclass(frozen=True)
class Rule:
    text: str
    where: str  # "select" or "ignore"
    spent: list[float] = field(default_factory=lambda: [0.0], compare=False, repr=False)  # seconds matching

    def matches(self, target: Target) -> bool:
        if self.text.startswith("re:"):
            return any(self._fullmatch(n) for n in target.names)
        if self.text.startswith("type:"):
            return self.text[5:] in target.classes
        if self.text.startswith("act:"):
            return target.kind == self.text[4:]
        return any(n == self.text or n.startswith(self.text + ".") for n in target.names)

    def _regex(self) -> regex.Pattern:
        try:
            return _compile(self.text[3:])
        except regex.error as err:
            raise SelectorError(f"{self.where} rule {self.text!r} is not a valid regex: {err}") from None

    def _fullmatch(self, name: str) -> bool:
        left = REGEX_BUDGET_S - self.spent[0]
        start = time.perf_counter()
        try:
            return self._regex().fullmatch(name, timeout=max(left, 0.001)) is not None
        except TimeoutError:
            raise SelectorError(
                f"{self.where} rule {self.text!r} took more than {REGEX_BUDGET_S:g} s to match (at {name!r}): its "
                "nested repetitions backtrack exponentially; simplify it, e.g. 're:.*Z' instead of 're:(.*.*)*Z'"
            ) from None
        finally:
            self.spent[0] += time.perf_counter() - start


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)


def _class_names(objs: Iterable[object]) -> tuple[str, ...]:
    names: list[str] = []
    for obj in objs:
        if obj is not None:
            names += [c.__name__ for c in type(obj).__mro__ if c.__name__ not in ("object", "Module")]
    return tuple(names)


def target_of(names: Sequence[str | None], objects: Sequence[object], kind: str | None = None) -> Target:
    return Target(tuple(n for n in names if n), _class_names(objects), kind)


class Selection:
    """Parsed select/ignore rules, with a record of which rules matched something."""

    def __init__(self, select: Sequence[str] | str | None = None, ignore: Sequence[str] | str | None = None) -> None:
        self.select = self._parse(select, "select")
        self.ignore = self._parse(ignore, "ignore")
        self._hits: set[Rule] = set()

    @staticmethod
    def _parse(rules: Sequence[str] | str | None, where: str) -> list[Rule]:
        if rules is None:
            return []
        if isinstance(rules, str):
            rules = [rules]
        if not isinstance(rules, (list, tuple)):
            kind = type(rules).__name__
            raise UsageError(f"{where}= must be a rule string or a list of them, got {kind} {rules!r:.60}")
        parsed = []
        for text in rules:
            if not isinstance(text, str) or not text.strip():
                raise SelectorError(f"{where} rules must be non-empty strings, got {text!r}")
            head = text.split(":", 1)[0] + ":"
            if ":" in text and head not in PREFIXES:
                raise SelectorError(
                    f"{where} rule {text!r} has an unknown prefix {head!r}; use re:, type:, act: or a module name"
                )
            rule = Rule(text.strip(), where)
            if text.startswith("re:"):
                rule._regex()
            parsed.append(rule)
        return parsed

    def explicitly_selected(self, target: Target) -> bool:
        """Named by an exact-name or regex select rule (used to opt the output activation in)."""
        return any(not r.text.startswith(("type:", "act:")) and r.matches(target) for r in self.select)

    def decide(self, target: Target) -> str | None:
        """None if selected, else the reason it is not."""
        ignored = [r for r in self.ignore if r.matches(target)]
        selected = [r for r in self.select if r.matches(target)]
        self._hits.update(ignored, selected)
        if ignored:
            return f"ignored by {ignored[0].text!r}"
        if self.select and not selected:
            return "not selected"
        return None

    def check_all_matched(self, known_names: Iterable[str]) -> None:
        unmatched = [r for r in self.select + self.ignore if r not in self._hits]
        if not unmatched:
            return
        rule = unmatched[0]
        names = sorted(set(known_names))
        close = difflib.get_close_matches(rule.text, names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else f" Known names: {', '.join(names[:12])}"
        raise SelectorError(
            f"{rule.where} rule {rule.text!r} matches no activation site or layer.{hint}"
            + (" ..." if not close and len(names) > 12 else "")
        )
