"""Runtime modules the passes insert; usable by hand as well."""

from .gpn import GPNActivation

__all__ = ["GPNActivation", "WRAPPERS"]

# Modules that wrap a catalogue activation; site finding sees through them.
WRAPPERS: tuple[type, ...] = (GPNActivation,)
