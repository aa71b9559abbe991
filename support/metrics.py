"""Classification metrics of one model's predicted probabilities.

Every metric takes ``(y_true: int[N], probs: float[N, K])``, the shared
signature of the :data:`METRICS` registry, so ensembles (top-K selection) and
:mod:`support.stats` (bootstrap intervals) refer to a metric by name. The
arithmetic is scikit-learn's wherever scikit-learn has the metric; only the
expected calibration error and the reliability table are written here.

Conventions (the paper's code, ``multiloss_ensemble.md`` section 4, where it has one):

* predictions are ``argmax(probs, axis=1)``; classes are ``0..K-1`` in the
  order of the columns of ``probs``;
* precision / recall / F1 use ``average="weighted"`` (weights = class counts
  in ``y_true``); a class that is never predicted has precision 0;
* AUROC and AUPRC (average precision) are one-vs-rest. *micro* pools all
  ``N*K`` (one-hot, probability) pairs; *macro* is the mean of the per-class
  values. A class absent from ``y_true`` has no ROC or PR curve: its per-class
  AUROC / AUPRC / recall are NaN and the macro mean skips it (NaN if no class
  is left). For K=2 the macro AUROC equals the usual binary AUROC;
* Brier score = mean over samples of sum over classes of ``(p_c - y_c)^2``
  (range [0, 2]), the same sum for K=2, so binary values are TWICE the
  one-column convention ``mean((p_1 - y)^2)``;
* ECE: 15 equal-width bins on the max probability, see :func:`reliability`.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from .registry import Registry

METRICS: Registry = Registry("metric")
"""name -> ``fn(y_true, probs) -> float``; ``fn.greater_is_better`` tells the direction."""

_SUM_TOL = 1e-3  # rows of float32 softmax outputs sum to 1 within ~1e-6; 1e-3 catches real mistakes


def check_inputs(y_true, probs, classes: Optional[Sequence[str]] = None):
    """Validate and return ``(y int64[N], probs float64[N, K])``.

    Raises ValueError naming the problem: wrong shapes, NaN/inf, labels outside
    ``0..K-1``, probabilities outside [0, 1] or rows not summing to 1 (within
    1e-3). Values are returned as given, clipped to [0, 1] (a no-op up to 1e-6).
    """
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D int[N], got shape {y.shape}")
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be 2-D float[N, K] with K >= 2, got shape {p.shape}")
    if len(y) != len(p):
        raise ValueError(f"y_true has {len(y)} samples but probs has {len(p)} rows")
    if len(y) == 0:
        raise ValueError("y_true and probs are empty: no samples to score")
    if y.dtype.kind not in "iub":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    k = p.shape[1]
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true labels must lie in 0..{k - 1} (probs has K={k} columns), "
                         f"got min {y.min()} and max {y.max()}")
    if classes is not None and len(classes) != k:
        raise ValueError(f"{len(classes)} class names {list(classes)} for probs with K={k} columns")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"probs contains {int(np.sum(~np.isfinite(p)))} NaN or infinite values; the model "
                         "diverged or the predictions are damaged: re-train the run (force=True, lower lr)")
    if p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise ValueError(f"probs must lie in [0, 1], got range [{p.min():.4g}, {p.max():.4g}]; "
                         "pass probabilities (softmax), not logits")
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > _SUM_TOL:
        raise ValueError(f"rows of probs must sum to 1, row {worst} sums to {sums[worst]:.6g}; "
                         "pass softmax probabilities")
    return y, np.clip(p, 0, 1)


def _one_hot(y: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.int64)[y]


def _metric(name: str, greater_is_better: bool = True):
    """Register ``fn(y, p)`` (validated arrays) in METRICS behind input checks."""

    def deco(fn):
        def checked(y_true, probs) -> float:
            return float(fn(*check_inputs(y_true, probs)))

        checked.__name__, checked.__doc__ = name, fn.__doc__
        checked.greater_is_better, checked.unchecked = greater_is_better, fn
        METRICS.add(name, checked)
        return fn

    return deco


# ---- label metrics (argmax predictions) -----------------------------------------
@_metric("accuracy")
def _accuracy(y, p):
    """Fraction of argmax predictions equal to the label."""
    return skm.accuracy_score(y, p.argmax(1))


def _prf(y, p, which: int) -> float:
    k = p.shape[1]
    return skm.precision_recall_fscore_support(y, p.argmax(1), labels=range(k), average="weighted",
                                               zero_division=0)[which]


@_metric("precision")
def _precision(y, p):
    """Support-weighted precision (a class never predicted counts 0)."""
    return _prf(y, p, 0)


@_metric("recall")
def _recall(y, p):
    """Support-weighted recall (equals accuracy when every label is counted)."""
    return _prf(y, p, 1)


@_metric("f1")
def _f1(y, p):
    """Support-weighted F1."""
    return _prf(y, p, 2)


@_metric("worst_class_recall")
def _worst_class_recall(y, p):
    """The lowest per-class recall over the classes present in ``y`` (the class a model serves worst)."""
    present = np.unique(y)
    recalls = skm.recall_score(y, p.argmax(1), labels=present, average=None, zero_division=0)
    return float(recalls.min())


def mcc_from_confusion(cm) -> np.ndarray:
    """Multi-class MCC of ``cm[..., K, K]`` with scikit-learn's formula (0 when undefined)."""
    cm = np.asarray(cm, dtype=np.float64)
    t, p = cm.sum(-1), cm.sum(-2)  # true and predicted counts per class
    n, correct = cm.sum((-2, -1)), np.trace(cm, axis1=-2, axis2=-1)
    cov_tp = correct * n - (t * p).sum(-1)
    cov_pp, cov_tt = n**2 - (p * p).sum(-1), n**2 - (t * t).sum(-1)
    denom = np.sqrt(cov_tt * cov_pp)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, cov_tp / np.where(denom > 0, denom, 1), 0.0)


@_metric("mcc")
def _mcc(y, p):
    """Multi-class Matthews correlation coefficient (Gorodkin's R_K), the paper's headline: one implementation,
    :func:`mcc_from_confusion` (vectorised over the bootstrap's confusion matrices in :mod:`support.stats`)."""
    return float(mcc_from_confusion(confusion(y, p.argmax(1), p.shape[1])))


@_metric("kappa")
def _kappa(y, p):
    """Cohen's kappa (unweighted); NaN when undefined (a single class in labels and predictions)."""
    return skm.cohen_kappa_score(y, p.argmax(1), labels=range(p.shape[1]))


# ---- ranking metrics (one-vs-rest) ---------------------------------------------
def _per_class(score, y, p) -> np.ndarray:
    """``score(binary_truth, column)`` per class; NaN where a class is absent (or the only one)."""
    onehot = _one_hot(y, p.shape[1])
    out = np.full(p.shape[1], np.nan)
    for c in range(p.shape[1]):
        if 0 < onehot[:, c].sum() < len(y):
            out[c] = score(onehot[:, c], p[:, c])
    return out


def _nanmean(x: np.ndarray) -> float:
    return float(np.mean(x[~np.isnan(x)])) if np.any(~np.isnan(x)) else float("nan")


@_metric("auroc_micro")
def _auroc_micro(y, p):
    """AUROC of all N*K pooled one-vs-rest (one-hot, probability) pairs."""
    return skm.roc_auc_score(_one_hot(y, p.shape[1]).ravel(), p.ravel())


@_metric("auroc_macro")
def _auroc_macro(y, p):
    """Mean one-vs-rest AUROC over the classes present in ``y_true``."""
    return _nanmean(_per_class(skm.roc_auc_score, y, p))


@_metric("auprc_micro")
def _auprc_micro(y, p):
    """Average precision of all N*K pooled one-vs-rest pairs."""
    return skm.average_precision_score(_one_hot(y, p.shape[1]).ravel(), p.ravel())


@_metric("auprc_macro")
def _auprc_macro(y, p):
    """Mean one-vs-rest average precision over the classes present in ``y_true``."""
    return _nanmean(_per_class(skm.average_precision_score, y, p))


# ---- probabilistic metrics -----------------------------------------------------
def _renormalised(p):
    """Rows scaled to sum to 1: float32 softmax rows miss 1 by ~1e-7, beyond sklearn's tolerance.

    Only the probabilistic scores use it; ranking metrics see the scores as
    given, so that tied scores stay tied.
    """
    return p / p.sum(1, keepdims=True)


@_metric("brier", greater_is_better=False)
def _brier(y, p):
    """mean_i sum_c (p_ic - y_ic)^2, range [0, 2] for every K (see module docstring)."""
    return skm.brier_score_loss(y, _renormalised(p), labels=range(p.shape[1]), scale_by_half=False)


@_metric("log_loss", greater_is_better=False)
def _log_loss(y, p):
    """Mean negative log-probability of the true class (natural log; sklearn clips at float eps)."""
    return skm.log_loss(y, _renormalised(p), labels=range(p.shape[1]))


def _bin_stats(y, p, n_bins: int):
    """Per-bin (count, sum of confidence, sum of correct) over max-probability bins.

    Bins are equal-width on [0, 1] and right-closed, (lo, hi], as in Guo et al.
    2017 ("On calibration of modern neural networks"); a confidence of exactly
    0 (impossible for a max probability) falls in the first bin.
    """
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    b = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    return edges, count, np.bincount(b, conf, n_bins), np.bincount(b, correct, n_bins)


@_metric("ece", greater_is_better=False)
def _ece(y, p, n_bins: int = 15):
    """Expected calibration error, L1, 15 bins: sum_b (n_b / N) * |acc_b - conf_b|.

    Written here because scikit-learn has no ECE (``calibration_curve`` is
    binary-only and returns no bin counts).
    """
    _, count, conf_sum, correct_sum = _bin_stats(y, p, n_bins)
    return np.abs(correct_sum - conf_sum).sum() / len(y)  # n_b/N * |sum_correct/n_b - sum_conf/n_b|


@_metric("adaptive_ece", greater_is_better=False)
def _adaptive_ece(y, p, n_bins: int = 15):
    """Adaptive (equal-mass) ECE, 15 bins: the max probabilities sorted into bins of N/15 images each,
    then sum_b (n_b / N) |acc_b - conf_b| (Nixon et al. 2019, "Measuring calibration in deep learning")."""
    order = np.argsort(p.max(1), kind="stable")
    conf, correct = p.max(1)[order], (p.argmax(1) == y)[order].astype(np.float64)
    return sum(abs(c.sum() - a.sum()) for c, a in zip(np.array_split(conf, n_bins), np.array_split(correct, n_bins))) / len(y)


@_metric("classwise_ece", greater_is_better=False)
def _classwise_ece(y, p, n_bins: int = 15):
    """Classwise ECE (Kull et al. 2019): the mean over classes c of the 15-bin ECE of p_c against 1[y = c],
    every class probability binned, not only the maximum."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for c in range(p.shape[1]):
        b = np.clip(np.searchsorted(edges, p[:, c], side="left") - 1, 0, n_bins - 1)
        total += np.abs(np.bincount(b, (y == c).astype(np.float64), n_bins) - np.bincount(b, p[:, c], n_bins)).sum()
    return total / (len(y) * p.shape[1])


@_metric("mce", greater_is_better=False)
def _mce(y, p, n_bins: int = 15):
    """Maximum calibration error (Guo et al. 2017): max over non-empty 15-bin bins of |acc_b - conf_b|."""
    _, count, conf_sum, correct_sum = _bin_stats(y, p, n_bins)
    full = count > 0
    return float(np.max(np.abs(correct_sum[full] - conf_sum[full]) / count[full]))


def ece(y_true, probs, n_bins: int = 15) -> float:
    """ECE with a chosen number of bins (the registered ``"ece"`` uses 15)."""
    return float(_ece(*check_inputs(y_true, probs), n_bins=n_bins))


def reliability(y_true, probs, n_bins: int = 15) -> pd.DataFrame:
    """Reliability table: one row per bin with ``bin, lo, hi, count, confidence, accuracy``.

    ``confidence`` / ``accuracy`` are the bin means of the max probability and
    of ``argmax == label``; NaN for empty bins. ECE = sum(count/N * |accuracy - confidence|).
    """
    y, p = check_inputs(y_true, probs)
    edges, count, conf_sum, correct_sum = _bin_stats(y, p, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({"bin": np.arange(n_bins), "lo": edges[:-1], "hi": edges[1:], "count": count,
                             "confidence": conf_sum / count, "accuracy": correct_sum / count})


# ---- whole report, curves, confusion --------------------------------------------
def classification_metrics(y_true, probs, classes: Sequence[str]) -> Dict[str, float]:
    """Every registered metric plus per-class ``recall_/auroc_/auprc_<class>``.

    Keys: the :data:`METRICS` names (accuracy, precision, recall, f1, mcc,
    kappa, auroc_micro, auroc_macro, auprc_micro, auprc_macro, brier, log_loss,
    ece) followed by the per-class values; NaN marks a value undefined because
    the class is absent from ``y_true`` (see the module docstring).
    """
    y, p = check_inputs(y_true, probs, classes)
    out = {name: float(METRICS.get(name).unchecked(y, p)) for name in METRICS}
    recalls = skm.recall_score(y, p.argmax(1), labels=range(p.shape[1]), average=None, zero_division=np.nan)
    per_class = {"recall": recalls, "auroc": _per_class(skm.roc_auc_score, y, p),
                 "auprc": _per_class(skm.average_precision_score, y, p)}
    for kind, values in per_class.items():
        out.update({f"{kind}_{c}": float(v) for c, v in zip(classes, values)})
    return out


def confusion(y_true, y_pred, K: int) -> np.ndarray:
    """K x K counts, rows = true class, columns = predicted class (sklearn's layout)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {y_true.shape} and {y_pred.shape}")
    for name, v in (("y_true", y_true), ("y_pred", y_pred)):
        if len(v) and (v.min() < 0 or v.max() >= K):
            raise ValueError(f"{name} labels must lie in 0..{K - 1}, got range [{v.min()}, {v.max()}]")
    return skm.confusion_matrix(y_true, y_pred, labels=range(K))


def _curves(curve, y_true, probs, classes):
    y, p = check_inputs(y_true, probs, classes)
    onehot = _one_hot(y, p.shape[1])
    keys = list(classes) if classes is not None else list(range(p.shape[1]))
    out = {}
    for c, key in enumerate(keys):
        if 0 < onehot[:, c].sum() < len(y):  # no curve for a class absent from y_true
            out[key] = curve(onehot[:, c], p[:, c])
    out["micro"] = curve(onehot.ravel(), p.ravel())
    return out


def _roc(t, s):
    fpr, tpr, thr = skm.roc_curve(t, s)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thr, "auc": float(skm.roc_auc_score(t, s))}


def _pr(t, s):
    precision, recall, thr = skm.precision_recall_curve(t, s)
    return {"precision": precision, "recall": recall, "thresholds": thr,
            "ap": float(skm.average_precision_score(t, s)),
            "auc": float(skm.auc(recall, precision))}  # trapezoid area: the paper's "area under micro PR curve"


def roc_curves(y_true, probs, classes: Optional[Sequence[str]] = None) -> dict:
    """One-vs-rest ROC curves: ``{class: {fpr, tpr, thresholds, auc}, ..., "micro": {...}}``.

    Keys are the class names when given, else the column indices; classes
    absent from ``y_true`` have no entry.
    """
    return _curves(_roc, y_true, probs, classes)


def pr_curves(y_true, probs, classes: Optional[Sequence[str]] = None) -> dict:
    """One-vs-rest PR curves: ``{class: {precision, recall, thresholds, ap, auc}, ..., "micro": {...}}``.

    ``ap`` is average precision (the AUPRC of :func:`classification_metrics`),
    ``auc`` the trapezoid area under the curve. Absent classes have no entry.
    """
    return _curves(_pr, y_true, probs, classes)
