"""How the pipeline runs one notebook's kernel: its environment, its log file, its failure line.

papermill executes the notebook and nbclient owns the kernel's life cycle; this module only
(1) builds the kernel's environment as a copy (the pipeline's own ``os.environ`` is never changed),
(2) gives nbclient a kernel manager that starts the kernel with that environment and its
stdout/stderr in a log file (the console stays one line per notebook), and (3) turns papermill's /
nbclient's exceptions into one line naming the cell and the exception.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from . import paths


def kernel_env(threads: Optional[int] = None, wait_for_runs: bool = False) -> dict:
    """The environment of a notebook's kernel: a copy of this process's, plus what the kernels need.

    ``PYTHONPATH`` starts with this checkout (kernels import ``support`` even when it is not installed);
    ``threads`` sets OMP/MKL_NUM_THREADS unless the user set them; ``wait_for_runs`` makes a kernel that
    asks for a run another one is training wait for it (:data:`support.training.WAIT_ENV`).
    """
    from .training import WAIT_ENV

    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    if str(paths.PROJECT_ROOT) not in path.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(paths.PROJECT_ROOT), path) if p)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(threads))  # torch reads OMP_NUM_THREADS at start-up
    if wait_for_runs:
        env[WAIT_ENV] = "1"
    return env


def kernel_manager_class(env: dict, log, cwd: Path):
    """A jupyter_client kernel manager that starts its kernel with ``env``, in ``cwd``, output to ``log``.

    papermill passes it to nbclient (``kernel_manager_class``), which still owns the kernel's life cycle:
    start, interrupt on timeout, shutdown.
    """
    from jupyter_client.manager import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            kw.update(env=env, stdout=log, stderr=log)
            kw.setdefault("cwd", str(cwd))
            return await super().start_kernel(**kw)

    return KernelManager


def describe_failure(exc: BaseException, output: Path, timeout: Optional[float]) -> str:
    """One line: which cell failed and how, from papermill's / nbclient's exception fields."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        lines = str(exc.evalue or "").strip().splitlines()
        return f"cell {exc.cell_index} (In [{exc.exec_count}]): {exc.ename}: {lines[0][:300] if lines else ''}"
    if isinstance(exc, CellTimeoutError):
        return (f"cell {_last_started_cell(output)}: timed out after {timeout:g} s (the profile's "
                "execution_timeout; raise it with --timeout)")
    if isinstance(exc, DeadKernelError):
        return f"the kernel died ({exc}); its log says why"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1][:300] if lines else ''}"


def _last_started_cell(output: Path) -> str:
    """Index of the last cell papermill started in the executed copy ("?" if unreadable)."""
    try:
        cells = json.loads(output.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return "?"
    started = [i for i, c in enumerate(cells) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    return str(started[-1]) if started else "?"
