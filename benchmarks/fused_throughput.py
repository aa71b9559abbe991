"""Fused training on the CPU, side by side in ONE run (issue 19): the quick profile's notebook-04 stage.

Every case trains the quick profile's model (small_cnn width 8, paper head 128, 64², batch 32, AdamW)
on the quick profile's phantom training split for ``--epochs`` epochs, on this machine's cores:

(a) ``plain``       what a user would write: ``DataLoader`` over the same uint8 arrays with torchvision
                    transforms (resize to 64², scale to [0, 1]), fp32, one loss, all cores (torch default);
(b) ``engine``      ``support.training.train_one``, one run, all cores, the precision the engine picks
                    (bf16 where the CPU has it); ``engine_fp32`` the same in fp32;
(c) ``fused``       12 losses as ONE fused module (``train_many``), one process, all cores;
    ``stage``       the pipeline's training stage: 2 seeds x 12 losses, one fused process per seed,
                    one thread each (``support.pipeline.train_stage`` on 2 cores);
(d) ``sequential``  today's stage before this issue: the same 24 runs one at a time, fp32, unfused,
                    in 2 one-thread processes (what ``./run_all.sh`` did).

Images/s: ``step`` = training images x epochs / seconds inside the epochs' step loops (the engine's
``train_seconds``); ``wall`` = the same images / wall seconds of the whole call (validation,
predictions, files). GFLOP/s = step images/s x the model's forward+backward FLOPs per image
(``torch.utils.flop_counter``); ``share`` = that / the matmul peak measured in this run on all cores in
the precision the case used (fp32 or bf16). Results JSON under ``benchmarks/results/`` and the
table in ``benchmarks/README.md``::

    flock /tmp/cpu.lock python benchmarks/fused_throughput.py --note "2 idle cores"
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import torch

KIND = "fused_throughput"
CASES = ("plain", "engine", "engine_fp32", "fused", "stage", "sequential")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--note", default="", help="free text stored with the result (e.g. machine load)")
    p.add_argument("--out", default=str(C.RESULTS))
    p.add_argument("--no-readme", action="store_true")
    return p.parse_args(argv)


def configs(epochs: int, seeds=(0,), **overrides):
    from support import sweep, training

    return [training.TrainConfig(**{**c.__dict__, "max_epochs": epochs, "device": "cpu", **overrides})
            for c in sweep.notebook_configs("quick", seeds=list(seeds))]


def matmul_peak(threads: int, dtype: torch.dtype, n: int = 1024, seconds: float = 0.6) -> float:
    """GFLOP/s of an n x n matmul on ``threads`` threads (best of a timed loop)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def flops_per_image(cfg) -> float:
    """Forward + backward FLOPs of one image of the quick model (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from support import models

    net = models.build(cfg.arch, 3, head=cfg.head, dcl_channels=cfg.dcl_channels, **cfg.arch_params)
    x = torch.rand(cfg.batch_size, 1, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return counter.get_total_flops() / cfg.batch_size


def _engine(cfgs, threads: int, runs_dir: str) -> dict:
    """train_many(cfgs) in this process with ``threads`` threads: images stepped, step and wall seconds."""
    from support import training
    from support.data import load

    torch.set_num_threads(threads)
    bundle = load(**cfgs[0].data, verbose=False)
    start = time.perf_counter()
    dirs = training.train_many(cfgs, runs_dir=runs_dir, progress=False, data=bundle)
    wall = time.perf_counter() - start
    metrics = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    config = json.loads((dirs[0] / "config.json").read_text())
    n = len(bundle.splits["train"])
    return {"images": n * sum(m["epochs_run"] for m in metrics), "runs": len(dirs),
            "step_seconds": sum(m["train_seconds"] for m in metrics), "wall_seconds": wall,
            "precision": config["precision"], "fused": any(m.get("fused_epochs", 0) for m in metrics),
            "threads": threads}


def _sequential(cfgs, threads: int, runs_dir: str) -> dict:
    """Each config alone (train_one), one after another, in this process."""
    parts = [_engine([c], threads, runs_dir) for c in cfgs]
    out = {k: sum(p[k] for p in parts) for k in ("images", "runs", "step_seconds", "wall_seconds")}
    return {**out, "precision": parts[0]["precision"], "fused": False, "threads": threads}


def _in_processes(fn, jobs) -> dict:
    """Run ``fn(*args)`` for each job in its own process at once; summed images over the wall time."""
    ctx = mp.get_context("spawn")
    start = time.perf_counter()
    with ctx.Pool(len(jobs)) as pool:
        parts = pool.starmap(fn, jobs)
    wall = time.perf_counter() - start
    images = sum(p["images"] for p in parts)
    # processes run at once: the stage's step time is the longest process's step time
    step = max(p["step_seconds"] for p in parts)
    return {"images": images, "runs": sum(p["runs"] for p in parts), "step_seconds": step, "wall_seconds": wall,
            "precision": parts[0]["precision"], "fused": parts[0]["fused"], "threads": f"{len(jobs)} x 1",
            "processes": parts}


def plain_loop(cfg, epochs: int) -> dict:
    """(a) the loop a user would write: DataLoader + torchvision transforms, fp32, one model."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    from support import models
    from support.data import load
    from support.training import balanced_class_weights

    torch.set_num_threads(os.cpu_count() or 1)
    split = load(**cfg.data, verbose=False).splits["train"]
    transform = v2.Compose([v2.Resize(cfg.image_size, antialias=True), v2.ToDtype(torch.float32, scale=True)])

    class Films(Dataset):
        def __len__(self):
            return len(split)

        def __getitem__(self, i):
            return transform(split.images[i][None]), split.labels[i]

    torch.manual_seed(cfg.seed)
    net = models.build(cfg.arch, 3, head=cfg.head, dcl_channels=cfg.dcl_channels, **cfg.arch_params)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    weight = balanced_class_weights(split.labels, 3)
    loader = DataLoader(Films(), batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    start, images = time.perf_counter(), 0
    for _ in range(epochs):
        net.train()
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(net(x), y, weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            images += len(y)
    seconds = time.perf_counter() - start
    return {"images": images, "runs": 1, "step_seconds": seconds, "wall_seconds": seconds, "precision": "fp32",
            "fused": False, "threads": torch.get_num_threads()}


def run_case(case: str, epochs: int, tmp: Path) -> dict:
    cores = os.cpu_count() or 1
    runs_dir = str(tmp / case)
    if case == "plain":
        return plain_loop(configs(epochs)[0], epochs)
    if case == "engine":
        return _engine(configs(epochs)[:1], cores, runs_dir)
    if case == "engine_fp32":
        return _engine(configs(epochs, amp=False)[:1], cores, runs_dir)
    if case == "fused":
        return _engine(configs(epochs), cores, runs_dir)
    if case == "stage":  # the pipeline: one fused process per seed, one thread each
        return _in_processes(_engine, [(configs(epochs, seeds=[s]), 1, runs_dir) for s in (0, 1)])
    if case == "sequential":  # before this issue: fp32, unfused, 2 one-thread processes of 12 runs
        cfgs = configs(epochs, seeds=(0, 1), amp=False, fuse=False)
        return _in_processes(_sequential, [(cfgs[:12], 1, runs_dir), (cfgs[12:], 1, runs_dir)])
    raise ValueError(case)


def main(argv=None) -> int:
    args = parse_args(argv)
    from support.data import load
    from support.training import native_bf16

    cores = os.cpu_count() or 1
    env = C.environment(torch.device("cpu"), args.note)
    cfg = configs(args.epochs)[0]
    load(**cfg.data, verbose=False)  # generate / cache the data before anything is timed
    peaks = {f"{dt}_{t}": matmul_peak(t, getattr(torch, "float32" if dt == "fp32" else "bfloat16"))
             for dt in ("fp32", "bf16") for t in sorted({1, cores})}
    flops = flops_per_image(cfg)
    print(f"[bench] matmul peak GFLOP/s {peaks}; {flops / 1e9:.4f} GFLOP per image; native bf16 "
          f"{native_bf16(torch.device('cpu'))}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            r = run_case(case, args.epochs, Path(tmp))
            r["step_img_s"] = r["images"] / r["step_seconds"]
            r["wall_img_s"] = r["images"] / r["wall_seconds"]
            r["gflop_s"] = r["step_img_s"] * flops / 1e9
            r["share_of_peak"] = r["gflop_s"] / peaks[f"{r['precision']}_{cores}"]
            results[case] = r
            print(f"[bench] {case}: {r['runs']} runs, step {r['step_img_s']:,.0f} img/s, wall "
                  f"{r['wall_img_s']:,.0f} img/s, {r['gflop_s']:.1f} GFLOP/s = {100 * r['share_of_peak']:.1f} % "
                  f"of the {r['precision']} peak", flush=True)
    record = {"env": env, "epochs": args.epochs, "gflop_per_image": flops / 1e9, "matmul_peak_gflop_s": peaks,
              "native_bf16": native_bf16(torch.device("cpu")), "train_images": None, "results": results}
    path = C.write_result(KIND, record, Path(args.out))
    print(f"[bench] wrote {path}")
    if not args.no_readme:
        C.replace_region(C.README, KIND, table(C.load_results(KIND, Path(args.out))))
    return 0


def table(records) -> str:
    out = []
    for rec in records[-2:]:
        r = rec["results"]
        pk = rec["matmul_peak_gflop_s"]
        out.append(C.header(rec))
        out.append("")
        out.append(f"quick profile model, {rec['gflop_per_image']:.4f} GFLOP per image (fwd+bwd), {rec['epochs']} epochs "
                   f"per run; matmul peak GFLOP/s fp32 {pk.get('fp32_1', 0):.0f} (1 thread) / "
                   f"{max(v for k, v in pk.items() if k.startswith('fp32')):.0f} (all cores), bf16 "
                   f"{pk.get('bf16_1', 0):.0f} / {max(v for k, v in pk.items() if k.startswith('bf16')):.0f}.")
        out.append("")
        out.append("| case | runs | threads | precision | step img/s | wall img/s | GFLOP/s | share of peak |")
        out.append("|---|---:|---|---|---:|---:|---:|---:|")
        for case, x in r.items():
            out.append(f"| {case} | {x['runs']} | {x['threads']} | {x['precision']} | {C.fmt(x['step_img_s'])} | "
                       f"{C.fmt(x['wall_img_s'])} | {C.fmt(x['gflop_s'], 1)} | {100 * x['share_of_peak']:.1f} % |")
        if "stage" in r and "sequential" in r:
            out.append("")
            out.append(f"stage ÷ sequential (wall): {r['stage']['wall_img_s'] / r['sequential']['wall_img_s']:.2f}x; "
                       f"step: {r['stage']['step_img_s'] / r['sequential']['step_img_s']:.2f}x")
        if "engine" in r and "plain" in r:
            out.append(f"engine ÷ plain (step): {r['engine']['step_img_s'] / r['plain']['step_img_s']:.2f}x")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
