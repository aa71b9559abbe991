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
from statsmodels.stats.proportion import proportion_confint

from .metrics import METRICS, check_inputs, mcc_from_confusion  # noqa: F401  (stats.mcc_from_confusion)


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
