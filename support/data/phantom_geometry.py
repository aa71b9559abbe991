"""The phantom's drawing primitives: smooth steps and bumps, smooth noise fields, 2x upsampling, the patient pose.

Shared by the anatomy, lesion and film modules of the phantom (:mod:`support.data.phantom`).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Tuple

import numpy as np

_F = np.float32


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
