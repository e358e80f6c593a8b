"""vgpcompile: compile PyTorch models against vanishing and exploding gradients.

    from vgpcompile import vgpcompile
    model = vgpcompile(net, passes=["gpn"])
    print(model.vgp_report)
"""

__version__ = "0.1.0"

from . import orthogonal  # noqa: E402  (vgpcompile.orthogonal.retract(model), ...)
from .activations import Activation, register_activation  # noqa: E402
from .api import plan, vgpcompile  # noqa: E402
from .checkpoint import load, save  # noqa: E402
from .errors import (  # noqa: E402
    ActivationError,
    CaptureError,
    LoadError,
    ParityError,
    PassError,
    SelectorError,
    UsageError,
    VgpError,
)
from .export import export_onnx  # noqa: E402
from .freeze import freeze  # noqa: E402
from .passes import list_passes  # noqa: E402
from .report import Report  # noqa: E402

__all__ = [
    "Activation",
    "ActivationError",
    "CaptureError",
    "LoadError",
    "ParityError",
    "PassError",
    "Report",
    "SelectorError",
    "UsageError",
    "VgpError",
    "__version__",
    "export_onnx",
    "freeze",
    "load",
    "list_passes",
    "orthogonal",
    "plan",
    "register_activation",
    "save",
    "vgpcompile",
]
