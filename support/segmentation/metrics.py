"""Mask metrics per image (IoU, Dice, pixel accuracy) and their bootstrap intervals over images.

For a predicted mask P and a true mask T (sets of pixels):

    Dice = 2 |P ∩ T| / (|P| + |T|)      IoU = |P ∩ T| / |P ∪ T|      pixel accuracy = (TP + TN) / (H W)

An image where both masks are empty scores Dice = IoU = 1 (nothing to find, nothing found).
A data-set score is the **mean over images** (each film counts once, whatever its lung size), and
its 95 % interval is the percentile bootstrap of that mean, resampling images
(:func:`support.stats.resample_indices`, unstratified).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import pandas as pd
import torch

from ..stats import resample_indices

METRICS = ("dice", "iou", "pixel_accuracy")


def check_masks(pred: torch.Tensor, true: torch.Tensor) -> None:
    """Both bool [N, H, W] of one shape, or a ValueError saying what differs."""
    for name, m in (("pred", pred), ("true", true)):
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.ndim != 3:
            raise ValueError(f"{name} masks must be a bool tensor [N, H, W], got "
                             f"{getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}")
    if pred.shape != true.shape:
        raise ValueError(f"predicted masks {tuple(pred.shape)} and true masks {tuple(true.shape)} differ in shape; "
                         "resize one to the other's resolution first")


def per_image_metrics(pred: torch.Tensor, true: torch.Tensor) -> pd.DataFrame:
    """One row per image: ``dice``, ``iou``, ``pixel_accuracy``, ``pred_area`` and ``true_area`` (fractions)."""
    check_masks(pred, true)
    p, t = pred.flatten(1), true.flatten(1)
    inter = (p & t).sum(1).double()
    sp, st = p.sum(1).double(), t.sum(1).double()
    union = sp + st - inter
    both_empty = union == 0
    dice = torch.where(both_empty, 1.0, 2 * inter / (sp + st).clamp_min(1))
    iou = torch.where(both_empty, 1.0, inter / union.clamp_min(1))
    acc = (p == t).double().mean(1)
    pixels = p.shape[1]
    return pd.DataFrame({"dice": dice.numpy(), "iou": iou.numpy(), "pixel_accuracy": acc.numpy(),
                         "pred_area": (sp / pixels).numpy(), "true_area": (st / pixels).numpy()})


def mean_scores(pred: torch.Tensor, true: torch.Tensor) -> Dict[str, float]:
    """Mean over images of each metric in :data:`METRICS`."""
    df = per_image_metrics(pred, true)
    return {m: float(df[m].mean()) for m in METRICS}


def bootstrap_summary(per_image: pd.DataFrame, n_boot: int = 1000, level: float = 0.95,
                      seed: int = 0) -> Dict[str, tuple]:
    """``{metric: (mean, lo, hi)}``: the mean over images and its percentile-bootstrap interval."""
    if len(per_image) == 0:
        raise ValueError("no images to summarise: the split is empty")
    idx = resample_indices(np.zeros(len(per_image)), n_boot, stratified=False, seed=seed)
    tail = 100 * (1 - level) / 2
    out = {}
    for m in METRICS:
        v = per_image[m].to_numpy(float)
        boot = v[idx].mean(1)
        out[m] = (float(v.mean()), float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail)))
    return out


def pack_masks(masks: torch.Tensor) -> np.ndarray:
    """bool [N, H, W] -> uint8 bits (8x smaller on disk)."""
    return np.packbits(masks.numpy().astype(bool), axis=-1)


def unpack_masks(packed: np.ndarray, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_masks` (``width`` = the masks' last dimension)."""
    return torch.from_numpy(np.unpackbits(packed, axis=-1, count=width).astype(bool))
