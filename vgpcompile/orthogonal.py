"""``vgpcompile.orthogonal``: the public name of the orthogonal pass's helpers (retract,
retract_after, orthogonality_error, layers, ...); everything lives in
:mod:`vgpcompile.passes.orthogonal`."""

from .passes.orthogonal import *  # noqa: F403
from .passes.orthogonal import __all__  # noqa: F401
