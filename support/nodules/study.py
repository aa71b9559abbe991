"""The nodule study's runs and test-set measurements: configs, training, predictions per test preset,
the reliance score and the oracle (the tables with intervals: :mod:`.comparison`).

Every run is a normal run folder trained by :func:`support.training.train_many` (CE end to end; the
embedding losses in two stages, see ``TrainConfig.mode``). Test presets are other distributions of
the same generator (:data:`support.data.nodules.STUDY_TESTS`); predictions on them are cached under
``runs/nodules/predictions/`` keyed by the run, its weights and the test data's parameters.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from .. import artifacts, paths, profiles, training
from ..data import load as load_data
from ..data import nodules as nd
from ..runs import Run

#: Test presets with the ρ = P(size matches the label) they were drawn with (the ρ figure's x axis).
RHO_PRESETS = {"test_iid": 0.95, "test_decorrelated": 0.5, "test_conflict": 0.0}
ORACLE = "oracle (true factors)"
LEARNABILITY = "cce trained at rho 0.5"


def variant_label(variant: dict) -> str:
    """``{"loss": "triplet", "mode": "joint", "metric_weight": 0.1}`` -> ``"cce+0.1*triplet"``."""
    mode = variant.get("mode", "end_to_end")
    if mode == "joint":
        return f"cce+{variant.get('metric_weight', 1.0):g}*{variant['loss']}"
    return variant["loss"]


@dataclass
class Entry:
    """One run of the study: which loss variant, seed and config."""

    label: str
    seed: int
    config: training.TrainConfig
    path: Optional[Path] = None

    @property
    def run(self) -> Run:
        return Run(self.path).check()


@dataclass
class Study:
    """One profile's nodule study (settings from ``profiles[profile]["nodules"]``, overridable)."""

    profile: str = "quick"
    runs_dir: Optional[Path] = None
    overrides: dict = field(default_factory=dict)
    tests: tuple = nd.STUDY_TESTS  # the test presets predicted on

    def __post_init__(self):
        settings = profiles.get(self.profile).get("nodules")
        if settings is None:
            raise ValueError(f"profile {self.profile!r} has no 'nodules' settings; add them in support/profiles.py")
        unknown = set(self.overrides) - set(settings)
        if unknown:
            raise ValueError(f"unknown nodule study setting {sorted(unknown)[0]!r}; valid: {', '.join(settings)}")
        self.settings = {**settings, **self.overrides}
        self.root = Path(self.runs_dir) if self.runs_dir else paths.runs_dir()

    # ------------------------------------------------------------------ runs
    @property
    def train_preset(self) -> str:
        """The training distribution: ``train`` (ρ 0.95) unless the settings name another (``train_redundant``)."""
        return self.settings.get("train_preset", "train")

    def data_params(self, preset: str = "") -> dict:
        """``support.data.load`` parameters of ``preset`` (default: the training preset) at the study's difficulty."""
        return {"name": "nodules", "preset": preset or self.train_preset, **self.settings["data"]}

    @cached_property
    def entries(self) -> List[Entry]:
        """The study's runs (loss variants x seeds), plus the learnability control if enabled."""
        out = []
        for seed in self.settings["seeds"]:
            for v in self.settings["variants"]:
                cfg = training.TrainConfig(data=self.data_params(), **self.settings["train"], **v, seed=int(seed))
                out.append(Entry(variant_label(v), int(seed), cfg))
        if self.settings.get("learnability_check"):  # notes 3.7: CE at rho 0.5 should learn margin everywhere
            cfg = training.TrainConfig(data=self.data_params("test_decorrelated"), **self.settings["train"],
                                       loss="cce", seed=int(self.settings["seeds"][0]))
            out.append(Entry(LEARNABILITY, cfg.seed, cfg))
        for e in out:
            e.path = training.run_dir_for(e.config, self.root)
        return out

    @property
    def labels(self) -> List[str]:
        return list(dict.fromkeys(e.label for e in self.entries if e.label != LEARNABILITY))

    def train(self, force: bool = False, progress: bool = True) -> List[Path]:
        """Train every run that is not finished yet (same-data runs of one seed in lockstep)."""
        return training.train_many([e.config for e in self.entries], runs_dir=self.root, force=force,
                                   progress=progress)

    # ------------------------------------------------------------------ data
    @cached_property
    def test_sets(self) -> Dict[str, object]:
        """{preset: test Split} for every study test preset (the generator's cache makes this cheap)."""
        d = dict(self.settings["data"])
        bundles = nd.load_study(seed=d.pop("seed"), n_train=d.pop("n_train"), n_val=d.pop("n_val"),
                                n_test=d.pop("n_test"), train=self.train_preset, tests=self.tests, verbose=False,
                                **d)
        return {name: b.splits["test"] for name, b in bundles.items() if name != self.train_preset}

    @cached_property
    def train_bundle(self):
        return load_data(**self.data_params(), verbose=False)

    @cached_property
    def probe_bundle(self):
        """Probe data: train/val splits of the ρ = 0.5 preset, so size and margin are not confounded
        (notes 3.6). These are neither training nor test images of any run."""
        d = {**self.settings["data"], "n_train": self.settings["n_probe"], "n_val": self.settings["n_probe"] // 2,
             "n_test": 0}
        return load_data(name="nodules", preset="test_decorrelated", **d, verbose=False)

    # ------------------------------------------------------------------ predictions
    def predictions(self, force: bool = False) -> pd.DataFrame:
        """One row per (run, preset): label, seed, preset, y, probs (P(malignant)), pred (cached)."""
        rows = []
        for e in self.entries:
            model = None
            for preset, split in self.test_sets.items():
                key = artifacts.config_key({"run": e.path.name, "weights": weights_id(e.path),
                                            "data": split_id(split), "preset": preset})
                path = paths.inside(self.root, "nodules", "predictions", f"{key}.npz")
                if path.exists() and not force:
                    p = artifacts.read_npz(path)["probs"]
                else:
                    if model is None:
                        model = load_model(e.path)
                    images = training.to_device_images(split.images, e.config.image_size, "cpu")
                    p = training.predict_probs(model, images)[:, 1].numpy()  # P(malignant)
                    artifacts.write_npz(path, probs=p)
                rows.append({"label": e.label, "seed": e.seed, "preset": preset, "y": split.labels.numpy(),
                             "probs": p})
        return pd.DataFrame(rows)


def weights_id(run_dir: Path) -> str:
    """Short hash of a run's best.pt: caches keyed by it never serve results of replaced weights."""
    return hashlib.sha256((Path(run_dir) / "best.pt").read_bytes()).hexdigest()[:16]


def split_id(split) -> str:
    """Short hash of a split's images and labels: caches keyed by it follow an edited preset or spec."""
    h = hashlib.sha256(split.images.numpy().tobytes())
    h.update(split.labels.numpy().tobytes())
    return h.hexdigest()[:16]


def load_model(run_dir: Path):
    """A finished run's classifier in eval mode (two-stage runs: the linear layer on frozen features)."""
    return Run(Path(run_dir)).model()


def reliance(preds: pd.DataFrame, test_sets: dict, preset: str = "test_conflict") -> pd.DataFrame:
    """Share of ``preset`` predictions that follow margin vs size, per run (they sum to 1 at ρ = 0)."""
    meta = test_sets[preset].meta
    margin = (meta["margin"] == "spiculated").to_numpy().astype(int)
    size = (meta["size"] == "large").to_numpy().astype(int)
    rows = []
    for _, r in preds[preds["preset"] == preset].iterrows():
        pred = (r["probs"] >= 0.5).astype(int)
        rows.append({"loss": r["label"], "seed": r["seed"], "follows_margin": float((pred == margin).mean()),
                     "follows_size": float((pred == size).mean())})
    return pd.DataFrame(rows)


def oracle_predictions(train_split, test_sets: dict) -> pd.DataFrame:
    """Notes 3.7: a logistic regression on the TRUE factors, fitted on the training split, scored on every
    test preset: what a model that perfectly sees every factor achieves under the training distribution."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(factor_matrix(train_split.meta), train_split.labels.numpy())
    return pd.DataFrame([{"label": ORACLE, "seed": 0, "preset": name, "y": s.labels.numpy(),
                          "probs": clf.predict_proba(factor_matrix(s.meta))[:, 1]} for name, s in test_sets.items()])


def factor_matrix(meta: pd.DataFrame) -> np.ndarray:
    """The generative factors as numbers: one indicator per categorical level, nuisances as they are."""
    cols = [(meta[f] == lvl).to_numpy(float) for f, levels in nd.LEVELS.items() for lvl in levels]
    cols += [meta[f].to_numpy(float) for f in ("x", "y", "background", "n_vessels", "r0")]
    return np.stack(cols, 1)
