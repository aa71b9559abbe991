"""Encoded vs used: deep feature reweighting (DFR, Kirichenko, Izmailov & Wilson 2022, arXiv 2204.02937).

Each trained model's last layer is refitted on a small set where size says nothing about the label (ρ 0.5):
a logistic regression on its frozen features h (:func:`support.training.fit_linear_head` on a copy of the
model, so the refit is the same stage 2 the two-stage losses use). If test_conflict accuracy recovers, the
encoder had learned margin and only the last layer preferred size (encoded, not used); if it stays low, the
encoder never encoded margin well enough. The refit set is the first ``n_dfr`` images of the study's probe
set (ρ 0.5, neither training nor test data of any run), so nothing is fitted on a test set.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import artifacts, paths, training
from .comparison import stacked
from .probes import features
from .study import LEARNABILITY, Study, load_model, split_id, weights_id

SUFFIX = " + DFR"


def refit_probs(model, fit_split, test_split, image_size: int) -> np.ndarray:
    """P(malignant) on ``test_split`` after refitting ``model``'s last layer on ``fit_split`` (model untouched)."""
    clone = copy.deepcopy(model)
    training.fit_linear_head(clone, features(model, fit_split, image_size), fit_split.labels.numpy())
    images = training.to_device_images(test_split.images, image_size, "cpu")
    return training.predict_probs(clone.eval(), images)[:, 1].numpy()


def dfr_predictions(study: Study, preset: str = "test_conflict", force: bool = False,
                    progress: bool = True) -> pd.DataFrame:
    """One row per run (learnability control left out): label ``<loss> + DFR``, seed, preset, y, probs (cached)."""
    n = study.settings["n_dfr"]
    full = study.probe_bundle.splits["train"]
    if n > len(full):
        raise ValueError(f"n_dfr={n} exceeds the probe set's {len(full)} training images; lower nodules.n_dfr "
                         "or raise nodules.n_probe in support/profiles.py")
    import torch

    fit, test = full.subset(torch.arange(n)), study.test_sets[preset]
    size, rows = study.settings["train"]["image_size"], []
    for e in tqdm([e for e in study.entries if e.label != LEARNABILITY], desc="DFR refits", disable=not progress):
        key = artifacts.config_key({"run": e.path.name, "weights": weights_id(e.path), "fit": split_id(fit),
                                    "test": split_id(test), "method": "dfr"})
        path = paths.inside(study.root, "nodules", "dfr", f"{key}.npz")
        if path.exists() and not force:
            p = artifacts.read_npz(path)["probs"]
        else:
            p = refit_probs(load_model(e.path), fit, test, size)
            artifacts.write_npz(path, probs=p)
        rows.append({"label": e.label + SUFFIX, "seed": e.seed, "preset": preset, "y": test.labels.numpy(),
                     "probs": p})
    return pd.DataFrame(rows)


def dfr_table(preds: pd.DataFrame, dfr_preds: pd.DataFrame, preset: str = "test_conflict",
              n_boot: int = 1000) -> pd.DataFrame:
    """Per loss: ``preset`` accuracy as trained and after DFR (seed means), and the recovery (after - before:
    per-seed Δ on the same patches, seed × image interval, Holm over the losses; ``inference.paired_tests``)."""
    from .. import inference

    both = pd.concat([preds[preds["preset"] == preset], dfr_preds[dfr_preds["preset"] == preset]])
    y, probs = stacked(both, preset)
    pairs = [(label, label[:-len(SUFFIX)]) for label in probs if label.endswith(SUFFIX)
             and label[:-len(SUFFIX)] in probs]
    tests = inference.paired_tests(y, {k: probs[k] for pair in pairs for k in pair}, pairs, "accuracy",
                                   n_boot=n_boot)
    return pd.DataFrame({"loss": tests["model_b"], "as_trained": tests["accuracy_b"], "after_dfr": tests["accuracy_a"],
                         "recovery": tests["delta"], "recovery_lo": tests["delta_lo"],
                         "recovery_hi": tests["delta_hi"], "p_holm": tests["p_holm"], "n_seeds": tests["n_seeds"]})
