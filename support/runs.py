"""Read finished run folders (``runs/<key>/``) for tables, ensembles and panels.

Only folders with ``metrics.json`` are results. A folder that is unfinished is
skipped; one whose files are unreadable, truncated, foreign or of another
format version is *reported* (path and reason) and never silently mixed into
a table. Re-train such a run with ``train_one(config, force=True)`` or delete
the folder.
"""
from __future__ import annotations

import json

import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import List, Optional

import numpy as np
import pandas as pd

from . import artifacts, models, paths
from .data.halves import HALVES, val_halves


@dataclass
class Run:
    """A finished run folder, read lazily."""

    path: Path

    @cached_property
    def metrics(self) -> dict:
        m = artifacts.read_json(self.path / "metrics.json")
        if not isinstance(m, dict) or "format_version" not in m:
            raise artifacts.ArtifactError(f"{self.path / 'metrics.json'} is not a lossbench metrics file")
        if m["format_version"] != artifacts.RUN_FORMAT_VERSION:
            raise artifacts.ArtifactError(
                f"{self.path} has run format {m['format_version']}, this kit reads {artifacts.RUN_FORMAT_VERSION}; "
                "its results are left out. Re-run the sweep (runs of this format get new folders) "
                f"and delete {self.path}"
            )
        return m

    @cached_property
    def config(self) -> dict:
        return artifacts.read_json(self.path / "config.json")

    @cached_property
    def log(self) -> pd.DataFrame:
        try:
            return pd.read_csv(self.path / "log.csv")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise artifacts.ArtifactError(f"{self.path / 'log.csv'} unreadable ({exc})") from None

    @cached_property
    def predictions(self) -> dict:
        p = artifacts.read_npz(self.path / "predictions.npz")
        for split in ("val", "test"):
            for part in ("probs", "labels", "ids"):
                if f"{split}_{part}" not in p:
                    raise artifacts.ArtifactError(f"{self.path / 'predictions.npz'} lacks {split}_{part}")
        return p

    @property
    def key(self) -> str:
        return self.path.name

    def model(self, device="cpu") -> models.Classifier:
        """The run's Classifier rebuilt from ``config.json`` with ``best.pt`` loaded, on ``device``, in eval mode.

        A model-level ensemble run needs ``import support.ensembles`` first (it registers that architecture).
        """
        info = self.config
        cfg = info.get("config") or {}
        if "arch" not in cfg or "classes" not in info:
            raise artifacts.ArtifactError(f"{self.path / 'config.json'} lacks the config/classes of a lossbench run")
        net = models.build(cfg["arch"], len(info["classes"]), in_chans=1, head=cfg.get("head", "paper"),
                           dcl_channels=cfg.get("dcl_channels", 512), **(cfg.get("arch_params") or {}))
        net.load_state_dict(artifacts.load_state(self.path / "best.pt"))
        return net.to(device).eval()

    @property
    def loss(self) -> str:
        return self.metrics["loss"]

    @property
    def seed(self) -> int:
        return self.metrics["seed"]

    @property
    def label(self) -> str:
        """Display name: the loss, plus parameters that differ from defaults, plus `` · lung crop``
        when the run was trained on lung-cropped data (``load(..., lung_crop=...)``)."""
        params = self.metrics.get("loss_params") or {}
        extra = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
        label = f"{self.loss}[{extra}]" if extra else self.loss
        return label + " · lung crop" if (self.metrics.get("data") or {}).get("lung_crop") else label

    @cached_property
    def val_half(self) -> np.ndarray:
        """``int8[N_val]``: 0 = the early-stopping half, 1 = the half for post-hoc fitting.

        Read from ``predictions.npz``; runs written before it was recorded get the same halves
        recomputed from their validation labels and ids (:func:`support.data.halves.val_halves`).
        """
        p = self.predictions
        if "val_half" in p:
            return np.asarray(p["val_half"])
        return val_halves(p["val_labels"], [str(i) for i in p["val_ids"]])

    def _rows(self, split: str):
        if split in HALVES:
            return "val", self.val_half == HALVES.index(split)
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val', 'test', {' or '.join(map(repr, HALVES))}, got {split!r}")
        return split, slice(None)

    def probs(self, split: str = "test") -> np.ndarray:
        """Probabilities ``[N, K]`` of ``split``: "test", "val", or a validation half "val_stop" / "val_fit"."""
        name, rows = self._rows(split)
        return self.predictions[f"{name}_probs"][rows]

    def labels(self, split: str = "test") -> np.ndarray:
        name, rows = self._rows(split)
        return self.predictions[f"{name}_labels"][rows]

    def ids(self, split: str = "test") -> np.ndarray:
        name, rows = self._rows(split)
        return self.predictions[f"{name}_ids"][rows]

    def check(self) -> "Run":
        """Read every file once so that a broken run fails here, with its path."""
        _ = self.metrics, self.config, self.log, self.predictions
        if not isinstance(self.config, dict):
            raise artifacts.ArtifactError(f"{self.path / 'config.json'} is not a lossbench run config")
        best = self.path / "best.pt"
        if not best.exists():
            raise artifacts.ArtifactError(f"{best} is missing")
        # Mapped, not read: catches a truncated, empty or foreign checkpoint at the cost of its header.
        state = artifacts.load_state(best, mmap=True)
        if not state or not all(hasattr(v, "dtype") and hasattr(v, "shape") for v in state.values()):
            raise artifacts.ArtifactError(f"{best} is not a state dict of tensors (keys {sorted(state)[:5]}); "
                                          "it was replaced by a foreign file")
        return self


def find_runs(runs_dir=None, check: bool = True, **filters) -> List[Run]:
    """Finished runs under ``runs_dir``, optionally filtered on metrics fields.

    ``find_runs(loss="cce", arch="small_cnn")``. Broken runs are reported with
    a warning naming the path and left out; ``find_runs.problems`` holds them.
    """
    root = Path(runs_dir) if runs_dir else paths.runs_dir()
    found, problems = [], []
    if root.exists():
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "seg-"))):
            # seg-* folders are lung U-Nets (support.segmentation.find_seg_runs reads them)
            if not (d / "metrics.json").exists():
                continue  # unfinished: resumed by training, never read as a result
            run = Run(d)
            try:
                if check:
                    run.check()
                else:
                    _ = run.metrics
            except artifacts.ArtifactError as exc:
                problems.append((d, str(exc)))
                continue
            if all(_matches(run.metrics, k, v) for k, v in filters.items()):
                found.append(run)
    find_runs.problems = problems
    for d, why in problems:
        warnings.warn(f"skipping broken run {d}: {why}", stacklevel=2)
    return found


find_runs.problems = []


def _resolved_data(data: dict) -> dict:
    """A data config as training stores it in metrics.json: defaults filled in, JSON types."""
    from .data.core import resolve_params

    params = dict(data)
    name = params.pop("name")
    _, resolved = resolve_params(name, params)
    return json.loads(json.dumps({"name": name, **resolved}))


def _matches(metrics: dict, key: str, want) -> bool:
    value = metrics.get(key)
    if key == "data" and isinstance(want, dict):
        if "name" in want:
            # The same data exactly: the filter is resolved like a training config (defaults filled in),
            # so a run on other data (marker_bias, difficulty, lung_crop...) never joins the table.
            return value == _resolved_data(want)
        return all(value.get(k) == v for k, v in want.items())  # a partial filter: subset match
    if isinstance(want, (list, tuple, set)):
        return value in want
    return value == want


def runs_table(runs: List[Run], split: str = "test") -> pd.DataFrame:
    """One row per run: identity columns and every scalar metric of ``split``."""
    rows = []
    for r in runs:
        m = r.metrics
        row = {"key": r.key, "loss": r.label, "seed": r.seed, "arch": m["arch"], "data_source": m["data_source"],
               "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"], "train_seconds": m["train_seconds"]}
        row.update({k: v for k, v in (m.get(split) or {}).items() if isinstance(v, (int, float)) or v is None})
        rows.append(row)
    return pd.DataFrame(rows)


def single_source(runs: List[Run]) -> str:
    """The data source shared by ``runs`` (for figure titles); an error if they differ."""
    sources = sorted({r.metrics["data_source"] for r in runs})
    if len(sources) > 1:
        raise ValueError(f"runs come from different data sources {sources}; filter them first")
    return sources[0] if sources else ""
