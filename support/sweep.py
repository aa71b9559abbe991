"""Run a grid of trainings (loss x seed x data x ...) here or on a Ray cluster.

The unit of work is :func:`support.training.train_one`: one config, one run
folder ``runs/<key>/``. A sweep expands a grid into configs, drops the ones
whose run folder is already finished (same key = same experiment) and hands
the rest to a backend:

``local``  sequential in this process (``workers=1``, the default), or a
           process pool of ``workers`` processes, each pinned to one GPU
           through ``CUDA_VISIBLE_DEVICES`` (CPU-only machines: the cores are
           split between the workers);
``ray``    one Ray task per config (``ray.init(address=...)``) with
           ``num_gpus`` per task and ``max_retries`` retries when a worker
           process or node dies. With a shared file system (``shared_fs=True``)
           workers write the run folders straight into ``runs_dir``; without one
           they train into a local temporary folder and return it as bytes,
           which this process (the driver) unpacks into ``runs_dir``.

Ray is an optional extra (``pip install -e .[cluster]``), imported only when the
ray backend runs. The notebooks are unchanged: they call ``train_one`` with the
same configs and find the finished folders.

A grid (a YAML/JSON file or a dict)::

    profile: quick          # start from a profile's train/data settings (optional)
    data: phantom           # a --data spec or a support.data.load dict (default: the profile's)
    base:                   # TrainConfig fields shared by every run
      max_epochs: 8
    grid:                   # every combination of these lists (a scalar = one value)
      loss: [cce, focal, cal_cce]
      seed: [0, 1]

With a profile and no ``loss``/``seed`` in the grid, the profile's losses and
seeds are used, so ``{"profile": "quick"}`` is notebook 04's whole grid.
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

from tqdm.auto import tqdm

from . import logs, paths, training
from .sweep_grid import (CONFIG_FIELDS, GRID_KEYS, TINY_GRID, _data_dict, _unknown, expand,  # noqa: F401 (re-exported)
                         load_grid, notebook_configs, split_finished)
from .training import TrainConfig

log = logs.get("sweep")

#: Registry of backends (one source of truth for the CLI choices and error messages).
BACKENDS = ("local", "ray")
#: Environment variables that move the project folders; passed on to Ray workers on a shared file system.
PATH_VARS = ("LOSSBENCH_DATA_DIR", "LOSSBENCH_FIGURES_DIR")


@dataclass
class SweepResult:
    """What a sweep did: run folders in the order of the configs, and which were trained or skipped."""

    run_dirs: List[Path]
    trained: List[str] = field(default_factory=list)  # run keys trained by this call
    skipped: List[str] = field(default_factory=list)  # run keys already finished before this call
    seconds: float = 0.0
    backend: str = "local"

    def __repr__(self):
        return (f"SweepResult({len(self.run_dirs)} runs: {len(self.trained)} trained, {len(self.skipped)} "
                f"already finished; {self.seconds:.1f}s on {self.backend})")


# ----------------------------------------------------------------------------- entry point
def run(grid: Union[dict, str, os.PathLike, Sequence[TrainConfig]], backend: str = "local", *,
        runs_dir=None, force: bool = False, progress: bool = True, workers: int = 1,
        gpus: Optional[Sequence[int]] = None, address: Optional[str] = None, num_gpus: Optional[float] = None,
        num_cpus: Optional[int] = None, max_retries: int = 3, shared_fs: bool = True,
        runtime_env: Optional[dict] = None, worker_hook: Optional[Callable[[TrainConfig], None]] = None) -> SweepResult:
    """Train every config of ``grid`` that is not finished yet; return a :class:`SweepResult`.

    ``grid``: a grid dict, a YAML/JSON path, or a list of ``TrainConfig``.
    ``force``: retrain finished runs too (each is replaced only once its new run finished).
    ``num_cpus``: CPU threads per run (on Ray also the CPUs each task reserves); default: torch's own
    setting when sequential, the cores divided among the pool's workers, 1 on Ray. On the CPU a run's
    numbers depend on its thread count (summation order), so give the same ``num_cpus`` to compare backends.
    local: ``workers`` processes (1 = sequential here); ``gpus`` the GPU ids to pin them to
    (default: every visible GPU, one worker each when ``workers`` is not given above 1).
    ray: ``address`` of the cluster (``"auto"``, ``"ray://host:10001"``, None = start a local one),
    ``num_gpus`` per task (None = 1 if the cluster has GPUs else 0),
    ``max_retries`` when a worker dies, ``shared_fs`` (see the module doc), ``runtime_env`` merged
    into Ray's. ``worker_hook(config)`` runs in the worker right before each training.
    """
    if backend not in BACKENDS:
        raise _unknown("backend", [backend], BACKENDS)
    if num_cpus is not None and (not isinstance(num_cpus, int) or isinstance(num_cpus, bool) or num_cpus < 1):
        raise ValueError(f"num_cpus={num_cpus!r} must be an int >= 1 (CPU threads per run) or None")
    configs = list(grid) if isinstance(grid, (list, tuple)) else expand(grid)
    bad = [type(c).__name__ for c in configs if not isinstance(c, TrainConfig)]
    if bad:
        raise TypeError(f"run() takes a grid or a list of TrainConfig, got {bad[0]} items")
    root = (Path(runs_dir) if runs_dir else paths.runs_dir()).resolve()
    todo, done = (list({c.key(): c for c in configs}.values()), []) if force else split_finished(configs, root)
    start = time.perf_counter()
    if progress:
        log.info(f"{len(configs)} configs: {len(done)} already finished, {len(todo)} to train "
              f"on {backend} -> {root}")
    if todo:
        if backend == "local":
            _run_local(todo, root, force, progress, workers, gpus, worker_hook, num_cpus)
        else:
            from . import sweep_ray  # cycle allowed (tests/test_imports.py): the optional Ray backend, on demand

            sweep_ray.run_ray(todo, root, force=force, progress=progress, address=address, num_gpus=num_gpus,
                              num_cpus=num_cpus, max_retries=max_retries, shared_fs=shared_fs,
                              runtime_env=runtime_env, worker_hook=worker_hook)
    return SweepResult([training.run_dir_for(c, root) for c in configs], [c.key() for c in todo],
                       [c.key() for c in done], time.perf_counter() - start, backend)


# ----------------------------------------------------------------------------- local backend
def train_task(config: TrainConfig, runs_dir: str, force: bool,
               worker_hook: Optional[Callable[[TrainConfig], None]] = None, threads: Optional[int] = None) -> str:
    """One training (here, in a pool worker or in a Ray task) with ``threads`` torch threads; returns the run key."""
    import torch

    if worker_hook is not None:
        worker_hook(config)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        training.train_one(config, runs_dir=runs_dir, force=force, progress=False)
    finally:
        torch.set_num_threads(before)
    return config.key()


def _init_local_worker(slots) -> None:
    """Pool initialiser: take one GPU id (or none) from ``slots`` before torch touches CUDA."""
    gpu = slots.get()
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else str(gpu)


def _run_local(todo, root: Path, force: bool, progress: bool, workers: int, gpus, worker_hook,
               num_cpus: Optional[int] = None) -> None:
    import multiprocessing as mp

    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers={workers!r} must be an int >= 1 (1 = sequential in this process)")
    if gpus is None and workers > 1:
        import torch

        gpus = list(range(torch.cuda.device_count()))
    bar = tqdm(total=len(todo), desc="sweep (local)", unit="run", disable=not progress)
    if workers == 1:
        for c in todo:
            bar.set_postfix_str(f"{c.loss} seed {c.seed}")
            train_task(c, str(root), force, worker_hook, num_cpus)
            bar.update()
        bar.close()
        return
    if gpus and len(gpus) < workers:
        raise ValueError(f"workers={workers} but only {len(gpus)} GPU(s) {list(gpus)}: one GPU per worker; "
                         f"use workers<={len(gpus)} or gpus=[...] with more ids")
    ctx = mp.get_context("spawn")  # never fork a process that may hold a CUDA context
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(gpus[i] if gpus else None)
    threads = num_cpus or max(1, (os.cpu_count() or 1) // workers)
    errors = []
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_local_worker, initargs=(slots,)) as pool:
        futures = {pool.submit(train_task, c, str(root), force, worker_hook, threads): c for c in todo}
        for fut in as_completed(futures):
            c = futures[fut]
            try:
                fut.result()
            except Exception as exc:  # noqa: BLE001 - one failed run must not hide the others
                errors.append(f"{c.loss} seed {c.seed} ({c.key()}): {type(exc).__name__}: {exc}")
            bar.update()
    bar.close()
    if errors:
        raise training.TrainingError(f"{len(errors)} of {len(todo)} runs failed: " + "; ".join(errors))


# ----------------------------------------------------------------------------- run folders as bytes
def pack_run(run_dir: Path) -> bytes:
    """A finished run folder as a tar archive (no lock file)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(Path(run_dir).iterdir()):
            if f.is_file() and not f.name.startswith("."):
                tar.add(f, arcname=f.name)
    return buf.getvalue()


def unpack_run(data: bytes, run_dir: Path) -> Path:
    """Write a packed run folder to ``run_dir`` atomically (a staging folder renamed in place)."""
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".unpack-{run_dir.name}-", dir=run_dir.parent))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        members = tar.getmembers()
        bad = [m.name for m in members if not m.isfile() or "/" in m.name or m.name.startswith(".")]
        if bad:
            shutil.rmtree(staging)
            raise ValueError(f"packed run for {run_dir.name} holds unexpected entries {bad}; refusing to unpack")
        # filter="data" (Python >= 3.12, 3.11.4, 3.10.12): no links, devices or paths outside staging
        # on top of the check above; the default of 3.14. Older Pythons rely on that check alone.
        tar.extractall(staging, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    if not (staging / "metrics.json").exists():
        shutil.rmtree(staging)
        raise training.TrainingError(f"packed run for {run_dir.name} has no metrics.json (unfinished); not written")
    old = None
    if run_dir.exists():
        old = run_dir.parent / f".old-{run_dir.name}-{os.getpid()}"
        os.replace(run_dir, old)
    os.replace(staging, run_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return run_dir


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    """``python -m support.sweep GRID [--backend local|ray] [--address auto] ...``"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m support.sweep", description=__doc__.split("\n\n")[0],
                                 epilog="Grid format: see the docstring of support/sweep.py and the README.")
    ap.add_argument("grid", help="grid file (.yaml/.yml/.json)")
    ap.add_argument("--backend", default="local", choices=BACKENDS, help="where the runs train (default local)")
    ap.add_argument("--workers", type=int, default=1, help="local: parallel worker processes (default 1)")
    ap.add_argument("--gpus", default="", help="local: comma-separated GPU ids, one per worker (default: all)")
    ap.add_argument("--address", default=None, help="ray: cluster address, e.g. auto or ray://head:10001 "
                    "(default: start a local Ray instance)")
    ap.add_argument("--num-gpus", type=float, default=None, help="ray: GPUs per run (default 1 if the "
                    "cluster has GPUs, else 0)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPU threads per run (ray: also the CPUs a task "
                    "reserves); default: all cores sequentially, cores/workers in a pool, 1 on Ray")
    ap.add_argument("--max-retries", type=int, default=3, help="ray: retries when a worker dies (default 3)")
    ap.add_argument("--no-shared-fs", action="store_true", help="ray: workers return run folders as bytes "
                    "and this process writes them (no shared file system)")
    ap.add_argument("--runs-dir", default=None, help="run folders (default runs/ or $LOSSBENCH_RUNS_DIR)")
    ap.add_argument("--force", action="store_true", help="retrain finished runs too")
    ap.add_argument("--dry-run", action="store_true", help="list the configs and whether each is finished")
    args = ap.parse_args(argv)
    try:
        configs = expand(args.grid)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise SystemExit(f"{args.grid}: {exc}") from None
    if args.dry_run:
        todo, _ = split_finished(configs, args.runs_dir)
        pending = {c.key() for c in todo}
        for c in configs:
            state = "to train" if c.key() in pending or args.force else "finished"
            log.info(f"{c.key()}  {state:9s} loss={c.loss} seed={c.seed} arch={c.arch} data={c.data}")
        return 0
    gpus = [int(g) for g in args.gpus.split(",") if g.strip()] or None
    result = run(configs, args.backend, runs_dir=args.runs_dir, force=args.force, workers=args.workers,
                 gpus=gpus, address=args.address, num_gpus=args.num_gpus, num_cpus=args.num_cpus,
                 max_retries=args.max_retries, shared_fs=not args.no_shared_fs)
    log.info(repr(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
