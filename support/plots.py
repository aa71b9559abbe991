"""Figure helpers shared by every notebook: consistent style and saving.

Every figure is saved as PNG under ``figures/`` (see :mod:`support.paths`) and
its title names the data source, so that a figure taken out of context still
says whether it shows the generated phantom or real data.
"""
from __future__ import annotations

from pathlib import Path

from . import artifacts, paths


def titled(title: str, source: str) -> str:
    """``"MCC per loss"`` + ``"phantom"`` -> ``"MCC per loss — data: phantom"``."""
    return f"{title} — data: {source}" if source else title


def save_figure(fig, name: str, dpi: int = 130) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` atomically and return the path.

    ``name`` may contain sub-folders (``"ui/panel"``) but cannot leave figures/.
    """
    import io

    if not name.endswith(".png"):
        name += ".png"
    path = paths.inside(paths.figures_dir(), name)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    artifacts.write_bytes(path, buffer.getvalue())
    return path
