"""Localization metrics: does a CAM point at the lesion (or at least into the lungs)?

Hand-written because no library we use has them: pytorch-grad-cam ships
*faithfulness* metrics (ROAD, wrapped in :func:`road_scores`), torchmetrics /
MONAI score segmentations, not saliency maps against a mask. Every metric
shares one signature, ``fn(cams, masks, **params) -> float64[N]`` (one value
per image), with ``cams`` float ``[N, H, W]`` (>= 0, any scale) and ``masks``
bool ``[N, H, W]`` of the same size. An image whose mask is empty gets NaN
(undefined), never 0; callers skip such images with a note.

``pointing``  pointing game (Zhang et al. 2016, "Top-down neural attention by
              excitation backprop"): 1 if the CAM maximum lies inside the mask.
              Ties (flat regions, an all-zero CAM) are scored as the share of the
              tied maxima inside the mask, i.e. the chance that a maximum picked
              at random hits; a uniform CAM therefore scores the mask's area
              fraction. No tolerance margin (the original allows 15 px at 224²).
              Quantus ``PointingGame`` scores ``any(mask[argwhere(cam == max)])``
              (a hit if ANY tied maximum is inside): equal to ours when the maximum
              is unique; on ties ours is the expected hit, Quantus's the best case.
``energy``    share of the CAM's total mass inside the mask,
              ``sum(cam * mask) / sum(cam)`` (the energy-based pointing game of
              Score-CAM, Wang et al. 2020, with masks instead of boxes). A uniform
              (or all-zero) CAM scores the mask's area fraction. This is Quantus's
              ``RelevanceMassAccuracy`` (Arras et al. 2022), ``sum(a*s) / sum(a)``,
              which is undefined (0/0) for an all-zero CAM where ours gives the area.
``tests/test_crosschecks.py`` checks both against those definitions.
``iou``, ``dice``  overlap of the binarised CAM ``cam >= t * max(cam)`` with the
              mask at relative threshold ``t`` (IoU = |A∩B|/|A∪B|,
              Dice = 2|A∩B|/(|A|+|B|)).
``area``      the mask's area fraction: the score of a CAM that knows nothing.

:func:`best_threshold` picks ``t`` maximising the mean IoU on *validation*
images; it is then applied to the test images (nothing is selected on test).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np

from ..registry import Registry
from .cams import LocalizationError

LOC_METRICS: Registry[Callable[..., np.ndarray]] = Registry("localization metric")
#: Relative thresholds searched by :func:`best_threshold` (and reported as fixed ones: 0.25, 0.5, 0.75).
THRESHOLD_GRID = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))
FIXED_THRESHOLDS = (0.25, 0.5, 0.75)


def check_pair(cams, masks) -> tuple:
    """Validate and return ``(cams float64 [N,H,W], masks bool [N,H,W])``."""
    cams = np.asarray(cams, dtype=np.float64)
    masks = np.asarray(masks)
    if cams.ndim == 2:
        cams, masks = cams[None], masks[None]
    if cams.ndim != 3 or masks.shape != cams.shape:
        raise LocalizationError(f"cams and masks must both be [N, H, W] of one shape, got {cams.shape} and {masks.shape}; "
                                "resize the CAMs to the mask size first (see localization.resize_cams)")
    if masks.dtype != bool:
        raise LocalizationError(f"masks must be bool, got {masks.dtype}")
    if not np.all(np.isfinite(cams)) or (cams.size and cams.min() < 0):
        raise LocalizationError("cams must be finite and >= 0 (pytorch-grad-cam CAMs are in [0, 1])")
    return cams, masks


def _undefined(masks: np.ndarray, values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    values[~masks.reshape(len(masks), -1).any(1)] = np.nan  # empty mask: undefined, not a miss
    return values


@LOC_METRICS.register("pointing")
def pointing_game(cams, masks) -> np.ndarray:
    """1 if the CAM maximum is inside the mask (ties: share of tied maxima inside); NaN for an empty mask."""
    cams, masks = check_pair(cams, masks)
    flat, m = cams.reshape(len(cams), -1), masks.reshape(len(masks), -1)
    top = flat == flat.max(1, keepdims=True)
    return _undefined(masks, (top & m).sum(1) / top.sum(1))


@LOC_METRICS.register("energy")
def energy_inside(cams, masks) -> np.ndarray:
    """Share of CAM mass inside the mask (an all-zero CAM counts as uniform); NaN for an empty mask."""
    cams, masks = check_pair(cams, masks)
    flat, m = cams.reshape(len(cams), -1), masks.reshape(len(masks), -1)
    total = flat.sum(1)
    inside = (flat * m).sum(1)
    area = m.mean(1)
    return _undefined(masks, np.where(total > 0, inside / np.where(total > 0, total, 1.0), area))


def binarize(cams, threshold: float) -> np.ndarray:
    """``cam >= threshold * max(cam)`` per image (an all-zero CAM selects every pixel)."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise LocalizationError(f"threshold={threshold!r} is relative to each CAM's maximum and must lie in [0, 1]")
    cams = np.asarray(cams, dtype=np.float64)
    peak = cams.reshape(len(cams), -1).max(1)[:, None, None]
    return cams >= threshold * peak


def _overlap(cams, masks, threshold):
    cams, masks = check_pair(cams, masks)
    b = binarize(cams, threshold).reshape(len(cams), -1)
    m = masks.reshape(len(masks), -1)
    inter = (b & m).sum(1).astype(np.float64)
    return inter, b.sum(1).astype(np.float64), m.sum(1).astype(np.float64), masks


@LOC_METRICS.register("iou")
def iou(cams, masks, threshold: float = 0.5) -> np.ndarray:
    """IoU of ``cam >= threshold * max`` with the mask; NaN for an empty mask."""
    inter, a, b, masks = _overlap(cams, masks, threshold)
    return _undefined(masks, inter / np.maximum(a + b - inter, 1.0))


@LOC_METRICS.register("dice")
def dice(cams, masks, threshold: float = 0.5) -> np.ndarray:
    """Dice of ``cam >= threshold * max`` with the mask; NaN for an empty mask."""
    inter, a, b, masks = _overlap(cams, masks, threshold)
    return _undefined(masks, 2 * inter / np.maximum(a + b, 1.0))


@LOC_METRICS.register("area")
def area_fraction(cams, masks) -> np.ndarray:
    """The mask's share of the image: what ``energy`` and ``pointing`` give a CAM without information."""
    cams, masks = check_pair(cams, masks)
    return _undefined(masks, masks.reshape(len(masks), -1).mean(1))


def best_threshold(cams, masks, grid: Sequence[float] = THRESHOLD_GRID) -> float:
    """The relative threshold with the highest mean IoU over images with a non-empty mask.

    Call it on VALIDATION images and apply the result to test images.
    """
    cams, masks = check_pair(cams, masks)
    keep = masks.reshape(len(masks), -1).any(1)
    if not keep.any():
        raise LocalizationError("best_threshold needs at least one image with a non-empty mask")
    scores = [iou(cams[keep], masks[keep], t).mean() for t in grid]
    return float(grid[int(np.argmax(scores))])


def image_metrics(cams, masks, prefix: str, best_t: float | None = None) -> Dict[str, np.ndarray]:
    """Every metric of one mask kind as columns ``<prefix>_<metric>[@t]`` (one value per image)."""
    out = {f"{prefix}_area": area_fraction(cams, masks), f"{prefix}_pointing": pointing_game(cams, masks),
           f"{prefix}_energy": energy_inside(cams, masks)}
    for t in FIXED_THRESHOLDS:
        out[f"{prefix}_iou@{t:g}"] = iou(cams, masks, t)
        out[f"{prefix}_dice@{t:g}"] = dice(cams, masks, t)
    if best_t is not None:
        out[f"{prefix}_iou@best"] = iou(cams, masks, best_t)
        out[f"{prefix}_dice@best"] = dice(cams, masks, best_t)
    return out


def road_scores(model, images_u8, cams, targets, percentiles: Sequence[int] = (20, 40, 60, 80),
                seed: int = 0) -> np.ndarray:
    """pytorch-grad-cam's ROAD (Rong et al. 2022) per image: (LeRF - MoRF) / 2 of the target's softmax score.

    ``cams`` at the images' (model input) size. Removing the *most* relevant
    pixels first (MoRF) should hurt the prediction more than removing the
    least relevant (LeRF): higher = more faithful. Softmax targets make the
    score comparable across losses whose logits live on different scales.
    The imputation adds noise: ``seed`` fixes it.
    """
    import torch
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from ..training import prepare_batch
    from .cams import check_images, model_device

    x = prepare_batch(check_images(images_u8, model_device(model)), channels_last=False)
    cams = np.asarray(cams, dtype=np.float32)
    if cams.shape != tuple(images_u8.shape):
        raise LocalizationError(f"ROAD needs CAMs at the input size {tuple(images_u8.shape)}, got {cams.shape}")
    targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in np.asarray(targets).reshape(-1)]
    model.eval()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            return np.asarray(ROADCombined(percentiles=list(percentiles))(x, cams, targets, model), dtype=np.float64)
    finally:
        torch.random.set_rng_state(state)
