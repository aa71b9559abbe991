"""The data contract shared by every source (see ../shared/design.md).

``load(name, **params)`` returns a :class:`DataBundle` whose ``.splits`` maps
``"train"``, ``"val"`` and ``"test"`` to a :class:`Split`:

* ``images``        uint8 tensor [N, H, W] (grayscale, 0..255)
* ``labels``        int64 tensor [N] (index into ``bundle.classes``)
* ``ids``           list of str (file path, or a generated id)
* ``lung_masks``    bool tensor [N, H, W] or None where unknown
* ``lesion_masks``  bool tensor [N, H, W] or None where unknown
* ``meta``          pandas DataFrame (one row per image) or None
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from .halves import val_halves

SPLITS = ("train", "val", "test")
CXR_CLASSES = ("normal", "bacterial", "viral")


@dataclass
class Split:
    images: torch.Tensor
    labels: torch.Tensor
    ids: List[str]
    lung_masks: Optional[torch.Tensor] = None
    lesion_masks: Optional[torch.Tensor] = None
    meta: Optional[pd.DataFrame] = None

    def __post_init__(self):
        n = len(self.labels)
        if self.images.dtype != torch.uint8 or self.images.ndim != 3:
            raise ValueError(f"images must be uint8 [N,H,W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise ValueError(f"labels must be int64 [N], got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.images) != n or len(self.ids) != n:
            raise ValueError(f"images ({len(self.images)}), labels ({n}) and ids ({len(self.ids)}) differ in length")
        for name in ("lung_masks", "lesion_masks"):
            mask = getattr(self, name)
            if mask is not None and (mask.dtype != torch.bool or mask.shape != self.images.shape):
                raise ValueError(f"{name} must be bool {tuple(self.images.shape)}, got {mask.dtype} {tuple(mask.shape)}")
        if self.meta is not None and len(self.meta) != n:
            raise ValueError(f"meta has {len(self.meta)} rows for {n} images")

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels.numpy(), minlength=num_classes)

    def subset(self, index) -> "Split":
        """A new Split with the rows selected by ``index`` (array of ints or bools)."""
        idx = torch.as_tensor(np.asarray(index))
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        pick = lambda t: None if t is None else t[idx]
        return Split(
            images=self.images[idx],
            labels=self.labels[idx],
            ids=[self.ids[i] for i in idx.tolist()],
            lung_masks=pick(self.lung_masks),
            lesion_masks=pick(self.lesion_masks),
            meta=None if self.meta is None else self.meta.iloc[idx.numpy()].reset_index(drop=True),
        )


@dataclass
class DataBundle:
    """What :func:`support.data.load` returns."""

    classes: Tuple[str, ...]
    splits: Dict[str, Split]
    source: str = ""                 # human-readable; every figure title names it
    name: str = ""                   # registry name of the source
    params: dict = field(default_factory=dict)  # resolved parameters (the cache key's input)

    def __post_init__(self):
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"data bundle lacks split(s) {missing}; every source must give {SPLITS}")
        k = len(self.classes)
        for sname, split in self.splits.items():
            if len(split) and (int(split.labels.min()) < 0 or int(split.labels.max()) >= k):
                raise ValueError(f"{sname} labels fall outside 0..{k - 1} for classes {self.classes}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def val_half(self, seed: int = 0) -> np.ndarray:
        """``int8[N_val]``: 0 = early-stopping half, 1 = post-hoc fitting half (:mod:`support.data.halves`)."""
        val = self.splits["val"]
        return val_halves(val.labels.numpy(), val.ids, seed=seed)

    def counts(self) -> pd.DataFrame:
        """Images per split (rows) and class (columns), with totals."""
        table = pd.DataFrame(
            {s: self.splits[s].class_counts(self.num_classes) for s in SPLITS}, index=list(self.classes)
        ).T
        table["total"] = table.sum(axis=1)
        return table

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.splits[s])}" for s in SPLITS)
        shape = tuple(self.splits["train"].images.shape[1:])
        return f"DataBundle({self.source or self.name}: {sizes}, image {shape}, classes={self.classes})"
