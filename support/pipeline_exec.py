"""Executing the pipeline's jobs (:mod:`support.pipeline_jobs`): a training stage or one notebook with papermill,
one at a time here or ``workers`` at a time in a process pool, each job after the jobs it waits for.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import List, Optional

from . import paths
from .data import data_config, load
from .kernels import describe_failure, kernel_env, kernel_manager_class
from .pipeline_jobs import PER_LOSS, Job, dependencies

def default_jobs() -> int:
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def kernel_threads(jobs: int) -> int:
    """CPU threads per kernel when ``jobs`` kernels share the machine."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def pretrain(job: Job) -> None:
    """Train a per-loss notebook's run in this process before its kernel starts (the kernel then reads it).

    A worker process keeps torch, torch._dynamo (imported by every optimizer, ~4 s) and scikit-learn
    imported from one run to the next, where each kernel would import them again: on 2 CPU cores this
    saves ~8 s per run. Same config as the notebook's (:func:`support.sweep.notebook_configs`), so the
    same run folder; a failure here is left to the notebook, which retries and shows the error.
    """
    from . import sweep

    p = job.parameters
    try:
        [config] = sweep.notebook_configs(p["profile"], p["data"], [p["loss"]], [p["seed"]])
        sweep.train_task(config, str(paths.runs_dir()), bool(p.get("force")))
        job.parameters = {**p, "force": False}  # spent here; the notebook must not retrain it again
    except Exception as exc:  # noqa: BLE001 - the notebook reports it with its traceback
        print(f"[run_all] {job.output.stem}: training before the notebook failed ({type(exc).__name__}: "
              f"{exc}); the notebook retries", flush=True)


def train_stage(job: Job) -> None:
    """Notebook 04's runs of one seed (every loss of the profile) trained in ONE ``train_many`` call.

    Members of one seed share their batches, so ``train_many`` steps them as one fused module
    (support.fused): on 2 CPU cores several times the images per second of one run at a time. The
    notebooks then find their runs finished and read them; a run that failed here is retried (and its
    error shown) by its notebook.
    """
    import torch

    from . import sweep, training

    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # the share of the cores this job was given
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    p = job.parameters
    configs = sweep.notebook_configs(p["profile"], p["data"], p["losses"], [p["seed"]])
    try:
        training.train_many(configs, runs_dir=paths.runs_dir(), force=bool(p.get("force")), progress=False)
    except Exception as exc:  # noqa: BLE001 - reported here; the notebooks retry the failed runs
        job.error = f"{type(exc).__name__}: {str(exc)[:300]}"


def execute(job: Job, kernel: str = "python3", env: Optional[dict] = None, timeout: Optional[float] = None) -> Job:
    """Run one notebook with papermill; a failure is recorded in ``job.error``, never raised.

    ``env``: the kernel's environment (default :func:`kernel_env`); ``timeout``: seconds a cell may run
    (papermill ``execution_timeout``; None: no limit). The kernel's output goes to ``job.log``.
    """
    if job.train:
        start = time.perf_counter()
        train_stage(job)
        job.seconds = time.perf_counter() - start
        return job
    import papermill as pm

    job.output.parent.mkdir(parents=True, exist_ok=True)
    job.log = job.output.parent / "logs" / f"{job.output.stem}.log"
    job.log.parent.mkdir(exist_ok=True)
    start = time.perf_counter()
    with open(job.log, "w") as log:
        if job.notebook.name.startswith(PER_LOSS) and "loss" in job.parameters:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                pretrain(job)
            log.flush()
        manager = kernel_manager_class(kernel_env() if env is None else env, log, job.notebook.parent)
        try:
            pm.execute_notebook(str(job.notebook), str(job.output), parameters=job.parameters, kernel_name=kernel,
                                progress_bar=False, log_output=False, execution_timeout=timeout,
                                kernel_manager_class=manager)
        except Exception as exc:  # noqa: BLE001 - report every notebook failure, keep going
            job.error = describe_failure(exc, job.output, timeout)
    job.seconds = time.perf_counter() - start
    return job


def prepare_data(profile: str, data_spec: str, force: bool) -> None:
    """Generate (or find cached) the profile's data once, before notebooks that all read it start at once."""
    data_cfg = data_config(profile, data_spec)
    start = time.perf_counter()
    try:
        bundle = load(**data_cfg, force=force, verbose=False)
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback; no notebook started yet
        raise SystemExit(f"[run_all] --data {data_spec}: could not load it: {type(exc).__name__}: {exc}") from None
    print(f"[run_all] data ready in {time.perf_counter() - start:.0f}s: {bundle.source}", flush=True)


def _init_worker(env: dict) -> None:
    """A pool worker (a child process of its own) takes the kernels' thread count and wait switch, so
    that the training it does before a per-loss notebook shares the cores the same way."""
    # The thread counts first: torch reads OMP_NUM_THREADS once, when it is imported, and importing
    # support.training imports torch (a worker that imported it first ran 2 threads per job on 2 cores:
    # the two training stages oversubscribed the cores and trained 3.5x slower).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if var in env:
            os.environ[var] = env[var]
    import torch  # and in case the worker's imports (of this module, by the spawn) already loaded torch:

    if "OMP_NUM_THREADS" in env:
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    from .training import WAIT_ENV

    if WAIT_ENV in env:
        os.environ[WAIT_ENV] = env[WAIT_ENV]


def run_jobs(jobs: List[Job], workers: int, fail_fast: bool, report, timeout: Optional[float] = None) -> List[Job]:
    """Execute ``jobs`` (each after its :func:`dependencies`), ``workers`` at a time; ``report(job)`` after each.

    One worker: in this process, in plan order. More: a pool of processes, each kernel with
    :func:`kernel_threads` threads (unless OMP_NUM_THREADS is set). A job whose dependency failed
    still runs (it reports what it lacks); ``fail_fast`` starts nothing after the first failure.
    ``timeout``: seconds a notebook cell may run (None: no limit).
    """
    if workers <= 1:
        done = []
        env = kernel_env()
        for job in jobs:
            done.append(execute(job, env=env, timeout=timeout))
            report(job)
            if job.error and fail_fast:
                break
        return done
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # two notebooks asking for one run: the second waits, then reads it
    env = kernel_env(kernel_threads(workers), wait_for_runs=True)
    needs = dependencies(jobs)
    pending, running, finished, done = list(range(len(jobs))), {}, set(), []
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(env,)) as pool:
        while pending or running:
            stop = fail_fast and any(j.error for j in done)
            ready = [] if stop else [i for i in pending if needs[i] <= finished]
            for i in ready[:workers - len(running)]:
                pending.remove(i)
                running[pool.submit(execute, jobs[i], "python3", env, timeout)] = i
            if not running:
                break
            complete, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in complete:
                i = running.pop(fut)
                try:
                    jobs[i] = fut.result()
                except Exception as exc:  # noqa: BLE001 - a dead worker fails its notebook, not the run
                    jobs[i].error = f"{type(exc).__name__}: {exc}"
                finished.add(i)
                done.append(jobs[i])
                report(jobs[i])
    return done
