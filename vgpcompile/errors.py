"""Typed errors. Each carries the process exit code the CLI uses for it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VgpError(Exception):
    """Base class of every error vgpcompile raises on purpose."""

    exit_code = 1


class UsageError(VgpError):
    """Bad arguments: an unknown pass or option, a wrong type, a bad value."""

    exit_code = 2


class SelectorError(UsageError):
    """A `select=` / `ignore=` rule that is malformed or matches nothing."""

    exit_code = 3


class LoadError(VgpError):
    """A model factory, checkpoint or weights file that cannot be loaded."""

    exit_code = 4


class CaptureError(VgpError):
    """A model that cannot be captured at all (no traceable part and nothing to do)."""

    exit_code = 5


class ParityError(VgpError):
    """A frozen or exported form that does not match the training form."""

    exit_code = 6


class PassError(VgpError):
    """A pass that failed while rewriting; names the pass and the node."""

    exit_code = 7


class ExportError(VgpError):
    """torch.onnx could not export the frozen model."""

    exit_code = 8


class ActivationError(UsageError):
    """An activation that cannot be used as asked (e.g. no GPN constants exist)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix listing close matches, or the valid choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if close:
        return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    return " Valid choices: " + ", ".join(repr(c) for c in choices) + "."
