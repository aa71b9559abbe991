"""Training throughput, side by side in ONE process on one device (issue 6).

For each architecture and input size:

(a) ``peer``      the common PyTorch recipe: JPEG files on disk, torchvision ``ImageFolder``, PIL decode
                  and resize in ``DataLoader`` workers, fp32, contiguous, a plain optimiser;
(b) ``engine``    our ``support.training.train_one`` (uint8 data resident on the device, scaling on the
                  device, bf16 autocast, channels_last, fused optimiser and ``torch.compile`` on CUDA);
(c) ``ceiling``   the same model on one random device-resident batch: no data pipeline at all; bf16,
                  channels_last, compiled and fused on CUDA (channels_last only on the CPU);
(d) ``many``      the 12 losses of the multi-loss study trained at once by ``train_many`` (same batches,
                  paired design) against 12 sequential ``train_one`` runs.

Every case runs the same model (``support.models.build(arch, 3, in_chans=1, head=...)``), batch size
and optimiser (SGD, momentum 0.9, Nesterov). Images/s count training steps only (forward, backward,
optimiser step, and for (a)/(b) the data pipeline), in the epochs after the first (the first holds
worker start-up and compilation); validation is left out except in the ``wall`` figures of (d).
Peak GPU memory is recorded per case on CUDA.

Results go to ``benchmarks/results/train_throughput_<device>_<date>.json`` and the table in
``benchmarks/README.md`` is regenerated from every results file::

    python benchmarks/train_throughput.py                                  # GPU defaults: 4 archs x 224, 512
    python benchmarks/train_throughput.py --archs resnet18 --sizes 224     # one slice (fits 10 min)
    python benchmarks/train_throughput.py --device cpu --sizes 32 --archs small_cnn resnet18 --images 64
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

import _common as C  # noqa: E402  (puts the repository root on sys.path)
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from support import models, profiles, training
from support.data import load
from support.data.containers import DataBundle

ARCHS = ("resnet18", "densenet121", "vgg16", "efficientnet_b0")
CASES = ("peer", "engine", "ceiling", "many")
NUM_CLASSES = 3
#: Targets of issue 6 (ratios measured in one run on one GPU).
TARGETS = {"engine_over_ceiling": 0.9, "engine_over_peer": 20.0, "many_over_sequential": 1.5}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA if visible), cpu, cuda, cuda:N")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), help=f"default: {' '.join(ARCHS)}")
    p.add_argument("--sizes", nargs="+", type=int, help="input sizes (default: 224 512 on CUDA, 32 on the CPU)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--images", type=int, help="training images per epoch (default: 1024 on CUDA, 64 on the CPU)")
    p.add_argument("--batch-size", type=int, help="default: 64 on CUDA, 16 on the CPU")
    p.add_argument("--epochs", type=int, help="epochs per case, the first is warm-up (default: 3 on CUDA, 2 on CPU)")
    p.add_argument("--losses", type=int, default=len(profiles.PAPER_LOSSES),
                   help="how many of the paper's 12 losses case 'many' trains (default: all 12)")
    p.add_argument("--many-sizes", nargs="+", type=int,
                   help="sizes at which case 'many' runs (default: the smallest of --sizes)")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16),
                   help="DataLoader workers of the peer recipe (default: all cores, at most 16)")
    p.add_argument("--source-size", type=int,
                   help="side of the generated phantom films (default: 512 on CUDA, max(--sizes) on the CPU)")
    p.add_argument("--jpeg-size", type=int,
                   help="side of the JPEG files the peer recipe decodes (default: 1024 on CUDA, i.e. CXR-export "
                        "sized files; --source-size on the CPU)")
    p.add_argument("--head", default="paper", choices=models.HEADS)
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile for the engine and the ceiling (auto: on CUDA only)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads of the main process (default: torch's; 1 is far faster on a busy CPU)")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'contended, 2 cores')")
    p.add_argument("--out", type=Path, default=C.RESULTS, help="results folder (default: benchmarks/results)")
    p.add_argument("--readme", type=Path, default=C.README, help="Markdown file whose table is regenerated")
    p.add_argument("--no-readme", action="store_true", help="write the JSON only")
    args = p.parse_args(argv)
    device = C.resolve_device(args.device)
    cuda = device.type == "cuda"
    args.sizes = args.sizes or ([224, 512] if cuda else [32])
    args.images = args.images or (1024 if cuda else 64)
    args.batch_size = args.batch_size or (64 if cuda else 16)
    args.epochs = args.epochs or (3 if cuda else 2)
    args.many_sizes = args.many_sizes or [min(args.sizes)]
    args.source_size = args.source_size or (512 if cuda else max(args.sizes))
    args.jpeg_size = args.jpeg_size or (1024 if cuda else args.source_size)
    args.compile_on = args.compile == "on" or (args.compile == "auto" and cuda)
    for name in ("images", "batch_size", "epochs", "losses", "source_size", "jpeg_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size < 2 or args.images < args.batch_size:
        p.error(f"need 2 <= --batch-size <= --images, got batch {args.batch_size}, images {args.images}")
    if not 1 <= args.losses <= len(profiles.PAPER_LOSSES):
        p.error(f"--losses must be in 1..{len(profiles.PAPER_LOSSES)}, got {args.losses}")
    for arch in args.archs:
        models.get_arch(arch)  # unknown -> ValueError listing the valid names
        for size in args.sizes:
            models.check_input_size(arch, size)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    args.device_obj = device
    return args


# ----------------------------------------------------------------------------- data
def make_data(n_train: int, source_size: int, n_test: int = 16) -> tuple:
    """Phantom films (cached in data/cache) cut to ``n_train`` train, a few val and ``n_test`` test images.

    Validation (once per epoch, not timed by images/s) stays small: 16 to 64 images.
    """
    from support.data.phantom import MIN_N, split_counts

    n_val = min(64, max(16, n_train // 8))
    n = max(MIN_N, math.ceil((n_train + n_val) / 0.8))
    while sum(split_counts(n)["train"]) < n_train or sum(split_counts(n)["val"]) < n_val:
        n = math.ceil(n * 1.05)
    spec = {"name": "phantom", "n": n, "image_size": source_size}
    full = load(**spec, verbose=True)
    cut = {"train": n_train, "val": n_val, "test": n_test}
    splits = {s: full.splits[s].subset(range(min(cut[s], len(full.splits[s])))) for s in cut}
    bundle = DataBundle(classes=full.classes, splits=splits, source=full.source + f" (benchmark subset)",
                        name=full.name, params=full.params)
    return bundle, spec


def write_jpegs(bundle: DataBundle, root: Path, jpeg_size: int) -> int:
    """The train split as ``root/<class>/<i>.jpg`` (quality 90), the layout ImageFolder reads."""
    from PIL import Image

    split = bundle.splits["train"]
    for c in bundle.classes:
        (root / c).mkdir(parents=True, exist_ok=True)
    total = 0
    for i in tqdm(range(len(split)), desc=f"writing JPEGs ({jpeg_size}²)", leave=False):
        im = Image.fromarray(split.images[i].numpy(), mode="L")
        if im.size != (jpeg_size, jpeg_size):
            im = im.resize((jpeg_size, jpeg_size), Image.BILINEAR)
        path = root / bundle.classes[int(split.labels[i])] / f"{i:06d}.jpg"
        im.save(path, quality=90)
        total += path.stat().st_size
    return total


# ----------------------------------------------------------------------------- helpers
def build_model(arch: str, head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(arch, NUM_CLASSES, in_chans=1, head=head)


def make_optimizer(model, fused: bool):
    kw = {"fused": True} if fused else {}
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, **kw)


def steady(epoch_seconds: list) -> list:
    """The epochs after the first (warm-up), or the only one."""
    return epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds


def result(case, arch, size, images_per_epoch, epoch_seconds, device, **extra) -> dict:
    s = steady(epoch_seconds)
    ips = images_per_epoch / statistics.median(s) if s and statistics.median(s) > 0 else None
    return {"case": case, "arch": arch, "size": size, "images_per_second": ips,
            "images_per_epoch": images_per_epoch, "epoch_seconds": [round(x, 4) for x in epoch_seconds],
            "peak_gpu_memory_gib": C.peak_gib(device), "error": None, **extra}


# ----------------------------------------------------------------------------- cases
def run_peer(arch, size, args, device, jpeg_root: Path) -> dict:
    """(a) ImageFolder + PIL decode/resize in DataLoader workers, fp32, contiguous, unfused SGD."""
    from torch.utils.data import DataLoader
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    cuda = device.type == "cuda"
    tf = T.Compose([T.Grayscale(num_output_channels=1), T.Resize((size, size)), T.ToTensor()])
    ds = ImageFolder(str(jpeg_root), transform=tf)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        pin_memory=cuda, drop_last=True, persistent_workers=args.workers > 0,
                        generator=torch.Generator().manual_seed(0))
    model = build_model(arch, args.head).to(device)
    opt = make_optimizer(model, fused=False)
    model.train()
    seconds, seen = [], 0
    for _ in range(args.epochs):
        t0, seen = C.now(device), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        seconds.append(C.now(device) - t0)
    return result("peer", arch, size, seen, seconds, device, workers=args.workers, jpeg_size=args.jpeg_size,
                  settings="ImageFolder, PIL Grayscale+Resize+ToTensor in workers, pin_memory on CUDA, "
                           "persistent workers, fp32, contiguous, SGD (foreach)")


def run_ceiling(arch, size, args, device) -> dict:
    """(c) one random batch resident on the device: model, loss, backward and step only."""
    cuda = device.type == "cuda"
    model = build_model(arch, args.head).to(device).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, fused=cuda)
    forward, compiled = model, False
    if args.compile_on:
        try:
            forward, compiled = torch.compile(model), True
        except Exception as exc:  # noqa: BLE001 - any backend failure: eager
            print(f"[bench] torch.compile unavailable ({type(exc).__name__}); ceiling runs eager")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((args.batch_size, 1, size, size), device=device, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device, generator=g)
    model.train()

    def step(fn):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = fn(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    try:
        step(forward)
    except Exception as exc:  # noqa: BLE001 - compilation can fail at the first call
        if not compiled:
            raise
        print(f"[bench] torch.compile failed ({type(exc).__name__}: {str(exc)[:120]}); ceiling runs eager")
        forward, compiled = model, False
        step(forward)
    steps = max(args.images // args.batch_size, 1)
    seconds = []
    for _ in range(args.epochs):
        t0 = C.now(device)
        for _ in range(steps):
            step(forward)
        seconds.append(C.now(device) - t0)
    return result("ceiling", arch, size, steps * args.batch_size, seconds, device, compiled=compiled,
                  amp_bf16=cuda, channels_last=True)


def engine_configs(arch, size, args, device, spec, loss_names) -> list:
    return [training.TrainConfig(data=spec, arch=arch, head=args.head, loss=name, image_size=size,
                                 batch_size=args.batch_size, optimizer="sgd", lr=1e-3, max_epochs=args.epochs,
                                 patience=args.epochs, lr_schedule="constant", seed=0, device=str(device),
                                 compile=args.compile_on, amp=True)
            for name in loss_names]


def train_seconds(run_dir: Path) -> list:
    return pd.read_csv(run_dir / "log.csv")["seconds"].tolist()


def run_engine(arch, size, args, device, bundle, spec, tmp: Path) -> dict:
    """(b) train_one of the cross-entropy run."""
    (cfg,) = engine_configs(arch, size, args, device, spec, ["cce"])
    run = training.train_one(cfg, runs_dir=tmp / f"engine-{arch}-{size}", data=bundle, progress=False)
    return result("engine", arch, size, len(bundle.splits["train"]), train_seconds(run), device,
                  compiled=args.compile_on, amp_bf16=device.type == "cuda", channels_last=training.CHANNELS_LAST)


def run_many(arch, size, args, device, bundle, spec, tmp: Path) -> list:
    """(d) the first ``--losses`` paper losses: train_many vs one train_one after another."""
    names = list(profiles.PAPER_LOSSES[:args.losses])
    configs = engine_configs(arch, size, args, device, spec, names)
    n = len(bundle.splits["train"])
    out = []
    for case in ("many", "sequential"):
        C.reset_peak(device)
        root = tmp / f"{case}-{arch}-{size}"
        t0 = C.now(device)
        if case == "many":
            dirs = training.train_many(configs, runs_dir=root, data=bundle, progress=False)
        else:
            dirs = [training.train_one(c, runs_dir=root, data=bundle, progress=False) for c in configs]
        wall = C.now(device) - t0
        per_run = [steady(train_seconds(d)) for d in dirs]
        epochs_counted = len(per_run[0])
        busy = sum(sum(s) for s in per_run)  # train_many splits each epoch's time among its members
        images = len(configs) * n * epochs_counted
        out.append({"case": case, "arch": arch, "size": size, "losses": names,
                    "images_per_second": images / busy if busy > 0 else None,
                    "wall_images_per_second": len(configs) * n * args.epochs / wall,
                    "wall_seconds": round(wall, 3), "train_seconds_counted": round(busy, 4),
                    "epochs_counted": epochs_counted, "peak_gpu_memory_gib": C.peak_gib(device), "error": None})
    return out


# ----------------------------------------------------------------------------- report
def ratios(results: list) -> list:
    by = {}
    for r in results:
        if r.get("error") is None and r.get("images_per_second"):
            by[(r["arch"], r["size"], r["case"])] = r

    def ratio(a, b, key="images_per_second"):
        return round(a[key] / b[key], 3) if a and b and a.get(key) and b.get(key) else None

    rows = []
    for arch, size in dict.fromkeys((r["arch"], r["size"]) for r in results):
        get = lambda case: by.get((arch, size, case))  # noqa: E731
        row = {"arch": arch, "size": size,
               "engine_over_ceiling": ratio(get("engine"), get("ceiling")),
               "engine_over_peer": ratio(get("engine"), get("peer")),
               "many_over_sequential": ratio(get("many"), get("sequential")),
               "many_over_sequential_wall": ratio(get("many"), get("sequential"), "wall_images_per_second")}
        row["targets_met"] = {k: (row[k] >= v if row[k] is not None else None) for k, v in TARGETS.items()}
        rows.append(row)
    return rows


def markdown(records: list) -> str:
    """Tables of every results file, newest first."""
    if not records:
        return "_No results yet._"
    parts = []
    for rec in reversed(records):
        res = {(r["arch"], r["size"], r["case"]): r for r in rec["results"]}
        rat = {(r["arch"], r["size"]): r for r in rec["ratios"]}
        s = rec["settings"]
        parts.append(C.header(rec))
        parts.append(f"\nbatch {s['batch_size']}, {s['images']} training images per epoch, {s['epochs']} epochs "
                     f"per case (first = warm-up, not counted), head `{s['head']}`, compile "
                     f"{'on' if s['compile_on'] else 'off'}, peer: {s['workers']} DataLoader workers decoding "
                     f"{s['jpeg_size']}² JPEGs. Images/s of training steps; peak GPU memory in GiB.\n")

        def cell(arch, size, case, key="images_per_second", digits=0):
            r = res.get((arch, size, case))
            if r is None:
                return "–"
            if r.get("error"):
                return "error"
            return C.fmt(r.get(key), digits)

        lines = ["| arch | size | (a) peer | (b) engine | (c) ceiling | engine ÷ ceiling | engine ÷ peer "
                 "| peak GiB a / b / c |", "|---|---|---:|---:|---:|---:|---:|---|"]
        for (arch, size), r in rat.items():
            if not any((arch, size, c) in res for c in ("peer", "engine", "ceiling")):
                continue
            mem = " / ".join(cell(arch, size, c, "peak_gpu_memory_gib", 2) for c in ("peer", "engine", "ceiling"))
            lines.append(f"| {arch} | {size}² | {cell(arch, size, 'peer')} | {cell(arch, size, 'engine')} | "
                         f"{cell(arch, size, 'ceiling')} | {C.fmt(r['engine_over_ceiling'], 2)} | "
                         f"{C.fmt(r['engine_over_peer'], 2)} | {mem} |")
        parts.append("\n".join(lines))
        many = [(a, z) for (a, z), r in rat.items() if (a, z, "many") in res]
        if many:
            k = len(res[(many[0][0], many[0][1], "many")].get("losses", []))
            lines = [f"\n(d) {k} losses at once (`train_many`) vs {k} sequential `train_one` runs; images/s summed "
                     "over the runs (training steps; wall = whole calls incl. set-up, validation, predictions):\n",
                     "| arch | size | train_many | sequential | ratio | wall ratio | peak GiB many / seq |",
                     "|---|---|---:|---:|---:|---:|---|"]
            for arch, size in many:
                r = rat[(arch, size)]
                mem = " / ".join(cell(arch, size, c, "peak_gpu_memory_gib", 2) for c in ("many", "sequential"))
                lines.append(f"| {arch} | {size}² | {cell(arch, size, 'many')} | {cell(arch, size, 'sequential')} "
                             f"| {C.fmt(r['many_over_sequential'], 2)} | {C.fmt(r['many_over_sequential_wall'], 2)} "
                             f"| {mem} |")
            parts.append("\n".join(lines))
        parts.append("")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device_obj
    env = C.environment(device, args.note)
    print(f"[bench] {env['device_name']}, torch {env['torch']}; archs {args.archs}, sizes {args.sizes}, "
          f"cases {args.cases}")
    bundle, spec = make_data(args.images, args.source_size)
    results = []
    with tempfile.TemporaryDirectory(prefix="lossbench-bench-") as tmp:
        tmp = Path(tmp)
        jpeg_bytes = write_jpegs(bundle, tmp / "jpeg", args.jpeg_size) if "peer" in args.cases else 0
        todo = [(a, s, c) for a in args.archs for s in args.sizes for c in args.cases
                if c != "many" or s in args.many_sizes]
        for arch, size, case in tqdm(todo, desc="benchmark", unit="case"):
            C.reset_peak(device)
            try:
                if case == "peer":
                    results.append(run_peer(arch, size, args, device, tmp / "jpeg"))
                elif case == "engine":
                    results.append(run_engine(arch, size, args, device, bundle, spec, tmp))
                elif case == "ceiling":
                    results.append(run_ceiling(arch, size, args, device))
                else:
                    results.extend(run_many(arch, size, args, device, bundle, spec, tmp))
            except Exception as exc:  # noqa: BLE001 - record it (e.g. out of memory) and go on
                msg = f"{type(exc).__name__}: {str(exc)[:300]}"
                print(f"[bench] {arch} {size}² {case} failed: {msg}")
                results.append({"case": case, "arch": arch, "size": size, "images_per_second": None,
                                "peak_gpu_memory_gib": C.peak_gib(device), "error": msg})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            last = results[-1]
            if last.get("images_per_second"):
                print(f"[bench] {arch:>15} {size:>4}² {last['case']:>10}: {last['images_per_second']:9.1f} img/s")
    env["load_average_at_end"] = list(os.getloadavg())
    settings = {k: getattr(args, k) for k in ("archs", "sizes", "cases", "images", "batch_size", "epochs", "losses",
                                              "many_sizes", "workers", "source_size", "jpeg_size", "head",
                                              "compile_on")}
    settings.update(data=spec, train_images=len(bundle.splits["train"]), jpeg_megabytes=round(jpeg_bytes / 2 ** 20, 2))
    record = {"benchmark": "train_throughput", "env": env, "settings": settings, "targets": TARGETS,
              "results": results, "ratios": ratios(results)}
    path = C.write_result("train_throughput", record, args.out)
    print(f"[bench] wrote {path}")
    if not args.no_readme:
        C.replace_region(args.readme, "train_throughput", markdown(C.load_results("train_throughput", args.out)))
        print(f"[bench] table regenerated in {args.readme}")
    failed = [r for r in results if r.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
