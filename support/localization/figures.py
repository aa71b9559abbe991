"""Figures of notebook 07: CAM grid, metric bars with chance level, method heatmap, shortcut panels."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import pandas as pd

from ..plots import titled


def _plt():
    import matplotlib.pyplot as plt

    return plt


def cam_grid(images: np.ndarray, lesion_masks, cams: Dict[str, np.ndarray], source: str, rows: int = 4,
             captions: Sequence[str] = (), title: str = "Grad-CAM per model (red: lesion mask)"):
    """Rows: images; columns: the image with its lesion contour, then each model's CAM over it."""
    plt = _plt()
    rows = min(rows, len(images))
    cols = 1 + len(cams)
    fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols + 0.4, 1.45 * rows + 0.9), squeeze=False)
    size = images.shape[-1]
    for i in range(rows):
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([]), ax.set_yticks([])
            # Nearest-neighbour: each input pixel stays a visible block (the CAM is no finer than the film),
            # and the PNG of a wide grid stays small (smoothly resampled noise compresses poorly: 2.3 MB).
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if j:
                cam = list(cams.values())[j - 1][i]
                ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=max(float(cam.max()), 1e-6),
                          extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation="nearest")
            if lesion_masks is not None and lesion_masks[i].any():
                ax.contour(lesion_masks[i], levels=[0.5], colors="red", linewidths=0.7)
            if i == 0:
                ax.set_title("image" if not j else list(cams)[j - 1], fontsize=7, rotation=30 if cols > 8 else 0,
                             ha="left" if cols > 8 else "center", loc="left" if cols > 8 else "center")
        if captions:
            axes[i][0].set_ylabel(captions[i], fontsize=7)
    fig.suptitle(titled(title, source), fontsize=10)
    fig.tight_layout()
    return fig


def result_grid(result, bundle, method: str = "gradcam", seed=None, rows: int = 4):
    """:func:`cam_grid` of an :func:`~support.localization.evaluate` result: every model of one seed."""
    test = bundle.splits["test"]
    idx = result.test_index[:rows]
    seed = min(s for (_, s, _) in result.cams) if seed is None else seed
    cams = {name: c[:rows] for (name, s, m), c in result.cams.items() if s == seed and m == method}
    masks = test.lesion_masks[idx].numpy() if test.lesion_masks is not None else None
    captions = [bundle.classes[int(test.labels[i])] for i in idx]
    return cam_grid(test.images[idx].numpy(), masks, cams, bundle.source, rows, captions,
                    title=f"{method} (true class) per loss and ensemble, seed {seed}"
                          + (" (red: lesion mask)" if masks is not None else " (no lesion masks in this source)"))


def shortcut_grid(result, rows: int = 4):
    """:func:`cam_grid` of the shortcut experiment: clean vs marker-biased model of each loss."""
    cams = {name: c[:rows] for name, c in result.cams.items()}
    masks = None if result.lesion_masks is None else result.lesion_masks[:rows]
    return cam_grid(result.images[:rows], masks, cams, result.source, rows,
                    title=f"Grad-CAM, clean vs marker-biased training (marker_bias {result.marker_bias:g}; red: lesion)")


def metric_bars(long: pd.DataFrame, metric: str, source: str, method: str = "gradcam", chance: float = np.nan):
    """Value and 95 % bootstrap interval per model for one metric; dashed line = chance (mask area)."""
    from ..report_plots import metric_bars as bars

    t = long[(long["method"] == method)]
    fig = bars(t, metric, source, label_col="entry")
    ax = fig.axes[0]
    if np.isfinite(chance):
        ax.axvline(chance, ls="--", color="0.5", lw=1)
        ax.set_xlabel(ax.get_xlabel() + f"\ndashed: a CAM without information (mean mask area, {chance:.3f})")
    where = "test images with lesions" if metric.startswith("lesion") else "test images"
    ax.set_title(titled(f"{metric.replace('_', ' ')} of {method} CAMs, {where}", source))
    fig.tight_layout()
    return fig


def method_heatmap(long: pd.DataFrame, metric: str, source: str):
    """Model x CAM method matrix of one metric (mean over images)."""
    plt = _plt()
    t = long[long["metric"] == metric].pivot_table(index="entry", columns="method", values="value")
    t = t.loc[t.mean(1).sort_values(ascending=False).index]
    fig, ax = plt.subplots(figsize=(1.1 * t.shape[1] + 3, 0.32 * len(t) + 1.6))
    im = ax.imshow(t.to_numpy(), cmap="viridis", aspect="auto", vmin=0, vmax=max(float(np.nanmax(t.to_numpy())), 1e-6))
    for (i, j), v in np.ndenumerate(t.to_numpy()):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 * im.get_clim()[1] else "k")
    ax.set_xticks(range(t.shape[1]), t.columns, fontsize=8)
    ax.set_yticks(range(len(t)), t.index, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04, label=metric)
    ax.set_title(titled(f"{metric.replace('_', ' ')} by CAM method", source), fontsize=9)
    fig.tight_layout()
    return fig


def shortcut_figure(result) -> "object":
    """Left: test accuracy clean vs marker-biased training; right: CAM energy on the marker vs on the lesion."""
    plt = _plt()
    acc, att = result.accuracy, result.attention
    losses = list(acc["loss"])
    y = np.arange(len(losses))
    height = 0.6 * len(losses) + 2.8
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, height))
    below = -0.55 / (height - 1.6)  # legend anchor under the x label, in axes units
    a1.plot(acc["clean_test_acc"], y + 0.15, "o", color="C0", label="clean training: test")
    a1.plot(acc["biased_val_acc"], y - 0.15, "^", mfc="none", color="C3", label="marker-biased: validation (marker works)")
    err = np.vstack([acc["biased_test_acc"] - (acc["clean_test_acc"] - acc["drop_hi"]),
                     (acc["clean_test_acc"] - acc["drop_lo"]) - acc["biased_test_acc"]])
    a1.errorbar(acc["biased_test_acc"], y - 0.15, xerr=np.abs(err), fmt="o", color="C3", capsize=3,
                label="marker-biased: test (bars: 95 % CI of the drop)")
    a1.set_yticks(y, losses)
    a1.set_xlabel("accuracy")
    a1.grid(axis="x", alpha=0.3)
    a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, below), ncol=1)
    a1.set_title("accuracy", fontsize=9)
    width = 0.2
    specs = (("marker_energy", "clean", "C0", "//"), ("marker_energy", "biased", "C3", "//"),
             ("lesion_energy", "clean", "C0", ""), ("lesion_energy", "biased", "C3", ""))
    for k, (metric, tag, color, hatch) in enumerate(specs):
        part = att[att["metric"] == metric].set_index("entry")
        names = [f"{l} ({tag})" for l in losses]
        if not set(names) <= set(part.index):
            continue
        v = part.loc[names, "value"].to_numpy(float)
        e = np.abs(np.vstack([v - part.loc[names, "boot_lo"], part.loc[names, "boot_hi"] - v]))
        a2.barh(y + (1.5 - k) * width, v, height=width, xerr=e, color=color, alpha=0.35 if hatch else 0.85,
                hatch=hatch, edgecolor=color, capsize=2,
                label=f"{'marker region' if metric.startswith('marker') else 'lesion'}, {tag} training")
    chance = att[att["metric"] == "marker_area"]["value"].mean()
    a2.axvline(chance, ls="--", color="0.5", lw=1)
    a2.set_yticks(y, losses)
    a2.set_xlabel(f"share of Grad-CAM energy (dashed: marker region's area, {chance:.3f})")
    a2.grid(axis="x", alpha=0.3)
    a2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, below), ncol=2)
    a2.set_title("where the CAM looks (test images with a marker)", fontsize=9)
    fig.suptitle(titled(f"Shortcut: corner marker tied to the class in train/val (marker_bias {result.marker_bias:g})",
                        result.source), fontsize=10)
    fig.tight_layout()
    return fig
