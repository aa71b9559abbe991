"""The life cycle of one run folder, shared by every training loop (classification, segmentation).

``runs/<key>/`` (contract: ../shared/design.md) holds ``config.json`` (written first), the loop's
files, ``last.pt`` (resume state after each epoch), ``error.json`` when the run failed and
``metrics.json``, written LAST: its presence marks the run finished. The steps, in order::

    folder = RunFolder(final_dir, force)
    with folder.lock():               # filelock: released when the process dies, on every OS
        if folder.claim():            # False: another process finished it while we waited
            state = folder.resume_state(device)     # last.pt, or None
            folder.write_config(info)
            ... each epoch: folder.save_progress(state, log_rows)
            folder.publish(summary)   # metrics.json, THEN last.pt removed, then (force) the swap

``force=True`` trains into ``.staging-<name>`` beside the finished folder and swaps it in only
once it has finished; the name has no process id, so what a killed force run left behind is found
and removed by the next one. Every file is written atomically (:mod:`support.artifacts`); the
``.*.tmp`` files of a killed writer are removed when the folder is claimed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import filelock
import pandas as pd

from . import artifacts, logs, paths

log = logs.get("train")

#: Environment switch: "1" makes a second writer of a run folder wait for the first instead of failing
#: (set by ``./run_all.sh --jobs N`` for its notebooks, which may ask for the same run at once).
WAIT_ENV = "LOSSBENCH_WAIT_FOR_RUNS"
STAGING_PREFIX, OLD_PREFIX = ".staging-", ".old-"


class RunLocked(RuntimeError):
    """Another process is writing this run folder."""


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "metrics.json").exists()


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=paths.PROJECT_ROOT,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def run_lock(run_dir: Path, wait: Optional[bool] = None):
    """Exclusive lock on a run folder (``<run_dir>/.lock``; released when the process dies).

    Held by another process: :class:`RunLocked` at once, or with ``wait`` (default: the
    ``LOSSBENCH_WAIT_FOR_RUNS=1`` environment switch) block until it is released.
    """
    wait = os.environ.get(WAIT_ENV) == "1" if wait is None else wait
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(run_dir / ".lock", preserve_lock_file=True)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if not wait:
            raise RunLocked(f"{run_dir} is being written by another process; wait for it or stop it") from None
        log.info(f"{run_dir} is being trained by another process; waiting for it")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


class RunFolder:
    """One run folder from lock to publish. ``path`` is where the loop writes: the folder itself, or
    with ``force`` the staging folder that replaces it once the run has finished."""

    def __init__(self, final: Path, force: bool = False):
        self.final, self.force = Path(final), force
        self.path = self.final.parent / f"{STAGING_PREFIX}{self.final.name}" if force else self.final

    def lock(self, wait: Optional[bool] = None):
        """:func:`run_lock` on the final folder (the staging folder is ours while we hold it)."""
        return run_lock(self.final, wait)

    def claim(self) -> bool:
        """Called holding the lock. False when the run was finished meanwhile (by the process whose lock
        we waited for); else the working folder is ready: a force run's old staging folder and any
        half-written ``.*.tmp`` file of a killed process are removed."""
        if not self.force and is_finished(self.final):
            return False
        if self.force and self.path.exists():  # left by a killed force run: never resumed, removed
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob(".*.tmp"):  # half-written by a killed process; never read, now removed
            stale.unlink(missing_ok=True)
        return True

    def resume_state(self, device) -> Optional[dict]:
        """The resume state in ``last.pt`` (None: none, a force run, or unreadable -- then from scratch)."""
        last = self.path / "last.pt"
        if self.force or not last.exists():
            return None
        try:
            return artifacts.load_state(last, map_location=device)
        except artifacts.ArtifactError as exc:
            log.warning(f"cannot resume ({exc}); starting {self.path} from scratch")
            return None

    def write_config(self, info: dict) -> None:
        artifacts.write_json(self.path / "config.json", info)

    def save_progress(self, state: dict, log_rows) -> None:
        """After each epoch: ``log.csv`` and the resume state ``last.pt``."""
        artifacts.write_text(self.path / "log.csv", pd.DataFrame(log_rows).to_csv(index=False))
        artifacts.save_state(self.path / "last.pt", state)

    def fail(self, message: str, epoch: int) -> None:
        """``error.json``: the run stopped; the folder keeps its last good checkpoint."""
        artifacts.write_json(self.path / "error.json", {"error": message, "epoch": epoch})

    def publish(self, summary: dict) -> None:
        """``metrics.json`` (marks the run finished), then ``last.pt`` removed, then a force run's staging
        folder swapped in. In this order a kill at any point either resumes or finds the run finished."""
        artifacts.write_json(self.path / "metrics.json", summary)
        # Only now: a kill or a full disk before this point resumes from last.pt instead of retraining.
        (self.path / "last.pt").unlink(missing_ok=True)
        if self.path != self.final:
            old = self.final.parent / f"{OLD_PREFIX}{self.final.name}"
            if old.exists():  # left by a swap that was killed half-way; the folder below is newer
                shutil.rmtree(old)
            if self.final.exists():
                os.replace(self.final, old)
            os.replace(self.path, self.final)
            if old.exists():
                shutil.rmtree(old, ignore_errors=True)
            (self.final / ".lock").touch()
