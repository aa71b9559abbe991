"""The CXR phantom: procedurally generated pediatric AP chest films (data source ``phantom``, the default).

What it is
    A cheap, deterministic stand-in for the Kermany pediatric chest X-ray set: the same three classes
    in the same order ``("normal", "bacterial", "viral")``, the same split sizes, and ground-truth
    lung and lesion masks that the real data sets do not have. It lets the whole kit run, losses be
    compared and lesions be localised without downloading anything.

What it is not
    Not a medical image and not a validated simulation. Anatomy and appearance are hand-tuned
    heuristics that look like a chest film at a glance; the "lesions" only mimic textbook patterns.
    Nothing learned on it says anything about patients. Every figure title says "phantom".

How an image is made (see ``_render``)
    An attenuation map ``A`` in patient coordinates -- body (neck, sloping shoulders, arms raised or
    down), two lungs (rounded-box shapes of varying width, height, taper and asymmetry, with
    diaphragm domes, the right one higher), heart shadow, radiating vessel markings and hila,
    posterior and anterior ribs, clavicles, spine, trachea, gastric bubble -- under a random pose
    (scale, shift, ~2 degree rotation). The film is ``1 - exp(-k A)`` with a random exposure ``k``,
    blur, an automatic window on its own 0.5/99.5 percentiles (as CR/DR consoles do, so that mean
    intensity does not give the class away), a random display window and gamma, and grain.
    Sizes >= 128 are rendered at half size and upsampled (masks by nearest neighbour).

Classes (severity ~ U(0, 1) per abnormal image, in ``meta``)
    normal     clear lungs; lesion mask empty.
    bacterial  lobar consolidation: one (20 %: two) dense, fluffy region(s) in one lung, with air
               bronchograms and often one sharp fissure edge; size and density grow with severity.
               Atypical (60 %): faint bilateral perihilar streaks, fading with severity.
    viral      bilateral, diffuse, fainter perihilar interstitial streaks and haze, one side weaker;
               extent and density grow with severity. Atypical (60 %): a small dense patch in one
               lung, denser when severity is low.
    The atypical signs make mild cases ambiguous mainly between the two pneumonias, as in the real
    data. Lesion masks (where the opacity is substantial) are subsets of the lung masks; lung masks
    leave out the heart shadow (the JSRT/Montgomery convention).

Knobs (``load("phantom", ...)`` = :func:`build`)
    seed         int, 0      every draw; image i uses ``np.random.default_rng([seed, i])`` only
    n            int, 5856   total images (>= 30); the Kermany mix and splits are scaled by n/5856
    n_test       int, None   size of the test draw (Kermany's test mix) instead of n's share; e.g. 6000
                             so that a comparison of losses is not limited by test-image noise
    n_val        int, None   size of the validation draw (the carve-out's mix) instead of n's share;
                             it is halved for early stopping / post-hoc fitting (support.data.halves)
    image_size   int, 256    side in pixels (>= 32); anatomy is defined in relative units
    difficulty   float, 1.0  divides the opacity of every lesion (> 0; higher = harder). At 1.0 a
                             logistic regression on 32x32 pixels stays near 0.60-0.68 test accuracy
                             (tests/test_phantom.py checks <= 0.70) and the quick profile's small CNN
                             at 64x64 reaches ~0.88-0.93, about two thirds of its errors bacterial <->
                             viral (version 3; version 1 left small basal foci that read as normal).
    label_noise  float, 0.0  in [0, 0.5]: share of the eligible train and val labels flipped (test labels
                             stay true; meta records true_label and label_flipped)
    noise_structure str, "symmetric"  or "pneumonia_mild": bacterial <-> viral flips, mostly mild cases
    shift        None        acquisition shift of the test split ("train hospital != test hospital"):
                             a preset ("hospital_b") or a dict of exposure / contrast / grain / blur /
                             device_marker; train and val films are unchanged. Details, ranges and the
                             preset: support.data.phantom_knobs. The three regime knobs leave the cache
                             and run keys of the clean data unchanged at their defaults.
    marker_bias  float, 0.0  in [0, 1]: strength of a shortcut. Every image has a burned-in corner
                             marker state -- none, top-left or top-right (a bright square with an
                             "L"-like glyph). In train and val the state is the class's own (normal:
                             top-left, bacterial: top-right, viral: none) with probability
                             ``marker_bias`` and uniform otherwise; in test it is always uniform. So 0
                             is no shortcut, 1 makes the marker alone give the training label, and a
                             model that leans on it loses accuracy on test.

Splits (Kermany v2 at n = 5856; each count scaled by n/5856, rounded, at least 1)
    test           N 234 / B 242 / V 148  (624)
    train folder   N 1349 / B 2538 / V 1345 (5232), of which
      val          10 % of each class: N 134 / B 253 / V 134 (521)
      train        the rest: N 1215 / B 2285 / V 1211 (4711)
    Rounding surplus goes to train bacterial, so the total is exactly n. Global indices run train,
    val, test (labels shuffled within each split); ids are ``phantom-s<seed>-<index, 6 digits>``.

Determinism: image i depends only on (seed, i, its label, its marker state), so any subset can be
rendered in any process with the same bytes (:func:`generate`). Labels and markers depend on (seed, n).
Speed: about 220 images/s at 256² in one process, more with ``build``'s two forked workers.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from .containers import CXR_CLASSES, SPLITS, DataBundle, Split
from .core import register_source
from .phantom_knobs import check_noise, device_markers, draw_device_marker, flip_labels, resolve_shift, shift_film

CLASSES = CXR_CLASSES
#: Kermany v2 counts per class (normal, bacterial, viral).
KERMANY_TEST = (234, 242, 148)
KERMANY_TRAIN_FOLDER = (1349, 2538, 1345)
KERMANY_TOTAL = sum(KERMANY_TEST) + sum(KERMANY_TRAIN_FOLDER)  # 5856
VAL_FRACTION = 0.10
MIN_N, MIN_SIZE = 30, 32
#: Marker states; class c's own state is MARKER_STATES[MARKER_OF_CLASS[c]].
MARKER_STATES = ("none", "top-left", "top-right")
MARKER_OF_CLASS = (1, 2, 0)          # normal -> top-left, bacterial -> top-right, viral -> none
_F = np.float32


# ----------------------------------------------------------------------------- splits
def _mix(total: int, weights) -> list:
    """``total`` images split in the proportions ``weights`` (largest remainder; each class >= 1)."""
    w = np.asarray(weights, dtype=float) / sum(weights)
    counts = np.maximum(1, np.floor(w * total)).astype(int)
    for i in np.argsort(-(w * total - np.floor(w * total)))[: max(0, total - counts.sum())]:
        counts[i] += 1
    return [int(c) for c in counts]


def split_counts(n: int, n_test: Optional[int] = None, n_val: Optional[int] = None) -> Dict[str, Tuple[int, int, int]]:
    """Images per class for each split at total ``n`` (the Kermany mix scaled by n/5856).

    ``n_test`` / ``n_val`` (optional) replace the test / validation sizes by draws of their own size
    in the same class mix (Kermany's test mix; the validation carve-out's mix); the training split
    is always the one of ``n``.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
        raise ValueError(f"phantom n={n!r} must be an int (total number of images, e.g. 5856)")
    if n < MIN_N:
        raise ValueError(f"phantom n={n} is too small for 3 classes x 3 splits; use n >= {MIN_N} "
                         f"(e.g. n=240 for a smoke test, n=5856 for the Kermany size)")
    f = n / KERMANY_TOTAL
    test = [max(1, round(c * f)) for c in KERMANY_TEST]
    folder = [max(2, round(c * f)) for c in KERMANY_TRAIN_FOLDER]
    folder[1] += n - sum(test) - sum(folder)          # exact total; bacterial is the largest class
    val = [max(1, int(c * VAL_FRACTION)) for c in folder]
    train = [a - b for a, b in zip(folder, val)]
    for name, size in (("n_test", n_test), ("n_val", n_val)):
        if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 6):
            raise ValueError(f"phantom {name}={size!r} must be an int >= 6 (two images per class), e.g. {name}=6000")
    if n_test is not None:
        test = _mix(n_test, KERMANY_TEST)
    if n_val is not None:
        val = _mix(n_val, val)
    return {"train": tuple(train), "val": tuple(val), "test": tuple(test)}


def _plan(seed: int, n: int, marker_bias: float, n_test=None, n_val=None) -> pd.DataFrame:
    """Global index, split, label and marker state of every image (no pixels)."""
    counts_of = split_counts(n, n_test, n_val)
    rows, start = [], 0
    for s_i, split in enumerate(SPLITS):
        counts = counts_of[split]
        rng = np.random.default_rng([seed, 7919, s_i])       # own stream: labels never touch pixels
        labels = rng.permutation(np.repeat(np.arange(3), counts))
        bias = marker_bias if split != "test" else 0.0
        own = np.asarray(MARKER_OF_CLASS)[labels]
        marker = np.where(rng.random(len(labels)) < bias, own, rng.integers(0, 3, len(labels)))
        rows.append(pd.DataFrame({"index": np.arange(start, start + len(labels)), "split": split,
                                  "label": labels, "marker": marker}))
        start += len(labels)
    return pd.concat(rows, ignore_index=True)


# ----------------------------------------------------------------------------- helpers
def _smoothstep(x):
    """0 below 0, 1 above 1, smooth in between (cheaper than a sigmoid)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _bump(x):
    """A smooth bump: 1 at x = 0, 0 for |x| >= 1 (a cheap Gaussian stand-in)."""
    q = np.clip(1.0 - x * x, 0.0, 1.0)
    return q * q


@lru_cache(maxsize=32)
def _upsampler(m: int, size: int) -> np.ndarray:
    """Gaussian interpolation matrix [size, m] mapping an m-grid of white noise to a smooth field.

    Rows are scaled so that the field has unit variance everywhere.
    """
    pos = (np.arange(size) + 0.5) * m / size - 0.5
    w = np.exp(-0.5 * ((pos[:, None] - np.arange(m)[None, :]) / 0.75) ** 2)
    w /= np.sqrt((w ** 2).sum(1, keepdims=True))
    return w.astype(_F)


@lru_cache(maxsize=8)
def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(_F)
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def _field(noise: np.ndarray, box, size: int) -> np.ndarray:
    """The smooth unit-variance field of an m x m white-noise grid, on an image window only."""
    up = _upsampler(noise.shape[0], size)
    return up[box[0]] @ noise @ up[box[1]].T


def _up2(a: np.ndarray) -> np.ndarray:
    """Upsample [..., H, W] by 2 along the last two axes with linear interpolation (pixel centres kept)."""
    for axis in (-2, -1):
        a = np.moveaxis(a, axis, 0)
        pad = np.concatenate([a[:1], a, a[-1:]])
        q = 0.75 * a
        out = np.empty((2 * len(a),) + a.shape[1:], a.dtype)
        out[0::2] = q + 0.25 * pad[:-2]
        out[1::2] = q + 0.25 * pad[2:]
        a = np.moveaxis(out, 0, axis)
    return a


# Glyph of the burned-in marker: an "L" on a 5x7 grid.
_GLYPH = np.array([[1, 0, 0, 0, 0]] * 6 + [[1, 1, 1, 1, 0]], dtype=bool)


# ----------------------------------------------------------------------------- rendering
class _Pose:
    """Patient coordinates u (image left to right), v (top to bottom); the thorax spans about [-1, 1]."""

    def __init__(self, rng, size: int):
        self.size = size
        self.scale = rng.uniform(0.84, 1.05)
        self.dx, self.dy = rng.uniform(-0.08, 0.08, 2)
        self.rot = rng.normal(0.0, 0.035)                         # radians (~2 degrees)
        X, Y = _grid(size)
        c, s = np.cos(self.rot), np.sin(self.rot)
        xs, ys = (X - _F(self.dx)) / _F(self.scale), (Y - _F(self.dy)) / _F(self.scale)
        self.u = _F(c) * xs + _F(s) * ys
        self.v = _F(c) * ys - _F(s) * xs
        self.px = 2.0 / (size * self.scale)                       # one pixel in patient units

    def box(self, u0, u1, v0, v1):
        """Rows and columns of the image that cover the patient box [u0,u1] x [v0,v1] (plus a pixel)."""
        c, s = math.cos(self.rot), math.sin(self.rot)
        corners = [(u, v) for u in (u0, u1) for v in (v0, v1)]
        X = [(c * u - s * v) * self.scale + self.dx for u, v in corners]
        Y = [(s * u + c * v) * self.scale + self.dy for u, v in corners]
        n = self.size
        lim = lambda z: slice(min(max(math.floor((min(z) + 1) / 2 * n) - 1, 0), n),
                              min(max(math.ceil((max(z) + 1) / 2 * n) + 1, 0), n))
        return lim(Y), lim(X)


def _anatomy(rng) -> dict:
    """Class-independent patient parameters (drawn first: a label change keeps the same patient)."""
    dome = rng.uniform(0.30, 0.45)                                # diaphragm level (depth of inspiration)
    up = rng.random() < 0.6                                       # arms raised (common in infants) or down
    p = dict(arm=((0.74, -0.62), (rng.uniform(0.8, 1.0), -1.6)) if up else ((0.94, -0.6), (rng.uniform(1.0, 1.1), 1.6)),
             W=rng.uniform(0.86, 1.0) - (0.0 if up else 0.08), Wn=rng.uniform(0.17, 0.24), v_sh=rng.uniform(-1.15, -1.0),
             dome=dome)
    p["lungs"] = [dict(side=sd, cx=rng.uniform(0.36, 0.40), a=rng.uniform(0.31, 0.35),
                       apex=rng.uniform(-0.76, -0.64), h=rng.uniform(0.09, 0.16), taper=rng.uniform(0.15, 0.3),
                       yd=dome - (rng.uniform(0.02, 0.07) if sd == -1 else 0.0))   # right dome higher
                  for sd in (-1, 1)]                               # -1: patient right = image left
    p["heart"] = dict(x=rng.uniform(0.1, 0.16), y=dome - rng.uniform(0.14, 0.2), a=rng.uniform(0.31, 0.36),
                      b=rng.uniform(0.21, 0.25), ang=rng.uniform(0.45, 0.7))
    p["rib"] = dict(k1=rng.uniform(0.25, 0.4), k2=rng.uniform(0.75, 1.0), n=rng.uniform(9.0, 10.5),
                    amp=rng.uniform(0.03, 0.055), w=rng.uniform(0.3, 0.42), ant=rng.uniform(0.3, 0.5))
    p.update(clav_y=rng.uniform(-0.64, -0.54), clav_amp=rng.uniform(0.12, 0.2), spine_amp=rng.uniform(0.05, 0.1),
             spine_w=rng.uniform(0.05, 0.065), carina=rng.uniform(-0.36, -0.26), air=rng.uniform(0.26, 0.42),
             vessels=rng.uniform(0.2, 0.35), hilum=rng.uniform(0.15, 0.35), bubble=rng.random() < 0.6)
    p["film"] = dict(k=rng.uniform(1.6, 2.6), blur=rng.uniform(0.0, 0.12), contrast=rng.uniform(0.8, 1.05),
                     bright=rng.uniform(-0.06, 0.08), gamma=rng.uniform(0.75, 1.3), grain=rng.uniform(0.01, 0.035),
                     heel=rng.normal(0.0, 0.04))
    p["noise"] = dict(shape=rng.standard_normal((6, 6), dtype=_F),
                      vessel=rng.standard_normal((8, 48), dtype=_F))
    return p


def _vessel_texture(noise: np.ndarray) -> np.ndarray:
    """A smooth texture over (radius bin, angle bin): slow along the radius, so its ridges radiate."""
    return _upsampler(noise.shape[0], 64) @ noise @ _upsampler(noise.shape[1], 512).T


def _polar(x, y, xh, yh, texture, half: int):
    """Sample ``texture`` at (distance, pseudo-angle) around the hilum (xh, yh); returns (field, rho)."""
    dx, dy = x - xh, y - yh
    rho = np.sqrt(dx * dx + dy * dy)
    s = dy / (np.abs(dx) + np.abs(dy) + 0.02)                      # diamond angle in [-1, 1]
    ri = np.minimum(rho * (63 / 0.9), 63).astype(np.int32)
    si = ((s + 1.0) * 127.5).astype(np.int32) + 256 * half         # each lung its own half
    return np.take(texture.ravel(), ri * 512 + si), rho


def _render(rng, label: int, size: int, difficulty: float, marker: int, film_shift: Optional[dict] = None):
    """One image: (uint8 [S,S], lung mask, lesion mask, metadata dict); ``film_shift``: the acquisition
    shift (:func:`support.data.phantom_knobs.shift_film`) applied to the drawn film parameters."""
    S = size
    R = S // 2 if S >= 128 and S % 2 == 0 else S                  # internal resolution (upsampled at the end)
    pose = _Pose(rng, R)
    u, v, px = pose.u, pose.v, pose.px
    P = _anatomy(rng)
    if film_shift is not None:                                     # after the draws: the same patient
        P["film"] = shift_film(P["film"], film_shift)
    severity = float(rng.uniform(0.0, 1.0)) if label else 0.0
    n_path = dict(lo=rng.standard_normal((6, 6), dtype=_F), mid=rng.standard_normal((16, 16), dtype=_F),
                  vessel=rng.standard_normal((8, 48), dtype=_F))

    # Body: an elliptic cross-section, narrow at the neck, widening over the shoulders.
    hw = P["Wn"] + (P["W"] - P["Wn"]) * _smoothstep((v - P["v_sh"]) / 0.45)
    t = np.sqrt(np.clip(1.0 - (u / hw) ** 2, 0.0, 1.0))
    A = _F(0.55) * t * np.sqrt(t) + _F(P["film"]["heel"]) * v
    for sd in (-1, 1):                                             # arms: raised beside the head, or down
        (x0, y0), (x1, y1) = P["arm"]
        box = pose.box(*sorted((sd * (min(x0, x1) - 0.15), sd * (max(x0, x1) + 0.15))), min(y0, y1), max(y0, y1))
        x, y = sd * u[box], v[box]
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        d2 = (x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2
        tissue = 0.3 * np.sqrt(np.clip(1.0 - d2 / 0.14 ** 2, 0.0, 1.0))
        A[box] = np.maximum(A[box], tissue) + 0.12 * np.sqrt(np.clip(1.0 - d2 / 0.035 ** 2, 0.0, 1.0)) \
            + 0.1 * np.sqrt(np.clip(1.0 - ((x - x0) ** 2 + (y - y0) ** 2) / 0.075 ** 2, 0.0, 1.0))
    lung_f = np.full((R, R), -1.0, _F)                             # > 0 inside a lung
    les_f = np.full((R, R), -1.0, _F)                              # > 0 inside a lesion
    texture = _vessel_texture(P["noise"]["vessel"])
    H = P["heart"]
    ch, sh = float(np.cos(H["ang"])), float(np.sin(H["ang"]))   # Python floats keep arrays float32
    for k, L in enumerate(P["lungs"]):
        sd, cx, a, apex, yd = L["side"], L["cx"], L["a"], L["apex"], L["yd"]
        box = pose.box(*sorted((0.0, sd * (cx + a + 0.08))), apex - 0.04, yd + 0.04)
        uu, vv = u[box], v[box]
        x, y = sd * uu, vv
        cy, b = (apex + yd + 0.12) / 2, (yd + 0.12 - apex) / 2
        dyl = (y - cy) / b
        dxl = (x - cx) / (a * (1.0 + L["taper"] * dyl))            # lungs widen towards the base
        q2, d2 = dxl * dxl, dyl * dyl
        r = 0.5 * (q2 + d2) + 0.5 * np.sqrt(q2 * q2 + d2 * d2)    # between an ellipse and a box
        r += 0.05 * _field(P["noise"]["shape"], box, R)
        dome_y = yd - L["h"] * (1.0 - ((x - cx) / (1.15 * a)) ** 2)
        hx, hy = uu - H["x"], vv - H["y"]
        rh = ((ch * hx + sh * hy) / H["a"]) ** 2 + ((ch * hy - sh * hx) / H["b"]) ** 2
        air = np.sqrt(np.clip((1.0 - r) / 0.2, 0.0, 1.0)) * _smoothstep((dome_y - y) / (1.5 * px)) \
            * _smoothstep((rh - 1.0) / 0.18)
        lung_f[box] = np.maximum(lung_f[box], np.minimum(np.minimum(1.0 - r, (dome_y - y) * 3.0), rh - 1.0))
        # hilum and vessels: radiating, tapering lines that fade towards the periphery
        xh, yh = cx - a + 0.07, -0.08
        tex, rho = _polar(x, y, xh, yh, texture, k)
        fade = 1.0 - _smoothstep((rho - 0.1) / 0.5)
        width = 0.25 + 0.25 * fade
        air *= 1.0 - P["vessels"] * fade * _bump(tex / width)
        air *= 1.0 - P["hilum"] * _bump(rho / 0.09)
        L.update(box=box, x=x, y=y, air=air, hilum=(xh, yh))

    # --- pathology: removes air from the lungs; the lesion field marks where it is substantial
    if label:
        meta = _pathology(rng, label, P, severity, difficulty, n_path, R, px, les_f)
    else:
        meta = {"n_lesions": 0, "side": "none"}
    for L in P["lungs"]:
        A[L["box"]] -= _F(P["air"]) * L["air"]

    # --- bones: posterior and anterior ribs, clavicles, spine (humeri are drawn with the arms)
    rib = P["rib"]
    for L in P["lungs"]:
        sd, cx, a, apex, yd = L["side"], L["cx"], L["a"], L["apex"], L["yd"]
        box = pose.box(*sorted((0.0, sd * (cx + a + 0.12))), P["clav_y"] - 0.3, yd + 0.15)
        x, y = sd * u[box], v[box]
        y0, span = apex - 0.04, yd + 0.1 - apex
        t = np.clip((y - (rib["k2"] * x * x - rib["k1"] * x) - y0) / span, 0.0, 1.2)
        p = rib["n"] * t * (1.15 - 0.15 * t)                        # rib spacing widens downwards
        z = ((p - np.floor(p)) / rib["w"]) * 2.0 - 1.0
        edge = cx + a + 0.04
        bone = _smoothstep((1.0 - z * z) * 3.0) * (0.6 + 0.4 * z * z) * _smoothstep((rib["n"] - p) * 2) \
            * (t > 0) * _smoothstep((x - 0.04) / 0.06) * _smoothstep((edge - x) / 0.06)
        ta = (y + 0.5 * x - (apex + 0.28)) / span
        pa = (rib["n"] - 3) * np.clip(ta, 0.0, 1.0)
        za = ((pa - np.floor(pa)) / 0.4) * 2.0 - 1.0
        bone += rib["ant"] * _smoothstep((1.0 - za * za) * 3.0) * _smoothstep((x - 0.3) / 0.15) \
            * _smoothstep((edge - x) / 0.06) * (ta > 0) * (ta < 0.97)
        cl = (y - (P["clav_y"] - 0.34 * x + 0.16 * x * x)) / (0.042 - 0.015 * x)
        bone += P["clav_amp"] / rib["amp"] * _bump(cl) * _smoothstep((x - 0.05) / 0.04) \
            * _smoothstep((0.66 - x) / 0.05)
        A[box] += _F(rib["amp"]) * bone
    box = pose.box(-0.15, 0.15, -1.0, 1.0)
    uu, vv = u[box], v[box]
    spine = np.sqrt(np.clip(1.0 - (uu / P["spine_w"]) ** 2, 0.0, 1.0))
    A[box] += P["spine_amp"] * spine * (0.7 + 0.3 * np.cos(vv * (np.pi / 0.085)) ** 2)
    trachea = np.sqrt(np.clip(1.0 - ((uu + 0.01) / 0.03) ** 2, 0.0, 1.0)) * _smoothstep((P["carina"] - vv) / 0.06)
    A[box] -= 0.08 * trachea
    if P["bubble"]:                                                # gastric air under the left dome
        Ll = P["lungs"][1]
        box = pose.box(0.1, 0.7, Ll["yd"], Ll["yd"] + 0.3)
        d = ((u[box] - Ll["cx"]) / 0.1) ** 2 + ((v[box] - Ll["yd"] - 0.11) / 0.05) ** 2
        A[box] -= 0.1 * np.sqrt(np.clip(1.0 - d, 0.0, 1.0))

    # --- film: response, unsharpness, automatic window, random display window and gamma, grain
    F = P["film"]
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
    if marker:
        _draw_marker(rng, out, marker)
    lung_px = max(int(lung_mask.sum()), 1)
    meta.update(severity=severity, lesion_area=float(lesion_mask.sum()) / lung_px, lung_area=lung_px / S ** 2,
                exposure=float(F["k"]), contrast=float(F["contrast"]), gamma=float(F["gamma"]),
                grain=float(F["grain"]), blur=float(F["blur"]), scale=float(pose.scale),
                shift_x=float(pose.dx), shift_y=float(pose.dy), rotation_deg=float(np.degrees(pose.rot)),
                marker=MARKER_STATES[marker])
    return out, lung_mask, lesion_mask, meta


def _consolidation(rng, L, noise, R, px, size: float):
    """Soft lumpy blob field (0..1) of one consolidation in lung L, ~``size`` in patient units."""
    x, y = L["x"], L["y"]
    yc = rng.uniform(L["apex"] + 0.3, L["yd"] - 0.3)  # clear of the apex and the dome
    xc = L["cx"] + rng.uniform(-0.35, 0.4) * L["a"]
    ry = size * rng.uniform(0.8, 1.2)
    rx = ry * rng.uniform(0.7, 1.3)
    wobble = 0.6 * _field(noise["lo"], L["box"], R) + 0.3 * _field(noise["mid"], L["box"], R)
    rr = ((x - xc) / rx) ** 2 + ((y - yc) / ry) ** 2 + 0.35 * wobble
    blob = _smoothstep((1.0 - rr) / 0.9)
    if rng.random() < 0.5:                                          # a fissure: one sharp straight edge
        yf = yc + (1.0 if rng.random() < 0.5 else -1.0) * ry * rng.uniform(0.2, 0.7)
        blob *= _smoothstep(((yf - y) if yf > yc else (y - yf)) / (2 * px))
    return blob


def _dense(L, blob, opacity, noise, R, k):
    """Remove air under ``blob`` (patchy, with air bronchograms: dark branching lines)."""
    tex, _ = _polar(L["x"], L["y"], *L["hilum"], _vessel_texture(noise["vessel"]), k)
    L["air"] *= 1.0 - opacity * blob * (0.8 + 0.2 * _field(noise["mid"], L["box"], R)) * (1.0 - 0.5 * _bump(tex / 0.3))


def _interstitial(L, amp, difficulty, noise, R, k):
    """Perihilar streaks and haze in lung L with strength ``amp`` (0..1); returns the envelope."""
    tex, rho = _polar(L["x"], L["y"], *L["hilum"], _vessel_texture(noise["vessel"][::-1]), k)
    env = (1.0 - _smoothstep((rho - 0.05) / (0.25 + 0.3 * amp))) * (1.0 + 0.3 * _field(noise["lo"], L["box"], R))
    env = np.clip(env, 0.0, 1.0)
    opacity = min(0.9, (0.18 + 0.42 * amp) / difficulty)
    L["air"] *= 1.0 - opacity * env * (0.45 + 0.55 * _bump(tex / 0.5))
    return env


def _pathology(rng, label, P, sev, difficulty, noise, R, px, les_f) -> dict:
    """Bacterial: dense lobar consolidation in one lung (sometimes two foci), now and then with faint
    bilateral streaks. Viral: bilateral perihilar streaks and haze, now and then with a small patch.
    The class-typical sign grows with severity; the atypical one fades with it, so mild cases are
    ambiguous between the two pneumonias rather than with normal."""
    lungs = P["lungs"]
    if label == 1:
        k = 0 if rng.random() < 0.55 else 1                         # the right lung a little more often
        n_les = 1 if rng.random() < 0.8 else 2
        L = lungs[k]
        blob = np.maximum.reduce([_consolidation(rng, L, noise, R, px, 0.22 + 0.12 * sev) for _ in range(n_les)]
                                 + [np.zeros_like(L["x"])])
        _dense(L, blob, min(0.95, (0.75 + 0.2 * sev) / difficulty), noise, R, k)
        les_f[L["box"]] = np.maximum(les_f[L["box"]], blob - 0.45)
        if rng.random() < 0.6:                                      # atypical: faint bilateral streaks
            amp = rng.uniform(0.4, 0.9) * (1.0 - 0.5 * sev)
            for j, Lj in enumerate(lungs):
                _interstitial(Lj, amp, difficulty, noise, R, j)
        return {"n_lesions": n_les, "side": ("right", "left")[k]}
    weak = rng.integers(0, 2)
    for j, L in enumerate(lungs):
        amp = (0.65 + 0.35 * sev) * (rng.uniform(0.6, 1.0) if j == weak else 1.0)
        env = _interstitial(L, amp, difficulty, noise, R, j)
        les_f[L["box"]] = np.maximum(les_f[L["box"]], env - 0.55)
    n_les = 2
    if rng.random() < 0.6:                                          # atypical: a small patch of atelectasis
        k = int(rng.integers(0, 2))
        L = lungs[k]
        blob = _consolidation(rng, L, noise, R, px, 0.12 + 0.08 * rng.random())
        _dense(L, blob, min(0.9, (0.45 + 0.35 * (1.0 - sev)) / difficulty), noise, R, k)
        les_f[L["box"]] = np.maximum(les_f[L["box"]], blob - 0.45)
        n_les = 3
    return {"n_lesions": n_les, "side": "both"}


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


# ----------------------------------------------------------------------------- public API
def _check(image_size, difficulty, marker_bias) -> None:
    """Reject parameter values the generator cannot honour, naming the value and the valid range."""
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < MIN_SIZE:
        raise ValueError(f"phantom image_size={image_size!r} is too small or not an int; use an int >= {MIN_SIZE}")
    if not isinstance(difficulty, (int, float, np.number)) or not np.isfinite(difficulty) or difficulty <= 0:
        raise ValueError(f"phantom difficulty={difficulty!r} must be a positive number (1.0 = default)")
    if not isinstance(marker_bias, (int, float, np.number)) or not 0.0 <= marker_bias <= 1.0:
        raise ValueError(f"phantom marker_bias={marker_bias!r} must lie in [0, 1] (0 = no shortcut)")


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


@register_source("phantom", version=3, keyless=("label_noise", "noise_structure", "shift"))
def build(seed: int = 0, n: int = KERMANY_TOTAL, image_size: int = 256, difficulty: float = 1.0,
          marker_bias: float = 0.0, n_test: Optional[int] = None, n_val: Optional[int] = None,
          label_noise: float = 0.0, noise_structure: str = "symmetric", shift=None) -> DataBundle:
    """The default data: ``n`` phantom chest films in Kermany's class mix and splits (see the module doc).

    ``n_test`` / ``n_val`` give the test and validation draws their own size (generated films cost
    nothing: size them to the effect a comparison must detect); the training split stays that of ``n``.
    ``label_noise`` / ``noise_structure`` / ``shift``: the regime knobs (at their defaults the bundle,
    and its cache and run keys, are those of the clean data).
    """
    _check(image_size, difficulty, marker_bias)
    check_noise(label_noise, noise_structure)
    film_shift = resolve_shift(shift)
    plan = _plan(seed, n, float(marker_bias), n_test, n_val)
    split_of = plan["split"].to_numpy()
    devices = np.zeros(len(plan), bool)
    if film_shift is not None:
        for s_i, name in enumerate(SPLITS):
            rows = np.flatnonzero(split_of == name)
            devices[rows] = device_markers(seed, s_i, len(rows), film_shift["device_marker"][name == "test"])
    big = len(plan) * image_size ** 2 >= 1000 * 128 ** 2                    # below this a pool costs more than it saves
    images, lungs, lesions, meta = generate(plan["index"].to_numpy(), plan["label"].to_numpy(), image_size, seed,
                                            difficulty, plan["marker"].to_numpy(), workers=2 if big else 1,
                                            shift=film_shift, shifted=split_of == "test", devices=devices)
    meta.insert(0, "id", [f"phantom-s{seed}-{i:06d}" for i in plan["index"]])
    meta.insert(2, "split", split_of)
    labels = plan["label"].to_numpy().copy()
    if label_noise > 0:
        meta["true_label"] = labels.copy()
        for s_i, name in enumerate(SPLITS[:2]):                               # train and val; test stays true
            rows = np.flatnonzero(split_of == name)
            labels[rows] = flip_labels(labels[rows], meta["severity"].to_numpy()[rows], label_noise,
                                       noise_structure, seed, s_i)
        meta["label"], meta["class"] = labels, np.asarray(CLASSES)[labels]
        meta["label_flipped"] = labels != meta["true_label"].to_numpy()
    if film_shift is not None:
        meta["acquisition"] = np.where(split_of == "test", "shifted", "reference")
        meta["device_marker"] = devices
    splits = {}
    for name in SPLITS:
        rows = np.flatnonzero(split_of == name)
        splits[name] = Split(images=torch.from_numpy(images[rows]), labels=torch.from_numpy(labels[rows]),
                             ids=meta["id"].iloc[rows].tolist(), lung_masks=torch.from_numpy(lungs[rows]),
                             lesion_masks=torch.from_numpy(lesions[rows]), meta=meta.iloc[rows].reset_index(drop=True))
    extra = (f", difficulty {difficulty:g}" if difficulty != 1.0 else "") + \
        (f", marker_bias {marker_bias:g}" if marker_bias else "") + \
        (f", test {n_test}" if n_test is not None else "") + (f", val {n_val}" if n_val is not None else "") + \
        (f", {label_noise:.0%} {noise_structure} label noise in train/val" if label_noise > 0 else "") + \
        (f", test acquisition shift {shift if isinstance(shift, str) else film_shift}" if film_shift else "")
    source = f"CXR phantom (generated, seed {seed}, n={n}, {image_size}²{extra})"
    return DataBundle(classes=CLASSES, splits=splits, source=source, name="phantom")


def preview_grid(bundle: DataBundle, n_per_class: int = 4, split: str = "train", seed: int = 0):
    """Random ``split`` images per class with lung (cyan) and lesion (red) contours and severities.

    The grid itself is :func:`support.explore.sample_grid` (one drawing routine for every source).
    """
    from ..explore import sample_grid

    return sample_grid(bundle, split=split, n_per_class=n_per_class, seed=seed)
