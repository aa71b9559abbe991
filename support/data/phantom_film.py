"""The phantom's acquisition: film response, blur, automatic and display window, grain, and the burned-in marker.

:func:`_film` turns an attenuation map into a uint8 film (and the masks to the film's size);
:func:`_draw_marker` / :func:`marker_region` are the corner marker of the ``marker_bias`` shortcut.
"""
from __future__ import annotations

import numpy as np

from .phantom_geometry import _F, _up2
from .phantom_plan import MARKER_STATES

# Glyph of the burned-in marker: an "L" on a 5x7 grid.
_GLYPH = np.array([[1, 0, 0, 0, 0]] * 6 + [[1, 1, 1, 1, 0]], dtype=bool)


def _film(rng, A: np.ndarray, F: dict, R: int, S: int, lung_f: np.ndarray, les_f: np.ndarray):
    """Expose and develop ``A`` with film parameters ``F``; returns (uint8 [S,S] film, lung mask, lesion mask)."""
    img = 1.0 - np.exp(_F(-F["k"]) * A)
    if F["blur"] > 0:                                               # separable [b, 1-2b, b]
        for ax in (0, 1):
            img = np.moveaxis(img, ax, 0)
            pad = np.concatenate([img[:1], img, img[-1:]])
            img = np.moveaxis(_F(1 - 2 * F["blur"]) * img + _F(F["blur"]) * (pad[:-2] + pad[2:]), 0, ax)
    step = max(1, R // 64)
    lo, hi = (float(q) for q in np.percentile(img[::step, ::step], [0.5, 99.5]))
    lut = (np.clip(np.linspace(0.0, 1.0, 1024) * F["contrast"] + F["bright"], 0.0, 1.0) ** F["gamma"]).astype(_F)
    out = np.take(lut, np.clip((img - lo) * (1023.0 / max(hi - lo, 1e-6)), 0, 1023).astype(np.int32))
    lung_mask = lung_f > 0
    lesion_mask = (les_f > 0) & lung_mask
    if R != S:                                                     # masks: nearest, to the nearest pixel
        out = _up2(out)
        lung_mask, lesion_mask = (np.repeat(np.repeat(m, 2, 0), 2, 1) for m in (lung_mask, lesion_mask))
    out = out + (rng.random((S, S), dtype=_F) - _F(0.5)) * _F(3.46 * F["grain"])   # uniform grain, sd = grain
    out = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out, lung_mask, lesion_mask


def _draw_marker(rng, out: np.ndarray, marker: int) -> None:
    """Burn a bright square with a dark "L"-like glyph into the top-left (1) or top-right (2) corner."""
    S = out.shape[0]
    cell = max(1, round(S * 0.012))
    h, w = _GLYPH.shape[0] * cell + 2 * cell, _GLYPH.shape[1] * cell + 2 * cell
    r0 = int(rng.integers(round(0.03 * S), round(0.07 * S) + 1))
    c0 = int(rng.integers(round(0.03 * S), round(0.07 * S) + 1))
    if marker == 2:
        c0 = S - c0 - w
    patch = np.full((h, w), int(rng.integers(215, 245)), np.uint8)
    glyph = np.kron(_GLYPH, np.ones((cell, cell), bool))
    patch[cell:cell + glyph.shape[0], cell:cell + glyph.shape[1]][glyph] = 90
    out[r0:r0 + h, c0:c0 + w] = patch


def marker_region(image_size: int, marker) -> np.ndarray:
    """Bool ``[S, S]`` mask of every pixel the marker of state ``marker`` can cover (all positions of
    :func:`_draw_marker`); empty for "none" (0). Used to measure how much a CAM looks at the shortcut."""
    state = MARKER_STATES.index(marker) if isinstance(marker, str) else int(marker)
    S = int(image_size)
    region = np.zeros((S, S), bool)
    if state == 0:
        return region
    cell = max(1, round(S * 0.012))
    h, w = _GLYPH.shape[0] * cell + 2 * cell, _GLYPH.shape[1] * cell + 2 * cell
    lo, hi = round(0.03 * S), round(0.07 * S)
    cols = slice(lo, hi + w) if state == 1 else slice(S - hi - w, S - lo)
    region[lo:hi + h, cols] = True
    return region
