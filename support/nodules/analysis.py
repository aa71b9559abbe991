"""Study-level measurements over every run: probe table, counterfactual table, 2-D embeddings.

Each function walks the study's runs (loss variants x seeds, the learnability control left out), loads
each model once and calls :mod:`.probes`; results are cached per run (see there). An *untrained
encoder* (same architecture, seed 0, never trained) is the probes' baseline: what a random
convolutional network already encodes.
"""
from __future__ import annotations

import functools
from typing import Dict, Tuple

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .. import artifacts, models, paths, training
from . import probes
from .study import LEARNABILITY, Study, load_model, split_id, weights_id

UNTRAINED = "untrained encoder"


def _runs(study: Study):
    """The runs the analyses read: no learnability control, only the first ``analysis_seeds`` seeds."""
    seeds = list(study.settings["seeds"])[:study.settings.get("analysis_seeds", len(study.settings["seeds"]))]
    return [e for e in study.entries if e.label != LEARNABILITY and e.seed in seeds]


def untrained_model(study: Study) -> torch.nn.Module:
    """The study's architecture at its seed-0 initialisation, inputs standardised as in training."""
    t = study.settings["train"]
    torch.manual_seed(0)
    net = models.build(t["arch"], 2, head=t.get("head", "linear"), **t.get("arch_params", {}))
    x = training.to_device_images(study.train_bundle.splits["train"].images, t["image_size"], "cpu")
    net.set_input_stats(*training.train_input_stats(x))
    return net.eval()


def probe_table(study: Study, force: bool = False, progress: bool = True) -> pd.DataFrame:
    """Balanced accuracy of a linear probe per (loss, seed, factor) on frozen features h."""
    size, rows = study.settings["train"]["image_size"], []
    base = probes.run_probes(untrained_model(study), UNTRAINED, "init-seed-0", study.probe_bundle, size, force,
                             study.root)
    rows += [{"loss": UNTRAINED, "seed": 0, "factor": f, "balanced_accuracy": v} for f, v in base.items()]
    for e in tqdm(_runs(study), desc="linear probes", disable=not progress):
        scores = probes.run_probes(load_model(e.path), e.path.name, weights_id(e.path), study.probe_bundle, size,
                                   force, study.root)
        rows += [{"loss": e.label, "seed": e.seed, "factor": f, "balanced_accuracy": v} for f, v in scores.items()]
    return pd.DataFrame(rows)


def counterfactual_rows(study: Study) -> pd.DataFrame:
    """The nodules that are re-rendered: the first ``n_counterfactual`` of the probe set's val split."""
    return study.probe_bundle.splits["val"].meta.iloc[:study.settings["n_counterfactual"]]


def counterfactual_table(study: Study, force: bool = False, progress: bool = True) -> pd.DataFrame:
    """Mean |ΔP(malignant)| (and the signed mean) per (loss, seed, factor) when one factor is changed."""
    rows_meta, size = counterfactual_rows(study), study.settings["train"]["image_size"]
    changes = probes.default_changes(image_size=study.settings["data"]["image_size"])
    get_images = functools.lru_cache(maxsize=1)(lambda: probes.counterfactual_images(rows_meta, changes))
    rows = []
    for e in tqdm(_runs(study), desc="counterfactuals", disable=not progress):
        res = probes.run_counterfactuals(load_model(e.path), e.path.name, weights_id(e.path), rows_meta, changes,
                                         get_images, size, force, study.root)
        rows += [{"loss": e.label, "seed": e.seed, "factor": f, "abs_delta": v["abs"], "signed_delta": v["signed"]}
                 for f, v in res.items()]
    return pd.DataFrame(rows)


def embeddings(study: Study, method: str = "", seed: int = -1, force: bool = False,
               progress: bool = True) -> Dict[str, Tuple[np.ndarray, pd.DataFrame]]:
    """{loss: (2-D coordinates [n, 2], meta)} of frozen features h of the probe val split (one seed)."""
    method = method or study.settings["embedding"]
    if method not in EMBEDDERS:
        raise ValueError(f"unknown embedding method {method!r}; valid: {', '.join(EMBEDDERS)}")
    seed = study.settings["seeds"][0] if seed == -1 else seed
    full = study.probe_bundle.splits["val"]
    split = full.subset(torch.arange(min(study.settings["n_embed"], len(full))))
    data_key = split_id(split)
    out = {}
    for e in tqdm([e for e in _runs(study) if e.seed == seed], desc=f"{method} embeddings", disable=not progress):
        key = artifacts.config_key({"run": e.path.name, "weights": weights_id(e.path), "method": method,
                                    "data": data_key})
        path = paths.inside(study.root, "nodules", "embeddings", f"{key}.npz")
        if path.exists() and not force:
            coords = artifacts.read_npz(path)["coords"]
        else:
            h = probes.features(load_model(e.path), split, study.settings["train"]["image_size"])
            with threadpool_limits(1):  # a few hundred points: threads only add overhead (much more on a busy CPU)
                coords = EMBEDDERS[method](h)
            artifacts.write_npz(path, coords=coords)
        out[e.label] = (coords, split.meta)
    return out


def _tsne(h: np.ndarray) -> np.ndarray:
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    perplexity = float(min(30, max(5, (len(h) - 1) // 4)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=0).fit_transform(
        StandardScaler().fit_transform(h)).astype(np.float32)


def _umap(h: np.ndarray) -> np.ndarray:
    import umap  # umap-learn; first call compiles with numba (tens of seconds)
    from sklearn.preprocessing import StandardScaler

    return umap.UMAP(n_components=2, random_state=0).fit_transform(StandardScaler().fit_transform(h)).astype(np.float32)


EMBEDDERS = {"tsne": _tsne, "umap": _umap}
