"""``vgpcompile.rai``: the public name of the rai pass's helpers (loss, fit, resync, cuts,
ddp, ...); everything lives in :mod:`vgpcompile.passes.rai`."""

from .passes.rai import *  # noqa: F403
from .passes.rai import __all__  # noqa: F401
