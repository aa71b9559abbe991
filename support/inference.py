"""Seed × image inference: intervals and paired tests that carry both noise sources.

A loss's score in a table is the mean over S training seeds of a metric on one shared test set.
It varies for two reasons: training randomness (another seed, another model) and the finite test
set (another draw of films). An interval that resamples only test images for fixed seeds leaves
the first out; one over seeds alone leaves the second out. Here both are estimated and added:

* image level: B stratified bootstrap resamples of the test images, shared by every model and every
  seed (so paired differences keep their correlation), give ``V_img`` = the variance over resamples
  of the seed-averaged metric;
* seed level: the per-seed scores ``v_s`` give ``V_seed = var(v_s) / S`` (ddof 1);
* ``SE = sqrt(V_seed + V_img)``; the interval is ``estimate ± t_{df} · SE`` with the
  Welch-Satterthwaite ``df = SE⁴ / (V_seed² / (S - 1))`` (the image part has many degrees of
  freedom), so that 5 seeds get a t-quantile, not a normal one.

Why not a percentile two-level bootstrap (resample seeds, then images)? With 5 seeds it
under-covers: resampling 5 values with replacement shrinks their variance by (S - 1)/S and its
percentiles behave like a normal interval where a t with 4 degrees of freedom is right (simulated
coverage ~0.85 for a nominal 0.95; ``tests/test_inference.py`` checks this module's 0.93-0.97).
``V_img`` also contains the seed × image interaction once more than needed, which makes the interval
slightly conservative when that interaction is large.

Paired differences (loss A − loss B) use the per-seed differences ``v_A,s − v_B,s`` on the shared
test images and the same resamples; the p-value is two-sided from the same t, so its smallest value
is not limited by B (a resampling p cannot go below 2/(B + 1): with 16 tests and B = 1000, Holm's
floor would be 0.032). :func:`minimum_detectable_effect` turns a standard error into the difference
the test would detect with 80 % power.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from . import stats
from .metrics import METRICS, check_inputs

def seed_summary(values) -> Tuple[float, float]:
    """``(mean, sd)`` of one metric's per-seed values for a table: NaN values (undefined on a seed) are
    left out of both; the sd (ddof 1) needs two defined seeds, else it is NaN, as is a mean of none."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    mean = float(v.mean()) if len(v) else float("nan")
    return mean, float(v.std(ddof=1)) if len(v) > 1 else float("nan")


#: Metrics where lower is better (a "gain" of a loss is then a negative delta).
LOWER_IS_BETTER = ("ece", "adaptive_ece", "classwise_ece", "mce", "nll", "log_loss", "brier")


def _stack(y, probs_by_model: Dict[str, np.ndarray]) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Check ``{model: probs[S, N, K]}`` against ``y[N]``: equal seeds and images everywhere."""
    if not probs_by_model:
        raise ValueError("no models given: pass {model name: probs[S seeds, N images, K classes]}")
    out = {}
    for name, p in probs_by_model.items():
        p = np.asarray(p, dtype=np.float64)
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3:
            raise ValueError(f"{name}: probabilities must be [seeds, images, classes], got shape {p.shape}")
        for s in range(len(p)):
            y_checked, _ = check_inputs(y, p[s])
        out[name] = p
    shapes = {name: p.shape for name, p in out.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"models differ in seeds, test images or classes: {shapes}; compare runs with the same "
                         "seeds on the same test set (or drop the models with missing seeds)")
    return y_checked, out


def seed_scores(y, probs: np.ndarray, metric: str, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(v[S], M[S, B])``: the metric per seed on the full test set and on each resample ``idx[b]``."""
    fn = METRICS.get(metric).unchecked
    v = np.array([fn(y, p) for p in probs], dtype=np.float64)
    m = np.stack([stats.bootstrap_values(y, p, metric, idx) for p in probs])
    return v, m


def _summary(v: np.ndarray, m: np.ndarray, level: float) -> dict:
    """Estimate, the two variance parts, SE, df and the t-interval from per-seed values and resamples."""
    s = len(v)
    v_seed = float(np.var(v, ddof=1) / s) if s > 1 else float("nan")
    v_img = float(np.nanvar(np.nanmean(m, axis=0), ddof=1))
    total = v_img + (0.0 if s == 1 else v_seed)
    se = float(np.sqrt(total))
    if s == 1:
        df = np.inf  # no seed variance to estimate: the interval is image-level only (labelled so)
    elif v_seed > 0:
        df = total ** 2 / (v_seed ** 2 / (s - 1))
    else:
        df = np.inf
    q = float(sps.t.ppf((1 + level) / 2, df))
    est = float(np.mean(v))
    return {"estimate": est, "se": se, "se_seed": float(np.sqrt(v_seed)) if s > 1 else float("nan"),
            "se_image": float(np.sqrt(v_img)), "df": float(df), "lo": est - q * se, "hi": est + q * se,
            "n_seeds": s}


def model_intervals(y, probs_by_model: Dict[str, np.ndarray], metric: str = "mcc", n_boot: int = 1000,
                    seed: int = 0, level: float = 0.95, idx: Optional[np.ndarray] = None) -> pd.DataFrame:
    """Per model: the seed-averaged ``metric`` with its seed × image interval (see the module doc).

    ``probs_by_model``: ``{name: probs[S, N, K]}``, the same seeds (in the same order) and test images
    for every model. Columns: ``model, metric, estimate, lo, hi, se, se_seed, se_image, df, n_seeds,
    n_images``. With one seed the interval holds test-image noise only; ``n_seeds`` says so.
    """
    y, probs = _stack(y, probs_by_model)
    idx = stats.resample_indices(y, n_boot, True, seed) if idx is None else idx
    rows = []
    for name, p in probs.items():
        v, m = seed_scores(y, p, metric, idx)
        rows.append({"model": name, "metric": metric, **_summary(v, m, level), "n_images": len(y)})
    return pd.DataFrame(rows)


def _ncp_for_power(df: float, alpha: float, power: float) -> float:
    """The noncentrality at which a two-sided t-test with ``df`` degrees of freedom has ``power``."""
    crit = sps.t.ppf(1 - alpha / 2, df)
    if not np.isfinite(df):
        return float(crit + sps.norm.ppf(power))
    # the far tail's share (nct.cdf(-crit)) is < 1e-3 once power matters, and NaN far out: left out
    def reach(ncp):
        with warnings.catch_warnings():  # scipy's series may warn far in the tail at tiny df; the value is used
            warnings.simplefilter("ignore", RuntimeWarning)
            return sps.nct.sf(crit, df, ncp) - power

    high = crit + 10.0
    while reach(high) < 0 and high < 1e7:  # few degrees of freedom: heavy tails need a wider bracket
        high *= 4
    if not reach(high) > 0:  # NaN or unreachable (df < 1): no finite effect has that power
        return float("inf")
    return float(optimize.brentq(reach, 0.0, high))


def minimum_detectable_effect(se, df, alpha: float = 0.05, power: float = 0.8):
    """The true difference that a two-sided level-``alpha`` t-test with standard error ``se`` and ``df``
    degrees of freedom detects with probability ``power``: ``ncp · se``, the noncentrality from the
    noncentral t (scipy ``nct``). The textbook ``(t_{1-alpha/2} + t_{power}) · se`` overstates the power
    at few degrees of freedom (at df = 4 it gives ~0.6, not 0.8)."""
    se, df = np.broadcast_arrays(np.asarray(se, dtype=float), np.asarray(df, dtype=float))
    ncp = np.array([_ncp_for_power(d, alpha, power) if np.isfinite(s) else np.nan
                    for s, d in zip(se.ravel(), df.ravel())]).reshape(se.shape)
    return ncp * se


def paired_tests(y, probs_by_model: Dict[str, np.ndarray], pairs: Sequence[Tuple[str, str]], metric: str = "mcc",
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, power: float = 0.8,
                 idx: Optional[np.ndarray] = None) -> pd.DataFrame:
    """Paired seed × image tests of ``metric(A) - metric(B)`` for each ``(A, B)`` in ``pairs``; Holm over them.

    Per pair: ``delta`` (mean over seeds of the per-seed difference on the shared test images), its
    interval at level ``1 - alpha``, ``se`` (seed and image parts), ``df``, two-sided ``p_value``,
    ``p_holm`` (Holm over the ``pairs`` given: the family), ``p_floor_holm`` (the smallest Holm p
    this method can reach: 0 for the t-approximation, unlike a resampling p), ``mde`` (the |delta|
    detectable with ``power`` at the family's strictest Holm level ``alpha / m``), ``significant``
    (``p_holm < alpha``) and ``identical`` (A and B made the same predictions on every seed: an alias,
    p = 1).
    """
    y, probs = _stack(y, probs_by_model)
    missing = sorted({n for pair in pairs for n in pair} - set(probs))
    if missing:
        raise ValueError(f"pairs name models {missing} that are not among {list(probs)}")
    idx = stats.resample_indices(y, n_boot, True, seed) if idx is None else idx
    scores = {name: seed_scores(y, probs[name], metric, idx) for name in {n for pair in pairs for n in pair}}
    m = len(pairs)
    rows = []
    for a, b in pairs:
        (va, ma), (vb, mb) = scores[a], scores[b]
        identical = bool(np.array_equal(probs[a], probs[b]))
        summary = _summary(va - vb, ma - mb, 1 - alpha)
        se, df = summary["se"], summary["df"]
        if identical or se == 0:
            p = 1.0 if summary["estimate"] == 0 else 0.0
        else:
            p = float(2 * sps.t.sf(abs(summary["estimate"]) / se, df))
        rows.append({"model_a": a, "model_b": b, "metric": metric, f"{metric}_a": float(va.mean()),
                     f"{metric}_b": float(vb.mean()), "delta": summary["estimate"], "delta_lo": summary["lo"],
                     "delta_hi": summary["hi"], "se": se, "se_seed": summary["se_seed"],
                     "se_image": summary["se_image"], "df": df, "n_seeds": summary["n_seeds"],
                     "p_value": p, "identical": identical,
                     "mde": float(minimum_detectable_effect(se, df, alpha / m, power))})
    table = pd.DataFrame(rows)
    # (one test needs no correction; statsmodels' multipletests also runs gc.collect(), 80 ms a call)
    table["p_holm"] = stats.holm(table["p_value"].to_numpy()) if m > 1 else table["p_value"]
    table["p_floor_holm"] = 0.0  # a t-based p has no resampling floor (Holm multiplies it by at most m)
    table["significant"] = table["p_holm"] < alpha
    table.attrs.update(metric=metric, alpha=alpha, power=power, n_boot=n_boot, n_tests=m,
                       n_images=len(y), n_seeds=int(table["n_seeds"].iloc[0]) if m else 0)
    return table
