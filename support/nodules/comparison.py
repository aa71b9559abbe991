"""The nodule study's loss comparison with seed × image inference (:mod:`support.inference`).

* :func:`metrics_table`  per (loss, preset): accuracy and AUROC with the two-level interval, sensitivity and
  specificity as seed means; the columns ``<m>_mean/_sd/_lo/_hi`` the figures and the write-up read
* :func:`group_table`    per (loss, seed): accuracy of each group (label × size agrees) on the ρ 0.5 test set,
  the worst group and the aligned-minus-conflict gap
* :func:`paired_table`   per loss: accuracy minus cce's on shared test patches (per-seed Δ, two-level interval,
  Holm over the losses compared), one preset
* :func:`loss_summary`   the study's one-row-per-loss table: presets, worst group, gap, reliance, Δ vs cce

``preds`` everywhere is :meth:`Study.predictions`' frame: one row per (label, seed, preset) with ``y`` and
``probs`` (P(malignant)).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import pandas as pd

from .. import inference, stats
from .study import LEARNABILITY, ORACLE, RHO_PRESETS

#: Metric name in the table -> name in :mod:`support.metrics` (intervals from :mod:`support.inference`).
INTERVAL_METRICS = {"accuracy": "accuracy", "auroc": "auroc_macro"}
#: Class recalls, reported as seed means ± sd (no interval).
RATE_METRICS = ("sensitivity", "specificity")
METRICS = tuple(INTERVAL_METRICS) + RATE_METRICS
REFERENCE = "cce"
#: The test preset whose four groups (label × size agrees) are balanced: worst-group accuracy is read there.
GROUP_PRESET = "test_decorrelated"


def _two_class(p: np.ndarray) -> np.ndarray:
    return np.stack([1 - p, p], -1)


def stacked(preds: pd.DataFrame, preset: str, labels: Sequence[str] = ()) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """``(y, {label: probs[S, N, 2]})`` of one preset, seeds in ascending order (the paired layout)."""
    sub = preds[preds["preset"] == preset]
    if sub.empty:
        raise ValueError(f"no predictions on preset {preset!r}; presets: {sorted(preds['preset'].unique())}")
    out = {}
    for label, g in sub.groupby("label", sort=False):
        if labels and label not in labels:
            continue
        out[label] = np.stack([_two_class(p) for p in g.sort_values("seed")["probs"]])
    return sub["y"].iloc[0], out


def metrics_table(preds: pd.DataFrame, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per (loss, preset): accuracy and AUROC as seed mean with the seed × image interval
    (:func:`support.inference.model_intervals`, resamples shared by every loss of a preset), their sd over
    seeds, and sensitivity (malignant recall) / specificity (benign recall) as seed mean ± sd."""
    rows = []
    for preset in dict.fromkeys(preds["preset"]):
        y, probs = stacked(preds, preset)
        idx = stats.resample_indices(y, n_boot, True, seed)
        for label, p in probs.items():
            pred = p.argmax(-1)
            row = {"loss": label, "preset": preset, "rho": RHO_PRESETS.get(preset, np.nan), "n_seeds": len(p),
                   "n_test": len(y)}
            for name, metric in INTERVAL_METRICS.items():
                if metric.startswith("auroc") and len(np.unique(y)) < 2:
                    row.update({f"{name}_{k}": np.nan for k in ("mean", "sd", "lo", "hi")})
                    continue
                ci = inference.model_intervals(y, {label: p}, metric, level=level, idx=idx).iloc[0]
                v, _ = inference.seed_scores(y, p, metric, idx[:1])
                row.update({f"{name}_mean": ci["estimate"], f"{name}_lo": ci["lo"], f"{name}_hi": ci["hi"],
                            f"{name}_sd": float(v.std(ddof=1)) if len(v) > 1 else np.nan})
            for name, cls in zip(RATE_METRICS, (1, 0)):
                v = np.array([(pr[y == cls] == cls).mean() if (y == cls).any() else np.nan for pr in pred])
                row.update({f"{name}_mean": float(np.mean(v)), f"{name}_lo": np.nan, f"{name}_hi": np.nan,
                            f"{name}_sd": float(np.std(v, ddof=1)) if len(v) > 1 else np.nan})
            rows.append(row)
    return pd.DataFrame(rows)


def display_table(table: pd.DataFrame, metrics=("accuracy",), digits: int = 3) -> pd.DataFrame:
    """``mean ± sd [lo, hi]`` strings (sd over seeds; the seed × image 95 % interval where there is one),
    one row per loss, one column per (preset, metric)."""
    f = f"{{:.{digits}f}}"

    def cell(r, m):
        sd = f" ± {f.format(r[m + '_sd'])}" if np.isfinite(r[m + "_sd"]) else ""  # one seed: no sd
        ci = f" [{f.format(r[m + '_lo'])}, {f.format(r[m + '_hi'])}]" if np.isfinite(r[m + "_lo"]) else ""
        return f"{f.format(r[m + '_mean'])}{sd}{ci}"

    cells = table.apply(lambda r: {m: cell(r, m) for m in metrics}, axis=1)
    long = pd.DataFrame(list(cells), index=pd.MultiIndex.from_frame(table[["loss", "preset"]]))
    return long.unstack("preset").swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False)


def group_table(preds: pd.DataFrame, test_sets: dict, preset: str = GROUP_PRESET) -> pd.DataFrame:
    """Per (loss, seed) on ``preset``: accuracy of each group ``<label>/<size agrees|size conflicts>``,
    ``worst_group`` (the lowest of them), ``aligned``, ``conflict`` (accuracy where size agrees / contradicts
    the label) and ``gap`` = aligned - conflict."""
    meta = test_sets[preset].meta
    aligned = meta["shortcut_aligned"].to_numpy() == 1
    y = meta["label"].to_numpy()
    groups = {f"{'malignant' if c else 'benign'}/{'size agrees' if a else 'size conflicts'}": (y == c) & (aligned == a)
              for c in (0, 1) for a in (True, False)}
    rows = []
    for _, r in preds[preds["preset"] == preset].iterrows():
        correct = (r["probs"] >= 0.5).astype(int) == y
        accs = {g: float(correct[m].mean()) for g, m in groups.items() if m.any()}
        rows.append({"loss": r["label"], "seed": r["seed"], **accs, "worst_group": min(accs.values()),
                     "aligned": float(correct[aligned].mean()), "conflict": float(correct[~aligned].mean()),
                     "gap": float(correct[aligned].mean() - correct[~aligned].mean())})
    return pd.DataFrame(rows)


def paired_table(preds: pd.DataFrame, preset: str = "test_conflict", reference: str = REFERENCE,
                 metric: str = "accuracy", n_boot: int = 1000, alpha: float = 0.05) -> pd.DataFrame:
    """Every loss minus ``reference`` on ``preset``: :func:`support.inference.paired_tests` (per-seed Δ on the
    shared test patches, seed × image interval, Holm over the losses compared, MDE). Oracle and control,
    which have no seed pairing, are left out."""
    y, probs = stacked(preds, preset)
    probs = {k: v for k, v in probs.items() if k not in (ORACLE, LEARNABILITY)}
    if reference not in probs:
        raise ValueError(f"reference loss {reference!r} has no predictions on {preset!r}; losses: {list(probs)}")
    pairs = [(loss, reference) for loss in probs if loss != reference]
    seeds = {len(v) for v in probs.values()}
    if len(seeds) > 1:
        raise ValueError(f"losses have different numbers of seeds on {preset!r}: "
                         f"{ {k: len(v) for k, v in probs.items()} }; pair them on the same seeds")
    return inference.paired_tests(y, probs, pairs, INTERVAL_METRICS.get(metric, metric), n_boot=n_boot, alpha=alpha)


def loss_summary(table: pd.DataFrame, groups: pd.DataFrame, rel: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """One row per loss: accuracy per preset (seed mean), worst-group accuracy and the aligned - conflict gap
    (seed mean ± sd), size reliance on test_conflict, and Δ accuracy vs cce on test_conflict with its
    interval and Holm p."""
    acc = table.pivot_table(index="loss", columns="preset", values="accuracy_mean", sort=False)
    g = groups.groupby("loss", sort=False)[["worst_group", "gap"]].agg(["mean", "std"])
    out = acc.copy()
    for col in ("worst_group", "gap"):
        out[col] = g[(col, "mean")].reindex(out.index)
        out[col + "_sd"] = g[(col, "std")].reindex(out.index)
    out["follows_size"] = rel.groupby("loss", sort=False)["follows_size"].mean().reindex(out.index)
    p = paired.set_index("model_a")
    for col, src in (("delta_vs_cce", "delta"), ("delta_lo", "delta_lo"), ("delta_hi", "delta_hi"),
                     ("p_holm", "p_holm"), ("mde", "mde")):
        out[col] = p[src].reindex(out.index)
    out["n_seeds"] = table.groupby("loss", sort=False)["n_seeds"].max().reindex(out.index)
    return out.reset_index()
