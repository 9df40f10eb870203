"""Figures: the same code draws inline in a notebook and to PNG in a plain process."""

from __future__ import annotations

import sys
from pathlib import Path

from . import _atomic


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def pyplot():
    """matplotlib.pyplot: the notebook's own backend in a kernel, Agg anywhere else (no
    display is needed to draw a PNG)."""
    import matplotlib

    if not _in_kernel():
        matplotlib.use("agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save ``fig`` as PNG atomically; in a notebook, show that same PNG (drawn once, not a
    second time by the inline backend at the end of the cell)."""
    import io

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    _atomic.write_bytes(path, buffer.getvalue())
    if _in_kernel():
        from IPython.display import Image, display

        display(Image(data=buffer.getvalue(), format="png"))
        pyplot().close(fig)
    return Path(path)
