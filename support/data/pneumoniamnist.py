"""PneumoniaMNIST (MedMNIST v2/v3) from a local ``.npz``; binary normal / pneumonia.

Nothing is downloaded: fetch ``pneumoniamnist.npz`` (or ``_64``, ``_128``,
``_224``) by hand from Zenodo record 10519652 and pass its path.

The file must follow the MedMNIST schema: keys ``{train,val,test}_images``
(uint8 ``N×H×W`` or ``N×H×W×3``; RGB is turned into ITU-R 601 luma) and
``{train,val,test}_labels`` (``N×1`` or ``N``, 0 = normal, 1 = pneumonia).
Any image size and any number of samples are accepted: unlike
``medmnist.PneumoniaMNIST`` we do not assert the official counts
(4708 / 524 / 624), so small test files work.

``image_size=0`` keeps the stored size; otherwise each image is resized with
the kit's policy (longer side to ``image_size``, centred on black, area
average when shrinking: see :mod:`support.data.images`). Note that MedMNIST's
28-px images are already centre-cropped and downsampled; upsampling them does
not restore detail. Ids are ``"<split>/<index>"``, the index being the row in
the ``.npz`` (MedMNIST's per-subset CSV maps it to the Kermany file name).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .containers import SPLITS, DataBundle, Split
from .core import register_source
from .images import files_fingerprint, fit_square, to_uint8
from .. import logs

log = logs.get("data")

CLASSES = ("normal", "pneumonia")
KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))
_HINT = ("download pneumoniamnist.npz (or _64/_128/_224) by hand from https://zenodo.org/records/10519652 "
         "and pass path= that .npz file")


def _check_path(path) -> Path:
    """``path`` as an existing ``.npz`` file, or an error naming it and the fix."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"pneumoniamnist: path must be an .npz file path, got {path!r}; {_HINT}")
    file = Path(path).expanduser()
    if file.is_dir():
        found = sorted(p.name for p in file.glob("*.npz"))
        raise IsADirectoryError(f"pneumoniamnist: {file} is a folder; pass the .npz file itself"
                                + (f", e.g. {file / found[0]} (found: {', '.join(found)})" if found
                                   else f"; {_HINT}"))
    if not file.exists():
        raise FileNotFoundError(f"pneumoniamnist: {file} does not exist; {_HINT}")
    return file


def _fingerprint(path, **_):
    file = _check_path(path)
    return files_fingerprint([file], file.parent)


def _gray(images: np.ndarray, key: str, file: Path) -> np.ndarray:
    """N×H×W or N×H×W×{1,3} numeric -> uint8 N×H×W."""
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    elif images.ndim == 4 and images.shape[-1] == 3:  # RGB -> ITU-R 601 luma, as PIL's convert("L")
        luma = to_uint8(images).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        images = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    if images.ndim != 3:
        raise ValueError(f"pneumoniamnist: {file} key {key} has shape {images.shape}; expected N×H×W "
                         "or N×H×W×3 images (MedMNIST schema)")
    return to_uint8(images)


def _labels(labels: np.ndarray, n: int, key: str, file: Path) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"pneumoniamnist: {file} key {key} has shape {labels.shape}; expected ({n}, 1) "
                         f"or ({n},) to match the {n} images")
    bad = sorted(set(np.unique(labels).tolist()) - {0, 1})
    if bad:
        raise ValueError(f"pneumoniamnist: {file} key {key} holds label(s) {bad[:10]}; PneumoniaMNIST "
                         "labels are 0 (normal) and 1 (pneumonia). For other label sets use the 'csv' "
                         "or 'imagefolder' source")
    return labels.astype(np.int64)


@register_source("pneumoniamnist", version=1, fingerprint=_fingerprint)
def build(path: str, image_size: int = 0) -> DataBundle:
    """PneumoniaMNIST from the local ``.npz`` at ``path`` (see module doc)."""
    file = _check_path(path)
    if image_size < 0:
        raise ValueError(f"pneumoniamnist: image_size={image_size}; use 0 (keep the stored size) "
                         "or a positive number of pixels")
    try:
        with np.load(file, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise ValueError(f"pneumoniamnist: {file} lacks key(s) {missing} (it has {sorted(z.files)}); "
                                 f"a MedMNIST .npz holds {', '.join(KEYS)}. Re-export it with np.savez "
                                 "under those names")
            arrays = {k: z[k] for k in KEYS}
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"pneumoniamnist: {file} is not a readable .npz ({exc}); {_HINT}") from None
    except ValueError as exc:
        if str(exc).startswith("pneumoniamnist:"):
            raise
        # numpy's own text suggests allow_pickle=True: never for a downloaded file, so it is not repeated
        raise ValueError(f"pneumoniamnist: {file} is not a NumPy .npz archive of plain arrays (another format, "
                         f"or pickled objects, which are never loaded); {_HINT}") from None
    splits = {}
    for s in SPLITS:
        images = _gray(arrays[f"{s}_images"], f"{s}_images", file)
        labels = _labels(arrays[f"{s}_labels"], len(images), f"{s}_labels", file)
        if image_size:
            images = np.stack([fit_square(Image.fromarray(im), image_size) for im in images]) if len(images) \
                else np.zeros((0, image_size, image_size), np.uint8)
        splits[s] = Split(images=torch.from_numpy(np.ascontiguousarray(images)),
                          labels=torch.from_numpy(labels), ids=[f"{s}/{i}" for i in range(len(labels))])
    size = "x".join(map(str, splits["train"].images.shape[1:]))
    bundle = DataBundle(classes=CLASSES, splits=splits, source=f"PneumoniaMNIST (local: {path}, {size} px)")
    log.info(f"{bundle.source}\n{bundle.counts().to_string()}")
    return bundle
