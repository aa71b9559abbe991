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


#: Largest figure saved at full ``dpi``, in pixels: a wider one (a grid of 16 models' CAMs) is saved at a
#: lower dpi, still above its images' own resolution, so that figures/ stays small in git.
MAX_PIXELS = 1.6e6


def save_figure(fig, name: str, dpi: int = 130) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` atomically and return the path.

    ``name`` may contain sub-folders (``"ui/panel"``) but cannot leave figures/. Figures over
    :data:`MAX_PIXELS` at ``dpi`` are saved at the dpi that fits (never below 72).
    """
    import io
    import math

    if not name.endswith(".png"):
        name += ".png"
    path = paths.inside(paths.figures_dir(), name)
    width, height = fig.get_size_inches()
    dpi = max(72, min(dpi, int(math.sqrt(MAX_PIXELS / (width * height)))))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    artifacts.write_bytes(path, buffer.getvalue())
    return path
