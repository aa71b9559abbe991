"""What a trained encoder encodes and what its classifier relies on.

* :func:`probe_scores` — linear probes on frozen features: a logistic regression per factor, fitted on
  one set of images and scored (balanced accuracy, chance 0.5) on another. Continuous factors are split
  at the fitting set's median. This says which factors a loss *encodes* (notes 3.6).
* :func:`counterfactual_sensitivity` — the same nodules re-rendered with one factor changed; the mean
  absolute change of P(malignant) says which factors the classifier *relies on*.

Both read features / images through :mod:`support.training` helpers and cache per run under
``runs/nodules/`` (key: run, weights, data parameters).
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from .. import artifacts, paths, training
from ..data import nodules as nd
from .study import split_id

#: Factors probed on frozen features (noise_sd is constant in the presets: nothing to decode).
PROBE_FACTORS = ("size", "margin", "density", "x", "y", "background", "n_vessels")


def _targets(meta: pd.DataFrame, factor: str, threshold=None) -> Tuple[np.ndarray, object]:
    """Binary/categorical target of ``factor``; continuous factors split at ``threshold`` (default median)."""
    if factor in nd.LEVELS:
        return meta[factor].astype(str).to_numpy(), None
    if factor not in meta:
        raise ValueError(f"unknown factor {factor!r}; probe factors: {', '.join(PROBE_FACTORS)}")
    values = meta[factor].to_numpy(float)
    threshold = float(np.median(values)) if threshold is None else threshold
    return (values > threshold).astype(int), threshold


def probe_scores(fit_features: np.ndarray, fit_meta: pd.DataFrame, eval_features: np.ndarray,
                 eval_meta: pd.DataFrame, factors: Sequence[str] = PROBE_FACTORS) -> Dict[str, float]:
    """Balanced accuracy of a linear probe (StandardScaler + LogisticRegression) per factor.

    Fitted on ``fit_*``, scored on ``eval_*`` (held out). A factor with one value in the fitting set
    (e.g. density in a density-shift set) gets NaN: nothing to learn.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if len(fit_features) != len(fit_meta) or len(eval_features) != len(eval_meta):
        raise ValueError(f"features and meta differ in length: fit {len(fit_features)} vs {len(fit_meta)}, "
                         f"eval {len(eval_features)} vs {len(eval_meta)}")
    out = {}
    for factor in factors:
        y_fit, threshold = _targets(fit_meta, factor)
        y_eval, _ = _targets(eval_meta, factor, threshold)
        if len(np.unique(y_fit)) < 2:
            out[factor] = float("nan")
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        with threadpool_limits(1):  # a tiny fit: threaded BLAS only adds overhead (6x on a busy 2-core box)
            clf.fit(fit_features, y_fit)
        out[factor] = float(balanced_accuracy_score(y_eval, clf.predict(eval_features)))
    return out


def features(model: torch.nn.Module, split, image_size: int) -> np.ndarray:
    """Frozen pooled features h [N, D] of a split's images at the model's input size."""
    images = training.to_device_images(split.images, image_size, "cpu")
    return training.embed_images(model, images).numpy()


def _cached(kind: str, params: dict, compute, force: bool, runs_dir=None):
    path = paths.inside(paths.nodules_dir(runs_dir), kind, artifacts.config_key(params) + ".json")
    if path.exists() and not force:
        return artifacts.read_json(path)
    value = compute()
    artifacts.write_json(path, value)
    return value


def run_probes(model, run_key: str, weights: str, bundle, image_size: int, force: bool = False,
               runs_dir=None) -> Dict[str, float]:
    """Probe scores of one model: fitted on ``bundle``'s train split, scored on its val split (cached)."""
    tr, va = bundle.splits["train"], bundle.splits["val"]
    params = {"run": run_key, "weights": weights, "fit": split_id(tr), "eval": split_id(va),
              "factors": list(PROBE_FACTORS)}
    return _cached("probes", params, lambda: probe_scores(features(model, tr, image_size), tr.meta,
                                                          features(model, va, image_size), va.meta),
                   force, runs_dir)


# ----------------------------------------------------------------------------- counterfactuals
def default_changes(spec: Optional[dict] = None, image_size: int = 64) -> Dict[str, tuple]:
    """Two values per factor, each within the training distribution: {factor: (low, high)}."""
    spec = spec or nd.resolve_spec("train", image_size=image_size)
    nui, centre = spec["nuisance"], (image_size - 1) / 2
    return {"size": ("small", "large"), "margin": ("smooth", "spiculated"), "density": ("solid", "ground_glass"),
            "x": (centre - nui["jitter"], centre + nui["jitter"]), "y": (centre - nui["jitter"], centre + nui["jitter"]),
            "background": tuple(nui["background"]), "n_vessels": tuple(nui["n_vessels"])}


def counterfactual_images(rows: pd.DataFrame, changes: Mapping[str, tuple]) -> Dict[str, tuple]:
    """{factor: (images with the low value, images with the high value)}: rendered once, shared by all runs."""
    return {f: tuple(nd.counterfactuals(rows, {f: v})[0] for v in values) for f, values in changes.items()}


def counterfactual_sensitivity(model, images: Dict[str, tuple], image_size: int) -> Dict[str, dict]:
    """{factor: {"abs": mean |ΔP(malignant)|, "signed": mean ΔP (high - low)}} over the nodules."""
    out = {}
    for factor, (low, high) in images.items():
        p = [training.predict_probs(model, training.to_device_images(x, image_size, "cpu"))[:, 1].numpy()
             for x in (low, high)]
        delta = p[1] - p[0]
        out[factor] = {"abs": float(np.abs(delta).mean()), "signed": float(delta.mean())}
    return out


def run_counterfactuals(model, run_key: str, weights: str, rows: pd.DataFrame, changes: Mapping[str, tuple],
                        get_images: Callable[[], Dict[str, tuple]], image_size: int, force: bool = False,
                        runs_dir=None) -> Dict[str, dict]:
    """:func:`counterfactual_sensitivity` of one run, cached by run, weights, changes and the nodules.

    ``get_images()`` returns :func:`counterfactual_images` of ``rows``; it is called only on a cache miss.
    """
    params = {"run": run_key, "weights": weights, "changes": {f: list(v) for f, v in changes.items()},
              "rows": rows[["seed", "preset", "split", "index", *nd.FACTORS, "r0"]].to_json(orient="values")}
    return _cached("counterfactuals", params, lambda: counterfactual_sensitivity(model, get_images(), image_size),
                   force, runs_dir)
