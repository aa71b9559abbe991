"""Nodule counterfactuals: re-render nodules with some factors changed and every other random draw kept,
and the one-factor-at-a-time preview figure built on them.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from .nodules_draw import render
from .nodules_sampling import _apply_rules, _r0, sample_factors
from .nodules_spec import FACTORS, LEVELS, MAX_CROSSING, MAX_VESSELS, PRESETS, radius_ranges, resolve_spec


# ----------------------------------------------------------------------------- counterfactuals
_DEFAULT_ROW = {"index": 0, "seed": 0, "preset": "train", "split": "custom", "image_size": 64, "size": "large",
                "margin": "smooth", "density": "solid", "background": 0.15, "n_vessels": 0, "noise_sd": 0.02,
                "rho": np.nan, "label_rule": "margin=spiculated", "shortcut_rule": "size=large",
                "margin_strength": 1.0, "n_crossing": 0}


def _as_rows(rows, spec) -> pd.DataFrame:
    """Meta row(s) (Series, dict or DataFrame) -> a complete factor table; missing factors take defaults."""
    if isinstance(rows, pd.Series):
        rows = rows.to_frame().T
    elif isinstance(rows, Mapping):
        rows = pd.DataFrame([dict(rows)])
    rows = rows.reset_index(drop=True).copy()
    for key, value in _DEFAULT_ROW.items():
        if key not in rows:
            rows[key] = value
    for key in ("x", "y"):
        if key not in rows:
            rows[key] = (rows["image_size"].astype(float) - 1) / 2
    rows = rows.astype({"index": int, "seed": int, "image_size": int, "n_vessels": int, "n_crossing": int,
                        "x": float, "y": float, "background": float, "noise_sd": float, "margin_strength": float})
    _check_change(rows, {k: rows[k] for k in FACTORS}, "rows")
    if "r0" not in rows:
        rows["r0"] = _r0(rows, _radius(rows, spec))
    return rows


def _radius(rows: pd.DataFrame, spec) -> dict:
    preset = rows["preset"].iloc[0] if len(rows) and rows["preset"].iloc[0] in PRESETS else "train"
    return radius_ranges(resolve_spec(preset, spec, image_size=int(rows["image_size"].max())))


def _check_change(rows: pd.DataFrame, change: Mapping, where: str) -> None:
    for key, value in change.items():
        if key not in FACTORS:
            raise ValueError(f"unknown factor {key!r} in {where}; valid factors: {', '.join(FACTORS)}")
        values = pd.Series(value).to_numpy() if np.ndim(value) else np.array([value], dtype=object)
        if key in LEVELS:
            bad = [v for v in values if v not in LEVELS[key]]
            if bad:
                raise ValueError(f"unknown {key} level {bad[0]!r} in {where}; valid levels: {', '.join(LEVELS[key])}")
            continue
        hi = {"background": 1.0, "noise_sd": 0.5, "n_vessels": MAX_VESSELS, "n_crossing": MAX_CROSSING,
              "margin_strength": 1.0}.get(key, rows["image_size"].min() - 1)
        numeric = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)
        if np.isnan(numeric).any() or (numeric < 0).any() or (numeric > hi).any() or (
                key in ("n_vessels", "n_crossing") and (numeric % 1).any()):
            shown = value if not np.ndim(value) else values[0]
            kind = "an integer " if key in ("n_vessels", "n_crossing") else ""
            raise ValueError(f"{key}={shown!r} in {where} must be {kind}"
                             f"in [0, {hi}]")


def counterfactuals(rows, change: Optional[Mapping] = None,
                    spec=None) -> Tuple[torch.Tensor, torch.Tensor, pd.DataFrame]:
    """Re-render nodules with the factors in ``change`` replaced and every other random draw kept.

    ``rows``: meta rows of a split (DataFrame), one row (Series) or a dict of factors (missing ones
    take defaults). ``change``: {factor: value}, e.g. ``{"size": "small"}`` or ``{"n_vessels": 0}``;
    a new size redraws r0 at the same quantile of the new range (from ``spec`` / the row's preset).
    Returns images (uint8 [N,H,W]), nodule masks (bool [N,H,W]) and the new meta rows, whose label and
    ``shortcut_aligned`` follow the rows' rules. ``change={}`` reproduces the original images.
    """
    change = dict(change or {})
    rows = _as_rows(rows, spec)
    _check_change(rows, change, "change")
    for key, value in change.items():
        rows[key] = value
    if "size" in change:
        rows["r0"] = _r0(rows, _radius(rows, spec))
    images, masks, rows = render(_apply_rules(rows))
    return torch.from_numpy(images), torch.from_numpy(masks), rows


def counterfactual(row, change: Optional[Mapping] = None, spec=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One nodule re-rendered with ``change`` applied: (image uint8 [H,W], mask bool [H,W])."""
    images, masks, _ = counterfactuals(row, change, spec)
    return images[0], masks[0]


# ----------------------------------------------------------------------------- looking at it
def preview_grid(factor: str, n: int = 6, preset: str = "train", seed: int = 0, image_size: int = 64,
                 values: Optional[Sequence] = None):
    """A figure: one row per value of ``factor``, one column per nodule, every other factor fixed."""
    import matplotlib.pyplot as plt

    from ..plots import titled

    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; valid factors: {', '.join(FACTORS)}")
    spec = resolve_spec(preset, image_size=image_size)
    centre, jitter = (image_size - 1) / 2, spec["nuisance"]["jitter"]
    sweeps = {"x": (centre - jitter, centre, centre + jitter), "y": (centre - jitter, centre, centre + jitter),
              "background": (0.10, 0.15, 0.20), "n_vessels": (0, 1, 2, 3), "noise_sd": (0.0, 0.02, 0.05),
              "n_crossing": (0, 1, 2), "margin_strength": (1.0, 0.5, 0.25, 0.0)}
    values = list(values if values is not None else LEVELS.get(factor, sweeps.get(factor)))
    rows = sample_factors(spec, preset=preset, split="preview", n=n, seed=seed, image_size=image_size)
    fig, axes = plt.subplots(len(values), n, figsize=(1.3 * n, 1.35 * len(values)), squeeze=False)
    for i, value in enumerate(values):
        images, _, _ = counterfactuals(rows, {factor: value})
        for j in range(n):
            axes[i, j].imshow(images[j].numpy(), cmap="gray", vmin=0, vmax=255)
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(str(value), fontsize=9)
    fig.suptitle(titled(f"one factor at a time: {factor} (rows)", f"synthetic nodules, {preset}"), fontsize=10)
    fig.tight_layout()
    return fig
