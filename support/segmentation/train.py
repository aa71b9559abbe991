"""Train the lung U-Net: ``train_seg(config)`` for one loss, ``train_losses(profile)`` for the paper's five.

Run folder ``runs/seg-<key>/``, with the classification runs' life cycle (one mechanism,
:mod:`support.rundir`): ``config.json`` first, ``log.csv`` (one row per epoch), ``best.pt``
(state dict of the epoch with the lowest val loss, the paper's ModelCheckpoint), ``last.pt``
(resume state, removed at the end), ``masks.npz`` (predicted and true val/test masks, bit-packed,
with ids) and ``metrics.json`` LAST. Every file is written atomically; a finished run is
skipped, an unfinished one resumed, ``force=True`` retrains into a staging folder that replaces
the old one only when it has finished.

Loop: Adam; per epoch a permutation seeded by ``(seed, epoch)`` (so a resumed run continues as
an uninterrupted one would, on the CPU); images are resized once on the device and kept uint8,
masks resized with the same antialiased bilinear filter and re-thresholded at 0.5. Validation
loss is the mean over fixed chunks of 32 images of the training loss (overlap losses are
per-batch scores, as Keras evaluates them). Early stopping and ReduceLROnPlateau watch it.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import artifacts, logs, paths
from ..data import load as load_data
from ..losses import build as build_loss
from ..rundir import RunFolder, git_sha, is_finished
from ..training import (TrainingError, augment_batch, prepare_batch, resolve_device, to_device_images,
                        train_input_stats)
from .config import RUN_PREFIX, SEG_LOSSES, SegConfig, build_model
from .metrics import mean_scores, pack_masks

log = logs.get("seg")

EVAL_CHUNK = 32


class SegmentationError(ValueError):
    """The data cannot be used for segmentation (no lung masks, empty split)."""


def run_dir_for(config: SegConfig, runs_dir=None) -> Path:
    """``runs/seg-<key>`` of ``config`` (under ``runs_dir`` when given)."""
    return paths.inside(Path(runs_dir) if runs_dir else paths.runs_dir(), RUN_PREFIX + config.key())


def to_device_masks(masks: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """bool [N,H,W] -> bool [N,size,size] on ``device`` (the images' filter, then >= 0.5)."""
    return to_device_images(masks.to(torch.uint8) * 255, size, device) >= 128


def seg_splits(bundle, size: int, device: torch.device) -> dict:
    """``{split: (images uint8 [N,S,S], masks bool [N,S,S])}`` on ``device``, with clear errors."""
    out = {}
    for name in ("train", "val", "test"):
        s = bundle.splits[name]
        if s.lung_masks is None:
            raise SegmentationError(f"{bundle.source or bundle.name} has no lung masks; train the U-Net on "
                                    "'phantom' or on your own masks with data={'name': 'lungmasks', 'root': ...}")
        if name != "test" and len(s) < 2:
            raise SegmentationError(f"{name} split of {bundle.source} has {len(s)} image(s); need at least 2")
        out[name] = (to_device_images(s.images, size, device), to_device_masks(s.lung_masks, size, device))
    return out


@torch.no_grad()
def predict_logits(model, images_u8: torch.Tensor, amp: bool = False, chunk: int = EVAL_CHUNK):
    """Yield logits [b,1,S,S] (float32) for chunks of uint8 images [N,S,S]."""
    model.eval()
    for s in range(0, len(images_u8), chunk):
        with torch.autocast(images_u8.device.type, dtype=torch.bfloat16, enabled=amp):
            yield model(prepare_batch(images_u8[s:s + chunk])).float()


def predict(model, images_u8: torch.Tensor, threshold: float = 0.5, amp: bool = False) -> torch.Tensor:
    """Binary masks bool [N,S,S] (on the CPU) for uint8 images [N,S,S] already at the model's size."""
    outs = [(torch.sigmoid(z[:, 0]) >= threshold).cpu() for z in predict_logits(model, images_u8, amp)]
    return torch.cat(outs) if outs else torch.zeros((0, *images_u8.shape[1:]), dtype=torch.bool)


class _State:
    """Model, optimiser, scheduler and early-stopping state of one run (what ``last.pt`` holds)."""

    def __init__(self, config: SegConfig, device, input_stats):
        torch.manual_seed(config.seed)  # initialisation depends on the seed alone
        self.model = build_model(config).to(device)
        self.model.set_input_stats(*input_stats)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode="min", factor=0.5, patience=5,
                                                                min_lr=1e-6) if config.lr_plateau else None
        self.next_epoch, self.best_loss, self.best_epoch, self.bad_epochs = 0, math.inf, -1, 0
        self.train_seconds, self.log = 0.0, []

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict() if self.sched else {}, "next_epoch": self.next_epoch,
                "best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "train_seconds": self.train_seconds, "log": pd.DataFrame(self.log).to_json(orient="split")}

    def restore(self, state: dict) -> None:
        from io import StringIO

        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        if self.sched and state["sched"]:
            self.sched.load_state_dict(state["sched"])
        for k in ("next_epoch", "best_loss", "best_epoch", "bad_epochs", "train_seconds"):
            setattr(self, k, state[k])
        self.log = pd.read_json(StringIO(state["log"]), orient="split").to_dict("records")


def _epoch(st: _State, loss_fn, config: SegConfig, x, m, gen: torch.Generator) -> float:
    """One pass over the training images; returns the mean training loss."""
    st.model.train()
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    batches = [perm[s:s + config.batch_size] for s in range(0, len(x), config.batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on one sample
        batches = batches[:-1]
    total, seen = torch.zeros((), device=x.device), 0
    amp = config.amp and x.device.type == "cuda"
    for idx in batches:
        xb, yb = prepare_batch(x[idx]), m[idx].unsqueeze(1).float()
        if config.augment:  # one warp for image and mask together, then re-binarise the mask
            both = augment_batch(torch.cat([xb, yb], 1), gen)
            xb, yb = both[:, :1].contiguous(memory_format=torch.channels_last), (both[:, 1:] >= 0.5).float()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = st.model(xb)
        loss = loss_fn(logits.float(), yb)
        st.opt.zero_grad(set_to_none=True)
        loss.backward()
        st.opt.step()
        total += loss.detach() * len(idx)
        seen += len(idx)
    return float(total) / max(seen, 1)  # the one host sync of the epoch


@torch.no_grad()
def _validate(st: _State, loss_fn, config: SegConfig, x, m) -> dict:
    amp = config.amp and x.device.type == "cuda"
    total, preds = 0.0, []
    for i, z in enumerate(predict_logits(st.model, x, amp)):
        target = m[i * EVAL_CHUNK:(i + 1) * EVAL_CHUNK].unsqueeze(1).float()
        total += float(loss_fn(z, target)) * len(z)
        preds.append((torch.sigmoid(z[:, 0]) >= config.threshold).cpu())
    scores = mean_scores(torch.cat(preds), m.cpu())
    return {"val_loss": total / len(x), **{f"val_{k}": v for k, v in scores.items()}}


def train_seg(config: SegConfig, runs_dir=None, force: bool = False, progress: bool = True, data=None,
              on_epoch_end: Optional[Callable[["_State", int], None]] = None) -> Path:
    """Train one U-Net (or return its finished folder) and return ``runs/seg-<key>``.

    ``data`` (optional) is the already loaded bundle of ``config.data``; ``on_epoch_end(state, epoch)``
    runs after each epoch is saved (``log.csv``, ``last.pt``). Raises
    :class:`~support.training.TrainingError` on a non-finite loss (the folder keeps its last
    good checkpoint and an ``error.json``) and :class:`SegmentationError` for unusable data.
    """
    final = run_dir_for(config, runs_dir)
    if is_finished(final) and not force:
        return final
    device = resolve_device(config.device)
    bundle = data if data is not None else load_data(**config.data, verbose=progress)
    folder = RunFolder(final, force)
    with folder.lock():
        if not folder.claim():  # finished by the process whose lock we waited for
            return final
        work = folder.path
        sets = seg_splits(bundle, config.image_size, device)
        (x_tr, m_tr), (x_va, m_va) = sets["train"], sets["val"]
        st = _State(config, device, train_input_stats(x_tr))
        loss_fn = build_loss(config.loss, **config.loss_params).to(device)
        state = folder.resume_state(device)
        if state is not None:
            st.restore(state)
            log.info(f"resuming {config.loss} at epoch {st.next_epoch} from {work / 'last.pt'}")
        folder.write_config({
            "config": dataclasses.asdict(config), "experiment": config.experiment(), "key": config.key(),
            "git_sha": git_sha(), "torch": torch.__version__, "device": str(device), "data_source": bundle.source})
        # the classifier's progress bar (support.training): one line per run, not one per epoch
        bar = tqdm(total=config.max_epochs, initial=st.next_epoch, desc=f"{config.loss} (seed {config.seed})",
                   disable=not progress, leave=True, unit="epoch")
        while st.next_epoch < config.max_epochs and st.bad_epochs < config.patience:
            epoch, t0 = st.next_epoch, time.perf_counter()
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            train_loss = _epoch(st, loss_fn, config, x_tr, m_tr, gen)
            seconds = time.perf_counter() - t0
            if not math.isfinite(train_loss):
                msg = (f"{config.loss}: training loss became {train_loss} in epoch {epoch}; run stopped, {work} "
                       "keeps the last good checkpoint. Lower the learning rate or check the loss parameters")
                folder.fail(msg, epoch)
                bar.close()
                raise TrainingError(msg)
            row = {"epoch": epoch, "train_loss": train_loss, **_validate(st, loss_fn, config, x_va, m_va),
                   "lr": st.opt.param_groups[0]["lr"], "seconds": seconds}
            st.log.append(row)
            st.train_seconds += seconds
            if row["val_loss"] < st.best_loss - config.min_delta:
                st.best_loss, st.best_epoch, st.bad_epochs = row["val_loss"], epoch, 0
                artifacts.save_state(work / "best.pt", st.model.state_dict())
            else:
                st.bad_epochs += 1
            if st.sched:
                st.sched.step(row["val_loss"])
            st.next_epoch = epoch + 1
            folder.save_progress(st.state(), st.log)
            if on_epoch_end is not None:
                on_epoch_end(st, epoch)
            bar.update()
            bar.set_postfix(loss=f"{train_loss:.3f}", val_loss=f"{row['val_loss']:.3f}",
                            val_dice=f"{row['val_dice']:.3f}")
        bar.close()
        _finish(st, config, bundle, sets, folder, device)
    return final


def _finish(st: _State, config: SegConfig, bundle, sets: dict, folder: RunFolder, device) -> None:
    """Best weights -> masks.npz, then metrics.json and the folder published (:meth:`RunFolder.publish`)."""
    work = folder.path
    st.model.load_state_dict(artifacts.load_state(work / "best.pt", map_location=device))
    amp = config.amp and device.type == "cuda"
    arrays, report = {"image_size": np.array(config.image_size)}, {}
    for split in ("val", "test"):
        x, truth = sets[split]
        pred = predict(st.model, x, config.threshold, amp)
        arrays.update({f"{split}_pred": pack_masks(pred), f"{split}_true": pack_masks(truth.cpu()),
                       f"{split}_ids": np.array(bundle.splits[split].ids, dtype=str)})
        report[split] = mean_scores(pred, truth.cpu())
    # The "average lung" prior: the pixel-wise majority of the training masks (a trivial baseline).
    arrays["prior"] = pack_masks((sets["train"][1].float().mean(0) >= 0.5).cpu()[None])
    artifacts.write_npz(work / "masks.npz", **arrays)
    summary = {"format_version": artifacts.RUN_FORMAT_VERSION, "task": "segmentation", "key": config.key(),
               "loss": config.loss, "loss_params": config.loss_params, "encoder": config.encoder,
               "image_size": config.image_size, "seed": config.seed, "data_source": bundle.source,
               "data": config.experiment()["data"], "best_epoch": st.best_epoch, "epochs_run": len(st.log),
               "stopped_early": len(st.log) < config.max_epochs, "best_val_loss": st.best_loss,
               "train_seconds": st.train_seconds, "device": str(device), **report}
    folder.publish(summary)  # metrics.json (marks the run finished), then last.pt removed, then the swap


def train_losses(profile: str = "quick", data: Optional[dict] = None, losses: Iterable[str] = SEG_LOSSES,
                 runs_dir=None, force: bool = False, progress: bool = True, **overrides) -> List[Path]:
    """Train (or reuse) one U-Net per loss of a segmentation profile; returns the run folders.

    ``data`` replaces the profile's data (e.g. ``{"name": "lungmasks", "root": "/data/Montgomery"}``);
    ``overrides`` change other :class:`SegConfig` fields. The data is loaded once for all losses.
    """
    extra = {"data": data} if data else {}
    configs = [SegConfig.from_profile(profile, loss=loss, **extra, **overrides) for loss in losses]
    todo = [c for c in configs if force or not is_finished(run_dir_for(c, runs_dir))]
    bundle = load_data(**configs[0].data, verbose=progress) if todo else None
    return [train_seg(c, runs_dir, force, progress, data=bundle) for c in configs]
