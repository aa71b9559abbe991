"""What the multi-loss comparison can detect: interval widths, MDEs and what each lever bought.

Reads the finished runs of a profile (default quick, on the phantom) and writes
``results/power_<profile>_<date>.json`` and ``power_<profile>.md``:

* per loss: the seed × image interval of the seed-mean MCC and its two variance parts;
* the confirmatory family: Δ, interval, Holm p, p floor and MDE per test;
* what each lever bought, from the measured variance parts: the same tables' median half-width and
  MDE had the study kept the old 256 test films (image variance × N/256, the bootstrap variance of a
  mean metric scales as 1/N), or 2 seeds (seed variance × S/2 and df = 1), computed with the same
  formulas as :mod:`support.inference`. These are projections from one run, not re-runs.

    python benchmarks/power_study.py --profile quick
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats as sps

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from support import compare, inference, profiles, runs  # noqa: E402
from support.data import data_config  # noqa: E402


def _half(se_seed, se_image, seeds, level=0.95):
    """Half-width of the seed x image t-interval for the given parts (support.inference's formula)."""
    v_seed, v_img = se_seed ** 2, se_image ** 2
    df = (v_seed + v_img) ** 2 / (v_seed ** 2 / (seeds - 1)) if seeds > 1 and v_seed > 0 else np.inf
    return float(sps.t.ppf((1 + level) / 2, df) * np.sqrt(v_seed + v_img)), float(df)


def project(se_seed, se_image, seeds, n_images, new_seeds=None, new_images=None, alpha_m=0.05):
    """(half-width, MDE) had the study used ``new_seeds`` seeds and ``new_images`` test images."""
    s = new_seeds or seeds
    se_s = se_seed * np.sqrt(seeds / s)
    se_i = se_image * np.sqrt(n_images / (new_images or n_images))
    half, df = _half(se_s, se_i, s)
    return half, float(inference.minimum_detectable_effect(np.sqrt(se_s ** 2 + se_i ** 2), df, alpha_m))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--data", default="phantom")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    p = profiles.get(args.profile)
    found = [r for r in runs.find_runs(arch=p["train"]["arch"], data=data_config(args.profile, args.data))
             if r.loss in p["losses"]]
    if not found:
        raise SystemExit("no finished runs of this profile: run ./run_all.sh (or notebook 04) first")
    table = compare.loss_table(found, n_boot=p["bootstrap"])
    confirm = compare.confirmatory_table(found, p["confirmatory"], n_boot=p["bootstrap"])
    seeds, n = int(table["n_seeds"].min()), int(table["n_images"].iloc[0])
    m = len(confirm)
    real = confirm[~confirm["identical"]]
    levers = {}
    for name, kw in (("as run", {}), ("256 test films", {"new_images": 256}), ("2 seeds", {"new_seeds": 2}),
                     ("2 seeds, 256 test films", {"new_seeds": 2, "new_images": 256})):
        halves = [project(r.mcc_se_seed, r.mcc_se_image, seeds, n, **kw)[0] for r in table.itertuples()]
        mdes = [project(r.se_seed, r.se_image, seeds, n, alpha_m=0.05 / m, **kw)[1] for r in real.itertuples()]
        levers[name] = {"median_half_width": float(np.median(halves)), "max_half_width": float(np.max(halves)),
                        "median_mde": float(np.median(mdes)), "max_mde": float(np.max(mdes))}
    result = {
        "profile": args.profile, "date": dt.date.today().isoformat(), "note": args.note, "source": runs.single_source(found),
        "n_images": n, "seeds": seeds, "n_tests": m,
        "losses": table[["loss", "n_seeds", "mcc_mean", "mcc_sd", "mcc_lo", "mcc_hi", "mcc_se_seed", "mcc_se_image"]]
        .round(5).to_dict("records"),
        "confirmatory": confirm[["model_a", "model_b", "delta", "delta_lo", "delta_hi", "p_value", "p_holm",
                                 "p_floor_holm", "mde", "identical", "significant"]].round(5).to_dict("records"),
        "levers": levers,
    }
    out = HERE / "results" / f"power_{args.profile}_{result['date']}.json"
    out.write_text(json.dumps(result, indent=1, default=float))
    (HERE / f"power_{args.profile}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    f = "{:.3f}".format
    lines = [f"# Power of the multi-loss comparison ({r['profile']} profile, {r['date']})", "",
             f"Written by `benchmarks/power_study.py`. Data: {r['source']}; {r['seeds']} seeds per loss, "
             f"{r['n_images']} test films. {r['note']}", "",
             "## Per loss: test MCC, mean over seeds, 95 % interval over seeds × test images", "",
             "| loss | MCC | sd over seeds | 95 % interval | half-width | SE seeds | SE images |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for x in r["losses"]:
        lines.append(f"| {x['loss']} | {f(x['mcc_mean'])} | {f(x['mcc_sd'])} | [{f(x['mcc_lo'])}, {f(x['mcc_hi'])}] | "
                     f"{f((x['mcc_hi'] - x['mcc_lo']) / 2)} | {f(x['mcc_se_seed'])} | {f(x['mcc_se_image'])} |")
    lines += ["", f"## Confirmatory family ({r['n_tests']} tests, Holm), ΔMCC = A − B", "",
              "| A − B | ΔMCC | 95 % interval | p | Holm p | p floor | MDE (80 %) |", "|---|---:|---|---:|---:|---:|---:|"]
    for x in r["confirmatory"]:
        lines.append(f"| {x['model_a']} − {x['model_b']} | {f(x['delta'])} | [{f(x['delta_lo'])}, {f(x['delta_hi'])}] | "
                     f"{x['p_value']:.2g} | {x['p_holm']:.2g} | {x['p_floor_holm']:g} | "
                     f"{'identical' if x['identical'] else f(x['mde'])} |")
    lines += ["", "## What each lever bought (projected from the measured variance parts)", "",
              "| design | median half-width | max half-width | median MDE | max MDE |", "|---|---:|---:|---:|---:|"]
    for name, v in r["levers"].items():
        lines.append(f"| {name} | {f(v['median_half_width'])} | {f(v['max_half_width'])} | {f(v['median_mde'])} | "
                     f"{f(v['max_mde'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
