"""Drawing nodule patches: background texture and vessels, the nodule body (lobulated margin, blurred edge),
spicules, fill texture, crossing vessels and noise -- many patches at once as batched tensor ops.

:func:`render` turns a factor table (:func:`support.data.nodules_sampling.sample_factors`) into images and masks.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import numpy as np
import pandas as pd
import torch

from .nodules_sampling import _Streams, _tag
from .nodules_spec import (BG_BLUR, BG_SD, BORDER, CROSSING_PEAK, EDGE_SD, FILL, FILL_JITTER, LOBULATION, MAX_CROSSING,
                           MAX_VESSELS, SPIKE_LENGTH, SPIKE_SD, SPIKES, VESSEL_PEAK, VESSEL_SD)

_CHUNK = 128               # images rendered per vectorised step


# ----------------------------------------------------------------------------- rendering
@lru_cache(maxsize=16)
def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """K with K @ X @ K.T = Gaussian blur of X (reflect boundary), precomputed per (size, sigma)."""
    radius = int(np.ceil(4 * sigma))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    k = np.zeros((size, size))
    for i in range(size):
        j = i + offsets
        j = np.where(j < 0, -j - 1, np.where(j >= size, 2 * size - j - 1, j))
        np.add.at(k[i], np.clip(j, 0, size - 1), weights)
    return k.astype(np.float32)


@lru_cache(maxsize=16)
def _grid(size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return torch.from_numpy(yy), torch.from_numpy(xx)


def _c(values) -> torch.Tensor:
    """Per-image values as float32 [B, 1, 1], to broadcast against [B, H, W] fields."""
    return torch.from_numpy(np.asarray(values, dtype=np.float32))[:, None, None]


def _gauss(z2: torch.Tensor) -> torch.Tensor:
    """exp(-z2 / 2) with z2 capped at 60: CPU exp is ~15x slower where it underflows."""
    return torch.exp(z2.clamp(max=60.0) * -0.5)


def _smooth_unit(noise: np.ndarray, sigma: float) -> torch.Tensor:
    """Blur a batch of white-noise fields and rescale each to mean 0, sd 1."""
    k = _blur_matrix(noise.shape[-1], sigma)
    out = torch.from_numpy(k @ noise @ k.T)  # numpy: one gemm per image, independent of the batch
    out -= out.mean(dim=(1, 2), keepdim=True)
    return out / out.square().mean(dim=(1, 2), keepdim=True).sqrt()


def render(rows: pd.DataFrame, image_size: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Images (uint8 [N,H,W]), nodule masks (bool [N,H,W]) and the rows with the drawn shape
    parameters (``a_lob``, ``n_lobes``, ``n_spikes``, ``fill``) filled in."""
    sizes = rows["image_size"].unique()
    if len(sizes) > 1:
        raise ValueError(f"rows to render mix image sizes {sorted(sizes)}; render each size separately")
    size, n = int(sizes[0]) if len(sizes) else int(image_size or 0), len(rows)
    rows = rows.copy()
    for key, default in (("margin_strength", 1.0), ("n_crossing", 0)):  # rows written before these knobs
        if key not in rows:
            rows[key] = default
    # the continuous inputs are stored with 4 decimals; re-rounding makes a JSON round trip harmless
    cont = ["x", "y", "background", "noise_sd", "r0", "margin_strength"]
    rows[cont] = rows[cont].astype(float).round(4)
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), bool)
    drawn, threads = [], torch.get_num_threads()
    # One thread: these 0.5 M-element ops gain little from two, and lose 10x when another
    # process holds a core (OpenMP threads wait on each other). Restored on exit.
    torch.set_num_threads(1)
    try:
        for start in range(0, n, _CHUNK):
            part = rows.iloc[start:start + _CHUNK]
            images[start:start + len(part)], masks[start:start + len(part)], d = _render_chunk(part, size)
            drawn.append(d)
    finally:
        torch.set_num_threads(threads)
    for key in ("a_lob", "n_lobes", "n_spikes", "fill"):
        rows[key] = np.concatenate([d[key] for d in drawn]) if drawn else np.zeros(0)
    return images, masks, rows


def _render_chunk(rows: pd.DataFrame, size: int):
    """Render up to _CHUNK rows: per-image random draws first, then whole-batch tensor ops."""
    b, n_u = len(rows), 4 + 2 * SPIKES[1]
    bg, tex, noise = (np.empty((b, size, size), np.float32) for _ in range(3))
    u_margin, u_vessel, z_fill = np.empty((b, n_u)), np.empty((b, MAX_VESSELS, 3)), np.empty(b)
    u_cross = np.empty((b, MAX_CROSSING, 2))
    streams, tags = _Streams(), {}
    for i, (seed, preset, split, index) in enumerate(zip(rows["seed"], rows["preset"], rows["split"], rows["index"])):
        tag = tags.setdefault((preset, split), _tag(preset, split))
        # uniform fields suffice where a blur and a rescale follow (the sum of many is Gaussian)
        bg[i] = streams.get(seed, tag, index, "background").random((size, size), dtype=np.float32)
        g = streams.get(seed, tag, index, "density")
        z_fill[i] = g.standard_normal()
        tex[i] = g.random((size, size), dtype=np.float32)
        u_margin[i] = streams.get(seed, tag, index, "margin").random(n_u)
        u_vessel[i] = streams.get(seed, tag, index, "vessels").random((MAX_VESSELS, 3))
        u_cross[i] = streams.get(seed, tag, index, "crossing").random((MAX_CROSSING, 2))
        noise[i] = streams.get(seed, tag, index, "noise").standard_normal((size, size), dtype=np.float32)
    col = lambda name: _c(rows[name].to_numpy())
    yy, xx = _grid(size)

    # background: smooth parenchyma texture, then straight faint vessels
    img = col("background") + BG_SD * _smooth_unit(bg, BG_BLUR)
    n_vessels = rows["n_vessels"].to_numpy()
    for v in range(int(n_vessels.max(initial=0))):
        px, py, ang = (_c(u_vessel[:, v, j]) for j in range(3))
        ang = ang * np.pi
        dist = (xx - px * (size - 1)) * torch.sin(ang) - (yy - py * (size - 1)) * torch.cos(ang)
        img += _c(n_vessels > v) * VESSEL_PEAK * _gauss((dist / VESSEL_SD) ** 2)

    # nodule body: polar boundary r0 (1 + a sin(k θ + φ)) with a blurred edge
    margin, strength = rows["margin"].to_numpy(), rows["margin_strength"].to_numpy(float)
    # margin_strength s moves a lobulated margin's amplitude range towards the smooth one (s = 0: alike)
    lob = np.array([LOBULATION[m] for m in margin])
    weak = (margin == "lobulated")[:, None] * (1 - strength[:, None])
    lob = lob * (1 - weak) + np.array(LOBULATION["smooth"])[None] * weak
    a_lob = np.round(lob[:, 0] + u_margin[:, 0] * (lob[:, 1] - lob[:, 0]), 4)
    n_lobes = 3 + np.minimum((u_margin[:, 1] * 3).astype(int), 2)
    phase = 2 * np.pi * u_margin[:, 2]
    r0 = rows["r0"].to_numpy(float)
    dx, dy = xx - col("x"), yy - col("y")
    r, theta = torch.sqrt(dx * dx + dy * dy), torch.atan2(dy, dx)
    edge = _c(r0) * (1 + _c(a_lob) * torch.sin(_c(n_lobes) * theta + _c(phase)))
    alpha = 0.5 + 0.5 * torch.erf((edge - r) / (EDGE_SD * np.sqrt(2)))
    mask = r <= edge

    # spiculated margin: n tapered radial spikes at angles φ + 2π (j ± 0.4) / n, so a pixel's
    # nearest spikes by angle are j0 = floor of its angular position and j0 + 1: render only those two
    # margin_strength s scales count, length, contrast and width of the spikes (s = 0: none)
    base = SPIKES[0] + np.minimum((u_margin[:, 3] * (SPIKES[1] - SPIKES[0] + 1)).astype(int), SPIKES[1] - SPIKES[0])
    n_spikes = np.where((margin == "spiculated") & (strength > 0),
                        np.maximum(np.round(base * (0.3 + 0.7 * strength)), 1), 0).astype(int)
    spiky = np.flatnonzero(n_spikes)
    if len(spiky):
        ns, ph, j, s_k = n_spikes[spiky], phase[spiky], np.arange(SPIKES[1]), strength[spiky, None]
        ang = ph[:, None] + 2 * np.pi * (j + 0.8 * (u_margin[spiky, 4:4 + SPIKES[1]] - 0.5)) / ns[:, None]
        u_length = u_margin[spiky, 4 + SPIKES[1]:]
        fraction = SPIKE_LENGTH[0] + (SPIKE_LENGTH[1] - SPIKE_LENGTH[0]) * u_length
        length = fraction * r0[spiky, None] * (0.3 + 0.7 * s_k)
        start = r0[spiky, None] * (1 + a_lob[spiky, None] * np.sin(n_lobes[spiky, None] * ang + ph[:, None])) - 1.5
        length = np.minimum(length, _to_border(rows["x"].to_numpy(float)[spiky, None],
                                               rows["y"].to_numpy(float)[spiky, None], ang, size) - BORDER - 1 - start)
        table = torch.from_numpy(np.stack([ang, length, start]).astype(np.float32))  # [3, S, n_max]
        thin = _c(0.6 + 0.4 * s_k[:, 0])[:, 0]
        sr, st = r[spiky].flatten(1), theta[spiky].flatten(1)
        pos = torch.remainder((st - _c(ph)[:, 0]) / (2 * np.pi), 1.0) * _c(ns)[:, 0]
        spikes = torch.zeros_like(sr)
        for offset in (0, 1):
            k = torch.remainder(pos.long() + offset, torch.from_numpy(ns)[:, None])
            a_k, len_k, start_k = (table[i].gather(1, k) for i in range(3))
            along = sr * torch.cos(st - a_k) - start_k
            across = sr * torch.sin(st - a_k)
            width = thin * (SPIKE_SD[0] + (SPIKE_SD[1] - SPIKE_SD[0]) * (along / len_k).clamp(0, 1))
            cap = (along - len_k).clamp(min=0) / 0.5  # soft round tip
            profile = _gauss((across / width) ** 2 + cap * cap) * (along > 0)
            spikes = torch.maximum(spikes, profile)
        spikes = spikes.view(len(spiky), size, size)
        alpha[spiky] = torch.maximum(alpha[spiky], _c(s_k[:, 0]) * spikes)  # contrast s
        mask[spiky] |= spikes > 0.5

    # fill: per-nodule level plus smooth internal texture; composite over the background; noise
    density = rows["density"].to_numpy()
    level = np.array([FILL[d][0] for d in density]) + FILL_JITTER * z_fill
    tex_sd = np.array([FILL[d][1] for d in density])
    fill = _c(level) + _c(tex_sd) * _smooth_unit(tex, 1.0)
    img = img * (1 - alpha) + fill * alpha
    # distractor vessels crossing the nodule: straight lines within r0/2 of its centre, over the body
    n_crossing = rows["n_crossing"].to_numpy()
    for v in range(int(n_crossing.max(initial=0))):
        offset, ang = _c((u_cross[:, v, 0] - 0.5) * r0), _c(u_cross[:, v, 1] * np.pi)
        dist = dx * torch.sin(ang) - dy * torch.cos(ang) - offset
        img += _c(n_crossing > v) * CROSSING_PEAK * _gauss((dist / VESSEL_SD) ** 2)
    img += col("noise_sd") * torch.from_numpy(noise)
    images = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return images.numpy(), mask.numpy(), {"a_lob": a_lob, "n_lobes": n_lobes, "n_spikes": n_spikes,
                                          "fill": np.round(level, 4)}


def _to_border(x: np.ndarray, y: np.ndarray, ang: np.ndarray, size: int) -> np.ndarray:
    """Distance from (x, y) to the patch border along direction ``ang`` (x = column, y = row)."""
    with np.errstate(divide="ignore"):
        cos, sin = np.cos(ang), np.sin(ang)
        tx = np.where(cos > 1e-9, (size - 1 - x) / cos, np.where(cos < -1e-9, x / -cos, np.inf))
        ty = np.where(sin > 1e-9, (size - 1 - y) / sin, np.where(sin < -1e-9, y / -sin, np.inf))
    return np.minimum(tx, ty)

