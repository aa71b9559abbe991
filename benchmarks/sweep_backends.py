"""Wall time of the 4-config tiny grid (support.sweep.TINY_GRID) on each sweep backend (issue 12).

Backends: ``local`` sequential (this process), ``local`` with a 2-process pool, and ``ray`` on a local
Ray instance (``ray.init(num_cpus=2)``: one task per run, 1 CPU each). Each backend trains the same 4
runs into its own fresh runs folder from one pre-built data cache, so only training and scheduling are
timed; Ray's start-up is timed apart. Then the same grid is run again on each backend (everything
finished: nothing trains) and the runs of every backend are checked against the sequential ones.

    .venv/bin/python benchmarks/sweep_backends.py            # writes benchmarks/sweep_backends.md
    .venv/bin/python benchmarks/sweep_backends.py --repeats 3
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file; `support` lives at the repository root
    sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # Ray puts the driver's working folder on the workers' import path


def same_results(a: Path, b: Path) -> bool:
    import numpy as np

    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    pa, pb = np.load(a / "predictions.npz"), np.load(b / "predictions.npz")
    return (all(abs(ma["test"][k] - mb["test"][k]) < 1e-6 for k in ("accuracy", "mcc"))
            and bool(np.allclose(pa["test_probs"], pb["test_probs"], atol=1e-4)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats per backend (fresh runs folder each)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "sweep_backends.md"))
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    os.environ["LOSSBENCH_DATA_DIR"] = str(work / "data")  # set before Ray starts: workers inherit it
    os.environ["LOSSBENCH_FIGURES_DIR"] = str(work / "figures")
    import ray
    import torch

    from support import sweep
    from support.data import load

    GRID = sweep.TINY_GRID
    load(**GRID["data"], verbose=False)  # the data cache is built once, outside the timings
    cases = {"local, sequential, torch's default threads": {"backend": "local"},
             "local, sequential, 1 thread per run": {"backend": "local", "num_cpus": 1},
             "local, 2-process pool, 1 thread each": {"backend": "local", "workers": 2, "num_cpus": 1},
             "ray, local instance (2 CPUs), 1 CPU per task": {"backend": "ray", "num_cpus": 1}}
    reference_case = "local, sequential, 1 thread per run"
    rows, dirs, ray_start = [], {}, None
    for i, (name, kw) in enumerate(cases.items()):
        if kw["backend"] == "ray" and ray_start is None:
            for attempt in range(5):  # a busy machine can make Ray miss its 15 s start-up deadline
                t0 = time.perf_counter()
                try:
                    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                    break
                except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception
                    print(f"ray.init failed ({exc}); retrying", flush=True)
                    ray.shutdown()
            else:
                raise SystemExit("Ray could not start a local instance in 5 tries; retry on a quieter machine")
            ray_start = time.perf_counter() - t0
            ray_failed_starts = attempt
        times = []
        for r in range(args.repeats):
            runs = work / f"runs-{i}-{r}"
            res = sweep.run(GRID, runs_dir=runs, progress=False, **kw)
            assert len(res.trained) == 4, res
            times.append(res.seconds)
        again = sweep.run(GRID, runs_dir=runs, progress=False, **kw)
        assert again.trained == [], again
        dirs[name] = res.run_dirs
        rows.append((name, times, again.seconds))
        print(f"{name}: {', '.join(f'{t:.1f}' for t in times)} s; re-run {again.seconds:.2f} s", flush=True)
    ray.shutdown()
    reference = dirs[reference_case]

    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Sweep backends: wall time of the 4-config tiny grid",
        "",
        f"Produced by `benchmarks/sweep_backends.py` on {dt.date.today()}: {cpu}, no GPU, torch "
        f"{torch.__version__}, ray {ray.__version__}, Python {platform.python_version()}; load average "
        f"{load_avg} at the end (the machine was shared with other jobs, so the absolute numbers are noisy).",
        "",
        "Grid: `support.sweep.TINY_GRID` (phantom n=240 at 64², small_cnn width 8, 32² input, "
        f"2 epochs; cce/focal × seeds 0/1), {args.repeats} call(s) per backend, each into a fresh runs "
        "folder. Time = `SweepResult.seconds` (dispatch to the last finished run "
        f"folder); the data cache was built before. Ray's start-up (`ray.init(num_cpus=2)`) took "
        f"{ray_start:.1f} s (after {ray_failed_starts} failed tries) and is not included.",
        "",
        "| backend | 4 runs, first call (s) | 4 runs, later calls (s) | re-run, all finished (s) "
        "| same numbers as 1-thread sequential |",
        "|---|---|---|---|---|",
    ]
    for name, times, again in rows:
        later = ", ".join(f"{t:.1f}" for t in times[1:]) or "-"
        same = all(same_results(a, b) for a, b in zip(dirs[name], reference))
        lines.append(f"| {name} | {times[0]:.1f} | {later} | {again:.2f} | "
                     f"{'yes' if same else 'no (other thread count)'} |")
    best = min(rows, key=lambda r: statistics.median(r[1]))
    lines += [
        "",
        f"Fastest here (median): {best[0]}. A pool starts fresh worker processes on every call, each paying "
        "Python, torch and data start-up; Ray keeps its workers, so only its first call pays that (later calls "
        "= Ray's scheduling plus the training). These runs last seconds and the 2 cores were shared, so the "
        "parallel backends cannot pay off here; they are for GPUs and nodes (one run per GPU, many GPUs). A "
        "run's numbers depend on its torch thread count on the CPU, hence the last column. The re-run column is "
        "the cost of finding every run finished.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
