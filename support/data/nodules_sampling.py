"""The nodule generator's randomness: per-image random streams and the factor table of a split.

:func:`sample_factors` draws each factor of a split from its own stream keyed by (seed, preset, split, factor);
:class:`_Streams` gives each image one stream per part keyed by (seed, preset, split, index, part), which
:mod:`support.data.nodules_draw` renders from and counterfactuals reuse.
"""
from __future__ import annotations

import zlib
from typing import Dict, Mapping, Sequence

import numpy as np
import pandas as pd

from .nodules_spec import CLASSES, _dist, radius_ranges


# ----------------------------------------------------------------------------- random streams
def _tag(preset: str, split: str) -> int:
    return zlib.crc32(f"{preset}/{split}".encode())


class _Streams:
    """Per-image random streams: one counter-based Philox, re-keyed by (seed, preset/split, index, part).

    Re-keying costs ~3 us where a new generator costs ~20 us. The generator that :meth:`get` returns
    is valid until the next call; make one ``_Streams`` per thread.
    """

    def __init__(self):
        self._bits = np.random.Philox(key=0)
        self._gen = np.random.Generator(self._bits)
        self._state = self._bits.state
        self._parts: Dict[str, int] = {}

    def get(self, seed: int, tag: int, index: int, part: str) -> np.random.Generator:
        part_id = self._parts.setdefault(part, zlib.crc32(part.encode()))
        state = self._state
        state["state"] = {"counter": np.zeros(4, np.uint64),
                          "key": np.array([int(seed) | tag << 32, int(index) | part_id << 32], np.uint64)}
        state["buffer_pos"], state["has_uint32"], state["uinteger"] = 4, 0, 0
        self._bits.state = state
        return self._gen


def _size_quantile(rows: pd.DataFrame) -> np.ndarray:
    """u ~ U(0, 1) per image from its size stream: r0 = lo + u (hi - lo) for either size level."""
    streams = _Streams()
    return np.array([streams.get(s, _tag(p, sp), i, "size").random() for s, p, sp, i in
                     zip(rows["seed"], rows["preset"], rows["split"], rows["index"])])


def _r0(rows: pd.DataFrame, radius: Mapping[str, Sequence[float]]) -> np.ndarray:
    lo = rows["size"].map(lambda s: radius[s][0]).to_numpy(float)
    hi = rows["size"].map(lambda s: radius[s][1]).to_numpy(float)
    return np.round(lo + _size_quantile(rows) * (hi - lo), 4)


# ----------------------------------------------------------------------------- sampling the factors
def sample_factors(spec: dict, *, preset: str, split: str, n: int, seed: int, image_size: int) -> pd.DataFrame:
    """The factor table of one split (one row per image); render it with :func:`render`."""
    tag = _tag(preset, split)
    rng = lambda name: np.random.default_rng([seed, tag, zlib.crc32(name.encode())])
    label = np.repeat([0, 1], [n - n // 2, n // 2])
    rng("label").shuffle(label)
    rows = pd.DataFrame({"index": np.arange(n), "seed": seed, "preset": preset, "split": split,
                         "image_size": image_size, "label": label})
    lab, short = spec["label"], spec["shortcut"]
    for factor, dist in spec["factors"].items():
        rows[factor] = _draw(rng(factor), _dist(factor, dist, f"factors.{factor}"), n)
    g = rng("label_level")
    benign, malignant = (_draw(g, _dist(lab["factor"], lab[c], c), n) for c in CLASSES)
    rows[lab["factor"]] = np.where(label == 1, malignant, benign)
    if short is not None:
        aligned = np.zeros(n, dtype=bool)
        g = rng("shortcut")
        for c in (0, 1):  # exactly round(rho * n_c) aligned images per class
            idx = np.flatnonzero(label == c)
            aligned[g.permutation(idx)[: int(round(short["rho"] * len(idx)))]] = True
        paired = np.array([short["benign"], short["malignant"]], dtype=object)
        rows[short["factor"]] = paired[np.where(aligned, label, 1 - label)]
    nui, centre = spec["nuisance"], (image_size - 1) / 2
    rows["x"], rows["y"] = np.round(centre + rng("position").uniform(-1, 1, (2, n)) * nui["jitter"], 4)
    rows["background"] = np.round(rng("background").uniform(*nui["background"], n), 4)
    rows["n_vessels"] = rng("vessels").integers(nui["n_vessels"][0], nui["n_vessels"][1] + 1, n)
    rows["noise_sd"] = np.round(rng("noise").uniform(*nui["noise_sd"], n), 4)
    rows["n_crossing"] = rng("crossing").integers(nui["n_crossing"][0], nui["n_crossing"][1] + 1, n)
    rows["margin_strength"] = float(spec["difficulty"]["margin_strength"])
    rows["r0"] = _r0(rows, radius_ranges(spec))
    rows["rho"] = np.nan if short is None else float(short["rho"])
    mal = _dist(lab["factor"], lab["malignant"], "label.malignant")
    rows["label_rule"] = f"{lab['factor']}=" + "|".join(lvl for lvl, p in mal.items() if p > 0)
    rows["shortcut_rule"] = "" if short is None else f"{short['factor']}={short['malignant']}"
    return _apply_rules(rows)


def _draw(g: np.random.Generator, dist: Mapping[str, float], n: int) -> np.ndarray:
    levels = np.array(list(dist), dtype=object)
    return levels[g.choice(len(levels), size=n, p=np.array(list(dist.values()), float))]


def _apply_rules(rows: pd.DataFrame) -> pd.DataFrame:
    """Set ``label`` from ``label_rule`` ("margin=spiculated": 1 when margin is spiculated) and
    ``shortcut_aligned`` from ``shortcut_rule`` (1 when the shortcut level is the label's, -1 = none)."""
    def holds(rule_column: str) -> np.ndarray:
        out = np.full(len(rows), -1)
        for rule, idx in rows.groupby(rule_column, sort=False).indices.items():
            factor, _, levels = rule.partition("=")
            if factor:
                out[idx] = rows[factor].iloc[idx].isin(levels.split("|")).to_numpy()
        return out

    rows = rows.copy()
    rows["label"] = holds("label_rule")
    short = holds("shortcut_rule")
    rows["shortcut_aligned"] = np.where(short < 0, -1, short == rows["label"].to_numpy())
    return rows

