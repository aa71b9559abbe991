"""Grad-CAM of one image across finished runs, for the results panel's CAM view.

    cams = run_cams(runs, index=3)            # test image 3, one CAM per run
    fig = cam_figure(cams, source)            # image + lesion contour, then a CAM per run

The CAMs are those of :mod:`support.localization` (pytorch-grad-cam's
GradCAM on the model's ``.dcl``, hooks released after use), computed on the
CPU from each run's ``config.json`` and ``best.pt``; the image comes from the
run's own data source (``support.data.load`` with the run's data settings,
cached), and its id is checked against the run's stored predictions so that a
changed data cache cannot silently pair a CAM with another image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ..runs import Run


@dataclass
class CamSet:
    """One image and a CAM (float[H, W] in [0, 1], image size) per run label."""

    image: np.ndarray
    image_id: str
    true_class: str
    lesion_mask: Optional[np.ndarray]
    cams: Dict[str, np.ndarray] = field(default_factory=dict)
    predicted: Dict[str, str] = field(default_factory=dict)
    confidence: Dict[str, float] = field(default_factory=dict)


def run_cams(runs: Sequence[Run], index: int, split: str = "test", labels: Optional[Sequence[str]] = None) -> CamSet:
    """Grad-CAM (target: each model's predicted class) of image ``index`` of ``split`` for every run."""
    from .. import data, localization
    from ..localization.evaluate import input_size  # imports support.ensembles: model-level runs load too
    from ..training import prepare_batch, to_device_images

    if not runs:
        raise ValueError("run_cams needs at least one finished run")
    first = runs[0]
    n = len(first.predictions[f"{split}_ids"])
    if not 0 <= index < n:
        raise ValueError(f"image index {index} is outside 0..{n - 1} of the {split} split")
    bundle = data.load(**first.metrics["data"], verbose=False)
    part = bundle.splits[split]
    image_id = str(first.predictions[f"{split}_ids"][index])
    if str(part.ids[index]) != image_id:
        raise ValueError(f"{split} image {index} of the data cache is {part.ids[index]!r} but run {first.key} "
                         f"was tested on {image_id!r}; the data changed since training (re-train or rebuild the cache)")
    image = part.images[index:index + 1]
    mask = None if part.lesion_masks is None else part.lesion_masks[index].numpy()
    out = CamSet(image=image[0].numpy(), image_id=image_id, true_class=bundle.classes[int(part.labels[index])],
                 lesion_mask=mask)
    size = image.shape[-1]
    for label, run in zip(labels or [r.label for r in runs], runs):
        model = run.model()  # CPU, eval mode; model-level ensemble runs too
        small = to_device_images(image, input_size(run), torch.device("cpu"))
        with torch.no_grad():
            probs = torch.softmax(model(prepare_batch(small, channels_last=False)), 1)[0]
        pred = int(probs.argmax())
        heat = localization.compute_cams(model, small, [pred], method="gradcam")
        out.cams[label] = localization.resize_cams(heat, size)[0]
        out.predicted[label] = bundle.classes[pred]
        out.confidence[label] = float(probs[pred])
    return out


def cam_figure(cams: CamSet, source: str, ncols: int = 4):
    """The image with its lesion contour, then each run's CAM over it (same contour)."""
    import math

    import matplotlib.pyplot as plt

    from ..plots import titled

    n = 1 + len(cams.cams)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    panels = [("image", None)] + list(cams.cams.items())
    for ax, (name, heat) in zip(axes.flat, panels):
        ax.imshow(cams.image, cmap="gray")
        if heat is not None:
            ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(f"{name}\npredicts {cams.predicted[name]} ({cams.confidence[name]:.2f})", fontsize=9)
        else:
            ax.set_title(f"{cams.image_id}\ntrue: {cams.true_class}", fontsize=9)
        if cams.lesion_mask is not None and cams.lesion_mask.any():
            ax.contour(cams.lesion_mask, levels=[0.5], colors="lime", linewidths=1.0)
    note = "green: lesion mask" if cams.lesion_mask is not None and cams.lesion_mask.any() else "no lesion in this image"
    fig.suptitle(titled(f"Grad-CAM of one test image per loss ({note})", source))
    fig.tight_layout()
    return fig
