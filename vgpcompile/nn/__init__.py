"""Runtime modules the passes insert; usable by hand as well."""

from .arp import (
    AutoRotConv1d,
    AutoRotConv2d,
    AutoRotConv3d,
    AutoRotConvTranspose1d,
    AutoRotConvTranspose2d,
    AutoRotConvTranspose3d,
    AutoRotLinear,
)
from .gpn import GPNActivation
from .orthogonal import RowNorm, ThinShell, retract, retract_after
from .recurrent import AutoRotGRU, AutoRotLSTM, AutoRotRNN

__all__ = [
    "AutoRotConv1d",
    "AutoRotConv2d",
    "AutoRotConv3d",
    "AutoRotConvTranspose1d",
    "AutoRotConvTranspose2d",
    "AutoRotConvTranspose3d",
    "AutoRotGRU",
    "AutoRotLSTM",
    "AutoRotLinear",
    "AutoRotRNN",
    "GPNActivation",
    "RowNorm",
    "ThinShell",
    "WRAPPERS",
    "retract",
    "retract_after",
]

# Modules that wrap a catalogue activation; site finding sees through them.
WRAPPERS: tuple[type, ...] = (GPNActivation,)
