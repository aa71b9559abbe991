"""Ray backend of :mod:`support.sweep`: one Ray task per training config.

Imported only when ``backend="ray"`` is used, so Ray stays an optional extra
(``pip install -e .[cluster]``). Scheduling, placement on GPUs and retries are
Ray's: each config is a task with ``num_gpus``/``num_cpus`` resources and
``max_retries`` (Ray re-runs a task whose worker process or node died; an
exception raised by the training itself is not retried, it is reported).

Where the run folders go:
- ``shared_fs=True`` (NFS, Lustre, one machine): the task trains straight into
  the driver's ``runs_dir`` (the same absolute path on every node) and
  ``LOSSBENCH_DATA_DIR``/``LOSSBENCH_FIGURES_DIR`` are passed to the workers.
  A retried task resumes from the epoch checkpoint its killed attempt left.
- ``shared_fs=False``: the task trains into a temporary folder on its node and
  returns the finished run folder as bytes (a tar archive, a few MB; through
  Ray's object store); the driver writes it into ``runs_dir`` atomically.
  Each node builds or reads its own data cache.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, List, Optional

from tqdm.auto import tqdm

from . import training
from .sweep import PATH_VARS, pack_run, train_task, unpack_run
from .training import TrainConfig

INSTALL_HINT = ("the ray backend needs Ray: pip install -e '.[cluster]' (or pip install 'ray>=2.9,<3'), "
                "or use backend='local'")


def import_ray():
    """``import ray`` with an error that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    return ray


def ray_task(config: TrainConfig, runs_dir: Optional[str], force: bool,
             worker_hook: Optional[Callable[[TrainConfig], None]] = None, threads: int = 1):
    """Body of one Ray task: (run key, packed run folder or None when written to the shared ``runs_dir``)."""
    if runs_dir is not None:
        return train_task(config, runs_dir, force, worker_hook, threads), None
    with tempfile.TemporaryDirectory(prefix="lossbench-run-") as tmp:
        key = train_task(config, tmp, False, worker_hook, threads)
        return key, pack_run(training.run_dir_for(config, tmp))


def task_runtime_env(shared_fs: bool, runtime_env: Optional[dict]) -> Optional[dict]:
    """The user's runtime_env plus, on a shared file system, the driver's folder variables."""
    env = dict(runtime_env or {})
    if shared_fs:
        moved = {v: os.environ[v] for v in PATH_VARS if os.environ.get(v)}
        if moved:
            env["env_vars"] = {**moved, **env.get("env_vars", {})}
    return env or None


def run_ray(todo: List[TrainConfig], root: Path, *, force: bool = False, progress: bool = True,
            address: Optional[str] = None, num_gpus: Optional[float] = None, num_cpus: Optional[int] = None,
            max_retries: int = 3, shared_fs: bool = True, runtime_env: Optional[dict] = None,
            worker_hook=None) -> None:
    """Train ``todo`` as Ray tasks; connects with ``ray.init(address)`` unless Ray is already initialised."""
    ray = import_ray()
    if not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries={max_retries!r} must be an int >= 0 (retries after a worker dies)")
    num_cpus = num_cpus or 1
    owned = not ray.is_initialized()
    if owned:
        kwargs = {"include_dashboard": False} if address is None else {}
        try:
            ray.init(address=address, log_to_driver=progress, **kwargs)
        except ConnectionError as exc:
            raise ConnectionError(f"cannot reach a Ray cluster at address={address!r} ({exc}); start one with "
                                  "`ray start --head` and pass its address (or 'auto' on a node of it), "
                                  "or leave address empty for a local Ray instance") from None
        except Exception as exc:  # noqa: BLE001 - Ray reports a failed local start as a bare Exception
            if address is not None:
                raise
            ray.shutdown()
            raise RuntimeError(f"Ray could not start a local instance ({exc}). On a busy machine its helper "
                               "processes can miss Ray's start-up deadline: retry, or start Ray once with "
                               "`ray start --head` and pass address='auto' (--address auto)") from exc
    try:
        if num_gpus is None:
            num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        options = {"num_gpus": num_gpus, "num_cpus": num_cpus, "max_retries": max_retries,
                   "retry_exceptions": False}
        env = task_runtime_env(shared_fs, runtime_env)
        if env:
            options["runtime_env"] = env
        task = ray.remote(ray_task).options(**options)
        target = str(root) if shared_fs else None
        pending = {task.remote(c, target, force, worker_hook, int(num_cpus)): c for c in todo}
        bar = tqdm(total=len(todo), desc=f"sweep (ray, {num_gpus:g} GPU/run)", unit="run", disable=not progress)
        errors = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            c = pending.pop(ref)
            try:
                key, packed = ray.get(ref)
                if packed is not None:
                    unpack_run(packed, training.run_dir_for(c, root))
            except (ray.exceptions.RayError, training.TrainingError, ValueError) as exc:
                what = str(exc).strip().splitlines()
                errors.append(f"{c.loss} seed {c.seed} ({c.key()}): {type(exc).__name__}: "
                              f"{what[-1][:300] if what else ''}")
            bar.update()
        bar.close()
    finally:
        if owned:
            ray.shutdown()
    if errors:
        raise training.TrainingError(f"{len(errors)} of {len(todo)} Ray runs failed (after up to {max_retries} "
                                     "retries when a worker died): " + "; ".join(errors))
