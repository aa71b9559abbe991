"""Figures of notebook 02: mask overlays (true vs predicted) and crop examples.

Each function returns a matplotlib ``Figure`` whose title names the data source
(:func:`support.plots.titled`); saving is left to :func:`support.plots.save_figure`.
Colours: true mask contour cyan, predicted mask contour orange, crop box yellow.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from ..plots import titled

TRUE, PRED, BOX = "cyan", "orange", "yellow"


def _short(image_id: str, width: int = 16) -> str:
    """``phantom-s0-000123`` -> ``s0-000123``; a path -> its file name, cut to ``width`` characters."""
    name = image_id.rsplit("/", 1)[-1].removeprefix("phantom-")
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _axes(n: int, ncols: int, size: float = 2.2):
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, list(axes.flat)


def overlay_grid(images, true, pred, captions: Sequence[str], title: str, source: str, ncols: int = 6):
    """Images (uint8 [n, S, S]) with the true (cyan) and predicted (orange) mask contours."""
    images, true, pred = (np.asarray(a) for a in (images, true, pred))
    fig, axes = _axes(len(images), ncols)
    for ax, img, t, p, cap in zip(axes, images, true, pred, captions):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        for m, colour in ((t, TRUE), (p, PRED)):
            if m.any() and not m.all():
                ax.contour(m.astype(float), levels=[0.5], colors=colour, linewidths=0.9)
        ax.set_title(cap, fontsize=7)
    fig.suptitle(titled(f"{title} (cyan: true, orange: predicted)", source), fontsize=9)
    fig.tight_layout()
    return fig


def crop_examples(base, cropped, split: str = "test", n: int = 6, seed: int = 0,
                  indices: Optional[Sequence[int]] = None):
    """Top row: original films with the crop box (yellow) and true lungs (cyan); bottom row: the crops."""
    import matplotlib.patches as patches

    s, c = base.splits[split], cropped.splits[split]
    if indices is None:
        rng = np.random.default_rng(seed)
        indices = rng.choice(len(s), size=min(n, len(s)), replace=False)
    indices = list(indices)
    fig, axes = _axes(2 * len(indices), len(indices))
    for j, i in enumerate(indices):
        top, bottom = axes[j], axes[len(indices) + j]
        top.imshow(s.images[i].numpy(), cmap="gray", vmin=0, vmax=255)
        if s.lung_masks is not None:
            top.contour(s.lung_masks[i].numpy().astype(float), levels=[0.5], colors=TRUE, linewidths=0.6)
        row = c.meta.iloc[i]
        y0, y1, x0, x1 = (float(row[k]) for k in ("crop_y0", "crop_y1", "crop_x0", "crop_x1"))
        top.add_patch(patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=BOX, lw=1.2))
        top.set_title(_short(s.ids[i]) + (" (fallback)" if row["crop_fallback"] else ""), fontsize=7)
        bottom.imshow(c.images[i].numpy(), cmap="gray", vmin=0, vmax=255)
        if c.lung_masks is not None:
            bottom.contour(c.lung_masks[i].numpy().astype(float), levels=[0.5], colors=TRUE, linewidths=0.6)
        bottom.set_title("crop", fontsize=7)
    fig.suptitle(titled(f"lung crop on {split} films (yellow: box, cyan: true lungs)", base.source), fontsize=9)
    fig.tight_layout()
    return fig


def training_curves(runs, source: str):
    """Validation Dice and validation loss per epoch, one line per loss."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for r in runs:
        a.plot(r.log["epoch"], r.log["val_dice"], marker="o", ms=3, label=r.loss)
        b.plot(r.log["epoch"], r.log["val_loss"], marker="o", ms=3, label=r.loss)
    a.set(xlabel="epoch", ylabel="val Dice (threshold 0.5)")
    b.set(xlabel="epoch", ylabel="val loss (each run's own loss)")
    a.legend(fontsize=7)
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(titled("U-Net training per loss", source), fontsize=9)
    fig.tight_layout()
    return fig


def and_overlays(runs, k: int = 3, split: str = "test", which: str = "random", n: int = 12, seed: int = 0,
                 ncols: int = 6):
    """The AND of the top-``k`` U-Nets vs the true masks on ``n`` images: ``which="random"`` or
    ``"worst"`` (lowest Dice first). Captions give each image's Dice."""
    from .evaluate import and_masks, per_image_table, top_k

    table = per_image_table(runs, split, k)
    if which == "random":
        table = table.sample(n=min(n, len(table)), random_state=seed).sort_values("index")
    elif which == "worst":
        table = table.head(n)
    else:
        raise ValueError(f"which={which!r}: use 'random' or 'worst'")
    chosen = top_k(runs, k)
    idx = torch.as_tensor(table["index"].to_numpy(copy=True))
    pred, true, images = and_masks(chosen, split)[idx], chosen[0].truth(split)[idx], chosen[0].images(split)[idx]
    captions = [f"{_short(i)}  Dice {d:.2f}" for i, d in zip(table["id"], table["dice"])]
    title = f"{'worst' if which == 'worst' else 'random'} {split} images, AND of top-{len(chosen)} U-Nets"
    return overlay_grid(images, true, pred, captions, title, chosen[0].metrics["data_source"], ncols)
