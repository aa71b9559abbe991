"""Rendering phantom films: one image from its own random stream (:func:`_render`), and many at once
(:func:`generate`, optionally in forked worker processes).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .phantom_anatomy import _anatomy, _draw_body, _draw_bones, _draw_lungs
from .phantom_film import _draw_marker, _film
from .phantom_geometry import _F, _Pose
from .phantom_knobs import draw_device_marker, resolve_shift, shift_film
from .phantom_lesions import _pathology
from .phantom_plan import CLASSES, MARKER_STATES, _check


def _render(rng, label: int, size: int, difficulty: float, marker: int, film_shift: Optional[dict] = None):
    """One image: (uint8 [S,S], lung mask, lesion mask, metadata dict); ``film_shift``: the acquisition
    shift (:func:`support.data.phantom_knobs.shift_film`) applied to the drawn film parameters."""
    S = size
    R = S // 2 if S >= 128 and S % 2 == 0 else S                  # internal resolution (upsampled at the end)
    pose = _Pose(rng, R)
    px = pose.px
    P = _anatomy(rng)
    if film_shift is not None:                                     # after the draws: the same patient
        P["film"] = shift_film(P["film"], film_shift)
    severity = float(rng.uniform(0.0, 1.0)) if label else 0.0
    n_path = dict(lo=rng.standard_normal((6, 6), dtype=_F), mid=rng.standard_normal((16, 16), dtype=_F),
                  vessel=rng.standard_normal((8, 48), dtype=_F))
    A = _draw_body(P, pose)                                        # body and arms
    lung_f = _draw_lungs(P, pose, R)                               # lungs, heart shadow, vessels, hila
    les_f = np.full((R, R), -1.0, _F)                              # > 0 inside a lesion

    # --- pathology: removes air from the lungs; the lesion field marks where it is substantial
    if label:
        meta = _pathology(rng, label, P, severity, difficulty, n_path, R, px, les_f)
    else:
        meta = {"n_lesions": 0, "side": "none"}
    for L in P["lungs"]:
        A[L["box"]] -= _F(P["air"]) * L["air"]
    _draw_bones(A, P, pose)                                        # ribs, clavicles, spine (humeri: arms)
    F = P["film"]
    out, lung_mask, lesion_mask = _film(rng, A, F, R, S, lung_f, les_f)
    if marker:
        _draw_marker(rng, out, marker)
    lung_px = max(int(lung_mask.sum()), 1)
    meta.update(severity=severity, lesion_area=float(lesion_mask.sum()) / lung_px, lung_area=lung_px / S ** 2,
                exposure=float(F["k"]), contrast=float(F["contrast"]), gamma=float(F["gamma"]),
                grain=float(F["grain"]), blur=float(F["blur"]), scale=float(pose.scale),
                shift_x=float(pose.dx), shift_y=float(pose.dy), rotation_deg=float(np.degrees(pose.rot)),
                marker=MARKER_STATES[marker])
    return out, lung_mask, lesion_mask, meta


def _generate_chunk(args):
    """Render a list of images; masks come back bit-packed (8x less to send between processes)."""
    indices, labels, markers, size, seed, difficulty, shifted, devices, film_shift = args
    out = [_render(np.random.default_rng([seed, int(i)]), int(c), size, difficulty, int(m),
                   film_shift if sh else None)
           for i, c, m, sh in zip(indices, labels, markers, shifted)]
    for o, i, d in zip(out, indices, devices):
        if d:
            draw_device_marker(seed, int(i), o[0])
    pack = lambda k: np.packbits(np.stack([o[k] for o in out]), axis=-1)
    return np.stack([o[0] for o in out]), pack(1), pack(2), [o[3] for o in out]


def _workers(requested: int) -> int:
    """Processes to use: at most the CPUs; 1 where fork is missing or inside a daemon (pool) process."""
    import multiprocessing as mp

    if requested <= 1 or "fork" not in mp.get_all_start_methods() or mp.current_process().daemon:
        return 1
    return max(1, min(int(requested), os.cpu_count() or 1))


def generate(indices, labels, image_size: int = 256, seed: int = 0, difficulty: float = 1.0,
             markers: Optional[Sequence[int]] = None, workers: int = 1, shift=None,
             shifted: Optional[Sequence[bool]] = None, devices: Optional[Sequence[bool]] = None):
    """Render phantom images for global ``indices`` (or ``range(indices)`` when an int).

    ``labels``: class index per image (0 normal, 1 bacterial, 2 viral) or one for all; ``markers``:
    marker state per image (0 none, 1 top-left, 2 top-right; default none). ``shift``: an acquisition
    shift (preset name or dict, :mod:`support.data.phantom_knobs`) applied to the images where ``shifted``
    (default: all); ``devices``: which images carry the device stamp (default none). Image ``i`` is drawn
    from ``np.random.default_rng([seed, i])`` alone, so its bytes do not depend on the other indices
    nor on ``workers`` (forked processes; 1 renders here). Patient anatomy is drawn before anything
    class-dependent, so the same index with another label shows the same patient.

    Returns ``(images, lung_masks, lesion_masks, meta)``: uint8 [N,S,S], bool [N,S,S], bool [N,S,S]
    and a DataFrame, one row per image: index, label, class, n_lesions, side (left/right/both/none),
    severity (0..1; 0 for normal), lesion_area (fraction of the lung mask), lung_area (fraction of
    the image), exposure, contrast, gamma, grain, blur, scale, shift_x, shift_y, rotation_deg, marker.
    """
    indices = np.arange(indices) if np.isscalar(indices) else np.asarray(indices, dtype=np.int64).ravel()
    labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), indices.shape)
    markers = np.broadcast_to(np.asarray(0 if markers is None else markers, dtype=np.int64), indices.shape)
    film_shift = resolve_shift(shift)
    shifted = np.broadcast_to(np.asarray(film_shift is not None if shifted is None else shifted, bool), indices.shape)
    devices = np.broadcast_to(np.asarray(False if devices is None else devices, bool), indices.shape)
    _check(image_size, difficulty, 0.0)
    for name, values in (("labels", labels), ("markers", markers)):
        if values.size and (values.min() < 0 or values.max() > 2):
            raise ValueError(f"phantom {name} must be 0, 1 or 2, got {np.unique(values).tolist()}")
    if len(indices) == 0:
        empty = np.zeros((0, image_size, image_size), np.uint8)
        return empty, empty.astype(bool), empty.astype(bool), pd.DataFrame()
    from threadpoolctl import threadpool_limits

    step = 32
    chunks = [(indices[i:i + step], labels[i:i + step], markers[i:i + step], image_size, seed, float(difficulty),
               shifted[i:i + step], devices[i:i + step], film_shift) for i in range(0, len(indices), step)]
    workers = _workers(workers) if len(chunks) > 1 else 1
    # One BLAS thread: the matrices are small, so threads only contend. Fork, not spawn, so that
    # an unguarded user script is not re-imported by the workers (which run numpy only).
    with threadpool_limits(1):
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(workers) as pool:
                parts = pool.map(_generate_chunk, chunks, chunksize=1)
        else:
            parts = [_generate_chunk(c) for c in chunks]
    images = np.concatenate([p[0] for p in parts])
    lungs, lesions = (np.unpackbits(np.concatenate([p[k] for p in parts]), axis=-1, count=image_size).astype(bool)
                      for k in (1, 2))
    meta = pd.DataFrame([m for p in parts for m in p[3]])
    meta.insert(0, "index", indices)
    meta.insert(1, "label", labels)
    meta.insert(2, "class", np.asarray(CLASSES)[labels])
    return images, lungs, lesions, meta
