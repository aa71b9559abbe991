"""Confidence intervals and paired tests for comparing classifiers.

* :func:`wald_ci` — the paper's interval ``p ± z·sqrt(p(1-p)/n)`` (section 4 of
  ``multiloss_ensemble.md``: 0.9068 ± 0.0229 at n = 624);
* :func:`bootstrap_ci` — percentile bootstrap, stratified by class;
* :func:`mcnemar_exact`, :func:`paired_bootstrap`, :func:`holm` and the tables
  :func:`pairwise_comparisons` / :func:`compare_to_reference`;
* :func:`summarize_over_seeds` — mean, sd and t-interval over training seeds.

The bootstrap is written here because ``scipy.stats.bootstrap`` cannot
resample within strata. It is fast for the label metrics (accuracy, MCC,
kappa, weighted precision/recall/F1): all resamples' confusion matrices come
from one ``bincount`` and the metric from numpy formulas (checked against
scikit-learn in the tests); AUROC / AUPRC weight one sorted copy of the
scores by each resample's draw counts; ECE, MCE and classwise ECE sum each
bin's drawn gaps with one matrix product; Brier and log-loss average per-sample
terms; any other metric calls :data:`support.metrics.METRICS` once per resample.

The intervals (Wald, bootstrap) live in :mod:`support.intervals`; this module holds the paired tests and the
seed summaries and re-exports the interval names, so ``stats.bootstrap_ci`` etc. keep working.
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from .intervals import (FROM_CONFUSION, _percentiles, batched_confusion, bootstrap_ci,  # noqa: F401  (re-exported)
                        bootstrap_values, metrics_with_ci, resample_indices, wald_ci, weighted_ranking)
from .metrics import METRICS, check_inputs, mcc_from_confusion  # noqa: F401  (stats.mcc_from_confusion)


# ---- paired tests ------------------------------------------------------------------
def mcnemar_exact(y, pred_a, pred_b):
    """Exact McNemar test of two classifiers' correctness on the same samples.

    Returns ``(statistic, pvalue, table)``; ``table`` is 2x2 with rows = A
    correct / wrong and columns = B correct / wrong, so the discordant counts are
    ``table[0, 1]`` (only A right) and ``table[1, 0]`` (only B right). The
    statistic is min of the two (statsmodels' exact binomial test).
    """
    y, a, b = (np.asarray(v) for v in (y, pred_a, pred_b))
    if not (y.shape == a.shape == b.shape) or y.ndim != 1:
        raise ValueError(f"y, pred_a and pred_b must be 1-D of equal length, got {y.shape}, {a.shape}, {b.shape}")
    ca, cb = a == y, b == y
    table = np.array([[np.sum(ca & cb), np.sum(ca & ~cb)], [np.sum(~ca & cb), np.sum(~ca & ~cb)]])
    res = mcnemar(table, exact=True)
    return float(res.statistic), float(res.pvalue), table


def _bootstrap_p(diff: np.ndarray) -> float:
    """Two-sided p from bootstrap differences: 2·min(P(d ≤ 0), P(d ≥ 0)), (count+1)/(B+1), capped at 1.

    Consistent with the percentile interval: p < 1 - level roughly when the interval excludes 0.
    """
    diff = diff[~np.isnan(diff)]
    if len(diff) == 0:
        return float("nan")
    tail = min(np.sum(diff <= 0), np.sum(diff >= 0))
    return float(min(1.0, 2 * (tail + 1) / (len(diff) + 1)))


def _paired(y, pa, pb, metric, idx, level):
    va, vb = (float(METRICS.get(metric).unchecked(y, p)) for p in (pa, pb))
    diff = bootstrap_values(y, pa, metric, idx) - bootstrap_values(y, pb, metric, idx)
    lo, hi = _percentiles(diff, level)
    return {"delta": va - vb, "lo": lo, "hi": hi, "p_value": _bootstrap_p(diff)}


def paired_bootstrap(y, probs_a, probs_b, metric: str = "mcc", n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95, stratified: bool = True) -> Dict[str, float]:
    """Paired bootstrap of ``metric(A) - metric(B)``: ``{delta, lo, hi, p_value}``.

    Both models are scored on the same resample indices, so the interval
    accounts for their correlation on shared samples.
    """
    y, pa = check_inputs(y, probs_a)
    _, pb = check_inputs(y, probs_b)
    if pa.shape != pb.shape:
        raise ValueError(f"probs_a {pa.shape} and probs_b {pb.shape} must have the same shape")
    METRICS.get(metric)
    return _paired(y, pa, pb, metric, resample_indices(y, n_boot, stratified, seed), level)


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels ``multipletests``); NaNs stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def _compare(y, probs_by_model, pairs, metric, n_boot, seed, alpha) -> pd.DataFrame:
    if not probs_by_model:
        raise ValueError("probs_by_model is empty: pass {model name: probs[N, K]}")
    checked = {name: check_inputs(y, p)[1] for name, p in probs_by_model.items()}
    y = check_inputs(y, next(iter(checked.values())))[0]
    shapes = {name: p.shape for name, p in checked.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"all models need probs of the same shape, got {shapes}")
    METRICS.get(metric)
    floor = min(1.0, len(pairs) * 2 / (n_boot + 1))  # smallest Holm-adjusted bootstrap p possible
    if pairs and floor >= alpha:
        warnings.warn(f"with n_boot={n_boot} and {len(pairs)} comparisons the Holm-adjusted bootstrap p "
                      f"cannot go below {floor:.3g} >= alpha={alpha}; use n_boot >= {math.ceil(2 * len(pairs) / alpha)}",
                      stacklevel=3)
    idx = resample_indices(y, n_boot, True, seed)  # one set of resamples for every pair
    values = {name: float(METRICS.get(metric).unchecked(y, p)) for name, p in checked.items()}
    boots = {name: bootstrap_values(y, p, metric, idx) for name, p in checked.items()}
    rows = []
    for a, b in pairs:
        diff = boots[a] - boots[b]
        lo, hi = _percentiles(diff, 1 - alpha)
        _, p_mc, table = mcnemar_exact(y, checked[a].argmax(1), checked[b].argmax(1))
        rows.append({"model_a": a, "model_b": b, f"{metric}_a": values[a], f"{metric}_b": values[b],
                     "delta": values[a] - values[b], "delta_lo": lo, "delta_hi": hi, "p_bootstrap": _bootstrap_p(diff),
                     "only_a_correct": int(table[0, 1]), "only_b_correct": int(table[1, 0]), "p_mcnemar": p_mc})
    df = pd.DataFrame(rows, columns=["model_a", "model_b", f"{metric}_a", f"{metric}_b", "delta", "delta_lo",
                                     "delta_hi", "p_bootstrap", "only_a_correct", "only_b_correct", "p_mcnemar"])
    df["p_bootstrap_holm"] = holm(df["p_bootstrap"].to_numpy())
    df["p_mcnemar_holm"] = holm(df["p_mcnemar"].to_numpy())
    df["significant"] = df["p_bootstrap_holm"] < alpha
    df.attrs.update(metric=metric, alpha=alpha, n_boot=n_boot, seed=seed)
    return df


def pairwise_comparisons(y, probs_by_model: Dict[str, np.ndarray], metric: str = "mcc", n_boot: int = 1000,
                         seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of models: paired-bootstrap Δmetric (A - B) with CI and p, exact McNemar p, Holm over pairs.

    One row per unordered pair (insertion order). Columns: ``model_a, model_b,
    <metric>_a, <metric>_b, delta, delta_lo, delta_hi`` (CI at level 1 - alpha),
    ``p_bootstrap, only_a_correct, only_b_correct, p_mcnemar, p_bootstrap_holm,
    p_mcnemar_holm, significant``. ``significant`` = Holm-adjusted bootstrap p <
    alpha: the test of the metric itself; McNemar tests accuracy (who is right),
    reported alongside. Stratified resamples, shared by every pair.

    A bootstrap p cannot go below 2/(n_boot + 1), so Holm over m pairs cannot go
    below 2m/(n_boot + 1): 10 models (45 pairs) need n_boot >= 1800 to reach
    0.05. A UserWarning says so when n_boot is too small.
    """
    return _compare(y, probs_by_model, list(itertools.combinations(probs_by_model, 2)), metric, n_boot, seed, alpha)


def compare_to_reference(y, probs_by_model: Dict[str, np.ndarray], reference: str, metric: str = "mcc",
                         n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Each model vs ``reference`` (delta = model - reference), Holm over these m - 1 tests only.

    Same columns as :func:`pairwise_comparisons` with ``model_b`` = reference.
    """
    if reference not in probs_by_model:
        raise ValueError(f"reference {reference!r} is not among the models {list(probs_by_model)}")
    pairs = [(name, reference) for name in probs_by_model if name != reference]
    return _compare(y, probs_by_model, pairs, metric, n_boot, seed, alpha)


# ---- several seeds ------------------------------------------------------------------
def summarize_over_seeds(df: pd.DataFrame, group_cols: Sequence[str], metric_cols: Sequence[str],
                         level: float = 0.95) -> pd.DataFrame:
    """Long table: per group and metric, ``mean, sd`` (ddof=1), ``n_seeds`` and a t-interval ``ci_lo, ci_hi``.

    ``mean ± t_{(1+level)/2, n-1} · sd / sqrt(n)`` (scipy.stats.t); sd and the
    interval are NaN for a single seed. NaN metric values are dropped.
    """
    group_cols, metric_cols = list(group_cols), list(metric_cols)
    missing = [c for c in group_cols + metric_cols if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the table; it has {list(df.columns)}")
    long = df.melt(id_vars=group_cols, value_vars=metric_cols, var_name="metric", value_name="value")
    out = (long.dropna(subset=["value"]).groupby(group_cols + ["metric"], sort=False)["value"]
           .agg(mean="mean", sd="std", n_seeds="count").reset_index())
    half = sps.t.ppf((1 + level) / 2, out["n_seeds"] - 1) * out["sd"] / np.sqrt(out["n_seeds"])
    half = half.where(out["n_seeds"] > 1)
    out["ci_lo"], out["ci_hi"] = out["mean"] - half, out["mean"] + half
    return out
