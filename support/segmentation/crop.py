"""The lung-mask stage: U-Net masks of a data source, written once for ``load(..., lung_crop=...)``.

:func:`make_lung_masks` trains (or reuses) the U-Nets of a segmentation profile, ANDs the top-k by
validation Dice over every film of the source and writes the masks to the file that
``support.data.load(..., lung_crop=...)`` reads (:func:`support.data.lungcrop.masks_path`): loading
data never trains a model. Notebook 02 runs it; so does :func:`support.segmentation.train_cropped`.
The crop itself (box, padding, fallback) lives in :mod:`support.data.lungcrop`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from .. import artifacts, logs
from ..data.containers import SPLITS
from ..data.core import cache_path, load, resolve_params
from ..data.lungcrop import masks_path, read_masks, write_masks
from ..training import resolve_device, to_device_images
from .evaluate import SegRun, top_k as pick
from .train import predict, train_losses

log = logs.get("data")


def predict_masks(runs: Sequence, images: torch.Tensor, device: str = "auto") -> torch.Tensor:
    """AND of the runs' binary masks bool [N, S, S] for uint8 images [N, H, W] (resized to the runs' S)."""
    sizes = {r.image_size for r in runs}
    if len(sizes) != 1:
        raise ValueError(f"the runs were trained at different image sizes {sorted(sizes)}; AND needs one size")
    dev = resolve_device(device)
    x = to_device_images(images, sizes.pop(), dev)
    out = None
    for r in runs:
        pred = predict(r.model(dev), x, r.config.threshold, amp=dev.type == "cuda")
        out = pred if out is None else out & pred
    return out


def make_lung_masks(name: str = "phantom", lung_crop=True, *, runs_dir=None, force: bool = False,
                    verbose: bool = True, **params) -> Optional[Path]:
    """Write the U-Net lung masks of source ``name`` (``params``: its ``load`` parameters); returns the file.

    ``lung_crop`` (see :func:`support.data.lungcrop.lung_crop_spec`): ``True`` is the AND of the top-3
    U-Nets of the ``quick`` segmentation profile (trained now, on the profile's phantom, when not
    finished yet). ``"true_masks"`` needs no stage (returns None). A finished file made by the same
    runs is kept; ``force=True`` predicts the masks again, never retrains the U-Nets (use
    ``train_losses(force=True)``).
    """
    _, resolved = resolve_params(name, {**params, "lung_crop": lung_crop})
    spec = resolved.pop("lung_crop")
    if spec["masks"] == "true":
        return None
    if spec["seg_data"] is None and name != "phantom":
        raise ValueError(f"lung_crop on {name!r}: U-Nets trained on phantom lungs would crop real films. "
                         "Pass lung_crop={'seg_data': {'name': 'lungmasks', 'root': '<Montgomery/Shenzhen/JSRT "
                         "folder>'}} (or {'seg_data': {'name': 'phantom'}} to insist)")
    dirs = train_losses(spec["seg_profile"], spec["seg_data"], spec["seg_losses"], runs_dir=runs_dir, progress=verbose)
    chosen = pick([SegRun(d) for d in dirs], spec["top_k"])
    # the runs' metrics.json text changes when a run is retrained under the same key (force=True)
    provenance = {"masks": "and", "runs": sorted((r.key, artifacts.config_key(r.metrics)) for r in chosen)}
    path = masks_path(cache_path(name, resolved).name, spec)
    if path.exists() and not force:
        try:
            if artifacts.config_key(read_masks(path)[1]) == artifacts.config_key(provenance):
                return path
        except artifacts.ArtifactError as exc:
            log.warning(f"lung masks {path} unreadable ({exc}); predicting them again")
    base = load(name, verbose=verbose, **params)
    masks = {s: predict_masks(chosen, base.splits[s].images) for s in SPLITS}
    label = f"AND of {len(chosen)} U-Nets: {', '.join(r.loss for r in chosen)}"
    write_masks(path, masks, provenance, label)
    if verbose:
        log.info(f"lung masks of {base.source} ({label}) in {path.name}")
    return path
