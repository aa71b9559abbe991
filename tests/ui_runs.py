"""Finished run folders for the panel tests, written with the kit's own artifact functions (no training).

The images and labels are the smoke-sized phantom's own test and val splits
(so that Grad-CAM can find each run's image), the probabilities are drawn so
that a loss's accuracy is known, and ``best.pt`` is the state dict of an
untrained model of the smoke architecture (loadable, so CAMs can be computed).
"""
from __future__ import annotations

import numpy as np

from support import artifacts, metrics, models

DATA = {"name": "phantom", "n": 240, "image_size": 64, "seed": 0, "difficulty": 1.0, "marker_bias": 0.0}
SOURCE = "CXR phantom (generated, seed 0, n=240, 64²) with drawn test predictions"
ARCH = {"arch": "small_cnn", "arch_params": {"width": 8}, "head": "paper", "dcl_channels": 128, "image_size": 32}


def splits():
    """(classes, {split: (labels, ids)}) of the smoke phantom (cached in $LOSSBENCH_DATA_DIR)."""
    from support import data

    bundle = data.load(**DATA, verbose=False)
    return list(bundle.classes), {s: (bundle.splits[s].labels.numpy(), list(bundle.splits[s].ids))
                                  for s in ("val", "test")}


def probs_with_accuracy(y: np.ndarray, k: int, correct: float, rng) -> np.ndarray:
    """Probabilities whose argmax is right on the first ``round(correct * n)`` samples, wrong on the rest."""
    n = len(y)
    pred = y.copy()
    wrong = np.arange(n) >= round(correct * n)
    pred[wrong] = (y[wrong] + 1) % k
    p = rng.uniform(0.05, 0.3, size=(n, k))
    p[np.arange(n), pred] = rng.uniform(0.6, 0.9, size=n)
    return p / p.sum(1, keepdims=True)


def make_run(root, loss: str, seed: int, correct: float, labels, classes, rng, epochs: int = 3):
    """Write one finished run folder; return its path. ``correct`` sets the val and test accuracy."""
    exp = {**ARCH, "data": DATA, "loss": loss, "loss_params": {}, "seed": seed, "format_version": 1}
    key = artifacts.config_key(exp)
    d = root / key
    arrays, scores = {"classes": np.array(classes)}, {}
    for split, (y, ids) in labels.items():
        p = probs_with_accuracy(y, len(classes), correct, rng)
        arrays.update({f"{split}_probs": p.astype(np.float32), f"{split}_labels": y, f"{split}_ids": np.array(ids)})
        scores[split] = metrics.classification_metrics(y, p, classes)
    artifacts.write_npz(d / "predictions.npz", **arrays)
    artifacts.write_json(d / "config.json", {"config": exp, "experiment": exp, "classes": classes,
                                             "data_source": SOURCE, "key": key})
    log = "epoch,train_loss,val_loss,val_accuracy,val_mcc\n" + "".join(
        f"{e},{1.1 - 0.1 * e:.3f},{1.15 - 0.08 * e:.3f},{correct * (e + 1) / epochs:.3f},{0.1 * e:.3f}\n"
        for e in range(epochs))
    artifacts.write_text(d / "log.csv", log)
    model = models.build(ARCH["arch"], len(classes), head=ARCH["head"], dcl_channels=ARCH["dcl_channels"],
                         **ARCH["arch_params"])
    artifacts.save_state(d / "best.pt", model.state_dict())
    artifacts.write_json(d / "metrics.json", {
        "format_version": artifacts.RUN_FORMAT_VERSION, "key": key, "loss": loss, "loss_params": {}, "seed": seed,
        "arch": ARCH["arch"], "data": DATA, "data_source": SOURCE, "classes": classes, "best_epoch": epochs - 1,
        "epochs_run": epochs, "train_seconds": 1.0, **scores})
    return d
