"""Figures of the nodule study: accuracy vs test ρ, reliance bars, loss x factor heatmaps, embeddings.

Every title names the data source (``synthetic nodules, ...``) through :func:`support.plots.titled`.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..inference import seed_summary
from ..plots import titled
from .study import LEARNABILITY, ORACLE, RHO_PRESETS


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _colours(labels: Sequence[str]) -> Dict[str, tuple]:
    cmap = _plt().get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def rho_figure(table: pd.DataFrame, source: str, train_rho: float = 0.95):
    """Accuracy on the margin-labelled test sets against their ρ; one line per loss, error bars = sd over seeds."""
    plt = _plt()
    sub = table[table["preset"].isin(list(RHO_PRESETS))].sort_values("rho")
    losses = list(dict.fromkeys(sub["loss"]))
    colours = _colours([l for l in losses if l != ORACLE])
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    for i, loss in enumerate(losses):
        g = sub[sub["loss"] == loss]
        if loss == ORACLE:
            ax.plot(g["rho"], g["accuracy_mean"], "k--", lw=1, label=f"{loss}")
            continue
        n = int(g["n_seeds"].max())
        sd = g["accuracy_sd"].fillna(0).to_numpy()
        ax.errorbar(g["rho"] + (i - len(losses) / 2) * 0.006, g["accuracy_mean"], yerr=sd, marker="o", ms=5,
                    capsize=3, color=colours[loss], ls=":" if loss == LEARNABILITY else "-",
                    label=f"{loss} ({n} seed{'s' if n > 1 else ''})")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.axvline(train_rho, color="grey", lw=0.8, ls="--")
    ax.text(train_rho - 0.01, 0.47, "training ρ", ha="right", fontsize=8, color="grey")
    ax.text(0.01, 0.51, "chance", fontsize=8, color="grey")
    ax.set_xticks(sorted(RHO_PRESETS.values()))
    ax.set_xticklabels([f"{r:g}\n{p.replace('test_', '')}" for p, r in sorted(RHO_PRESETS.items(), key=lambda t: t[1])])
    ax.set_xlabel("test ρ = P(size matches the label)")
    ax.set_ylabel("accuracy (label = margin)")
    ax.set_ylim(min(0.44, float(np.nanmin(sub["accuracy_mean"] - sub["accuracy_sd"].fillna(0))) - 0.02), 1.01)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(titled("accuracy vs shortcut correlation (mean ± sd over seeds)", source), fontsize=10)
    fig.tight_layout()
    return fig


def reliance_figure(rel: pd.DataFrame, source: str):
    """Share of test_conflict predictions that follow margin (the label) vs size, per loss (mean ± sd)."""
    plt = _plt()
    g = rel.groupby("loss", sort=False)
    cols = ["follows_margin", "follows_size"]
    mean = pd.DataFrame({c: g[c].agg(lambda v: seed_summary(v)[0]) for c in cols})
    sd = pd.DataFrame({c: g[c].agg(lambda v: seed_summary(v)[1]) for c in cols}).fillna(0)
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(mean) + 1.4))
    y = np.arange(len(mean))
    ax.barh(y, mean["follows_margin"], xerr=sd["follows_margin"], color="tab:green", label="follows margin (label)",
            capsize=3)
    ax.barh(y, mean["follows_size"], left=mean["follows_margin"], color="tab:orange", label="follows size (shortcut)")
    for i, v in enumerate(mean["follows_margin"]):
        ax.text(0.02, i, f"{v:.2f}", va="center", ha="left", color="white", fontsize=9)
    ax.set_yticks(y)
    ax.set_yticklabels(mean.index)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of predictions on test_conflict (ρ = 0)")
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False)
    ax.set_title(titled("reliance: margin vs size", source), fontsize=10, pad=22)
    fig.tight_layout()
    return fig


def heatmap(df: pd.DataFrame, value: str, source: str, title: str, vmin: Optional[float] = None,
            vmax: Optional[float] = None, cmap: str = "viridis", fmt: str = "{:.2f}"):
    """A loss x factor heatmap of the seed mean of ``value`` (cells annotated; sd over seeds in brackets)."""
    plt = _plt()
    g = df.groupby(["loss", "factor"], sort=False)[value]
    rows, cols = list(dict.fromkeys(df["loss"])), list(dict.fromkeys(df["factor"]))
    mean = g.agg(lambda v: seed_summary(v)[0]).unstack().reindex(index=rows, columns=cols)
    sd = g.agg(lambda v: seed_summary(v)[1]).unstack().reindex(index=rows, columns=cols)  # NaN with one seed: not shown
    fig, ax = plt.subplots(figsize=(1.05 * len(cols) + 2.6, 0.5 * len(mean) + 1.6))
    im = ax.imshow(mean.to_numpy(float), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    lo, hi = im.get_clim()
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            v, s = mean.iat[i, j], sd.iat[i, j]
            text = fmt.format(v) + (f"\n±{s:.2f}" if np.isfinite(s) else "")
            dark = (v - lo) / max(hi - lo, 1e-9) < 0.55
            ax.text(j, i, text, ha="center", va="center", fontsize=7.5, color="white" if dark else "black")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=30, ha="right")
    ax.set_yticks(range(len(mean)))
    ax.set_yticklabels(mean.index)
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title(titled(title, source), fontsize=10)
    fig.tight_layout()
    return fig


def embedding_figure(emb: Dict[str, Tuple[np.ndarray, pd.DataFrame]], source: str, method: str,
                     colour_by: Sequence[str] = ("margin", "size", "density", "background", "x")):
    """One row per loss, one column per factor: 2-D embedding of frozen features coloured by that factor.

    Categorical levels in generator order (the benign-side level blue, the malignant-side level red).
    """
    from ..data.nodules import LEVELS

    plt = _plt()
    fig, axes = plt.subplots(len(emb), len(colour_by), figsize=(2.3 * len(colour_by), 2.2 * len(emb) + 0.6),
                             squeeze=False, layout="constrained")
    for j, factor in enumerate(colour_by):
        mappable = None
        for i, (loss, (xy, meta)) in enumerate(emb.items()):
            ax, values = axes[i, j], meta[factor]
            if factor in LEVELS:
                levels = [lvl for lvl in LEVELS[factor] if (values == lvl).any()]
                for k, lvl in enumerate(levels):
                    m = (values == lvl).to_numpy()
                    ax.scatter(xy[m, 0], xy[m, 1], s=4, label=lvl,
                               color="tab:blue" if k == 0 else "tab:red" if k == len(levels) - 1 else "tab:green")
                if i == 0:
                    ax.legend(fontsize=6, markerscale=2, loc="best", handletextpad=0.1)
            else:
                mappable = ax.scatter(xy[:, 0], xy[:, 1], s=4, c=values.to_numpy(float), cmap="viridis")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(factor + (" (= label)" if factor == "margin" else ""), fontsize=9)
            if j == 0:
                ax.set_ylabel(loss, fontsize=9)
        if mappable is not None:
            bar = fig.colorbar(mappable, ax=axes[:, j], shrink=0.5, location="bottom")
            bar.ax.locator_params(nbins=3)
            bar.ax.tick_params(labelsize=7)
    name = {"tsne": "t-SNE", "umap": "UMAP"}.get(method, method)
    fig.suptitle(titled(f"{name} of frozen features h (ρ 0.5 probe images), coloured by factor", source), fontsize=10)
    return fig


def regime_figure(table: pd.DataFrame, chosen: pd.Series, source: str, conflict_range=(0.3, 0.7),
                  min_learnability: float = 0.9):
    """The regime map: CE's test_conflict accuracy per (training ρ, margin strength), the learnability
    control (CE at ρ 0.5) as the last row; the chosen study cell framed."""
    plt = _plt()
    strengths = sorted(table["margin_strength"].unique())
    rhos = sorted(table["rho"].unique(), reverse=True)
    grid = table.pivot_table(index="rho", columns="margin_strength", values="conflict_accuracy").reindex(
        index=rhos, columns=strengths)
    learn = table.groupby("margin_strength")["learnability"].first().reindex(strengths)
    values = np.vstack([grid.to_numpy(float), learn.to_numpy(float)[None]])
    fig, ax = plt.subplots(figsize=(1.1 * len(strengths) + 4.6, 0.8 * len(values) + 1.8))
    im = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=9)
    i, j = rhos.index(chosen["rho"]), strengths.index(chosen["margin_strength"])
    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec="black"))
    ax.set_xticks(range(len(strengths)))
    ax.set_xticklabels([f"{s:g}" for s in strengths])
    ax.set_yticks(range(len(values)))
    ax.set_yticklabels([f"CE, train ρ {r:g}" for r in rhos] + ["control: CE, ρ 0.5"])
    ax.set_xlabel("margin strength (1 = obvious spicules, 0 = none)")
    bar = fig.colorbar(im, ax=ax, fraction=0.04)
    bar.set_label("test_conflict accuracy\n(0 = size only, 1 = margin only)", fontsize=8)
    rule = (f"frame: study cell (CE conflict accuracy in [{conflict_range[0]}, {conflict_range[1]}], control "
            f">= {min_learnability})" + ("" if chosen.get("meets_rule", True) else " — no cell meets the rule"))
    ax.set_title(titled(f"regime map: where CE takes the size shortcut\n{rule}", source), fontsize=9)
    fig.tight_layout()
    return fig


def curve_figure(curve: pd.DataFrame, source: str):
    """test_conflict accuracy per loss against margin strength (seed × image 95 % intervals)."""
    plt = _plt()
    losses = list(dict.fromkeys(curve["loss"]))
    colours = _colours(losses)
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    strengths = sorted(curve["margin_strength"].unique())
    step = (strengths[-1] - strengths[0]) / max(len(strengths) - 1, 1) if len(strengths) > 1 else 0.1
    for k, loss in enumerate(losses):
        g = curve[curve["loss"] == loss].sort_values("margin_strength")
        x = g["margin_strength"] + (k - len(losses) / 2) * 0.02 * step
        err = np.vstack([g["conflict"] - g["conflict_lo"], g["conflict_hi"] - g["conflict"]])
        seeds = "/".join(str(n) for n in g["n_seeds"])
        ax.errorbar(x, g["conflict"], yerr=err, marker="o", ms=5, capsize=3, color=colours[loss],
                    label=f"{loss} (seeds {seeds})")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(strengths)
    ax.set_xlabel("margin strength (label cue visibility)")
    ax.set_ylabel("test_conflict accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(titled("where each loss starts to take the shortcut\n(mean, 95 % seed × image interval; "
                        "1 seed: test-patch noise only)", source), fontsize=10)
    fig.tight_layout()
    return fig
