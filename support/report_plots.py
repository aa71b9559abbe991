"""Comparison figures for notebooks 05, 06 and 09: one function per figure.

Each function takes tables or arrays (never paths), returns a matplotlib
``Figure`` whose title ends with the data source (via :func:`support.plots.titled`)
and leaves saving to :func:`support.plots.save_figure`. Colours follow the
order of the models given, so a model keeps its colour across figures.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd

from . import metrics as metrics_mod
from .plots import titled

_LABEL_COLS = ("model", "loss", "ensemble", "name", "arch")
_CI_COLS = (("seeds_images_lo", "seeds_images_hi"), ("boot_lo", "boot_hi"), ("ci_lo", "ci_hi"), ("wald_lo", "wald_hi"))


def _plt():
    import matplotlib.pyplot as plt  # imported late: nothing (backend choice) happens at import

    return plt


def _colors(names: Sequence[str]) -> Dict[str, tuple]:
    import seaborn as sns

    return dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))))


def _grid(n: int, ncols: int, size: float):
    plt = _plt()
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def metric_bars(table: pd.DataFrame, metric: str, source: str, label_col: Optional[str] = None,
                lo_col: Optional[str] = None, hi_col: Optional[str] = None):
    """Point estimate with CI error bars per model, best on top.

    ``table`` is long (a ``metric`` column, as from :func:`support.stats.summarize_over_seeds`
    or concatenated :func:`support.stats.metrics_with_ci` tables) or wide (one
    row per model, the metric as a column). Value column: ``value``, ``mean`` or
    ``metric``; interval: ``boot_lo/hi``, else ``ci_lo/hi``, else ``wald_lo/hi``
    (or ``lo_col``/``hi_col``). Labels: ``label_col``, else the model/loss/...
    columns present joined with " / ", else the index.
    """
    df = table.reset_index() if table.index.name in _LABEL_COLS else table.copy()
    if "metric" in df.columns:
        df = df[df["metric"] == metric]
        if df.empty:
            raise ValueError(f"no rows with metric == {metric!r}; metrics present: {sorted(table['metric'].unique())}")
    value_col = next((c for c in ("value", "mean", metric) if c in df.columns), None)
    if value_col is None:
        raise ValueError(f"table needs a 'value', 'mean' or {metric!r} column, has {list(df.columns)}")
    if lo_col is None:
        lo_col, hi_col = next((pair for pair in _CI_COLS if set(pair) <= set(df.columns)), (None, None))
    labels_from = [label_col] if label_col else [c for c in _LABEL_COLS if c in df.columns]
    labels = (df[labels_from].astype(str).agg(" / ".join, axis=1) if labels_from else df.index.astype(str))
    better_high = getattr(metrics_mod.METRICS.get(metric), "greater_is_better", True) \
        if metric in metrics_mod.METRICS else True
    # barh draws bottom-up, so ascending order for "higher is better" puts the best on top
    df = df.assign(_label=np.asarray(labels)).sort_values(value_col, ascending=better_high).reset_index(drop=True)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(df) + 1.6))
    v = df[value_col].to_numpy(float)
    if lo_col:
        err = np.vstack([v - df[lo_col].to_numpy(float), df[hi_col].to_numpy(float) - v])
        ax.errorbar(v, np.arange(len(v)), xerr=np.abs(err), fmt="o", color="C0", ecolor="0.4", capsize=3)
    else:
        ax.plot(v, np.arange(len(v)), "o", color="C0")
    for i, x in enumerate(v):
        ax.annotate(f"{x:.3f}", (x, i), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=8)
    ax.set_yticks(np.arange(len(v)), df["_label"])
    kind = {"seeds_images": "95 % interval over seeds × test images", "boot": "bootstrap interval",
            "ci": "t-interval over seeds", "wald": "Wald interval (paper's)"}
    ax.set_xlabel(metric + (f"   (bars: {kind.get(lo_col[:-3], lo_col + ' to ' + hi_col)})" if lo_col else ""))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(titled(f"{metric} per model, best on top{'' if better_high else ' (lower is better)'}", source))
    fig.tight_layout()
    return fig


def confusion_grid(confusions: Dict[str, np.ndarray], classes: Sequence[str], source: str, ncols: int = 3):
    """One heatmap per model: colour = row-normalised fraction (recall per true class), text = count and %."""
    import seaborn as sns

    fig, axes = _grid(len(confusions), ncols, 3.6)
    for ax, (name, cm) in zip(axes, confusions.items()):
        cm = np.asarray(cm)
        if cm.shape != (len(classes), len(classes)):
            raise ValueError(f"confusion of {name!r} has shape {cm.shape}, expected {(len(classes),) * 2} for {classes}")
        frac = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        text = np.array([[f"{c}\n{f:.0%}" for c, f in zip(row, frow)] for row, frow in zip(cm, frac)])
        sns.heatmap(frac, annot=text, fmt="", vmin=0, vmax=1, cmap="Blues", cbar=False, square=True,
                    xticklabels=classes, yticklabels=classes, ax=ax, annot_kws={"fontsize": 9})
        ax.set_title(name)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.suptitle(titled("Confusion matrices (colour: row-normalised)", source))
    fig.tight_layout()
    return fig


def roc_pr_curves(y, probs_by_model: Dict[str, np.ndarray], classes: Sequence[str], source: str):
    """Micro-averaged one-vs-rest ROC and PR curves, one line per model; AUROC / AP in the legend."""
    plt = _plt()
    colors = _colors(list(probs_by_model))
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 4.8))
    for name, probs in probs_by_model.items():
        roc = metrics_mod.roc_curves(y, probs, classes)["micro"]
        pr = metrics_mod.pr_curves(y, probs, classes)["micro"]
        ax_roc.plot(roc["fpr"], roc["tpr"], color=colors[name], label=f"{name} (AUROC {roc['auc']:.3f})")
        ax_pr.plot(pr["recall"], pr["precision"], color=colors[name], label=f"{name} (AP {pr['ap']:.3f})")
    ax_roc.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    ax_pr.axhline(1 / len(classes), ls="--", color="0.6", lw=1, label=f"chance (1/{len(classes)})")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, micro-average")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall, micro-average", ylim=(0, 1.02))
    for ax in (ax_roc, ax_pr):
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
        ax.grid(alpha=0.3)
    fig.suptitle(titled(f"ROC and PR curves over classes {', '.join(classes)}", source))
    fig.tight_layout()
    return fig


def reliability_diagrams(y, probs_by_model: Dict[str, np.ndarray], source: str, n_bins: int = 15, ncols: int = 3):
    """One reliability diagram per model: accuracy per confidence bin against the diagonal; ECE in the title."""
    fig, axes = _grid(len(probs_by_model), ncols, 3.6)
    for ax, (name, probs) in zip(axes, probs_by_model.items()):
        table = metrics_mod.reliability(y, probs, n_bins)
        used = table[table["count"] > 0]
        width = table["hi"] - table["lo"]
        ax.bar(used["lo"], used["accuracy"], width=width[used.index], align="edge", color="C0",
               edgecolor="white", label="accuracy in bin")
        # gap drawn unfilled so that it reads the same above (over-) and below (under-confident) the bar top
        gap_lo = np.minimum(used["accuracy"], used["confidence"])
        ax.bar(used["lo"], (used["confidence"] - used["accuracy"]).abs(), bottom=gap_lo, width=width[used.index],
               align="edge", facecolor="none", edgecolor="C3", hatch="///", lw=0.8, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
        ece = float(np.abs(used["accuracy"] - used["confidence"]) @ used["count"] / used["count"].sum())
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy",
               title=f"{name}\nECE {ece:.3f}, n = {int(used['count'].sum())}")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(titled(f"Reliability diagrams ({n_bins} bins)", source))
    fig.tight_layout()
    return fig


def training_curves(logs: Dict[str, pd.DataFrame], source: str, metrics: Optional[Sequence[str]] = None,
                    ncols: int = 3):
    """Per-epoch curves from ``log.csv`` tables: a loss panel (train solid, val dashed), then one per metric.

    ``metrics`` defaults to the ``val_*`` columns other than ``val_loss`` found in any log.
    """
    if not logs:
        raise ValueError("logs is empty: pass {model name: log DataFrame}")
    if metrics is None:
        metrics = sorted({c for df in logs.values() for c in df.columns if c.startswith("val_") and c != "val_loss"})
    colors = _colors(list(logs))
    fig, axes = _grid(1 + len(metrics), ncols, 4.0)
    for name, df in logs.items():
        for col, ls in (("train_loss", "-"), ("val_loss", "--")):
            if col in df.columns:
                axes[0].plot(df["epoch"], df[col], ls=ls, color=colors[name], label=name if ls == "-" else None)
        for ax, col in zip(axes[1:], metrics):
            if col in df.columns:
                ax.plot(df["epoch"], df[col], color=colors[name], marker=".")
    axes[0].set(title="loss (solid: train, dashed: val)", xlabel="epoch", ylabel="loss")
    axes[0].legend(fontsize=7)  # one legend: a model has the same colour in every panel
    for ax, col in zip(axes[1:], metrics):
        ax.set(title=col, xlabel="epoch", ylabel=col)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(titled("Training curves", source))
    fig.tight_layout()
    return fig


def pvalue_matrix(pairwise_df: pd.DataFrame, source: str, p_col: Optional[str] = None):
    """Heatmap of Holm-adjusted p per pair (dark = small); cells show Δ(row − column) and p.

    ``pairwise_df`` is :func:`support.compare.pairwise_table`'s (column ``p_holm``, the default) or
    :func:`support.stats.pairwise_comparisons`' (``p_bootstrap_holm``); ``*`` marks p < alpha.
    """
    import seaborn as sns

    if p_col is None:
        p_col = "p_holm" if "p_holm" in pairwise_df.columns else "p_bootstrap_holm"
    if p_col not in pairwise_df.columns:
        raise ValueError(f"pairwise_df has no column {p_col!r}; columns: {list(pairwise_df.columns)}")
    metric = pairwise_df.attrs.get("metric", "metric")
    alpha = pairwise_df.attrs.get("alpha", 0.05)
    names = list(dict.fromkeys(list(pairwise_df["model_a"]) + list(pairwise_df["model_b"])))
    pos = {n: i for i, n in enumerate(names)}
    pmat = np.full((len(names),) * 2, np.nan)
    text = np.full(pmat.shape, "", dtype=object)
    for r in pairwise_df.itertuples(index=False):
        i, j, p, d = pos[r.model_a], pos[r.model_b], getattr(r, p_col), r.delta
        for a, b, sign in ((i, j, 1), (j, i, -1)):
            pmat[a, b] = p
            text[a, b] = f"{sign * d:+.3f}\np={p:.3f}{'*' if p < alpha else ''}"
    size = 1.1 * len(names) + 2.5
    fig, ax = _plt().subplots(figsize=(size + 1, size))
    sns.heatmap(pmat, mask=np.isnan(pmat), annot=text, fmt="", cmap="rocket", vmin=0, vmax=1, square=True,
                xticklabels=names, yticklabels=names, ax=ax, annot_kws={"fontsize": 8},
                cbar_kws={"label": f"{p_col} (Holm-adjusted)" if "holm" in p_col else p_col})
    ax.set(xlabel="column model", ylabel="row model")
    family = pairwise_df.attrs.get("family", "")
    ax.set_title(titled(f"Pairwise Δ{metric} (row − column) and Holm p{f', {family} tests' if family else ''}; "
                        f"* = p < {alpha}", "\n" + source if source else ""))
    fig.tight_layout()
    return fig


def delta_forest(tests: pd.DataFrame, source: str, title: str = ""):
    """Paired differences A − B with their intervals, one row per test, each over a grey band of ±its MDE.

    ``tests`` is a :func:`support.compare.comparison_table`. Red filled markers: Holm-significant;
    open: not. The band is the smallest |difference| that row's test detects with 80 % power: an
    interval inside its band means "no effect of that size", not "no effect".
    """
    plt = _plt()
    metric = tests.attrs.get("metric", tests["metric"].iloc[0] if "metric" in tests else "metric")
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(tests) + 2.0))
    y = np.arange(len(tests))[::-1]
    ax.barh(y, 2 * tests["mde"].to_numpy(float), left=-tests["mde"].to_numpy(float), height=0.6, color="0.88",
            zorder=0, label="±MDE of the test (80 % power)")
    ax.axvline(0, color="0.3", lw=0.8)
    # Axis from the intervals: a test with few seeds (df ~ 1) has an MDE of many standard errors, whose band
    # would squeeze every interval into a dot; such a band runs off the axis instead.
    reach = float(np.nanmax(np.abs(tests[["delta_lo", "delta_hi"]].to_numpy(float))))
    limit = 1.25 * max(reach, min(float(np.nanmax(tests["mde"])), 2 * reach), 1e-6)
    ax.set_xlim(-limit, limit)
    for yi, r in zip(y, tests.itertuples(index=False)):
        ax.plot([r.delta_lo, r.delta_hi], [yi, yi], color="0.25", lw=1.4)
        ax.plot(r.delta, yi, "o", mec="C3" if r.significant else "0.25", mfc="C3" if r.significant else "white", ms=6)
    ax.plot([], [], "o", mec="C3", mfc="C3", label=f"Holm p < {tests.attrs.get('alpha', 0.05)}")
    ax.plot([], [], "o", mec="0.25", mfc="white", label="not significant")
    one_b = tests["model_b"].nunique() == 1  # every test against one reference: name it once, in the axis label
    ax.set_yticks(y, list(tests["model_a"]) if one_b else [f"{a} − {b}" for a, b in zip(tests["model_a"], tests["model_b"])])
    versus = f"A − {tests['model_b'].iloc[0]}" if one_b else "A − B"
    ax.set_xlabel(f"Δ{metric} ({versus}) with 95 % interval over seeds × test images")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    seeds = int(tests["n_seeds"].iloc[0])
    head = title or (f"Paired Δ{metric}, {tests.attrs.get('family', '')} tests, Holm over {len(tests)} "
                     f"({seeds} seeds, {tests.attrs.get('n_images', '?')} test images)")
    ax.set_title(titled(head, "\n" + source if source else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
