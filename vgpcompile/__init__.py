"""vgpcompile: compile PyTorch models against vanishing and exploding gradients.

    from vgpcompile import vgpcompile
    model = vgpcompile(net, passes=["gpn"])
    print(model.vgp_report)
"""

__version__ = "0.1.0"

from . import orthogonal, rai  # noqa: E402  (vgpcompile.orthogonal.retract(model), vgpcompile.rai.fit(...))
from .api import compile, plan, vgpcompile  # noqa: E402
from .core.affine import register_affine  # noqa: E402
from .core.catalogue import Activation, Catalogue, register_activation  # noqa: E402
from .core.contract import Env, Pass, PassResult  # noqa: E402
from .core.registry import list_passes  # noqa: E402
from .core.report import Report, VgpWarning  # noqa: E402
from .core.runner import run_pass  # noqa: E402
from .errors import (  # noqa: E402
    ActivationError,
    CaptureError,
    ExportError,
    LoadError,
    ParityError,
    PassError,
    SelectorError,
    UsageError,
    VgpError,
)
from .freeze import freeze  # noqa: E402
from .io.checkpoint import load, save  # noqa: E402
from .io.hf import from_pretrained  # noqa: E402
from .io.onnx import export_onnx  # noqa: E402
from .tools.diagnose import DiagnoseReport, diagnose  # noqa: E402

__all__ = [
    "Activation",
    "ActivationError",
    "CaptureError",
    "Catalogue",
    "DiagnoseReport",
    "Env",
    "ExportError",
    "LoadError",
    "ParityError",
    "Pass",
    "PassError",
    "PassResult",
    "Report",
    "SelectorError",
    "UsageError",
    "VgpError",
    "VgpWarning",
    "__version__",
    "compile",
    "diagnose",
    "export_onnx",
    "freeze",
    "from_pretrained",
    "list_passes",
    "load",
    "orthogonal",
    "plan",
    "rai",
    "register_activation",
    "register_affine",
    "run_pass",
    "save",
    "vgpcompile",
]
