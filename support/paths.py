"""Project folders. Every path in the package comes from here.

Each root can be moved with an environment variable, so that a cluster job or a
test can point the kit at another disk without editing code:

    LOSSBENCH_DATA_DIR     default <project>/data
    LOSSBENCH_RUNS_DIR     default <project>/runs
    LOSSBENCH_FIGURES_DIR  default <project>/figures

Functions (not constants) so that a changed variable is seen at call time.
Nothing is created at import; callers create what they write into.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _root(env: str, default: str) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser().resolve() if value else PROJECT_ROOT / default


def data_dir() -> Path:
    """Folder for generated data and the data cache (``data/cache``)."""
    return _root("LOSSBENCH_DATA_DIR", "data")


def cache_dir() -> Path:
    """Folder of cached uint8 arrays, keyed by the parameters that made them."""
    return data_dir() / "cache"


def runs_dir() -> Path:
    """Folder of run folders ``runs/<key>/`` and reports ``runs/report``."""
    return _root("LOSSBENCH_RUNS_DIR", "runs")


def figures_dir() -> Path:
    """Folder of PNG figures."""
    return _root("LOSSBENCH_FIGURES_DIR", "figures")


def report_dir() -> Path:
    """Folder of report tables (CSV, Markdown, LaTeX)."""
    return runs_dir() / "report"


def inside(root: Path, *parts: str | os.PathLike) -> Path:
    """Join ``parts`` under ``root`` and refuse any result that escapes it.

    User-supplied names (a run key, a figure name) go through this, so that
    ``../../etc`` cannot write outside the project folders.
    """
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ValueError(
            f"path {path} escapes {root}; use a name without '..' or an absolute path"
        )
    return path
