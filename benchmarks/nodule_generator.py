"""Nodule generator throughput (issue 17's budget: >= 500 patches/s at 64² on one core).

Renders ``--n`` patches of the ``train`` preset at each difficulty setting (default knobs, a weak margin,
two crossing vessels), best of ``--repeat`` timings, one torch thread. Writes
``benchmarks/results/nodule_generator_<device>_<stamp>.json`` and ``benchmarks/nodule_generator.md``.

    python benchmarks/nodule_generator.py            # ~10 s
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import RESULTS, ROOT, environment, write_result

SETTINGS = {
    "default knobs": {},
    "margin strength 0.5": {"difficulty": {"margin_strength": 0.5}},
    "2 crossing vessels, noise 0.05": {"nuisance": {"n_crossing": [2, 2], "noise_sd": [0.05, 0.05]}},
}


def main(argv=None) -> dict:
    from support.data import nodules as nd

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name, spec in SETTINGS.items():
        full = nd.resolve_spec("train", spec, image_size=args.image_size)
        table = nd.sample_factors(full, preset="train", split="bench", n=args.n, seed=0, image_size=args.image_size)
        nd.render(table.iloc[:8])  # warm-up: blur matrices and grids
        best = min(_timed(nd.render, table) for _ in range(args.repeat))
        rows.append({"setting": name, "patches_per_s": round(args.n / best, 1), "seconds": round(best, 3)})
        print(f"{name:34s} {args.n / best:8.0f} patches/s")
    record = {"env": environment(torch.device("cpu"), "one torch thread"), "n": args.n,
              "image_size": args.image_size, "rows": rows}
    write_result("nodule_generator", record, __import__("pathlib").Path(args.out))
    lines = [f"# Nodule generator throughput ({args.image_size}², {args.n} patches, one torch thread, best of "
             f"{args.repeat})", "", f"{record['env']['device_name']}, {record['env']['date']}, load at start "
             f"{record['env']['load_average_at_start']}", "", "| setting | patches/s |", "|---|---|"]
    lines += [f"| {r['setting']} | {r['patches_per_s']:.0f} |" for r in rows]
    (ROOT / "benchmarks" / "nodule_generator.md").write_text("\n".join(lines) + "\n")
    return record


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
