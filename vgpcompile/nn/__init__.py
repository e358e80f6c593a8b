"""Runtime modules the passes insert, usable by hand as well (re-exported from the passes'
packages, where they live)."""

from ..passes.arp import (
    AutoRotConv1d,
    AutoRotConv2d,
    AutoRotConv3d,
    AutoRotConvTranspose1d,
    AutoRotConvTranspose2d,
    AutoRotConvTranspose3d,
    AutoRotGRU,
    AutoRotLinear,
    AutoRotLSTM,
    AutoRotRNN,
)
from ..passes.gpn import GPNActivation
from ..passes.orthogonal import RowNorm, ThinShell, retract, retract_after
from ..passes.rai import RAICut
from ..passes.roaf import ROAFRNN, ROAFFilter, ROAFMatrix
from ..passes.tat import TATActivation

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
    "ROAFFilter",
    "ROAFMatrix",
    "ROAFRNN",
    "RAICut",
    "RowNorm",
    "TATActivation",
    "ThinShell",
    "retract",
    "retract_after",
]
