"""Figures: the same code draws inline in a notebook and to PNG in a plain process."""

from __future__ import annotations

from pathlib import Path

from . import _atomic

_INTERACTIVE = ("module://matplotlib_inline.backend_inline", "module://ipympl.backend_nbagg", "widget", "ipympl")


def pyplot():
    """matplotlib.pyplot, on the Agg backend unless a notebook backend is active."""
    import matplotlib

    if matplotlib.get_backend() not in _INTERACTIVE:
        matplotlib.use("agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save ``fig`` as PNG atomically. The figure stays open, so a notebook shows it too."""
    fig.tight_layout()
    _atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    return Path(path)
