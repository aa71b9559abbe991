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

Data never trains models: ``load(..., lung_crop=...)`` crops with the source's own lung masks
(``"true_masks"``) or with the U-Net masks *read* from the file that
``support.segmentation.make_lung_masks`` writes (:func:`masks_path`); a missing file is a
:class:`MissingLungMasksError` naming that call.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage

from .. import artifacts, logs, paths, profiles
from .cache import pack_mask, read_bundle, unpack_mask, write_bundle
from .containers import SPLITS, DataBundle, Split

log = logs.get("data")

CROP_DEFAULTS = {"pad": 0.05, "min_area": 0.05, "max_area": 0.95, "min_component": 0.005}
#: Bump when the crop's output changes: it is part of the crop cache key.
CROP_VERSION = 1


class CropFallbackWarning(UserWarning):
    """Some images kept their whole frame because their lung mask was empty or implausible."""


def clean_mask(mask: np.ndarray, min_component: float = CROP_DEFAULTS["min_component"]) -> np.ndarray:
    """``mask`` without connected components (8-neighbourhood) smaller than ``min_component`` of the image."""
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
        profiles.segmentation(spec["seg_profile"])  # an unknown profile fails here, naming the valid ones
        spec["seg_losses"] = list(spec["seg_losses"] or profiles.SEG_LOSSES)
        if not isinstance(spec["top_k"], int) or isinstance(spec["top_k"], bool) or spec["top_k"] < 1:
            raise ValueError(f"lung_crop top_k={spec['top_k']!r} must be a positive int (the paper: 3)")
    elif masks == "true":
        if opts:
            raise ValueError(f"lung_crop with masks='true' takes only 'crop', got {sorted(opts)}")
    else:
        raise ValueError(f"lung_crop masks={masks!r}: use 'unet' (AND of trained U-Nets) or 'true' (the source's masks)")
    spec["crop"] = {**CROP_DEFAULTS, **crop}
    return spec


class MissingLungMasksError(FileNotFoundError):
    """``load(..., lung_crop=...)`` found no mask file: the U-Net masks are made by their own stage."""


def masks_path(base_cache: str, spec: dict) -> Path:
    """The U-Net mask file of a source's cache file name ``base_cache`` and a canonical ``lung_crop`` spec.

    Keyed by the source's data (its cache file name), the U-Net options and the segmentation section
    of the profile they come from; the file itself records which runs made the masks.
    """
    unet = {k: spec[k] for k in UNET_DEFAULTS}
    key = artifacts.config_key({"base": base_cache, "unet": unet,
                                "segmentation": profiles.segmentation(spec["seg_profile"])})
    return paths.cache_dir() / f"{Path(base_cache).stem}-lungmasks-{key}.npz"


def write_masks(path: Path, masks: Dict[str, torch.Tensor], provenance: dict, label: str) -> None:
    """Write the predicted masks (bool [N, h, w] per split) with the runs that made them, atomically."""
    arrays = {f"{s}_masks": pack_mask(masks[s].bool().cpu()) for s in SPLITS}
    arrays.update({f"{s}_width": np.array(masks[s].shape[-1]) for s in SPLITS})
    arrays["header"] = np.array(json.dumps({"provenance": provenance, "label": label}))
    artifacts.write_npz(path, **arrays)


def read_masks(path: Path) -> Tuple[Dict[str, torch.Tensor], dict, str]:
    """``(masks per split, provenance, label)`` of a :func:`write_masks` file."""
    z = artifacts.read_npz(path)
    header = json.loads(str(z["header"]))
    masks = {s: unpack_mask(z[f"{s}_masks"], int(z[f"{s}_width"])) for s in SPLITS}
    return masks, header["provenance"], header["label"]


def crop_from_masks(name: str, resolved: dict, spec: dict, base_cache: str, load_base: Callable[[], DataBundle],
                    *, cache: bool = True, force: bool = False, verbose: bool = True) -> DataBundle:
    """What ``support.data.load(name, lung_crop=...)`` returns: the source's bundle, lung-cropped, cached.

    ``resolved``: the source's parameters without ``lung_crop``; ``spec``: the canonical option
    (:func:`lung_crop_spec`); ``base_cache``: the source's cache file name; ``load_base()`` loads
    the uncropped bundle. The crop's cache key covers the source's cache file, the mask provenance
    (the runs' keys and metrics, so a retrained run invalidates it), the crop parameters and
    :data:`CROP_VERSION`; ``force=True`` rebuilds the data and the crop, never the masks.
    """
    if spec["masks"] == "true":
        masks, provenance, label = None, {"masks": "true"}, "true lung masks"
    else:
        path = masks_path(base_cache, spec)
        if not path.exists():
            options = {k: spec[k] for k in UNET_DEFAULTS}
            raise MissingLungMasksError(
                f"no lung masks for {name} with lung_crop={options}: {path.name} is missing. Make them first with "
                f"support.segmentation.make_lung_masks({name!r}, lung_crop=<the same option>, **<the same data "
                "parameters>) (notebook 02 does it), then load again")
        masks, provenance, label = read_masks(path)
    key = artifacts.config_key({"base": base_cache, "provenance": provenance, "crop": spec["crop"],
                                "version": CROP_VERSION})
    path = paths.cache_dir() / f"{name}-lungcrop-{key}.npz"
    out_params = {**resolved, "lung_crop": spec}
    if cache and path.exists() and not force:
        try:
            return read_bundle(path, name, out_params)
        except artifacts.ArtifactError as exc:
            log.warning(f"crop cache {path} unreadable ({exc}); rebuilding it")
    base = load_base()
    if masks is None:
        missing = [s for s in SPLITS if base.splits[s].lung_masks is None]
        if missing:
            raise ValueError(f"lung_crop='true_masks': {base.source} has no lung masks ({missing}); "
                             "use lung_crop=True to crop with the U-Nets' masks")
        masks = {s: base.splits[s].lung_masks for s in SPLITS}
    cropped = crop_bundle(base, masks, label=label, **spec["crop"])
    cropped.params = out_params
    if cache:
        write_bundle(path, cropped)
        if verbose:
            log.info(f"cached lung crop of {base.source} in {path.name}")
    return cropped
