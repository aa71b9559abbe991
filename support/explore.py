"""Figures of a data bundle for ``01_data_exploration``: counts, samples, intensities, sizes.

Each function takes a :class:`~support.data.DataBundle` and returns a
matplotlib Figure whose title names the data source.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .plots import titled


def counts_figure(bundle):
    """Bars of images per split and class."""
    counts = bundle.counts().drop(columns="total")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    counts.plot.bar(ax=ax, rot=0, width=0.8)
    for container in ax.containers:
        ax.bar_label(container, fontsize=8)
    ax.set_ylabel("images")
    ax.set_xlabel("split")
    ax.set_title(titled("Images per split and class", bundle.source), fontsize=10)
    ax.legend(title="class")
    fig.tight_layout()
    return fig


def sample_grid(bundle, split: str = "train", n_per_class: int = 4, seed: int = 0):
    """A grid of images per class; lung contours (cyan) and lesion outlines (red) where known."""
    s = bundle.splits[split]
    rng = np.random.default_rng(seed)
    k = bundle.num_classes
    fig, axes = plt.subplots(k, n_per_class, figsize=(2.1 * n_per_class, 2.25 * k), squeeze=False)
    labels = s.labels.numpy()
    for c, name in enumerate(bundle.classes):
        idx = np.flatnonzero(labels == c)
        pick = rng.choice(idx, size=min(n_per_class, len(idx)), replace=False) if len(idx) else []
        for j in range(n_per_class):
            ax = axes[c, j]
            ax.axis("off")
            if j >= len(pick):
                continue
            i = int(pick[j])
            ax.imshow(s.images[i].numpy(), cmap="gray", vmin=0, vmax=255)
            if s.lung_masks is not None:
                ax.contour(s.lung_masks[i].numpy(), levels=[0.5], colors="cyan", linewidths=0.6)
            if s.lesion_masks is not None and s.lesion_masks[i].any():
                ax.contour(s.lesion_masks[i].numpy(), levels=[0.5], colors="red", linewidths=0.7)
            severity = s.meta["severity"].iloc[i] if s.meta is not None and "severity" in s.meta else 0
            if severity > 0:  # the phantom's lesion severity, where the source records it
                ax.set_title(f"{name} (severity {severity:.2f})", fontsize=8)
            elif j == 0:
                ax.set_title(name, fontsize=10, loc="left")
    note = " (cyan: lung mask, red: lesion mask)" if s.lung_masks is not None else ""
    fig.suptitle(titled(f"Sample {split} images per class{note}", bundle.source), fontsize=10)
    fig.tight_layout()
    return fig


def intensity_histograms(bundle, split: str = "train", max_images: int = 400, seed: int = 0):
    """Per-class pixel-intensity histograms (mean over images), and per-image mean intensity."""
    s = bundle.splits[split]
    rng = np.random.default_rng(seed)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    labels = s.labels.numpy()
    bins = np.arange(257)
    for c, name in enumerate(bundle.classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        idx = rng.choice(idx, size=min(max_images, len(idx)), replace=False)
        imgs = s.images[idx].numpy()
        hist = np.stack([np.bincount(im.ravel(), minlength=256) / im.size for im in imgs]).mean(0)
        ax1.plot(bins[:-1], hist, label=name)
        ax2.hist(imgs.reshape(len(imgs), -1).mean(1), bins=30, alpha=0.5, label=name, density=True)
    ax1.set_xlabel("pixel value")
    ax1.set_ylabel("fraction of pixels")
    ax1.set_title("Pixel-intensity histogram per class", fontsize=9)
    ax2.set_xlabel("mean intensity of an image")
    ax2.set_ylabel("density")
    ax2.set_title("Per-image mean intensity per class", fontsize=9)
    ax1.legend()
    ax2.legend()
    fig.suptitle(titled(f"Intensities ({split})", bundle.source), fontsize=10)
    fig.tight_layout()
    return fig


def size_distribution(bundle):
    """Original image sizes for real data (needs ``width``/``height`` in the split metadata), else None."""
    frames = [s.meta for s in bundle.splits.values() if s.meta is not None]
    frames = [f for f in frames if {"width", "height"} <= set(f.columns)]
    if not frames:
        return None
    sizes = pd.concat(frames)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(sizes["width"], sizes["height"], s=4, alpha=0.4)
    ax.set_xlabel("original width (px)")
    ax.set_ylabel("original height (px)")
    ax.set_title(titled("Original image sizes", bundle.source), fontsize=10)
    fig.tight_layout()
    return fig
