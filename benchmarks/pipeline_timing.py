"""Wall time of a finished ``./run_all.sh``, per notebook, from its executed copies.

The quick profile's target (issue 5): the whole ``./run_all.sh`` within 15 min on 2 CPU cores. Time
the command itself, from a cold start (no data cache, no runs), on a quiet machine::

    export LOSSBENCH_DATA_DIR=/tmp/t/data LOSSBENCH_RUNS_DIR=/tmp/t/runs LOSSBENCH_FIGURES_DIR=/tmp/t/figs
    /usr/bin/time -f "%e s wall %U s user" ./run_all.sh
    python benchmarks/pipeline_timing.py --runs /tmp/t/runs --wall 862.8 --user 1500.8 --note "2 cores, quiet"

This script reads papermill's start time and duration from every executed notebook under
``<runs>/notebooks/`` and writes ``results/pipeline_<profile>_<date>.json`` plus a Markdown timeline
(when each notebook started and how long it took, which shows the critical path of ``--jobs``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def timeline(runs: Path) -> list:
    """``[{notebook, start_s, seconds}]`` sorted by start, start relative to the first notebook."""
    rows = []
    for path in sorted((runs / "notebooks").glob("*.ipynb")):
        meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
        if meta.get("start_time") and meta.get("duration") is not None:
            rows.append({"notebook": path.stem, "start": dt.datetime.fromisoformat(meta["start_time"]),
                         "seconds": float(meta["duration"])})
    if not rows:
        raise SystemExit(f"no executed notebook with papermill timings under {runs / 'notebooks'}; run "
                         "./run_all.sh with LOSSBENCH_RUNS_DIR pointing there first")
    t0 = min(r["start"] for r in rows)
    out = [{"notebook": r["notebook"], "start_s": round((r["start"] - t0).total_seconds(), 1),
            "seconds": round(r["seconds"], 1)} for r in rows]
    return sorted(out, key=lambda r: r["start_s"])


def markdown(result: dict) -> str:
    rows = result["timeline"]
    per_loss = [r for r in rows if r["notebook"].startswith("04_")]
    lines = [f"### {result['profile']} profile, {result['date']} ({result['note']})", "",
             f"`./run_all.sh` wall time **{result['wall_s'] / 60:.1f} min** ({result['wall_s']:.0f} s, bootstrap check "
             f"included), {result['user_s']:.0f} CPU-s user, {result['cores']} cores, `--jobs` {result['jobs']}, "
             f"commit {result['commit']}. Notebook 04's runs are trained by per-seed training stages before "
             f"the first notebook starts (wall time minus the notebooks' span: "
             f"{result['wall_s'] - max(r['start_s'] + r['seconds'] for r in rows):.0f} s, bootstrap and data "
             f"included); the {len(per_loss)} notebook-04 kernels that then read one run each took "
             f"{min(r['seconds'] for r in per_loss):.0f}-{max(r['seconds'] for r in per_loss):.0f} s." if per_loss else "",
             "", "| notebook | started at (s) | took (s) |", "|---|---:|---:|"]
    for r in rows:
        if r["notebook"].startswith("04_") and r not in (per_loss[0], per_loss[-1]):
            continue
        lines.append(f"| {r['notebook']} | {r['start_s']:.0f} | {r['seconds']:.0f} |")
    if len(per_loss) > 2:
        lines.append(f"| (the other {len(per_loss) - 2} runs of 04 between these two) | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, type=Path, help="LOSSBENCH_RUNS_DIR of the finished run")
    ap.add_argument("--wall", required=True, type=float, help="wall seconds of ./run_all.sh (from time)")
    ap.add_argument("--user", type=float, default=float("nan"), help="user CPU seconds (from time)")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--note", default="")
    ap.add_argument("--commit", default="", help="commit the timed run executed (default: HEAD now)")
    args = ap.parse_args(argv)
    from support.training import git_sha

    result = {"profile": args.profile, "date": dt.date.today().isoformat(), "note": args.note,
              "wall_s": args.wall, "user_s": args.user, "cores": os.cpu_count(), "jobs": args.jobs,
              "commit": args.commit or git_sha(), "timeline": timeline(args.runs)}
    out = HERE / "results" / f"pipeline_{args.profile}_{result['date']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    md = HERE / f"pipeline_{args.profile}.md"
    md.write_text("# `./run_all.sh` wall time\n\nWritten by `benchmarks/pipeline_timing.py`.\n\n" + markdown(result))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
