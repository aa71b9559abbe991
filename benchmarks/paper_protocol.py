"""The multi-loss study's ``full`` profile, timed end to end (issue 6; target: <= 15 min on one H100).

What runs: the 12 losses of the paper (``profiles.PAPER_LOSSES``), the phantom at Kermany size
(n = 5,856) and 512², EfficientNet-B0 with the paper head, SGD lr 1e-4, batch 16, <= 64 epochs with
early stopping (patience 5), ``torch.compile`` on (all from ``profiles.get("full")``), one seed; the 12
models train in lockstep on the same batches (``train_many``). Timed: the data (generated, or read from
data/cache), the training call (epochs, validation, predictions, metrics of every run), and the total.
Runs go to a temporary folder, so finished runs of the project never shortcut the clock.

    python benchmarks/paper_protocol.py                                   # the protocol (GPU)
    python benchmarks/paper_protocol.py --device cpu --n 240 --image-size 32 --arch small_cnn \\
        --max-epochs 2 --losses 3 --note "shrunk CPU check"

Any flag that changes the protocol marks the result ``shrunk`` in the JSON and in the table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import torch

from support import profiles, training
from support.data import load
from support.data.core import cache_path, resolve_params


def parse_args(argv=None) -> argparse.Namespace:
    full = profiles.get("full")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA if visible), cpu, cuda, cuda:N")
    p.add_argument("--n", type=int, help=f"phantom images in all splits (protocol: {full['data']['n']})")
    p.add_argument("--image-size", type=int,
                   help=f"generated and trained image side (protocol: {full['train']['image_size']})")
    p.add_argument("--arch", help=f"architecture (protocol: {full['train']['arch']})")
    p.add_argument("--max-epochs", type=int, help=f"protocol: {full['train']['max_epochs']}")
    p.add_argument("--batch-size", type=int, help=f"protocol: {full['train']['batch_size']}")
    p.add_argument("--losses", type=int, default=len(profiles.PAPER_LOSSES),
                   help="train the first N of the paper's 12 losses (protocol: 12)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (protocol run here: 0)")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile (auto: as the profile says on CUDA, off on the CPU, where compiling "
                        "takes minutes)")
    p.add_argument("--sequential", action="store_true", help="one train_one per run instead of train_many")
    p.add_argument("--fresh-data", action="store_true", help="regenerate the phantom even if it is cached")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--runs-dir", type=Path, help="keep the runs here (retrained with force=True); default: a temp dir")
    p.add_argument("--note", default="", help="free text stored with the results")
    p.add_argument("--out", type=Path, default=C.RESULTS, help="results folder (default: benchmarks/results)")
    p.add_argument("--readme", type=Path, default=C.README, help="Markdown file whose table is regenerated")
    p.add_argument("--no-readme", action="store_true", help="write the JSON only")
    args = p.parse_args(argv)
    if not 1 <= args.losses <= len(profiles.PAPER_LOSSES):
        p.error(f"--losses must be in 1..{len(profiles.PAPER_LOSSES)}, got {args.losses}")
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    args.device_obj = C.resolve_device(args.device)
    return args


def protocol(args) -> tuple:
    """(data spec, list of TrainConfig, dict of the settings that differ from the full profile)."""
    full = profiles.get("full")
    data = dict(full["data"])
    train = dict(full["train"])
    changed = {}
    for flag, target, key in (("n", data, "n"), ("image_size", data, "image_size"),
                              ("image_size", train, "image_size"), ("arch", train, "arch"),
                              ("max_epochs", train, "max_epochs"), ("batch_size", train, "batch_size")):
        value = getattr(args, flag)
        if value is not None and value != target[key]:
            target[key] = value
            changed[flag] = value
    wanted = {"on": True, "off": False}.get(args.compile, full["train"].get("compile", False)
                                            if args.device_obj.type == "cuda" else False)
    if wanted != full["train"].get("compile", False):
        changed["compile"] = wanted
    train["compile"] = wanted
    losses = list(profiles.PAPER_LOSSES[:args.losses])
    if len(losses) != len(profiles.PAPER_LOSSES):
        changed["losses"] = len(losses)
    configs = [training.TrainConfig(**{**train, "data": data, "loss": loss, "seed": seed,
                                       "device": str(args.device_obj)})
               for seed in args.seeds for loss in losses]
    return data, configs, changed


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device_obj
    env = C.environment(device, args.note)
    data_spec, configs, changed = protocol(args)
    first = configs[0]
    print(f"[protocol] {env['device_name']}: {len(configs)} runs of {first.arch} at {first.image_size}², "
          f"data {data_spec}, <= {first.max_epochs} epochs, batch {first.batch_size}, compile {first.compile}"
          + (f"; SHRUNK: {changed}" if changed else ""))
    t_start = time.perf_counter()
    params = dict(data_spec)
    name = params.pop("name")
    cached = cache_path(name, resolve_params(name, params)[1]).exists() and not args.fresh_data
    bundle = load(**data_spec, force=args.fresh_data, verbose=True)
    t_data = time.perf_counter() - t_start
    with tempfile.TemporaryDirectory(prefix="lossbench-protocol-") as tmp:
        root = args.runs_dir or Path(tmp)
        force = args.runs_dir is not None
        t0 = C.now(device)
        if args.sequential:
            dirs = [training.train_one(c, runs_dir=root, data=bundle, force=force) for c in configs]
        else:
            dirs = training.train_many(configs, runs_dir=root, data=bundle, force=force)
        t_train = C.now(device) - t0
        runs = []
        for c, d in zip(configs, dirs):
            m = json.loads((d / "metrics.json").read_text())
            runs.append({"loss": c.loss, "seed": c.seed, "epochs_run": m["epochs_run"],
                         "best_epoch": m["best_epoch"], "stopped_early": m["stopped_early"],
                         "train_seconds": round(m["train_seconds"], 3),
                         "train_images_per_second": round(m["train_images_per_second"], 1),
                         "test_mcc": m.get("test", {}).get("mcc"), "test_accuracy": m.get("test", {}).get("accuracy")})
    total = time.perf_counter() - t_start
    env["load_average_at_end"] = list(os.getloadavg())
    settings = {"data": data_spec, "arch": first.arch, "image_size": first.image_size, "head": first.head,
                "batch_size": first.batch_size, "max_epochs": first.max_epochs, "patience": first.patience,
                "optimizer": first.optimizer, "lr": first.lr, "compile": first.compile, "amp": first.amp,
                "losses": [c.loss for c in configs if c.seed == configs[0].seed], "seeds": args.seeds,
                "mechanism": "train_one x N" if args.sequential else "train_many (lockstep)",
                "shrunk": bool(changed), "changed": changed, "train_images": len(bundle.splits["train"])}
    timing = {"data_seconds": round(t_data, 2), "data_cached": cached, "train_seconds": round(t_train, 2),
              "total_seconds": round(total, 2), "total_minutes": round(total / 60, 2),
              "peak_gpu_memory_gib": C.peak_gib(device)}
    record = {"benchmark": "paper_protocol", "env": env, "settings": settings, "timing": timing, "runs": runs,
              "target_minutes": 15,
              "target_met": (total / 60 <= 15) if device.type == "cuda" and not changed else None}
    path = C.write_result("paper_protocol", record, args.out)
    print(f"[protocol] data {t_data:.1f}s ({'cache' if cached else 'generated'}), training {t_train:.1f}s, "
          f"total {total / 60:.2f} min; wrote {path}")
    if not args.no_readme:
        C.replace_region(args.readme, "paper_protocol", markdown(C.load_results("paper_protocol", args.out)))
    return 0


def markdown(records: list) -> str:
    if not records:
        return "_No results yet._"
    lines = ["| date | device | protocol | runs | epochs run | data s | training s | total min | peak GiB | "
             "≤ 15 min |", "|---|---|---|---:|---|---:|---:|---:|---:|---|"]
    for rec in reversed(records):
        s, t, e = rec["settings"], rec["timing"], rec["env"]
        epochs = [r["epochs_run"] for r in rec["runs"]]
        what = "full" if not s["shrunk"] else "shrunk: " + ", ".join(f"{k}={v}" for k, v in s["changed"].items())
        note = f" ({e['note']})" if e.get("note") else ""
        met = {True: "yes", False: "no", None: "n/a"}[rec.get("target_met")]
        lines.append(f"| {e['date'][:16]} | {e['device_name']}{note} | {what} | {len(rec['runs'])} | "
                     f"{min(epochs)}–{max(epochs)} | {t['data_seconds']:.0f}{' (cached)' if t['data_cached'] else ''}"
                     f" | {t['train_seconds']:.0f} | {t['total_minutes']:.1f} | {C.fmt(t['peak_gpu_memory_gib'], 2)} "
                     f"| {met} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
