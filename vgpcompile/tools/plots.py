"""Diagnose's plots: matplotlib's object API (no pyplot state, no display), PNGs written whole.

Each function takes ``{label: Measurement}`` (before/after, or the arms of an experiment)
and draws one line or bar group per label:

- :func:`layer_figure`: ‖∂E/∂W^l‖_F per layer (log) | ‖x^l‖²/n per layer (log);
- :func:`saturation_figure`: saturated fraction per activation site | histogram of
  |φ'(h)| / max|φ'| over all sites (the BSNN slides' φ' histogram; THRESHOLD dotted);
- :func:`time_figure`: ‖∂E/∂x_t‖ per time step of each recurrent layer (log).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .probes import THRESHOLD, Measurement


def _positive(values: Sequence[float | None]) -> list[float]:
    return [v if v is not None and math.isfinite(v) and v > 0 else math.nan for v in values]


def _figure(n_axes: int, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0 * n_axes, 4.2), layout="constrained")
    axes = [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]
    fig.suptitle(title)
    return fig, axes


def layer_figure(named: Mapping[str, Measurement], title: str = ""):
    """Two axes: ‖∂E/∂W^l‖_F per layer (log) and ‖x^l‖²/n per layer (log), one line per label."""
    fig, (ax_g, ax_s) = _figure(2, title)
    for label, m in named.items():
        ax_g.plot(range(len(m.layers)), _positive([r.grad_norm for r in m.layers]), label=label, lw=1.3)
        ax_s.plot(range(len(m.layers)), _positive([r.signal for r in m.layers]), label=label, lw=1.3)
    ax_g.set(yscale="log", xlabel="layer l (forward order)", ylabel="||dE/dW^l||_F", title="weight-gradient norm")
    ax_s.set(yscale="log", xlabel="layer l (forward order)", ylabel="||x^l||^2 / n", title="forward signal")
    for ax in (ax_g, ax_s):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def saturation_figure(named: Mapping[str, Measurement], title: str = ""):
    """Two axes: saturated fraction per activation site; histogram of |φ'(h)| / max|φ'|."""
    fig, (ax_f, ax_h) = _figure(2, title)
    width = 1.0 / max(len(named), 1)  # bars of the labels side by side within each bin
    for k, (label, m) in enumerate(named.items()):
        ax_f.plot(range(len(m.activations)), [a.saturation for a in m.activations], label=label, lw=1.3)
        hist = [sum(col) for col in zip(*(a.hist for a in m.activations))] if m.activations else []
        total = sum(hist) or 1
        bins = len(hist)
        if bins:
            xs = [(i + k * width) / bins for i in range(bins)]
            ax_h.bar(xs, [h / total for h in hist], width=width / bins, label=label, align="edge")
    ax_f.set(
        xlabel="activation site (forward order)",
        ylabel="fraction outside the dynamic region",
        title="saturation",
        ylim=(-0.02, 1.02),
    )
    ax_h.set(
        yscale="log",
        xlabel="|phi'(h)| / max|phi'|",
        ylabel="fraction of pre-activations",
        title="derivative histogram",
        xlim=(0, 1),
    )
    ax_h.axvline(THRESHOLD, color="k", ls=":", lw=1)
    for ax in (ax_f, ax_h):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def time_figure(named: Mapping[str, Measurement], title: str = ""):
    """One axis: ‖∂E/∂x_t‖ per time step (log), one line per label and recurrent layer."""
    fig, (ax,) = _figure(1, title)
    for label, m in named.items():
        for r in m.recurrent:
            ax.plot(range(len(r.steps)), _positive(r.steps), label=f"{label} {r.name}", lw=1.3)
    ax.set(yscale="log", xlabel="time step t", ylabel="||dE/dx_t||", title="input gradient per time step")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=8)
    return fig


@contextlib.contextmanager
def staged(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file next to ``path``, renamed onto it when the block succeeds and removed
    when it fails: the output is written whole or not at all. It gets the permissions a
    plainly created file would (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path``, whole or not at all."""
    with staged(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path``, whole or not at all."""
    with staged(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def plot_all(
    named: Mapping[str, Measurement], out_dir: str | os.PathLike, title: str = "", prefix: str = ""
) -> list[Path]:
    """gradients.png, saturation.png and, with recurrent layers, time_steps.png in ``out_dir``."""
    out = Path(out_dir)
    paths = [save_figure(layer_figure(named, title), out / f"{prefix}gradients.png")]
    if any(m.activations for m in named.values()):
        paths.append(save_figure(saturation_figure(named, title), out / f"{prefix}saturation.png"))
    if any(r.steps for m in named.values() for r in m.recurrent):
        paths.append(save_figure(time_figure(named, title), out / f"{prefix}time_steps.png"))
    return paths
