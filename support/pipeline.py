"""``python -m support.pipeline``: what ``./run_all.sh`` runs after bootstrapping.

Executes the numbered notebooks in order with papermill (executed copies under
``runs/notebooks/``), ``04_train_one_loss`` once per loss (its first seed). Before those, one
training stage per seed trains that seed's runs of every loss together (:func:`train_stage`:
``train_many``, fused); each notebook 04 then reads its run from its folder, and 05-09 read every
seed's runs (a kernel per (loss, seed) would cost ~7 s each and show nothing new). A failing notebook does not stop the others: one summary at the end
names each failure and its executed copy, and the exit code is non-zero.

``--jobs N`` executes up to N notebooks at once (default: 2 on a machine with
two or more cores), each kernel with cores/N threads: on 2 CPU cores two
one-thread kernels do more work than one two-thread kernel (torch's small
convolutions scale poorly across threads and every kernel spends seconds in
start-up and imports). A notebook starts once the notebooks it reads from
have finished (:data:`NEEDS`); the default data is generated once, before any
notebook starts.

A lock file (``runs/.run_all.lock``) stops two pipelines from writing the same
runs folder at once: the second exits at once with a message (or waits, with
``--wait``).

The console shows one line per notebook (status, seconds). Each kernel's own
output (its log lines, warnings, tracebacks) and the output of the training
done before a per-loss notebook go to ``runs/notebooks/logs/<notebook>.log``,
which the summary names. A cell that runs longer than the profile's
``execution_timeout`` (``--timeout``) fails its notebook. The kernels get
their environment (``PYTHONPATH``, thread counts) passed explicitly: this
process's own environment is never changed.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import filelock

from . import paths, profiles
from .data import data_config, load, parse_data_spec
from .kernels import describe_failure, kernel_env, kernel_manager_class

NOTEBOOKS_DIR = paths.PROJECT_ROOT / "notebooks"
PER_LOSS = "04"
#: What each notebook reads from others (by number); "*" = every other notebook of the plan. A notebook
#: not listed reads only the data. 05 crops with 02's segmentation models; 06, 07, 09 and 10 read 04's runs;
#: 06 and 07 may train the same model-level ensemble at once: the second waits for the first (run_lock).
NEEDS = {"05": {"02", "04"}, "06": {"04"}, "07": {"04"}, "09": {"*"}, "10": {"04"}}


@dataclass
class Job:
    notebook: Path
    output: Path
    parameters: dict = field(default_factory=dict)
    error: Optional[str] = None
    seconds: float = 0.0
    log: Optional[Path] = None  # the kernel's stdout/stderr and the pre-training output
    train: bool = False  # a training stage (notebook 04's runs of one seed, fused), not a notebook


def notebooks(only: Optional[List[str]] = None) -> List[Path]:
    """The numbered notebooks, optionally restricted to numbers in ``only`` (e.g. ["01", "04"])."""
    found = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        numbers = {p.name[:2] for p in found}
        unknown = sorted(set(only) - numbers)
        if unknown:
            raise SystemExit(f"--only: no notebook numbered {', '.join(unknown)}; "
                             f"available: {', '.join(sorted(numbers))}")
        found = [p for p in found if p.name[:2] in only]
    return found


def declared(notebook: Path) -> set:
    """The names a notebook's ``parameters`` cell defines (papermill's own parser); empty without one."""
    import papermill as pm

    return set(pm.inspect_notebook(str(notebook)))


def plan(profile: str, data: str, force: bool, only=None, losses=None, seeds=None, lung_masks: str = "") -> List[Job]:
    """The papermill jobs for a profile, in order; each notebook gets only the parameters it declares.

    ``lung_masks`` (``--lung-masks``, e.g. ``lungmasks:/data/Montgomery``): the mask set the lung U-Nets
    learn from, passed as ``seg_data`` to the notebooks that declare it (02 and 05, which then crop the films).
    """
    p = profiles.get(profile)
    out_dir = paths.executed_notebooks_dir()
    common = {"profile": profile, "data": data, "force": force, **({"seg_data": lung_masks} if lung_masks else {})}
    jobs = []
    for nb in notebooks(only):
        names = declared(nb)
        mine = {k: v for k, v in common.items() if k in names}
        if nb.name.startswith(PER_LOSS):
            all_seeds = list(seeds or p["seeds"])
            for seed in all_seeds:
                names = list(losses or p["losses"])
                stage = paths.inside(out_dir, f"{nb.stem}__train__seed{seed}")  # writes run folders only
                jobs.append(Job(nb, stage, {**common, "losses": names, "seed": int(seed)}, train=True))
                if seed != all_seeds[0]:  # 04 shows one run per loss (the first seed); 05-09 read every seed's
                    continue
                for loss in names:  # force is spent by the training stage; the notebook reads its run
                    out = paths.inside(out_dir, f"{nb.stem}__{loss}__seed{seed}.ipynb")  # a loss is no path
                    spent = {"force": False} if "force" in mine else {}
                    jobs.append(Job(nb, out, {**mine, **spent, "loss": loss, "seed": int(seed)}))
        else:
            jobs.append(Job(nb, out_dir / nb.name, mine))
    # The training stages first: they are the longest work and 05, 06, 07 and 09 wait for them. A notebook that
    # reads every other one (09, the report) last, whatever its number (10 runs before it).
    last = [j for j in jobs if not j.train and "*" in NEEDS.get(j.notebook.name[:2], set())]
    return [j for j in jobs if j.train] + [j for j in jobs if not j.train and j not in last] + last


def dependencies(jobs: List[Job]) -> List[set]:
    """For each job, the indices of the jobs it waits for (see :data:`NEEDS`).

    A per-loss notebook waits for its seed's training stage (which trains every loss of that seed fused).
    """
    numbers = [j.notebook.name[:2] for j in jobs]
    out = []
    for i, n in enumerate(numbers):
        need = NEEDS.get(n, set())
        deps = {k for k, m in enumerate(numbers) if k != i and m != n and ("*" in need or m in need)}
        if n == PER_LOSS and not jobs[i].train:
            deps |= {k for k, j in enumerate(jobs) if j.train and j.parameters["seed"] == jobs[i].parameters["seed"]}
        out.append(deps)
    return out


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


def prepare_data(profile: str, data: str, force: bool) -> None:
    """Generate (or find cached) the profile's data once, before notebooks that all read it start at once."""
    config = data_config(profile, data)
    start = time.perf_counter()
    try:
        bundle = load(**config, force=force, verbose=False)
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback; no notebook started yet
        raise SystemExit(f"[run_all] --data {data}: could not load it: {type(exc).__name__}: {exc}") from None
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


def acquire_lock(wait: bool) -> filelock.FileLock:
    """Hold ``runs/.run_all.lock`` until ``release()`` (or the process ends); who holds it is in
    ``runs/.run_all.holder``."""
    root = paths.runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    lock, holder_file = filelock.FileLock(root / ".run_all.lock", preserve_lock_file=True), root / ".run_all.holder"
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        holder = (holder_file.read_text().strip() if holder_file.exists() else "") or "another process"
        if not wait:
            raise SystemExit(
                f"another ./run_all.sh is already running on {root} ({holder}). Wait for it to finish, "
                "or pass --wait to queue behind it, or set LOSSBENCH_RUNS_DIR to use another folder."
            ) from None
        print(f"[run_all] another ./run_all.sh is running on {root} ({holder}); waiting for it to finish "
              "(--wait)", flush=True)
        lock.acquire()
    holder_file.write_text(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    return lock


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="run_all.sh", description="Run the lossbench-cxr notebooks in order.")
    ap.add_argument("--profile", default="quick", choices=profiles.names(), help="parameter profile (default quick)")
    ap.add_argument("--data", default="phantom", help="data source, e.g. phantom or kermany:/path/to/chest_xray")
    ap.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 01,04,05")
    ap.add_argument("--losses", default="", help="comma-separated losses for notebook 04 (default: the profile's)")
    ap.add_argument("--seeds", default="", help="comma-separated seeds for notebook 04 (default: the profile's)")
    ap.add_argument("--force", action="store_true", help="ignore caches and finished runs; recompute everything")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first failing notebook")
    ap.add_argument("--jobs", type=int, default=default_jobs(), help="notebooks executed at once, each with "
                    "cores/jobs threads (default: 2 on >= 2 cores, else 1)")
    ap.add_argument("--wait", action="store_true", help="wait for another running pipeline instead of exiting")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="seconds one notebook cell may "
                    "run before its notebook fails (default: the profile's execution_timeout; 0: no limit)")
    ap.add_argument("--lung-masks", default="", metavar="SOURCE", help="lung masks the U-Nets of notebooks 02 "
                    "and 05 learn from, e.g. lungmasks:/data/Montgomery; the films of --data are then lung-cropped")
    ap.add_argument("--ray", default="", metavar="ADDRESS", help="train notebook 04's runs on the Ray cluster at "
                    "ADDRESS first (e.g. auto); the notebooks then read the finished run folders")
    return ap.parse_args(argv)


def _csv(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def check_args(args) -> None:
    """Reject a bad --data, --losses or --seeds before any notebook starts (one clear message)."""
    from . import losses
    from .data.core import resolve_params

    try:
        data = data_config(args.profile, args.data)
        resolve_params(data.pop("name"), data)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"--data {args.data}: {exc}") from None
    for key in ("root", "path"):
        if key in data and not Path(data[key]).expanduser().exists():
            raise SystemExit(f"--data {args.data}: {data[key]} does not exist; pass an existing local "
                             "folder or file (nothing is downloaded)")
    if args.lung_masks:
        try:
            masks = data_config(args.profile, args.lung_masks)
            resolve_params(masks.pop("name"), masks)
        except (ValueError, TypeError) as exc:
            raise SystemExit(f"--lung-masks {args.lung_masks}: {exc}") from None
        where = masks.get("root") or masks.get("path")
        if not where or not Path(where).expanduser().exists():
            raise SystemExit(f"--lung-masks {args.lung_masks}: give an existing local mask folder, e.g. "
                             "--lung-masks lungmasks:/data/Montgomery (CXR_png/ and ManualMask/ inside)")
    valid = losses.names("classification")
    unknown = [x for x in _csv(args.losses) if x not in valid]
    if unknown:
        raise SystemExit(f"--losses: unknown classification loss(es) {unknown}; valid: {', '.join(valid)}")
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: must be >= 1 (notebooks executed at once)")
    if args.timeout is not None and args.timeout < 0:
        raise SystemExit(f"--timeout {args.timeout:g}: must be >= 0 seconds (0: no limit)")
    bad = [x for x in _csv(args.seeds) if not x.lstrip("-").isdigit()]
    if bad:
        raise SystemExit(f"--seeds: {bad} not integer(s); use comma-separated integers, e.g. --seeds 0,1")


def ray_sweep(args, jobs: List[Job], seeds, dry_run: bool = False) -> None:
    """``--ray ADDRESS``: train notebook 04's runs with support.sweep on Ray before the notebooks run.

    The notebooks then find those run folders finished (same keys) and only read them; a run that
    failed on Ray is retried by its notebook here. ``--force`` is spent on the sweep, not repeated.
    """
    per_loss = [j for j in jobs if j.notebook.name.startswith(PER_LOSS)]
    if not args.ray or not per_loss:
        return
    from . import sweep

    configs = sweep.notebook_configs(args.profile, args.data, _csv(args.losses) or None, seeds)
    print(f"[run_all] --ray {args.ray}: {len(configs)} runs of {PER_LOSS} trained by support.sweep on Ray first")
    if dry_run:
        return
    try:
        sweep.run(configs, "ray", address=args.ray, force=args.force)
    except (ImportError, ConnectionError) as exc:
        raise SystemExit(f"--ray {args.ray}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the notebooks retry (and report) what failed on Ray
        print(f"[run_all] --ray: {exc}; notebook {PER_LOSS} retries those runs here")
    for j in per_loss:
        j.parameters["force"] = False
    jobs[:] = [j for j in jobs if not j.train]  # trained on Ray already


def main(argv=None) -> int:
    args = parse_args(argv)
    check_args(args)
    name, params = parse_data_spec(args.data)
    seeds = [int(s) for s in _csv(args.seeds)] or None
    jobs = plan(args.profile, args.data, args.force, only=_csv(args.only) or None,
                losses=_csv(args.losses) or None, seeds=seeds, lung_masks=args.lung_masks)
    if args.dry_run:
        for j in jobs:
            print(j.notebook.name, "(training stage)" if j.train else "", j.parameters)
        ray_sweep(args, jobs, seeds, dry_run=True)
        return 0
    lock = acquire_lock(args.wait)
    start = time.perf_counter()
    ray_sweep(args, jobs, seeds)

    workers = min(args.jobs, len(jobs)) or 1
    timeout = profiles.get(args.profile)["execution_timeout"] if args.timeout is None else args.timeout
    print(f"[run_all] profile={args.profile} data={args.data} ({name}) notebooks={len(jobs)} "
          f"jobs={workers} timeout={f'{timeout:g}s per cell' if timeout else 'none'} runs={paths.runs_dir()} "
          f"figures={paths.figures_dir()}", flush=True)
    prepare_data(args.profile, args.data, args.force)
    count = 0

    def report(job: Job) -> None:  # one line per notebook, as it ends
        nonlocal count
        count += 1
        status = "ok" if not job.error else f"FAILED: {job.error}"
        print(f"[run_all] {count}/{len(jobs)} {job.output.stem}: {status} ({job.seconds:.0f} s)", flush=True)

    done = run_jobs(jobs, workers, args.fail_fast, report, timeout=timeout or None)
    lock.release()
    failed = [j for j in done if j.error]
    total = time.perf_counter() - start
    notebook_runs = [j for j in done if not j.train]
    print("\n========== run_all summary ==========")
    print(f"{len(notebook_runs) - len([j for j in failed if not j.train])} notebook runs succeeded, "
          f"{len([j for j in failed if not j.train])} failed, {total / 60:.1f} min")
    for j in failed:
        if j.train:
            print(f"  FAILED training stage {j.output.name}: {j.error} (its notebooks retried the runs)")
            continue
        print(f"  FAILED {j.notebook.name} {j.parameters}: {j.error}\n         executed copy: {j.output}"
              f"\n         kernel log:    {j.log}")
    print(f"Executed notebooks: {paths.executed_notebooks_dir()}")
    print(f"Kernel logs:        {paths.executed_notebooks_dir() / 'logs'}")
    print(f"Run folders:        {paths.runs_dir()}")
    print(f"Report tables:      {paths.report_dir()}")
    print(f"Figures:            {paths.figures_dir()}")
    print_what_ran_on_what(args, jobs, failed)
    return 1 if failed else 0


def print_what_ran_on_what(args, jobs: List[Job], failed: List[Job]) -> None:
    """The summary's last block: per study, the data it used and what it skipped (:mod:`support.provenance`)."""
    from .provenance import mask_note, what_ran_on_what

    studies = {j.notebook.name[:2] for j in jobs}
    broken = {j.notebook.name[:2] for j in failed}
    print("What ran on what:")
    for line in what_ran_on_what(args.profile, args.data, args.lung_masks, studies,
                                 missing_masks=mask_note(args.profile, args.data) if "07" in studies else ""):
        print(line + ("  [FAILED: see above]" if line.split()[0] in broken else ""))


if __name__ == "__main__":
    sys.exit(main())
