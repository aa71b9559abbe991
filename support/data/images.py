"""Decoding user image files into 8-bit grayscale squares, and listing image folders.

Shared by the real-data sources (``kermany``, ``imagefolder``, ``csv``).

Conversion to 8-bit grayscale (:func:`read_gray`):

* EXIF orientation is applied first (``ImageOps.exif_transpose``), so a phone
  photo of a film is upright as displayed.
* RGB / CMYK / YCbCr -> ITU-R 601 luma (``Image.convert("L")``).
* RGBA / LA / palette with transparency -> composited on **black**: a transparent
  pixel becomes 0, the colour of the film's background and of our padding.
* Palette images -> their palette colours, then luma.
* 16-bit and 32-bit integers (``I;16``, ``I``) -> scaled by the image's *bit
  depth*, not clipped and not min-max stretched: the depth is the smallest of
  8, 10, 12, 14, 16, ... bits that holds the image's maximum (PNG does not record
  12-bit detector data as 12-bit). A 12-bit film with max 4095 maps to 255 and
  2048 to ~128, and films from one detector keep comparable brightness.
  Negative values (signed data) are shifted to start at 0 first.
* Float images (``F``) in [0, 1] are multiplied by 255; larger ranges are scaled
  by bit depth as integers are.

Resize policy (:func:`fit_square`): the image is scaled so that its *longer*
side is ``image_size`` (aspect ratio kept), then centred on a black square.
This is "pad to square, then resize" without building the padded full-size
image. The whole chest stays in view and nothing is stretched, at the cost of
black bars on non-square films. Downscaling uses ``BOX`` (exact area average,
like OpenCV's ``INTER_AREA``, which the papers used); upscaling uses ``BICUBIC``.
High-bit-depth images are resized in float and rounded once. JPEGs are decoded
with ``Image.draft`` at the smallest DCT scale (1/2, 1/4, 1/8) that is still at
least ``image_size`` on both sides: several times faster, itself an area average.

Unreadable files raise :class:`ImageDecodeError`; :func:`decode_many` collects
them and :func:`report_skipped` turns them into ONE warning (or one error when
``strict``). Hidden files (``.DS_Store``, AppleDouble ``._*`` files,
``__MACOSX/``, any ``.name``) are never listed, and so are ignored silently, as
are files whose suffix is not in :data:`IMAGE_SUFFIXES`.
"""
from __future__ import annotations

import hashlib
import os
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: File suffixes read as images (compared in lower case).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp",
                            ".pgm", ".ppm", ".pbm", ".pnm"})

#: What PIL raises on a corrupt, truncated or unsupported file (PIL has no single base class).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError,
                  Image.DecompressionBombError)


class ImageDecodeError(ValueError):
    """A file could not be read as an image (corrupt, truncated, not an image, missing)."""


class SkippedImagesWarning(UserWarning):
    """Some files were skipped because they could not be decoded (one warning per load)."""


# ----------------------------------------------------------------------------- decoding
def _bit_depth_scale(values: np.ndarray) -> np.ndarray:
    """Integer or float array -> float32 in [0, 255], scaled by its bit depth (see module doc)."""
    is_float = np.issubdtype(values.dtype, np.floating)
    values = values.astype(np.float64)
    low = float(values.min()) if values.size else 0.0
    if low < 0:  # signed data: start at zero
        values = values - low
    top = float(values.max()) if values.size else 0.0
    if is_float and top <= 1.0:
        full = 1.0  # float image in [0, 1]
    else:
        bits = max(8, int(np.ceil(top)).bit_length())
        bits += bits % 2  # detectors are 10/12/14/16-bit: round up to an even depth
        full = float(2 ** bits - 1)
    return (values * (255.0 / full)).astype(np.float32)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Any numeric array -> uint8 (uint8 as is, booleans to 0/255, others by bit depth)."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return values
    if values.dtype == bool:
        return values.astype(np.uint8) * 255
    return np.clip(np.rint(_bit_depth_scale(values)), 0, 255).astype(np.uint8)


def _to_gray(img: Image.Image) -> Image.Image:
    """A decoded PIL image -> mode "L" (8-bit sources) or "F" in [0, 255] (deeper sources)."""
    mode = img.mode
    if mode == "L":
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_bit_depth_scale(np.asarray(img)), mode="F")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    if img.mode in ("1", "RGB", "CMYK", "YCbCr"):
        return img.convert("L")
    return img.convert("RGB").convert("L")  # LAB, HSV, ...


def fit_square(img: Image.Image, image_size: int) -> np.ndarray:
    """Scale the longer side to ``image_size`` and centre on a black square (see module doc).

    ``img`` is a mode "L" or "F" image; ``image_size=0`` keeps the image as it is.
    Returns uint8 [image_size, image_size] (or [H, W] when kept).
    """
    if image_size:
        w, h = img.size
        scale = image_size / max(w, h)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        if new != (w, h):
            resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
            img = img.resize(new, resample)
        if new != (image_size, image_size):
            canvas = Image.new(img.mode, (image_size, image_size), 0)
            canvas.paste(img, ((image_size - new[0]) // 2, (image_size - new[1]) // 2))
            img = canvas
    array = np.asarray(img)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def read_gray(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """Read any common image file as uint8 [image_size, image_size] grayscale.

    See the module docstring for the colour, bit-depth, EXIF and resize rules.
    ``image_size=0`` keeps the original size. Raises :class:`ImageDecodeError`
    (naming the file and PIL's reason) when the file cannot be decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if image_size and img.format == "JPEG":
                img.draft("L", (image_size, image_size))  # RGB JPEG: decode luma only
            img.load()
            img = ImageOps.exif_transpose(img)
            return fit_square(_to_gray(img), image_size)
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{path}: not an image file PIL can identify") from None
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"{path}: {type(exc).__name__}: {exc}") from None


def _try_read(path: str, image_size: int) -> Tuple[Optional[np.ndarray], Optional[str]]:
    try:
        return read_gray(path, image_size), None
    except ImageDecodeError as exc:
        return None, str(exc)


def decode_many(paths: Sequence[str | os.PathLike], image_size: int, desc: str = "decoding",
                workers: Optional[int] = None) -> Tuple[List[Optional[np.ndarray]], List[str]]:
    """Decode ``paths`` in a thread pool with a progress bar.

    PIL releases the GIL while decoding and resizing, so threads use every core
    without the start-up and pickling cost of processes. Returns the arrays in
    the order of ``paths`` (``None`` where a file failed) and the failure reasons.
    """
    from tqdm.auto import tqdm

    paths = [str(p) for p in paths]
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = max(1, min(cores, 16))
    arrays: List[Optional[np.ndarray]] = []
    failures: List[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", leave=False, disable=_quiet()) as bar:
        for array, failure in pool.map(_try_read, paths, [image_size] * len(paths), chunksize=16):
            arrays.append(array)
            if failure:
                failures.append(failure)
            bar.update(1)
    return arrays, failures


def _quiet() -> bool:
    """True inside ``logs.quiet("data")`` (``load(..., verbose=False)``, the pipeline's data step): no bar."""
    import logging

    from .. import logs

    return not logs.get("data").isEnabledFor(logging.INFO)


def report_skipped(failures: Sequence[str], strict: bool, where: str) -> None:
    """One warning listing every skipped file, or one :class:`ImageDecodeError` if ``strict``."""
    if not failures:
        return
    listing = "\n  ".join(failures)
    if strict:
        raise ImageDecodeError(
            f"{len(failures)} file(s) under {where} cannot be used (strict=True):\n  {listing}\n"
            "Fix or delete these files, or pass strict=False to skip them with a warning"
        )
    warnings.warn(f"skipped {len(failures)} unreadable or unlabelled file(s) under {where}:\n  {listing}\n"
                  "(pass strict=True to make this an error)", SkippedImagesWarning, stacklevel=3)


# ----------------------------------------------------------------------------- listing
def is_hidden(name: str) -> bool:
    """``.DS_Store``, ``._x.jpeg`` (AppleDouble), ``.git``, ``__MACOSX``: never data."""
    return name.startswith(".") or name == "__MACOSX"


def list_images(folder: str | os.PathLike) -> List[Path]:
    """Image files under ``folder`` (recursive, sorted), without hidden files or folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        found.extend(Path(dirpath) / f for f in filenames
                     if not is_hidden(f) and Path(f).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found)


def files_fingerprint(files: Iterable[str | os.PathLike], root: str | os.PathLike) -> dict:
    """Hash of (path relative to ``root``, size, mtime) of ``files``: the cache's view of a folder.

    A missing file hashes as size -1, so creating it later also invalidates the cache.
    """
    digest, count = hashlib.sha256(), 0
    for f in files:
        try:
            st = os.stat(f)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        digest.update(f"{Path(os.path.relpath(f, root)).as_posix()}\t{size}\t{mtime}\n".encode())
        count += 1
    return {"files": count, "sha256": digest.hexdigest()[:16]}
