"""The end of a run: best weights -> ``predictions.npz`` and ``metrics.json``, and the run folder published
(:meth:`support.rundir.RunFolder.publish`). Two-stage runs fit their linear layer here first."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import artifacts
from .. import metrics as metrics_mod
from .batches import predict_many, predict_probs, to_device_images
from .embedding import KNN_K, fit_linear_head, knn_probs
from .member import Member


def finish_all(ms: Sequence[Member], bundle, size: int, device, amp: bool) -> None:
    """:func:`finish` each member; the val/test images are resized once and the end-to-end members'
    predictions computed together (fused where their architectures allow)."""
    if not ms:
        return
    for m in ms:
        m.model.load_state_dict(artifacts.load_state(m.run_dir / "best.pt", map_location=device))
    images = {split: to_device_images(bundle.splits[split].images, size, device) for split in ("val", "test")}
    plain = [m for m in ms if m.projection is None]
    probs = {}
    for split, x in images.items():
        probs.update({(m, split): p for m, p in zip(plain, predict_many([m.model for m in plain], x, amp,
                                                                          m.config.fuse))})
    for m in ms:
        finish(m, bundle, size, device, amp, images, probs)


def finish(m: Member, bundle, size: int, device, amp: bool, images: dict, given: dict) -> None:
    """Best weights (loaded) -> predictions.npz and metrics.json (last), then publish the folder."""
    m.finished = True
    extra = {}
    if m.projection is not None:
        m.projection.load_state_dict(artifacts.load_state(m.run_dir / "projection.pt", map_location=device))
        x_tr, y_tr = to_device_images(bundle.splits["train"].images, size, device), bundle.splits["train"].labels
        if m.config.mode == "two_stage":  # stage 2: the linear layer on frozen h, saved into best.pt
            extra["linear_stage"] = fit_linear_head(m.model, m.embed(x_tr, amp, projected=False), y_tr.numpy())
            artifacts.save_state(m.run_dir / "best.pt", m.model.state_dict())
        ref_z = m.embed(x_tr, amp)
        knn = {"k": KNN_K, "metric": "cosine", "space": "z (projection head output)"}
        for split in ("val", "test"):
            s = bundle.splits[split]
            if len(s):
                probs = knn_probs(ref_z, y_tr, m.embed(images[split], amp), len(bundle.classes))
                knn[f"{split}_accuracy"] = float((probs.argmax(1) == s.labels.numpy()).mean())
        extra["knn"] = knn
    arrays, report = {"classes": np.array(bundle.classes), "val_half": bundle.val_half()}, {}
    for split in ("val", "test"):
        s = bundle.splits[split]
        p = given.get((m, split))  # two-stage runs: here, after the linear stage fitted above
        probs_np = (p if p is not None else predict_probs(m.model, images[split], amp=amp)).cpu().numpy()
        arrays.update({f"{split}_probs": probs_np.astype(np.float32), f"{split}_labels": s.labels.numpy(),
                       f"{split}_ids": np.array(s.ids, dtype=str)})
        if len(s):
            report[split] = metrics_mod.classification_metrics(s.labels.numpy(), probs_np, bundle.classes)
    artifacts.write_npz(m.run_dir / "predictions.npz", **arrays)
    c = m.config
    epochs_run = len(m.log)
    summary = {
        "format_version": artifacts.RUN_FORMAT_VERSION, "key": c.key(), "loss": c.loss,
        "loss_params": c.loss_params, "arch": c.arch, "seed": c.seed, "data_source": bundle.source,
        "data": c.experiment()["data"], "classes": list(bundle.classes), "best_epoch": m.best_epoch,
        "epochs_run": epochs_run, "stopped_early": epochs_run < c.max_epochs, "monitor": c.monitor,
        "best_val_score": m.best_score, "train_seconds": m.train_seconds,
        "train_images_per_second": len(bundle.splits["train"]) * epochs_run / max(m.train_seconds, 1e-9),
        "device": str(device), "mode": c.mode, "fused_epochs": m.fused_epochs, **extra, **report,
    }
    m.folder.publish(summary)  # metrics.json last, then last.pt removed, then (force) the swap
