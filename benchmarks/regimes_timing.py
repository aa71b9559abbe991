"""What the regime study (notebook 10, support.regimes) adds to a profile's run, and what its table can detect.

Times each step of the study in this process (one thread, as a ``./run_all.sh`` kernel), CPU seconds and wall:

* the clean runs (notebook 04's work under ``./run_all.sh``; trained here only when missing, not counted as extra);
* the label-noise runs (the extra training), the shifted test draw, the re-scoring of the clean runs on it,
  and the tables (intervals, tests vs ``cce``, changes from clean);

then writes ``results/regimes_<profile>_<date>.json`` and ``regimes_<profile>.md`` with the timings, the regime
table, the tests vs ``cce`` and the changes from clean (each with its Holm p and MDE).

    OMP_NUM_THREADS=1 python benchmarks/regimes_timing.py --profile quick
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pandas as pd  # noqa: E402

from support import paths, regimes, training  # noqa: E402
from support.data import data_config, load  # noqa: E402


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the phantom's forked render workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Clock:
    def __init__(self):
        self.steps = {}

    def __call__(self, name, fn):
        wall, cpu = time.perf_counter(), _cpu()
        out = fn()
        self.steps[name] = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(_cpu() - cpu, 1)}
        print(name, self.steps[name], flush=True)
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--data", default="phantom")
    args = ap.parse_args(argv)
    spec = regimes.settings(args.profile)
    clock = Clock()
    for regime in spec["regimes"]:
        if regimes.REGIMES[regime].train or regime == "clean":
            name = "clean runs (notebook 04's, not extra)" if regime == "clean" else f"train {regime} runs"
            seeds = regimes.seeds_of(args.profile, regime)
            clock(name, lambda: training.train_many(regimes.configs(args.profile, args.data, regime, spec["losses"],
                                                                    seeds), runs_dir=paths.runs_dir(), progress=False))
        if regimes.REGIMES[regime].test:
            clock(f"{regime} test draw", lambda: load(**{**data_config(args.profile, args.data),
                                                         **regimes.REGIMES[regime].test}, verbose=False))
    s = clock("score every regime", lambda: regimes.study(args.profile, args.data))
    table, tests, changes = clock("tables", lambda: (regimes.regime_table(s), regimes.tests_vs_reference(s),
                                                     pd.concat([regimes.changes_from_clean(s, m)
                                                                for m in regimes.REGIME_METRICS])))
    extra = {k: v for k, v in clock.steps.items() if "not extra" not in k}
    total = {"wall_s": round(sum(v["wall_s"] for v in extra.values()), 1),
             "cpu_s": round(sum(v["cpu_s"] for v in extra.values()), 1)}
    date = dt.date.today().isoformat()
    record = {"profile": args.profile, "date": date, "losses": list(spec["losses"]),
              "seeds": {r: regimes.seeds_of(args.profile, r) for r in spec["regimes"]},
              "steps": clock.steps, "extra_total": total, "source": s["regimes"]["clean"][3],
              "table": table.to_dict("records"), "tests": tests.to_dict("records"),
              "changes": changes.to_dict("records")}
    out = HERE / "results" / f"regimes_{args.profile}_{date}.json"
    out.write_text(json.dumps(record, indent=1, default=str))
    f = "{:.3f}".format
    md = [f"# The regime study at the {args.profile} profile ({date})", "",
          f"Written by `benchmarks/regimes_timing.py` ({out.name}); one thread, as a `./run_all.sh` kernel. "
          f"Losses {', '.join(spec['losses'])}; seeds per regime {record['seeds']}; data: {record['source']}.", "",
          "| step | wall (s) | CPU (s) |", "|---|---:|---:|"]
    md += [f"| {k} | {v['wall_s']} | {v['cpu_s']} |" for k, v in clock.steps.items()]
    md += [f"| **extra for the regime study** | **{total['wall_s']}** | **{total['cpu_s']}** |", "",
           "## Regime table (mean over seeds, 95 % interval over seeds × test images)", "",
           regimes.display_regimes(table).to_markdown(index=False), "",
           "## Each loss vs cce, per regime (paired ΔMCC, Holm within a regime)", "",
           regimes.display_tests(tests).to_markdown(index=False), "",
           "## Change from the clean regime (paired, Holm over the losses of a regime)", ""]
    for metric in regimes.REGIME_METRICS:
        md += [f"**{metric}**", "", regimes.display_tests(changes[changes["metric"] == metric]).to_markdown(index=False), ""]
    md += ["MDE ranges: vs cce " + ", ".join(f"{r} {f(t['mde'].min())}–{f(t['mde'].max())}"
                                              for r, t in tests.groupby("regime", sort=False)), ""]
    (HERE / f"regimes_{args.profile}.md").write_text("\n".join(md))
    print(f"wrote {out} and regimes_{args.profile}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
