"""Confidence intervals of one classifier's metrics: the paper's Wald interval and the stratified percentile
bootstrap (fast paths for label, ranking, binned and per-sample metrics; see :mod:`support.stats`, which
re-exports these names, for the paired tests built on them).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from .metrics import METRICS, check_inputs, mcc_from_confusion


# ---- intervals -------------------------------------------------------------------
def wald_ci(p: float, n: int, level: float = 0.95):
    """``(lo, hi)`` = ``p ± z·sqrt(p(1-p)/n)`` clipped to [0, 1] (statsmodels ``method="normal"``).

    The paper reports this interval for MCC although MCC is not a proportion;
    we keep it as *the paper's convention* for comparison, and the bootstrap
    interval as the one to trust. NaN for ``p`` outside [0, 1] (a negative MCC).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n <= 0:
        raise ValueError(f"n must be a positive sample size, got {n}")
    if not np.isfinite(p) or p < 0 or p > 1:
        return float("nan"), float("nan")
    lo, hi = proportion_confint(p * n, n, alpha=1 - level, method="normal")
    return float(lo), float(hi)


def resample_indices(y, n_boot: int, stratified: bool = True, seed: int = 0) -> np.ndarray:
    """``int[n_boot, N]`` bootstrap indices; stratified = resample within each class.

    Stratification keeps every class count fixed, so no resample lacks a class
    (per-class metrics stay defined) and the interval reflects the test set's
    fixed class mix.
    """
    y = np.asarray(y)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    if not stratified:
        return rng.integers(0, len(y), size=(n_boot, len(y)))
    parts = [members[rng.integers(0, len(members), size=(n_boot, len(members)))]
             for members in (np.flatnonzero(y == c) for c in np.unique(y))]
    return np.concatenate(parts, axis=1)


# ---- metrics of many confusion matrices at once -----------------------------------
def batched_confusion(y, pred, idx: np.ndarray, k: int) -> np.ndarray:
    """``int[B, K, K]`` confusion matrices (rows = truth) of the resamples ``idx[B, N]``."""
    code = (np.arange(len(idx))[:, None] * k * k + y[idx] * k + pred[idx]).ravel()
    return np.bincount(code, minlength=len(idx) * k * k).reshape(len(idx), k, k)


def _kappa_cm(cm):
    n = cm.sum((-2, -1))
    po = np.trace(cm, axis1=-2, axis2=-1) / n
    pe = (cm.sum(-1) * cm.sum(-2)).sum(-1) / n**2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pe < 1, (po - pe) / (1 - pe), np.nan)  # sklearn: NaN when undefined


def _weighted_cm(which: str):
    def f(cm):
        cm = np.asarray(cm, dtype=np.float64)
        tp, t, p = np.diagonal(cm, axis1=-2, axis2=-1), cm.sum(-1), cm.sum(-2)
        denom = {"precision": p, "recall": t, "f1": t + p}[which]
        num = 2 * tp if which == "f1" else tp
        per_class = np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)  # zero_division=0
        return (per_class * t).sum(-1) / t.sum(-1)
    return f


def _worst_recall_cm(cm):
    cm = np.asarray(cm, dtype=np.float64)
    t = cm.sum(-1)
    recall = np.divide(np.diagonal(cm, axis1=-2, axis2=-1), t, out=np.full_like(t, np.inf), where=t > 0)
    return recall.min(-1)  # classes absent from the labels (t = 0) are left out, as in METRICS


FROM_CONFUSION = {
    "accuracy": lambda cm: np.trace(cm, axis1=-2, axis2=-1) / cm.sum((-2, -1)),
    "mcc": mcc_from_confusion, "kappa": _kappa_cm,
    "precision": _weighted_cm("precision"), "recall": _weighted_cm("recall"), "f1": _weighted_cm("f1"),
    "worst_class_recall": _worst_recall_cm,
}
"""Metrics computable from ``cm[B, K, K]`` in one vectorised call (same values as METRICS)."""

_PER_SAMPLE = {  # metrics that are means of a per-sample term
    "brier": lambda y, p: ((p / p.sum(1, keepdims=True) - np.eye(p.shape[1])[y]) ** 2).sum(1),
    "log_loss": lambda y, p: -np.log(np.clip(p[np.arange(len(y)), y] / p.sum(1), np.finfo(np.float64).eps, 1)),
}


def weighted_ranking(truth, score, w, kind: str) -> np.ndarray:
    """AUROC or average precision of ``(truth bool[M], score[M])`` under each row of weights ``w[B, M]``.

    A bootstrap resample is the original sample weighted by how often each item
    was drawn, so one sort serves every resample. Tied scores form one
    threshold: AUROC counts a tied (positive, negative) pair as 1/2 (equal to
    sklearn's trapezoid ``roc_auc_score``), AP = sum over thresholds of
    (recall step) x precision (sklearn's ``average_precision_score``). NaN
    where a row has no positives (or, for AUROC, no negatives).
    """
    order = np.argsort(-score, kind="stable")  # descending score = decreasing threshold
    s, t, w = score[order], truth[order].astype(bool), np.asarray(w, dtype=np.float64)[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first item of each tied-score group
    pos = np.add.reduceat(w * t, starts, axis=1)  # [B, G] positive weight per threshold group
    neg = np.add.reduceat(w * ~t, starts, axis=1)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if kind == "auroc":
            below = n_neg[:, None] - np.cumsum(neg, 1)  # negatives scored strictly lower
            return np.where((n_pos > 0) & (n_neg > 0), (pos * (below + 0.5 * neg)).sum(1) / (n_pos * n_neg), np.nan)
        tp, fp = np.cumsum(pos, 1), np.cumsum(neg, 1)
        precision = np.divide(tp, tp + fp, out=np.zeros(tp.shape), where=tp + fp > 0)
        return np.where(n_pos > 0, (pos * precision).sum(1) / n_pos, np.nan)


def _ranking_boot(y, p, idx, kind: str, average: str) -> np.ndarray:
    b, (n, k) = len(idx), p.shape
    counts = np.bincount((np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n).reshape(b, n)
    onehot = np.eye(k, dtype=bool)[y]
    if average == "micro":  # p.ravel() is sample-major: item i*K + c
        return weighted_ranking(onehot.ravel(), p.ravel(), np.repeat(counts, k, axis=1), kind)
    per_class = np.stack([weighted_ranking(onehot[:, c], p[:, c], counts, kind) for c in range(k)], 1)
    valid = ~np.isnan(per_class)  # absent classes are skipped, as in metrics.auroc_macro
    n_valid = valid.sum(1)
    return np.where(n_valid > 0, np.where(valid, per_class, 0).sum(1) / np.maximum(n_valid, 1), np.nan)


_RANKING = {"auroc_micro": ("auroc", "micro"), "auroc_macro": ("auroc", "macro"),
            "auprc_micro": ("ap", "micro"), "auprc_macro": ("ap", "macro")}


def _draw_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``float[B, N]``: how often each item was drawn in each resample (a resample = a weighting)."""
    b = len(idx)
    return np.bincount((np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def _bin_sums(w: np.ndarray, bins: np.ndarray, values: np.ndarray, n_bins: int):
    """Per resample and bin: drawn count and drawn sum of ``values`` (``w[B, N]`` from :func:`_draw_counts`)."""
    onehot = np.zeros((len(bins), n_bins))
    onehot[np.arange(len(bins)), bins] = 1.0
    return w @ onehot, w @ (onehot * values[:, None])


def _binned_boot(y, p, idx, metric: str, n_bins: int = 15) -> np.ndarray:
    """ECE, MCE and classwise ECE of every resample at once (same binning as support.metrics)."""
    w, n = _draw_counts(idx, len(y)), len(y)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    to_bin = lambda x: np.clip(np.searchsorted(edges, x, side="left") - 1, 0, n_bins - 1)
    if metric == "classwise_ece":
        total = sum(np.abs(_bin_sums(w, to_bin(p[:, c]), (y == c) - p[:, c], n_bins)[1]).sum(1) for c in range(p.shape[1]))
        return total / (n * p.shape[1])
    conf = p.max(1)
    counts, gap = _bin_sums(w, to_bin(conf), (p.argmax(1) == y) - conf, n_bins)
    if metric == "ece":
        return np.abs(gap).sum(1) / n
    with np.errstate(invalid="ignore", divide="ignore"):  # mce: the worst non-empty bin
        return np.nanmax(np.where(counts > 0, np.abs(gap) / counts, np.nan), axis=1)


_BINNED = ("ece", "mce", "classwise_ece")


def bootstrap_values(y, p, metric: str, idx: np.ndarray) -> np.ndarray:
    """The metric on every resample ``idx[b]``: ``float[B]``."""
    width = len(y) * (p.shape[1] if metric in _RANKING or metric in _BINNED else 1)
    chunks = np.array_split(idx, max(1, len(idx) * width // 1_000_000))  # bound memory for large N
    if metric in _BINNED:
        return np.concatenate([_binned_boot(y, p, c, metric) for c in chunks])
    if metric in FROM_CONFUSION:
        return np.concatenate([FROM_CONFUSION[metric](batched_confusion(y, p.argmax(1), c, p.shape[1]))
                               for c in chunks])
    if metric in _RANKING:
        return np.concatenate([_ranking_boot(y, p, c, *_RANKING[metric]) for c in chunks])
    if metric in _PER_SAMPLE:
        return _PER_SAMPLE[metric](y, p)[idx].mean(1)
    fn = METRICS.get(metric).unchecked
    return np.array([fn(y[i], p[i]) for i in idx], dtype=np.float64)


def _percentiles(values: np.ndarray, level: float):
    q = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    if np.all(np.isnan(values)):
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(values, q)
    return float(lo), float(hi)


def bootstrap_ci(y, probs, metric: str = "mcc", n_boot: int = 1000, stratified: bool = True,
                 seed: int = 0, level: float = 0.95):
    """Percentile bootstrap ``(lo, hi)`` of a :data:`METRICS` metric, stratified by class by default."""
    y, p = check_inputs(y, probs)
    METRICS.get(metric)  # unknown name -> ValueError listing the metrics
    idx = resample_indices(y, n_boot, stratified, seed)
    return _percentiles(bootstrap_values(y, p, metric, idx), level)


def metrics_with_ci(y, probs, classes: Sequence[str], n_boot: int = 1000, seed: int = 0,
                    metrics: Optional[Sequence[str]] = None, level: float = 0.95) -> pd.DataFrame:
    """Table of point values with Wald and stratified-bootstrap intervals.

    Rows: ``metrics`` (default every METRICS name) then ``recall_<class>`` per
    class; columns ``value, wald_lo, wald_hi, boot_lo, boot_hi``. The Wald
    interval (the paper's convention, see :func:`wald_ci`) uses n = N, except
    n = class count for per-class recall; it is NaN for the losses (brier,
    log_loss, ece: not proportions in any sense) and for values outside [0, 1].
    All rows share the same resamples.
    """
    y, p = check_inputs(y, probs, classes)
    names = list(METRICS.names() if metrics is None else metrics)
    for name in names:
        METRICS.get(name)
    idx = resample_indices(y, n_boot, True, seed)
    rows = {}
    for name in names:
        value = float(METRICS.get(name).unchecked(y, p))
        wald = wald_ci(value, len(y), level) if METRICS.get(name).greater_is_better else (float("nan"),) * 2
        rows[name] = (value, *wald, *_percentiles(bootstrap_values(y, p, name, idx), level))
    cm = batched_confusion(y, p.argmax(1), np.vstack([np.arange(len(y)), idx]), p.shape[1]).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diagonal(cm, axis1=1, axis2=2) / cm.sum(2)  # [1 + B, K]; row 0 = the full set
    for c, cls in enumerate(classes):
        n_c = int(np.sum(y == c))
        value = float(recall[0, c])
        wald = wald_ci(value, n_c, level) if n_c else (float("nan"),) * 2
        rows[f"recall_{cls}"] = (value, *wald, *_percentiles(recall[1:, c], level))
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["value", "wald_lo", "wald_hi", "boot_lo", "boot_hi"])
    table.index.name = "metric"
    return table
