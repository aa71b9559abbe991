"""The lung crop: bounding box of the lung mask + 5 % padding, resized back to the image size.

Paper (``generate_bounding_box``, notes 1.2): tight box of the mask's nonzero rows and columns,
padded by 5 % of the box height (top and bottom) and width (left and right), clipped to the
image, cropped and resized to the classifier's input size (so the aspect ratio is not kept).
Differences, each a parameter:

* ``min_component`` (our addition, 0.5 % of the image): connected specks smaller than this are
  dropped before the box, so that one stray pixel cannot stretch the box to the whole film
  (``min_component=0`` reproduces the paper).
* the fallback: an empty mask, or one covering less than ``min_area`` (5 %) or more than
  ``max_area`` (95 %) of the image, keeps the **whole image**; one :class:`CropFallbackWarning`
  per call counts them and the bundle's ``meta.crop_fallback`` says why, per image.

The box is found at the mask's resolution and scaled to the image's, so masks predicted at 64²
crop 256² films. Lung and lesion masks are cropped with their image (localisation stays valid).
``meta`` gains ``crop_y0, crop_y1, crop_x0, crop_x1`` (half-open, original pixels) and ``crop_fallback``.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import artifacts, logs, paths
from ..data.containers import SPLITS, DataBundle, Split

log = logs.get("data")

CROP_DEFAULTS = {"pad": 0.05, "min_area": 0.05, "max_area": 0.95, "min_component": 0.005}
#: Bump when the crop's output changes: it is part of the crop cache key.
CROP_VERSION = 1


class CropFallbackWarning(UserWarning):
    """Some images kept their whole frame because their lung mask was empty or implausible."""


def clean_mask(mask: np.ndarray, min_component: float = CROP_DEFAULTS["min_component"]) -> np.ndarray:
    """``mask`` without connected components (8-neighbourhood) smaller than ``min_component`` of the image."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if min_component <= 0 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_component * mask.size
    keep[0] = False
    return keep[labels]


def crop_box(mask, pad: float = 0.05, min_area: float = 0.05, max_area: float = 0.95,
             min_component: float = 0.005) -> Tuple[Optional[Tuple[int, int, int, int]], str]:
    """``((y0, y1, x0, x1), "")`` half-open in mask pixels, or ``(None, reason)`` for the fallback."""
    mask = clean_mask(np.asarray(mask, dtype=bool), min_component)
    area = float(mask.mean()) if mask.size else 0.0
    if area == 0:
        return None, "empty mask"
    if not min_area <= area <= max_area:
        return None, f"implausible mask: covers {area:.1%} of the image (plausible: {min_area:.0%} to {max_area:.0%})"
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    ph, pw = pad * (y1 - y0), pad * (x1 - x0)
    h, w = mask.shape
    return (max(0, math.floor(y0 - ph)), min(h, math.ceil(y1 + ph)),
            max(0, math.floor(x0 - pw)), min(w, math.ceil(x1 + pw))), ""


def scale_box(box, from_shape, to_shape) -> Tuple[int, int, int, int]:
    """A box in ``from_shape`` pixels as the (outward-rounded, clipped) box in ``to_shape`` pixels."""
    sy, sx = to_shape[0] / from_shape[0], to_shape[1] / from_shape[1]
    y0, y1, x0, x1 = box
    return (max(0, math.floor(y0 * sy)), min(to_shape[0], math.ceil(y1 * sy)),
            max(0, math.floor(x0 * sx)), min(to_shape[1], math.ceil(x1 * sx)))


def _resize(patch: torch.Tensor, shape) -> torch.Tensor:
    """float [h, w] -> float [H, W], antialiased bilinear (area-like when shrinking, as INTER_AREA)."""
    return F.interpolate(patch[None, None], size=tuple(shape), mode="bilinear", antialias=True,
                         align_corners=False)[0, 0]


def _crop_split(split: Split, masks: torch.Tensor, params: dict) -> Tuple[Split, list]:
    if len(masks) != len(split):
        raise ValueError(f"{len(masks)} masks for {len(split)} images; pass one mask per image")
    shape = tuple(split.images.shape[1:])
    images = torch.empty_like(split.images)
    out = {k: None if getattr(split, k) is None else torch.empty_like(getattr(split, k))
           for k in ("lung_masks", "lesion_masks")}
    boxes, fallbacks = [], []
    for i in range(len(split)):
        box, reason = crop_box(masks[i].numpy(), **params)
        if box is None:
            box = (0, shape[0], 0, shape[1])
            fallbacks.append((split.ids[i], reason))
        else:
            box = scale_box(box, tuple(masks.shape[1:]), shape)
        y0, y1, x0, x1 = box
        images[i] = _resize(split.images[i, y0:y1, x0:x1].float(), shape).round_().clamp_(0, 255).to(torch.uint8)
        for k, dst in out.items():
            if dst is not None:
                dst[i] = _resize(getattr(split, k)[i, y0:y1, x0:x1].float(), shape) >= 0.5
        boxes.append(box + (reason,))
    meta = split.meta.copy() if split.meta is not None else pd.DataFrame({"id": split.ids})
    columns = list(zip(*boxes)) if boxes else [()] * 5
    for col, values in zip(("crop_y0", "crop_y1", "crop_x0", "crop_x1", "crop_fallback"), columns):
        meta[col] = list(values)
    return Split(images=images, labels=split.labels.clone(), ids=list(split.ids), meta=meta, **out), fallbacks


def crop_bundle(bundle: DataBundle, masks: Dict[str, torch.Tensor], label: str = "lung masks",
                **params) -> DataBundle:
    """``bundle`` with every image cropped to its lung box (module doc); ``masks[split]`` bool [N, h, w].

    ``params`` override :data:`CROP_DEFAULTS`. The images keep their size and dtype, so the
    cropped bundle drops into any classifier in place of the original.
    """
    unknown = sorted(set(params) - set(CROP_DEFAULTS))
    if unknown:
        raise TypeError(f"crop_bundle got unknown parameter(s) {unknown}; valid: {', '.join(CROP_DEFAULTS)}")
    params = {**CROP_DEFAULTS, **params}
    splits, fallbacks = {}, []
    for s in SPLITS:
        if s not in masks or masks[s] is None:
            raise ValueError(f"no masks for the {s} split; pass masks for {SPLITS}")
        splits[s], fb = _crop_split(bundle.splits[s], masks[s].bool().cpu(), params)
        fallbacks += [(s, *f) for f in fb]
    if fallbacks:
        shown = "; ".join(f"{s}/{i}: {why}" for s, i, why in fallbacks[:5])
        warnings.warn(f"lung crop: {len(fallbacks)} of {sum(len(v) for v in splits.values())} image(s) kept the "
                      f"whole image (mask empty or implausible), e.g. {shown}. See meta['crop_fallback']",
                      CropFallbackWarning, stacklevel=2)
    return DataBundle(classes=bundle.classes, splits=splits, source=f"{bundle.source} · lung crop ({label})",
                      name=bundle.name, params={**bundle.params, "lung_crop": label})


def crop_summary(base: DataBundle, cropped: DataBundle) -> pd.DataFrame:
    """Per split: images, fallbacks, mean box area (fraction of the image) and, where the source
    knows the true lungs, their coverage (fraction of true lung pixels inside the box: mean, min)."""
    rows = []
    for s in SPLITS:
        meta, lungs = cropped.splits[s].meta, base.splits[s].lung_masks
        if meta is None or "crop_y0" not in meta:
            raise ValueError(f"{cropped.source} carries no crop boxes; pass the bundle crop_bundle returned")
        h, w = base.splits[s].images.shape[1:]
        boxes = meta[["crop_y0", "crop_y1", "crop_x0", "crop_x1"]].to_numpy(int)
        row = {"split": s, "images": len(meta), "fallbacks": int((meta["crop_fallback"] != "").sum()),
               "box_area": float(((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])).mean() / (h * w))
               if len(meta) else float("nan")}
        if lungs is not None and len(meta):
            cover = [float(lungs[i, y0:y1, x0:x1].sum() / max(int(lungs[i].sum()), 1))
                     for i, (y0, y1, x0, x1) in enumerate(boxes)]
            row.update(lung_coverage=float(np.mean(cover)), lung_coverage_min=float(np.min(cover)))
        rows.append(row)
    return pd.DataFrame(rows)


def predict_masks(runs: Sequence, images: torch.Tensor, device: str = "auto") -> torch.Tensor:
    """AND of the runs' binary masks bool [N, S, S] for uint8 images [N, H, W] (resized to the runs' S)."""
    from ..training import resolve_device, to_device_images
    from .train import predict

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


#: Options of a U-Net crop (``lung_crop=True`` or a dict): the AND of the top-``top_k`` U-Nets of
#: segmentation profile ``seg_profile`` trained with ``seg_losses`` on ``seg_data`` (None: the profile's
#: phantom). ``crop`` overrides :data:`CROP_DEFAULTS`.
UNET_DEFAULTS = {"seg_profile": "quick", "seg_data": None, "seg_losses": None, "top_k": 3}


def lung_crop_spec(lung_crop) -> dict:
    """The canonical form of a ``lung_crop`` option (what data and run keys hash).

    ``True`` -> the AND of U-Nets with :data:`UNET_DEFAULTS`; ``"true_masks"`` -> the source's own
    lung masks; a dict -> ``{"masks": "unet" | "true", **options}`` with the defaults filled in,
    e.g. ``{"seg_profile": "smoke"}`` or ``{"masks": "true", "crop": {"pad": 0.1}}``.
    """
    from .config import SEG_LOSSES, profile

    if lung_crop is True:
        lung_crop = {}
    elif lung_crop == "true_masks":
        lung_crop = {"masks": "true"}
    elif not isinstance(lung_crop, dict):
        raise ValueError(f"lung_crop={lung_crop!r}: use True (AND of trained U-Nets), 'true_masks' (the source's "
                         "own lung masks), a dict of options (e.g. {'seg_profile': 'smoke'}) or False")
    opts = dict(lung_crop)
    masks = opts.pop("masks", "unet")
    crop = opts.pop("crop", None) or {}
    if not isinstance(crop, dict) or set(crop) - set(CROP_DEFAULTS):
        raise ValueError(f"lung_crop crop={crop!r}: a dict with keys among {', '.join(CROP_DEFAULTS)}")
    spec = {"masks": masks}
    if masks == "unet":
        unknown = sorted(set(opts) - set(UNET_DEFAULTS))
        if unknown:
            raise ValueError(f"lung_crop got unknown option(s) {unknown}; valid: masks, crop, {', '.join(UNET_DEFAULTS)}")
        spec.update({**UNET_DEFAULTS, **opts})
        profile(spec["seg_profile"])  # an unknown profile fails here, naming the valid ones
        spec["seg_losses"] = list(spec["seg_losses"] or SEG_LOSSES)
        if not isinstance(spec["top_k"], int) or isinstance(spec["top_k"], bool) or spec["top_k"] < 1:
            raise ValueError(f"lung_crop top_k={spec['top_k']!r} must be a positive int (the paper: 3)")
    elif masks == "true":
        if opts:
            raise ValueError(f"lung_crop with masks='true' takes only 'crop', got {sorted(opts)}")
    else:
        raise ValueError(f"lung_crop masks={masks!r}: use 'unet' (AND of trained U-Nets) or 'true' (the source's masks)")
    spec["crop"] = {**CROP_DEFAULTS, **crop}
    return spec


def lung_crop_source(name: str = "phantom", lung_crop=True, *, runs_dir=None, cache: bool = True,
                     force: bool = False, verbose: bool = True, **params) -> DataBundle:
    """``support.data.load(name, lung_crop=..., **params)``: the source's bundle, lung-cropped and cached.

    ``lung_crop`` (see :func:`lung_crop_spec`): ``True`` crops to the AND of the top-3 U-Nets of the
    ``quick`` segmentation profile (trained now, on the profile's phantom, when not finished yet);
    ``"true_masks"`` to the source's own ground-truth lung masks (phantom, lungmasks).
    The cache key covers the source's cache file (its parameters and files), the mask provenance
    (the chosen runs' keys and metrics, so a retrained run invalidates it), the crop parameters and
    :data:`CROP_VERSION`; not the package's code (bump the version).
    ``force=True`` rebuilds the data and the crop, never the U-Nets (use ``train_losses(force=True)``).
    """
    from ..data.core import _read_cache, _write_cache, cache_path, load, resolve_params
    from .evaluate import SegRun, top_k as pick
    from .train import train_losses

    _, resolved = resolve_params(name, {**params, "lung_crop": lung_crop})
    spec = resolved.pop("lung_crop")
    if spec["masks"] == "true":
        chosen, provenance, label = None, {"masks": "true"}, "true lung masks"
    else:
        if spec["seg_data"] is None and name != "phantom":
            raise ValueError(f"lung_crop on {name!r}: U-Nets trained on phantom lungs would crop real films. "
                             "Pass lung_crop={'seg_data': {'name': 'lungmasks', 'root': '<Montgomery/Shenzhen/JSRT "
                             "folder>'}} (or {'seg_data': {'name': 'phantom'}} to insist)")
        dirs = train_losses(spec["seg_profile"], spec["seg_data"], spec["seg_losses"], runs_dir=runs_dir,
                            progress=verbose)
        chosen = pick([SegRun(d) for d in dirs], spec["top_k"])
        # the runs' metrics.json text changes when a run is retrained under the same key (force=True)
        provenance = {"masks": "and", "runs": sorted((r.key, artifacts.config_key(r.metrics)) for r in chosen)}
        label = f"AND of {len(chosen)} U-Nets: {', '.join(r.loss for r in chosen)}"
    key = artifacts.config_key({"base": cache_path(name, resolved).name, "provenance": provenance,
                                "crop": spec["crop"], "version": CROP_VERSION})
    path = paths.cache_dir() / f"{name}-lungcrop-{key}.npz"
    out_params = {**resolved, "lung_crop": spec}
    if cache and path.exists() and not force:
        try:
            bundle = _read_cache(path, name, out_params)
            return bundle
        except artifacts.ArtifactError as exc:
            log.warning(f"crop cache {path} unreadable ({exc}); rebuilding it")
    base = load(name, cache=cache, force=force, verbose=verbose, **params)
    if chosen is None:
        missing = [s for s in SPLITS if base.splits[s].lung_masks is None]
        if missing:
            raise ValueError(f"lung_crop='true_masks': {base.source} has no lung masks ({missing}); "
                             "use lung_crop=True to predict them with the U-Nets")
        masks = {s: base.splits[s].lung_masks for s in SPLITS}
    else:
        masks = {s: predict_masks(chosen, base.splits[s].images) for s in SPLITS}
    cropped = crop_bundle(base, masks, label=label, **spec["crop"])
    cropped.params = out_params
    if cache:
        _write_cache(path, cropped)
        if verbose:
            log.info(f"cached lung crop of {base.source} in {path.name}")
    return cropped
