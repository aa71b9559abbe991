"""Read finished U-Net runs, pick the top-k by validation Dice, AND their masks, tabulate with CIs.

The table (:func:`evaluation_table`) has one row per loss, one for the AND of the top-k (the
paper's final lung mask) and two trivial baselines that any useful U-Net must beat clearly:
``all foreground`` (the whole image as the mask) and ``average lung`` (the pixel-wise majority of
the training masks: a fixed lung silhouette that ignores the image).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import List, Sequence

import pandas as pd
import torch

from .. import artifacts, paths
from ..tables import interval_cells
from .config import RUN_PREFIX, SegConfig, SegNet, build_model
from .metrics import METRICS, bootstrap_summary, per_image_metrics, unpack_masks


@dataclass
class SegRun:
    """A finished ``runs/seg-<key>/`` folder, read lazily."""

    path: Path

    @cached_property
    def metrics(self) -> dict:
        m = artifacts.read_json(self.path / "metrics.json")
        if not isinstance(m, dict) or m.get("task") != "segmentation":
            raise artifacts.ArtifactError(f"{self.path / 'metrics.json'} is not a lossbench segmentation run")
        if m.get("format_version") != artifacts.RUN_FORMAT_VERSION:
            raise artifacts.ArtifactError(f"{self.path} has run format {m.get('format_version')}, this kit reads "
                                          f"{artifacts.RUN_FORMAT_VERSION}; retrain it with force=True")
        return m

    @cached_property
    def config(self) -> SegConfig:
        return SegConfig(**artifacts.read_json(self.path / "config.json")["config"])

    @cached_property
    def log(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "log.csv")

    @cached_property
    def _masks(self) -> dict:
        z = artifacts.read_npz(self.path / "masks.npz")
        for part in ("val_pred", "val_true", "val_ids", "test_pred", "test_true", "test_ids", "prior"):
            if part not in z:
                raise artifacts.ArtifactError(f"{self.path / 'masks.npz'} lacks {part}; retrain with force=True")
        return z

    key = property(lambda self: self.path.name[len(RUN_PREFIX):])
    loss = property(lambda self: self.metrics["loss"])
    image_size = property(lambda self: int(self.metrics["image_size"]))
    val_dice = property(lambda self: float(self.metrics["val"]["dice"]))

    def masks(self, split: str = "test") -> torch.Tensor:
        """Predicted masks bool [N, S, S] of ``split`` (val or test), from the best checkpoint."""
        return unpack_masks(self._masks[f"{split}_pred"], self.image_size)

    def truth(self, split: str = "test") -> torch.Tensor:
        return unpack_masks(self._masks[f"{split}_true"], self.image_size)

    def ids(self, split: str = "test") -> List[str]:
        return self._masks[f"{split}_ids"].tolist()

    def prior(self) -> torch.Tensor:
        """The 'average lung' baseline mask bool [S, S]."""
        return unpack_masks(self._masks["prior"], self.image_size)[0]

    def images(self, split: str = "test") -> torch.Tensor:
        """The run's ``split`` images uint8 [N, S, S] at its input size (from the data cache)."""
        from ..data import load
        from ..training import to_device_images

        bundle = load(**self.config.data, verbose=False)
        if bundle.splits[split].ids != self.ids(split):
            raise artifacts.ArtifactError(f"{self.path}: the data of {self.config.data} changed since training; "
                                          "retrain with force=True")
        return to_device_images(bundle.splits[split].images, self.image_size, torch.device("cpu"))

    def model(self, device="cpu") -> SegNet:
        """The U-Net with its best weights, in eval mode."""
        net = build_model(self.config)
        net.load_state_dict(artifacts.load_state(self.path / "best.pt", map_location="cpu"))
        return net.to(device).eval()

    def check(self) -> "SegRun":
        _ = self.metrics, self.config, self._masks
        if not (self.path / "best.pt").exists():
            raise artifacts.ArtifactError(f"{self.path / 'best.pt'} is missing")
        return self


def find_seg_runs(runs_dir=None, **filters) -> List[SegRun]:
    """Finished ``seg-*`` runs, optionally filtered on metrics fields (``loss=``, ``image_size=``,
    ``data={...}`` matches a subset of the data parameters). Broken runs are warned about and left out."""
    root = Path(runs_dir) if runs_dir else paths.runs_dir()
    found = []
    for d in sorted(root.glob(RUN_PREFIX + "*")) if root.exists() else []:
        if not (d / "metrics.json").exists():
            continue  # unfinished: resumed by training, never read as a result
        try:
            run = SegRun(d).check()
        except (artifacts.ArtifactError, TypeError, KeyError) as exc:
            warnings.warn(f"skipping broken segmentation run {d}: {exc}", stacklevel=2)
            continue
        m = run.metrics
        if all((all(m.get(k, {}).get(kk) == vv for kk, vv in v.items()) if isinstance(v, dict) else m.get(k) == v)
               for k, v in filters.items()):
            found.append(run)
    return found


def top_k(runs: Sequence[SegRun], k: int = 3) -> List[SegRun]:
    """The ``k`` runs with the highest validation Dice (ties: loss name), best first."""
    if not runs:
        raise ValueError("no finished segmentation runs to choose from; train them with train_losses(profile)")
    if len(runs) < k:
        warnings.warn(f"only {len(runs)} segmentation run(s) for a top-{k} ensemble; using all of them", stacklevel=2)
    return sorted(runs, key=lambda r: (-r.val_dice, r.loss))[:k]


def and_masks(runs: Sequence[SegRun], split: str = "test") -> torch.Tensor:
    """Bitwise AND of the runs' predicted masks on ``split`` (they must share images and size)."""
    first = runs[0]
    for r in runs[1:]:
        if r.ids(split) != first.ids(split) or r.image_size != first.image_size:
            raise ValueError(f"runs {first.key} and {r.key} were evaluated on different {split} images or sizes; "
                             "an AND ensemble needs runs trained on the same data and image_size")
    return torch.stack([r.masks(split) for r in runs]).all(0)


def _row(name: str, kind: str, pred, truth, n_boot: int, seed: int, **extra) -> dict:
    summary = bootstrap_summary(per_image_metrics(pred, truth), n_boot=n_boot, seed=seed)
    row = {"model": name, "kind": kind, **extra}
    for m in METRICS:
        row[m], row[f"{m}_lo"], row[f"{m}_hi"] = summary[m]
    return row


def evaluation_table(runs: Sequence[SegRun], split: str = "test", k: int = 3, n_boot: int = 1000,
                     seed: int = 0) -> pd.DataFrame:
    """Per-loss rows, the AND of the top-``k`` and two baselines: mean and 95 % bootstrap CI of each metric."""
    chosen = top_k(runs, k)
    truth = runs[0].truth(split)
    rows = [_row(r.loss, "single", r.masks(split), truth, n_boot, seed, val_dice=r.val_dice,
                 in_ensemble=r in chosen, best_epoch=r.metrics["best_epoch"], epochs_run=r.metrics["epochs_run"])
            for r in runs]
    rows.sort(key=lambda row: -row["val_dice"])
    label = "AND of top-%d (%s)" % (len(chosen), ", ".join(r.loss for r in chosen))
    rows.append(_row(label, "ensemble", and_masks(chosen, split), truth, n_boot, seed,
                     val_dice=float(per_image_metrics(and_masks(chosen, "val"), chosen[0].truth("val"))["dice"].mean())))
    rows.append(_row("all foreground (trivial)", "baseline", torch.ones_like(truth), truth, n_boot, seed))
    rows.append(_row("average lung (trivial)", "baseline", runs[0].prior().expand_as(truth).clone(), truth,
                     n_boot, seed))
    table = pd.DataFrame(rows)
    table.attrs.update(split=split, n_images=len(truth), k=len(chosen))
    return table


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """``0.912 [0.901, 0.922]`` strings per metric, for Markdown and the notebook."""
    out = table[["model", "kind"]].copy()
    out["val dice"] = table["val_dice"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    for m in METRICS:
        out[m.replace("_", " ")] = interval_cells(table[m], table[f"{m}_lo"], table[f"{m}_hi"])
    return out


def per_image_table(runs: Sequence[SegRun], split: str = "test", k: int = 3) -> pd.DataFrame:
    """Per-image metrics of the AND of the top-``k`` runs, with ids, worst Dice first."""
    chosen = top_k(runs, k)
    df = per_image_metrics(and_masks(chosen, split), chosen[0].truth(split))
    df.insert(0, "id", chosen[0].ids(split))
    df.insert(1, "index", range(len(df)))
    return df.sort_values("dice", kind="stable").reset_index(drop=True)
