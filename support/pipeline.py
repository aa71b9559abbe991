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

The job plan lives in :mod:`support.pipeline_jobs`, its execution in :mod:`support.pipeline_exec`; this module
is the command line (arguments, checks, lock, summary) and re-exports their names.

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
import os
import sys
import time
from pathlib import Path
from typing import List

import filelock

from . import paths, profiles
from .data import data_config, parse_data_spec
from .kernels import describe_failure, kernel_env, kernel_manager_class  # noqa: F401  (re-exported)
from .pipeline_exec import (_init_worker, default_jobs, execute, kernel_threads, prepare_data,  # noqa: F401
                            pretrain, run_jobs, train_stage)
from .pipeline_jobs import NEEDS, NOTEBOOKS_DIR, PER_LOSS, Job, declared, dependencies, notebooks, plan  # noqa: F401


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
                losses=_csv(args.losses) or None, seeds=seeds, lung_masks=args.lung_masks, folder=NOTEBOOKS_DIR)
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
