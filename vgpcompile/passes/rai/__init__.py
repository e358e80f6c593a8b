"""The ``rai`` pass (relaxed activation identity, seed 002): the rewrite that lifts a model
into per-example tables and local losses, the cut modules, the lowering, and the training
helpers. Public through :mod:`vgpcompile.rai`:

    import vgpcompile
    lifted = vgpcompile.vgpcompile(net, passes=["rai"], options={"rai": {"num_examples": len(x)}})
    history = vgpcompile.rai.fit(lifted, x, y, epochs=100, batch_size=32, verbose=True)
    # or by hand: out = lifted(x[ids], ids); (task(out, y[ids]) + vgpcompile.rai.loss(lifted)).backward()
    frozen = vgpcompile.freeze(lifted)   # the plain network, original parameter names
"""

from .lower import lower
from .modules import RAICut, Settings, cuts, local_losses, loss, settings, unwrap
from .rewrite import RAI, format_shapes, parse_shapes
from .train import (
    History,
    Record,
    accuracy,
    ddp,
    default_loss,
    evaluate,
    fit,
    fsdp,
    grow_lam,
    optimizers,
    resync,
    weight_parameters,
)

__all__ = [
    "RAI",
    "History",
    "RAICut",
    "Settings",
    "Record",
    "accuracy",
    "cuts",
    "ddp",
    "fsdp",
    "default_loss",
    "evaluate",
    "fit",
    "format_shapes",
    "grow_lam",
    "local_losses",
    "loss",
    "lower",
    "optimizers",
    "parse_shapes",
    "resync",
    "settings",
    "unwrap",
    "weight_parameters",
]
