"""The data cache's file format: one ``.npz`` per bundle, uint8 images, bit-packed masks, written atomically."""
from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import artifacts
from .containers import SPLITS, DataBundle, Split


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    return np.packbits(mask.numpy().astype(bool), axis=-1)


def unpack_mask(packed: np.ndarray, width: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed, axis=-1, count=width).astype(bool))


def write_bundle(path: Path, bundle: DataBundle) -> None:
    """Write ``bundle`` to the cache file ``path`` atomically (uint8 images, bit-packed masks)."""
    arrays = {
        "classes": np.array(bundle.classes),
        "header": np.array(json.dumps({"source": bundle.source, "name": bundle.name,
                                       "params": artifacts._jsonable(bundle.params)})),
    }
    for s in SPLITS:
        split = bundle.splits[s]
        arrays[f"{s}_images"] = split.images.numpy()
        arrays[f"{s}_labels"] = split.labels.numpy()
        arrays[f"{s}_ids"] = np.array(split.ids, dtype=str)
        for mask in ("lung_masks", "lesion_masks"):
            if getattr(split, mask) is not None:
                arrays[f"{s}_{mask}"] = pack_mask(getattr(split, mask))
        if split.meta is not None:
            arrays[f"{s}_meta"] = np.array(split.meta.to_json(orient="split"))
    artifacts.write_npz(path, **arrays)


def read_bundle(path: Path, name: str, resolved: dict) -> DataBundle:
    """The bundle a :func:`write_bundle` file holds, named ``name`` with parameters ``resolved``."""
    z = artifacts.read_npz(path)
    header = json.loads(str(z["header"]))
    splits = {}
    for s in SPLITS:
        images = torch.from_numpy(z[f"{s}_images"])
        width = images.shape[-1]
        masks = {m: unpack_mask(z[f"{s}_{m}"], width) if f"{s}_{m}" in z else None
                 for m in ("lung_masks", "lesion_masks")}
        meta = None
        if f"{s}_meta" in z:
            meta = pd.read_json(StringIO(str(z[f"{s}_meta"])), orient="split")
        splits[s] = Split(images=images, labels=torch.from_numpy(z[f"{s}_labels"]).long(),
                          ids=z[f"{s}_ids"].tolist(), meta=meta, **masks)
    return DataBundle(classes=tuple(z["classes"].tolist()), splits=splits, source=header["source"],
                      name=name, params=resolved)
