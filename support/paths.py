"""Project folders. Every path in the package comes from here.

Each root can be moved with an environment variable, so that a cluster job or a
test can point the kit at another disk without editing code:

    LOSSBENCH_DATA_DIR     default <project>/data
    LOSSBENCH_RUNS_DIR     default <project>/runs
    LOSSBENCH_FIGURES_DIR  default <project>/figures

``<project>`` (:func:`project_root`) is ``LOSSBENCH_ROOT`` when set; else this checkout when
``support`` is imported from one (an editable install, or ``PYTHONPATH``); else, for a plain
``pip install .`` (the package copied into site-packages), the nearest folder at or above the
current directory that holds a ``pyproject.toml``, or the current directory itself, so that
nothing is ever written into site-packages.

Functions (not constants) so that a changed variable is seen at call time.
Nothing is created at import; callers create what they write into.
"""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def _is_checkout(folder: Path) -> bool:
    """A source checkout of this kit: the package folder beside pyproject.toml (never site-packages)."""
    return (folder / "pyproject.toml").is_file() and (folder / "support" / "paths.py").is_file()


def project_root() -> Path:
    """The project whose ``data/``, ``runs/`` and ``figures/`` the kit uses (see the module doc)."""
    value = os.environ.get("LOSSBENCH_ROOT")
    if value:
        return Path(value).expanduser().resolve()
    if _is_checkout(_PACKAGE_PARENT):
        return _PACKAGE_PARENT
    here = Path.cwd().resolve()
    return next((d for d in (here, *here.parents) if (d / "pyproject.toml").is_file()), here)


#: :func:`project_root` at import (the notebooks folder, the git SHA); the roots below re-read it per call.
PROJECT_ROOT = project_root()


def _root(env: str, default: str) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser().resolve() if value else project_root() / default


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


def executed_notebooks_dir() -> Path:
    """Folder of the pipeline's executed notebooks (``runs/notebooks``; kernel logs in its ``logs/``)."""
    return runs_dir() / "notebooks"


def cam_cache_dir() -> Path:
    """Folder of cached CAMs of notebook 07 (``runs/localization/cams``), keyed by their parameters."""
    return runs_dir() / "localization" / "cams"


def shortcut_runs_dir() -> Path:
    """Folder of the shortcut experiment's run folders (``runs/shortcut``), apart from the loss study's."""
    return runs_dir() / "shortcut"


def nodules_dir(root: Path | None = None) -> Path:
    """Folder of the nodule study's cached measurements (``runs/nodules``) under ``root`` (default :func:`runs_dir`)."""
    return Path(root or runs_dir()) / "nodules"


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
