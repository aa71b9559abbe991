"""Data source ``lungmasks``: a user's local CXR images with lung masks (Montgomery, Shenzhen, JSRT style).

``load("lungmasks", root=...)`` (or ``--data lungmasks:/path``) reads ``root/<images>/`` and the
matching masks under ``root/<masks>/`` into the data contract: images uint8 [N, S, S] and
``lung_masks`` bool [N, S, S], one class ``("cxr",)``, splits carved at random (``seed``).

Layouts it understands (folder names are found automatically, or given as ``images=``/``masks=``):

* Montgomery: ``CXR_png/MCUCXR_0001_0.png`` + ``ManualMask/leftMask/…png`` and ``rightMask/…png``
* Shenzhen / Kaggle "lung segmentation": ``CXR_png/CHNCXR_0001_0.png`` + ``masks/CHNCXR_0001_0_mask.png``
* JSRT + SCR: ``images/JPCLN001.png`` + ``masks/left lung/JPCLN001.gif`` and ``right lung/…``

A mask folder holding image files directly gives combined masks; one holding sub-folders gives
one part per sub-folder, and the parts are united (by default the sub-folders whose name says
lung, left or right, and not heart or clavicle; ``parts="leftMask,rightMask"`` chooses them).
A mask matches an image when their file stems agree after lower-casing and dropping a trailing
``_mask``/``-mask``/``mask`` (any suffix).

Bad input is reported, never silently used: an image without a mask in every part, a mask whose
size is not the image's (a uniform scale such as SCR's 1024² masks for 2048² films is accepted),
an empty mask and an unreadable file each skip that image, and ONE warning lists them all (or one
error, with ``strict=True``). Non-binary masks (JPEG artefacts, soft edges) are thresholded at half
their maximum, with a warning naming them. Masks that match no image are listed in the warning.
"""
from __future__ import annotations

import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .containers import SPLITS, DataBundle, Split
from .core import register_source
from .folders import check_options, check_root
from .images import ImageDecodeError, files_fingerprint, fit_square, list_images, read_gray, report_skipped

HINT = ("pass root=<dataset folder> holding an image folder and a mask folder "
        "(e.g. Montgomery: CXR_png/ and ManualMask/), or name them with images=... and masks=...")
_SUFFIX = re.compile(r"[_\-\s]?mask$")


class NonBinaryMaskWarning(UserWarning):
    """Some masks had more than two grey levels and were thresholded at half their maximum."""


def match_key(path: Path) -> str:
    """``CHNCXR_0001_0_mask.png`` -> ``chncxr_0001_0``: the stem that pairs a mask with its image."""
    return _SUFFIX.sub("", path.stem.lower())


def _pick_folder(root: Path, given: str, want: str) -> Path:
    if given:
        path = root / given
        if not path.is_dir():
            raise FileNotFoundError(f"lungmasks: {want} folder {path} does not exist; {HINT}")
        return path
    children = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    name = lambda p: p.name.lower()
    if want == "mask":
        found = [p for p in children if "mask" in name(p)]
    else:
        found = [p for p in children if "mask" not in name(p) and any(w in name(p) for w in ("cxr", "image", "img"))]
    if len(found) != 1:
        raise ValueError(f"lungmasks: cannot tell which folder under {root} holds the {want}s "
                         f"(candidates: {[p.name for p in found] or 'none'}; folders: {[p.name for p in children]}); "
                         f"{HINT}")
    return found[0]


def mask_parts(mask_dir: Path, parts: str = "") -> List[Path]:
    """The folders whose masks are united: ``mask_dir`` itself, or its lung sub-folders (module doc)."""
    if parts:
        chosen = [mask_dir / p.strip() for p in parts.split(",") if p.strip()]
        missing = [str(p) for p in chosen if not p.is_dir()]
        if missing:
            raise FileNotFoundError(f"lungmasks: mask part folder(s) {missing} do not exist; "
                                    f"sub-folders of {mask_dir}: {sorted(p.name for p in mask_dir.iterdir() if p.is_dir())}")
        return chosen
    if any(p.is_file() for p in mask_dir.iterdir() if not p.name.startswith(".")) and list_images(mask_dir):
        return [mask_dir]
    subs = [p for p in sorted(mask_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    lungish = [p for p in subs if any(w in p.name.lower() for w in ("lung", "left", "right"))
               and not any(w in p.name.lower() for w in ("heart", "clavicle"))]
    if not lungish:
        raise ValueError(f"lungmasks: {mask_dir} holds no mask images and no lung sub-folder "
                         f"(sub-folders: {[p.name for p in subs]}); name them with parts='left,right'")
    return lungish


def _read_mask(path: Path, size: Tuple[int, int]) -> Tuple[np.ndarray, bool]:
    """Binary mask at its own resolution and whether it had to be thresholded. Raises ValueError on misfit."""
    with Image.open(path) as img:
        msize = img.size
    w, h = size
    if msize != size and abs(msize[0] / w - msize[1] / h) > 0.01 * max(msize[0] / w, msize[1] / h):
        raise ValueError(f"{path}: mask is {msize[0]}x{msize[1]} but its image is {w}x{h}; the sizes differ "
                         "(not by a common scale), so the mask cannot be aligned. Fix or remove this pair")
    values = read_gray(path, 0)
    levels = np.unique(values)
    non_binary = len(levels) > 2 or (len(levels) == 2 and levels[0] != 0)
    top = int(levels[-1]) if len(levels) else 0
    binary = values >= max(top / 2, 1) if top else np.zeros(values.shape, bool)
    if not binary.any():
        raise ValueError(f"{path}: mask is empty (all pixels 0); a lung mask needs foreground. Fix or remove it")
    return binary, non_binary


def _read_pair(args) -> tuple:
    image_path, mask_paths, image_size = args
    try:
        with Image.open(image_path) as img:
            size = img.size
        image = read_gray(image_path, image_size)
        union, thresholded = None, []
        for m in mask_paths:
            binary, non_binary = _read_mask(m, size)
            if non_binary:
                thresholded.append(str(m))
            if binary.shape != (size[1], size[0]):  # a uniform scale (e.g. SCR's 1024² masks of 2048² films)
                binary = np.asarray(Image.fromarray(binary.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
            union = binary if union is None else union | binary
        square = fit_square(Image.fromarray(union.astype(np.uint8) * 255), image_size) >= 128
        return image, square, thresholded, None
    except (ImageDecodeError, ValueError, OSError) as exc:
        return None, None, [], str(exc)


def _files(root, images="", masks="", parts=""):
    root = check_root(root, "lungmasks", HINT)
    image_dir, mask_dir = _pick_folder(root, images, "image"), _pick_folder(root, masks, "mask")
    return root, image_dir, mask_parts(mask_dir, parts)


def _fingerprint(root, images="", masks="", parts="", **_):
    root, image_dir, part_dirs = _files(root, images, masks, parts)
    return files_fingerprint(list_images(image_dir) + [f for d in part_dirs for f in list_images(d)], root)


@register_source("lungmasks", version=1, fingerprint=_fingerprint)
def build_lungmasks(root: str, images: str = "", masks: str = "", parts: str = "", image_size: int = 256,
                    val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                    strict: bool = False) -> DataBundle:
    """Local image/mask folder pairs as a data bundle with ``lung_masks`` (module docstring)."""
    check_options(image_size, val_fraction=val_fraction, test_fraction=test_fraction)
    root, image_dir, part_dirs = _files(root, images, masks, parts)
    by_part: List[Dict[str, Path]] = [{match_key(f): f for f in list_images(d)} for d in part_dirs]
    films = list_images(image_dir)
    if not films:
        raise ValueError(f"lungmasks: no image files under {image_dir}; {HINT}")
    failures, jobs = [], []
    for f in films:
        found = [part.get(match_key(f)) for part in by_part]
        lacking = [str(d) for d, m in zip(part_dirs, found) if m is None]
        if lacking:
            failures.append(f"{f}: no mask named {match_key(f)}[_mask].* in {', '.join(lacking)}")
        else:
            jobs.append((f, found, image_size))
    keys = {match_key(f) for f in films}
    orphans = sorted(str(m) for part in by_part for k, m in part.items() if k not in keys)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_read_pair, jobs))
    kept = [(job[0], r) for job, r in zip(jobs, results) if r[3] is None]
    failures += [r[3] for r in results if r[3] is not None]
    failures += [f"{m}: mask matches no image in {image_dir}" for m in orphans]
    report_skipped(failures, strict, str(root))
    thresholded = [t for _, r in kept for t in r[2]]
    if thresholded:
        warnings.warn(f"{len(thresholded)} mask(s) under {root} are not binary (e.g. {thresholded[0]}); "
                      "thresholded at half their maximum", NonBinaryMaskWarning, stacklevel=2)
    if len(kept) < 6:
        raise ValueError(f"lungmasks: only {len(kept)} usable image/mask pair(s) under {root}; need >= 6 "
                         "for train, val and test (see the warning above for the skipped files)")
    order = np.random.default_rng(seed).permutation(len(kept))
    n_test = max(1, round(test_fraction * len(kept)))
    n_val = max(1, round(val_fraction * len(kept)))
    rows = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    splits = {}
    for name in SPLITS:
        idx = np.sort(rows[name])
        ids = [kept[i][0].relative_to(root).as_posix() for i in idx]
        splits[name] = Split(images=torch.from_numpy(np.stack([kept[i][1][0] for i in idx])),
                             labels=torch.zeros(len(idx), dtype=torch.int64), ids=ids,
                             lung_masks=torch.from_numpy(np.stack([kept[i][1][1] for i in idx])),
                             meta=pd.DataFrame({"id": ids, "thresholded_mask": [bool(kept[i][1][2]) for i in idx]}))
    return DataBundle(classes=("cxr",), splits=splits, name="lungmasks",
                      source=f"lung masks from {root.name} ({len(kept)} pairs, {image_size}²)")
