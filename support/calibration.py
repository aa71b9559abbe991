"""The calibration protocol: six measures, before and after temperature scaling.

The DCA ("calibrated") losses claim better calibration, so calibration is measured as the
literature does (Guo et al. 2017; Nixon et al. 2019; Kull et al. 2019):

* ``ece`` 15 equal-width bins on the max probability; ``adaptive_ece`` 15 equal-mass bins;
  ``classwise_ece`` every class probability binned; ``mce`` the worst bin;
* ``log_loss`` (NLL) and ``brier`` (proper scoring rules);

each **before** and **after temperature scaling** (Guo et al. 2017): one scalar T per run,
``softmax(log p / T)``, fitted by minimising the NLL on the second validation half (``val_fit``,
never seen by early stopping; :mod:`support.data.halves`). A loss that only shifts confidence is
undone by T; a loss that changes the ranking of predictions is not. Intervals: seeds x test images
(:mod:`support.inference`); the calibrated-vs-base pairs are tested on these measures too.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.special import log_softmax

from . import inference, stats
from .compare import shared_labels, comparison_table, group_by_loss
from .runs import Run

#: The six measures (names in support.metrics.METRICS), all lower-is-better.
CALIBRATION_METRICS = ("ece", "adaptive_ece", "classwise_ece", "mce", "log_loss", "brier")


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: the probabilities with temperature ``T`` (log p serves as logits)."""
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)) / temperature
    return np.exp(log_softmax(z, axis=1))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the NLL of ``scale(probs, T)`` on (probs, labels).

    Written with scipy's bounded scalar minimiser (on log T): scikit-learn has no multi-class
    temperature scaling, and the fit is one line of NLL.
    """
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None))
    y = np.asarray(labels)

    def nll(log_t):
        return -log_softmax(z / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean()

    return float(np.exp(optimize.minimize_scalar(nll, bounds=(np.log(0.05), np.log(20)), method="bounded").x))


def calibration_table(runs: Sequence[Run], n_boot: int = 200, seed: int = 0,
                      measures: Sequence[str] = CALIBRATION_METRICS) -> pd.DataFrame:
    """Long table: one row per (loss, measure, before/after temperature scaling).

    Columns ``loss, measure, scaling ("none" | "temperature"), estimate, lo, hi, se_seed, se_image,
    n_seeds, n_images, temperature`` (the mean fitted T over seeds). Intervals over seeds and test
    images; ``n_boot`` 200 by default (the binned measures are scored per resample; 200 resamples
    estimate a standard error well, and the interval is a t-interval, not a percentile one).
    """
    groups = group_by_loss(runs)
    y = shared_labels(groups, "test")
    idx = stats.resample_indices(y, n_boot, True, seed)
    rows = []
    for label, rs in groups.items():
        temps = [fit_temperature(r.probs("val_fit"), r.labels("val_fit")) for r in rs]
        versions = {"none": np.stack([r.probs("test") for r in rs]),
                    "temperature": np.stack([scale(r.probs("test"), t) for r, t in zip(rs, temps)])}
        for scaling, probs in versions.items():
            for m in measures:
                ci = inference.model_intervals(y, {label: probs}, m, idx=idx).iloc[0]
                rows.append({"loss": label, "measure": m, "scaling": scaling, "estimate": ci["estimate"],
                             "lo": ci["lo"], "hi": ci["hi"], "se_seed": ci["se_seed"], "se_image": ci["se_image"],
                             "n_seeds": len(rs), "n_images": len(y), "temperature": float(np.mean(temps))})
    return pd.DataFrame(rows)


def display_calibration(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Wide view: one row per loss, 'value [lo, hi]' per measure before → after temperature scaling."""
    f = f"{{:.{digits}f}}".format
    cell = table.assign(cell=table["estimate"].map(f) + " [" + table["lo"].map(f) + ", " + table["hi"].map(f) + "]")
    wide = cell.pivot_table(index="loss", columns=["measure", "scaling"], values="cell", aggfunc="first", sort=False)
    wide.columns = [f"{m} ({'after T' if s == 'temperature' else 'raw'})" for m, s in wide.columns]
    temps = table.groupby("loss", sort=False)["temperature"].first().map("{:.2f}".format)
    return wide.assign(T=temps).reset_index()


def calibrated_pairs_table(runs: Sequence[Run], pairs, n_boot: int = 200, seed: int = 0, alpha: float = 0.05,
                           measures: Sequence[str] = ("ece",)) -> pd.DataFrame:
    """Calibrated loss vs its base on calibration ``measures`` (raw probabilities): paired seed x image
    tests, Holm over the pairs of each measure (one family per measure). Negative delta = better calibrated."""
    return pd.concat([comparison_table(runs, pairs, m, n_boot, seed, alpha, family=f"calibration ({m})")
                      for m in measures], ignore_index=True)
