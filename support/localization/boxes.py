"""Lesion boxes from a local CSV (RSNA-pneumonia style) as lesion masks, for real data.

Format: one row per box, columns ``patientId,x,y,width,height`` (pixels of the
original image, top-left corner; the RSNA Pneumonia Detection Challenge's
``stage_2_train_labels.csv``; its ``Target`` column, if present, is ignored).
A patient listed with empty coordinates has no box. ``patientId`` is matched
against each image id's file stem (``/data/abc.png`` -> ``abc``) or the whole id.
Boxes are scaled from ``source_size`` (the original side, 1024 for RSNA) to the
split's image size. Images whose id is not in the CSV get an empty mask and
are counted in the note (they are then skipped by the lesion metrics).
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import pandas as pd
import torch

from .cams import LocalizationError

COLUMNS = ("patientId", "x", "y", "width", "height")


def read_boxes(path) -> pd.DataFrame:
    """The rows of ``path`` (a patient without a box keeps one row with NaN coordinates); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise LocalizationError(f"box CSV {path} does not exist; give a local RSNA-style CSV "
                                f"with columns {','.join(COLUMNS)}")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LocalizationError(f"box CSV {path} is not a readable CSV ({exc})") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise LocalizationError(f"box CSV {path} lacks column(s) {missing}; expected {','.join(COLUMNS)} "
                                f"(found {list(table.columns)})")
    coords = table[list(COLUMNS[1:])].apply(pd.to_numeric, errors="coerce")
    has = coords.notna().all(axis=1)
    bad = has & ((coords < 0).any(axis=1) | (coords["width"] <= 0) | (coords["height"] <= 0))
    odd = coords.notna().any(axis=1) & ~has
    if bad.any() or odd.any():
        first = table[bad | odd].iloc[0].to_dict()
        raise LocalizationError(f"box CSV {path}: {int((bad | odd).sum())} row(s) with negative, empty, partial or "
                                f"non-numeric boxes, e.g. {first}")
    return pd.DataFrame({"patientId": table["patientId"].astype(str), **{c: coords[c] for c in COLUMNS[1:]}})


def _key(image_id, listed) -> str:
    return str(image_id) if str(image_id) in listed else Path(str(image_id)).stem


def box_masks(ids, boxes: pd.DataFrame, image_size: Tuple[int, int], source_size: float = 1024.0):
    """``(masks bool [N, H, W], listed bool [N])``: each image's boxes scaled to ``image_size``; listed = in the CSV."""
    H, W = image_size
    sy, sx = H / float(source_size), W / float(source_size)
    listed_ids = set(boxes["patientId"])
    rows = {k: g for k, g in boxes.dropna().groupby("patientId")}
    masks = np.zeros((len(ids), H, W), bool)
    listed = np.zeros(len(ids), bool)
    for i, image_id in enumerate(ids):
        key = _key(image_id, listed_ids)
        listed[i] = key in listed_ids
        for b in (rows[key].itertuples() if key in rows else ()):
            r0, c0 = int(np.floor(b.y * sy)), int(np.floor(b.x * sx))
            r1, c1 = int(np.ceil((b.y + b.height) * sy)), int(np.ceil((b.x + b.width) * sx))
            masks[i, max(r0, 0):min(r1, H), max(c0, 0):min(c1, W)] = True
    return masks, listed


def with_box_masks(split, csv_path, source_size: float = 1024.0):
    """``(split, note)``: a copy of ``split`` whose ``lesion_masks`` are the CSV's boxes."""
    from ..data.containers import Split

    boxes = read_boxes(csv_path)
    masks, listed = box_masks(split.ids, boxes, tuple(split.images.shape[-2:]), source_size)
    if len(split) and not listed.any():
        raise LocalizationError(f"no image id of this split matches a patientId of {csv_path} "
                                f"(e.g. id {split.ids[0]!r} vs patientId {boxes['patientId'].iloc[0]!r}); "
                                "name the image files <patientId>.png")
    note = (f"{csv_path}: {int(masks.any(axis=(1, 2)).sum())} of {len(split)} images have a box "
            f"({int((~listed).sum())} not listed in the CSV: treated as no box)")
    new = Split(images=split.images, labels=split.labels, ids=split.ids, lung_masks=split.lung_masks,
                lesion_masks=torch.from_numpy(masks), meta=split.meta)
    return new, note
