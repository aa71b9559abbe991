"""Accuracy parity of bf16 autocast vs fp32 on the CPU (issue 19): the quick profile, paired by seed.

The quick profile's notebook-04 runs (12 losses x ``--seeds``, the profile's own data: 6,000 test
films) are trained twice, each seed's 12 losses as one fused ``train_many`` group: once with
``amp=True`` (bf16 where the CPU has it) and once with ``amp=False`` (fp32); same initialisation, same
batch order. Precision is an execution setting, so both share run keys: each precision trains into
its own runs folder (``--runs``, default ``/tmp/bf16_parity``; finished runs are reused, so the two
halves may be run in separate calls).

Reported: test MCC per run; the paired difference Δ = MCC(bf16) - MCC(fp32) per (loss, seed); its
mean over losses per seed, and over seeds the mean with a t interval (95 %), next to the seed
standard deviation of fp32 MCC (per loss, averaged): the seed-to-seed noise the study's comparisons
live with. Result JSON under ``benchmarks/results/`` and a short md (``bf16_parity.md``)::

    flock /tmp/cpu.lock python benchmarks/bf16_parity.py --precision bf16   # trains (~3 min, 2 processes)
    flock /tmp/cpu.lock python benchmarks/bf16_parity.py --precision fp32
    python benchmarks/bf16_parity.py --report
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import torch

MD = C.ROOT / "benchmarks" / "bf16_parity.md"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", choices=("bf16", "fp32"), help="train this half (2 processes x 1 thread)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--runs", default="/tmp/bf16_parity")
    p.add_argument("--report", action="store_true", help="write the result from both finished halves")
    p.add_argument("--note", default="")
    return p.parse_args(argv)


def configs(seed: int, precision: str):
    from support import sweep, training

    return [training.TrainConfig(**{**c.__dict__, "device": "cpu", "amp": precision == "bf16"})
            for c in sweep.notebook_configs("quick", seeds=[seed])]


def train_seeds(seeds, precision: str, runs: str) -> float:
    """Each seed's 12 losses as one fused group, one thread (like the pipeline's training stage)."""
    from support import training

    torch.set_num_threads(1)
    start = time.perf_counter()
    for seed in seeds:
        training.train_many(configs(seed, precision), runs_dir=f"{runs}/{precision}", progress=False)
    return time.perf_counter() - start


def collect(seeds, runs: str) -> list:
    from support import training

    rows = []
    for precision in ("bf16", "fp32"):
        for seed in seeds:
            for c in configs(seed, precision):
                d = training.run_dir_for(c, f"{runs}/{precision}")
                m = json.loads((d / "metrics.json").read_text())
                cfg = json.loads((d / "config.json").read_text())
                rows.append({"precision": cfg["precision"], "asked": precision, "loss": c.loss, "seed": seed,
                             "test_mcc": m["test"]["mcc"], "test_accuracy": m["test"]["accuracy"],
                             "epochs_run": m["epochs_run"]})
    return rows


def summarise(rows, seeds) -> dict:
    mcc = {(r["asked"], r["loss"], r["seed"]): r["test_mcc"] for r in rows}
    losses = sorted({r["loss"] for r in rows})
    delta = {(l, s): mcc[("bf16", l, s)] - mcc[("fp32", l, s)] for l in losses for s in seeds}
    per_seed = [statistics.mean(delta[(l, s)] for l in losses) for s in seeds]
    mean = statistics.mean(per_seed)
    sd = statistics.stdev(per_seed)
    from scipy import stats

    half = stats.t.ppf(0.975, len(seeds) - 1) * sd / len(seeds) ** 0.5
    seed_sd = statistics.mean(statistics.stdev(mcc[("fp32", l, s)] for s in seeds) for l in losses)
    per_loss = {l: {"mean_delta": statistics.mean(delta[(l, s)] for s in seeds),
                    "fp32_seed_sd": statistics.stdev(mcc[("fp32", l, s)] for s in seeds)} for l in losses}
    return {"mean_delta_mcc": mean, "ci95": [mean - half, mean + half], "sd_of_seed_mean_deltas": sd,
            "fp32_seed_sd_mean_over_losses": seed_sd, "all_pairs_abs_delta_mean": statistics.mean(
                abs(v) for v in delta.values()), "per_loss": per_loss, "per_seed_mean_delta": per_seed,
            "within_seed_noise": abs(mean) < seed_sd and half < seed_sd}


def main(argv=None) -> int:
    args = parse_args(argv)
    seeds = list(range(args.seeds))
    if args.precision:
        ctx = mp.get_context("spawn")
        halves = [seeds[0::2], seeds[1::2]]
        with ctx.Pool(2) as pool:
            secs = pool.starmap(train_seeds, [(h, args.precision, args.runs) for h in halves])
        print(f"[parity] {args.precision}: seeds {seeds} trained in {max(secs):.0f}s (2 processes)")
    if not args.report:
        return 0
    from support import profiles
    from support.training import native_bf16

    rows = collect(seeds, args.runs)
    summary = summarise(rows, seeds)
    env = C.environment(torch.device("cpu"), args.note)
    data = profiles.get("quick")["data"]
    record = {"env": env, "data": data, "seeds": seeds, "native_bf16": native_bf16(torch.device("cpu")),
              "summary": summary, "runs": rows}
    path = C.write_result("bf16_parity", record, C.RESULTS)
    s = summary
    lines = [
        "# bf16 vs fp32 on the CPU: accuracy parity (issue 19)",
        "",
        f"Quick profile (data {data}), 12 losses x {len(seeds)} seeds, each seed's 12 losses one fused group; "
        f"the same seeds in both precisions (paired). Test MCC on the profile's test draw. "
        f"Native bf16 on this CPU: {record['native_bf16']}. Result: `results/{path.name}`; "
        f"`python benchmarks/bf16_parity.py --help` to reproduce.",
        "",
        "| | value |", "|---|---:|",
        f"| mean Δ MCC (bf16 − fp32), over seeds of the per-seed mean over losses | {s['mean_delta_mcc']:+.4f} |",
        f"| 95 % t interval over {len(seeds)} seeds | [{s['ci95'][0]:+.4f}, {s['ci95'][1]:+.4f}] |",
        f"| mean \\|Δ\\| over all {len(rows) // 2} (loss, seed) pairs | {s['all_pairs_abs_delta_mean']:.4f} |",
        f"| seed sd of fp32 MCC (per loss, averaged over losses) | {s['fp32_seed_sd_mean_over_losses']:.4f} |",
        f"| mean Δ and interval half-width both below the seed sd | {s['within_seed_noise']} |",
        "",
        "| loss | mean Δ MCC | fp32 seed sd |", "|---|---:|---:|",
        *[f"| {l} | {v['mean_delta']:+.4f} | {v['fp32_seed_sd']:.4f} |" for l, v in s["per_loss"].items()],
    ]
    MD.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
