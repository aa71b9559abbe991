"""The shortcut experiment: does a loss make the model read a burned-in corner marker instead of the lungs?

The phantom's ``marker_bias`` (see :mod:`support.data.phantom`) ties a corner
marker to the class in train and validation only; in test the marker is
uniform, so a model that learnt the marker loses accuracy there. The test
images are pixel-identical to those of the unbiased data (same seed and n;
the test markers are uniform in both), so each loss's *clean* run (notebook
04, ``marker_bias=0``) and its *biased* run are compared on the same images:

* accuracy: test accuracy of both runs, the paired-bootstrap difference
  (biased - clean) with its 95 % CI, the biased run's validation accuracy
  (where the marker still works), and its test accuracy on images whose marker
  agrees / disagrees with the training association;
* attention: Grad-CAM (true class) on test images that carry a marker: CAM
  energy inside the marker's region (:func:`support.data.phantom.marker_region`)
  and inside the lesion, and how often the CAM maximum sits on the marker.

Runs are trained with :func:`support.training.train_many` (cached run folders; the biased ones under
``runs/shortcut/`` so that no loss comparison mistakes them for ordinary runs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Sequence

import numpy as np
import pandas as pd

from .. import paths, profiles, stats
from ..runs import Run
from . import metrics as M
from .cams import LocalizationError, resize_cams
from .evaluate import run_cams, summary

AGREE = ("agrees", "disagrees", "no marker")


@dataclass
class ShortcutResult:
    accuracy: pd.DataFrame            # one row per loss
    attention: pd.DataFrame           # summary() rows: entry "<loss> (clean|biased)", marker/lesion metrics
    per_image: pd.DataFrame
    marker_bias: float
    source: str
    cams: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)  # test rows explained
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1), np.uint8), repr=False)
    lesion_masks: object = field(default=None, repr=False)


def configs(profile: str, data: dict, losses: Sequence[str], marker_bias: float, seed: int = 0, **overrides):
    """``(clean, biased)`` TrainConfig lists: the profile's training with and without the marker shortcut."""
    from ..training import TrainConfig

    if data.get("name") != "phantom":
        raise LocalizationError(f"the shortcut experiment needs the phantom (it has a marker_bias knob), got data {data!r}")
    if not 0 < float(marker_bias) <= 1:
        raise LocalizationError(f"marker_bias={marker_bias!r} must lie in (0, 1]; 0 would be no shortcut at all")
    clean = [TrainConfig.from_profile(profile, data=dict(data, marker_bias=0.0), loss=l, seed=seed, **overrides)
             for l in losses]
    biased = [TrainConfig.from_profile(profile, data=dict(data, marker_bias=float(marker_bias)), loss=l, seed=seed,
                                       **overrides) for l in losses]
    return clean, biased


def shortcut_dir():
    """Folder of the marker-biased run folders: ``runs/shortcut/``."""
    return paths.shortcut_runs_dir()


def marker_masks(split, agree_only: bool = False) -> np.ndarray:
    """Bool ``[N, H, W]`` marker regions of a phantom split (from its ``meta['marker']``)."""
    from ..data.phantom import marker_region

    if split.meta is None or "marker" not in split.meta:
        raise LocalizationError("this split has no 'marker' metadata; the shortcut experiment needs phantom data")
    size = split.images.shape[-1]
    return np.stack([marker_region(size, m) for m in split.meta["marker"]])


def marker_agreement(split) -> np.ndarray:
    """Per image: 'agrees' (marker = its class's training marker), 'disagrees', or 'no marker'."""
    from ..data.phantom import MARKER_OF_CLASS, MARKER_STATES

    state = split.meta["marker"].map(MARKER_STATES.index).to_numpy()
    own = np.asarray(MARKER_OF_CLASS)[split.labels.numpy()]
    return np.where(state == 0, AGREE[2], np.where(state == own, AGREE[0], AGREE[1]))


def run(profile: str, data: dict, losses: Sequence[str], marker_bias: float, seed: int = 0, n_images: int = 64,
        method: str = "gradcam", n_boot: int = 1000, device: str = "cpu", force: bool = False,
        progress: bool = True, **overrides) -> ShortcutResult:
    """Train (or reuse) clean and biased runs of ``losses`` and measure accuracy and CAM attention."""
    from ..data import load as load_data
    from ..training import train_many

    clean_cfg, biased_cfg = configs(profile, data, losses, marker_bias, seed, device=device, **overrides)
    clean = [Run(p) for p in train_many(clean_cfg, force=force, progress=progress)]
    # biased runs live in runs/shortcut/, out of find_runs()' reach: notebooks 05/06 filter runs on data
    # settings they name, and a marker-biased run would otherwise pass as one more seed of its loss
    biased = [Run(p) for p in train_many(biased_cfg, runs_dir=shortcut_dir(), force=force, progress=progress)]
    bundle = load_data(**biased_cfg[0].data, verbose=False)
    test = bundle.splits["test"]
    for c, b in zip(clean, biased):
        if list(c.predictions["test_ids"]) != list(b.predictions["test_ids"]):
            raise LocalizationError(f"{c.path} and {b.path} were tested on different images; the shortcut "
                                    "comparison needs the same phantom seed and n")
    agree = marker_agreement(test)
    y = test.labels.numpy()
    rows = []
    for loss, c, b in zip(losses, clean, biased):
        pc, pb = c.probs("test"), b.probs("test")
        diff = stats.paired_bootstrap(y, pb, pc, metric="accuracy", n_boot=n_boot, seed=seed)
        row = {"loss": loss, "clean_test_acc": float((pc.argmax(1) == y).mean()),
               "biased_val_acc": float(b.metrics["val"]["accuracy"]),
               "biased_test_acc": float((pb.argmax(1) == y).mean()),
               "drop": -diff["delta"], "drop_lo": -diff["hi"], "drop_hi": -diff["lo"], "p_value": diff["p_value"]}
        for a in AGREE[:2]:
            sel = agree == a
            row[f"biased_acc_marker_{a}"] = float((pb[sel].argmax(1) == y[sel]).mean()) if sel.any() else np.nan
            row[f"clean_acc_marker_{a}"] = float((pc[sel].argmax(1) == y[sel]).mean()) if sel.any() else np.nan
        rows.append(row)
    accuracy = pd.DataFrame(rows)

    # attention: test images that carry a marker (a seeded sample), target = true class
    rows_with = np.flatnonzero(agree != AGREE[2])
    if len(rows_with) > n_images:
        rows_with = np.sort(np.random.default_rng(seed).choice(rows_with, n_images, replace=False))
    ids = [test.ids[i] for i in rows_with]
    marker = marker_masks(test)[rows_with]
    lesion = test.lesion_masks[rows_with].numpy() if test.lesion_masks is not None else None
    frames, kept = [], {}
    for loss, c, b in zip(losses, clean, biased):
        for tag, r in (("clean", c), ("biased", b)):
            cam = run_cams(r, test.images[rows_with], ids, y[rows_with], [method], device, force=force)[method]
            cam = resize_cams(cam, marker.shape[-2:])
            kept[f"{loss} ({tag})"] = cam
            cols = {"entry": f"{loss} ({tag})", "kind": tag, "seed": seed, "method": method, "image_id": ids,
                    "label": y[rows_with], "agreement": agree[rows_with],
                    "marker_energy": M.energy_inside(cam, marker), "marker_pointing": M.pointing_game(cam, marker),
                    "marker_area": M.area_fraction(cam, marker)}
            if lesion is not None:
                cols["lesion_energy"] = M.energy_inside(cam, lesion)
                cols["lesion_pointing"] = M.pointing_game(cam, lesion)
            frames.append(pd.DataFrame(cols))
    per_image = pd.concat(frames, ignore_index=True)
    attention = summary(per_image, n_boot=n_boot, seed=seed)
    return ShortcutResult(accuracy, attention, per_image, float(marker_bias), bundle.source, kept, rows_with,
                          test.images[rows_with].numpy(), lesion)


def settings(profile: str) -> dict:
    """The profile's shortcut settings (``profiles[...]["localization"]["shortcut"]``)."""
    return dict(profiles.get(profile)["localization"]["shortcut"])
