"""Kermany pediatric chest X-rays (normal / bacterial / viral pneumonia) from a local folder.

Nothing is downloaded. Get the data by hand and pass the unzipped folder:

* Mendeley Data v2 (doi:10.17632/rscbjbr9sj.2, ``ChestXRay2017.zip``):
  ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}/``.
* The Kaggle copy ("chest-xray-pneumonia"): the same folders plus a 16-image
  ``val/``, often nested as ``chest_xray/chest_xray/`` next to ``__MACOSX/``.

``root`` may be that folder or any folder above it: the shallowest folder
holding ``train/`` and ``test/``, each with ``NORMAL/`` and ``PNEUMONIA/``
(any letter case), is used and printed. Hidden files and ``__MACOSX/`` are ignored.

Labels: ``NORMAL/`` -> normal; in ``PNEUMONIA/`` the file name says
``bacteria`` -> bacterial or ``virus`` -> viral; other names are skipped with
the unreadable files in one warning (an error with ``strict=True``).

Splits: test = ``test/``. Kaggle's ``val/`` (16 images taken from Mendeley's
train folder) is merged back into train, which restores Mendeley's train set.
Validation is then carved from train:

* ``val_split="first10"`` (the paper's): the first ``val_fraction`` (default
  10 %) of each class's train files sorted by file name, ``int(fraction * n)``
  of them, exactly as Keras ``validation_split`` does: 134 + 253 + 134 = 521.
  The choice is made on file names, before decoding.
* ``val_split="stratified"``: a seeded stratified random ``val_fraction``
  (sklearn ``train_test_split``).

One child can have several films (``personNNN_`` in the file name). With
``group_patients=True`` (default) a patient with any film in val has all their
train films moved to val too, so no patient is on both sides (val grows by the
few films that follows; the published 521 can become a few more). The two
validation halves keep patients together as well (:mod:`support.data.halves`).
``group_patients=False`` is the paper's carve-out, exactly.

The counts per split and class are printed, and a :class:`KermanyCountWarning`
says where they differ from the published ones (train N1349/B2538/V1345, test N234/B242/V148).
"""
from __future__ import annotations

import warnings
from collections import deque
from pathlib import Path
from typing import Dict

import numpy as np
import pandas as pd

from .halves import patient_groups
from .containers import CXR_CLASSES, DataBundle
from .core import register_source
from .folders import assemble, carve, check_options, check_root
from .images import files_fingerprint, is_hidden, list_images
from .. import logs

log = logs.get("data")

#: Published images per class (normal, bacterial, viral): Mendeley v2 train and test folders.
PUBLISHED = {"train": (1349, 2538, 1345), "test": (234, 242, 148)}
VAL_SPLITS = ("first10", "stratified")

_HINT = ("download the Kermany data by hand (Mendeley doi:10.17632/rscbjbr9sj.2 'ChestXRay2017.zip', "
         "or Kaggle 'chest-xray-pneumonia'), unzip it, and pass root= the folder holding train/ and test/ "
         "(or any folder above it)")


class KermanyCountWarning(UserWarning):
    """The local copy's class counts differ from the published Kermany v2 counts."""


def _subdirs(folder: Path) -> Dict[str, Path]:
    """Non-hidden sub-folders by lower-case name."""
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir() and not is_hidden(p.name)}


def _is_data_dir(folder: Path) -> bool:
    sub = _subdirs(folder)
    return all(s in sub and {"normal", "pneumonia"} <= set(_subdirs(sub[s])) for s in ("train", "test"))


def find_data_dir(root: Path, max_depth: int = 4) -> Path:
    """The shallowest folder under ``root`` with train/ and test/ x NORMAL/ and PNEUMONIA/."""
    queue = deque([(root, 0)])
    while queue:
        folder, depth = queue.popleft()
        if _is_data_dir(folder):
            return folder
        if depth < max_depth:
            queue.extend((p, depth + 1) for p in _subdirs(folder).values())
    raise FileNotFoundError(
        f"kermany: no folder under {root} (searched {max_depth} levels) holds train/ and test/, each with "
        f"NORMAL/ and PNEUMONIA/; {_HINT}"
    )


def _label(class_folder: str, file_name: str):
    """Class index from the folder (normal) or the file name (bacteria / virus); None if unknown."""
    if class_folder == "normal":
        return CXR_CLASSES.index("normal")
    name = file_name.lower()
    if "bacteria" in name:
        return CXR_CLASSES.index("bacterial")
    if "virus" in name:
        return CXR_CLASSES.index("viral")
    return None


def _fingerprint(root, **_):
    root = check_root(root, "kermany", _HINT)
    return files_fingerprint(list_images(root), root)


def _warn_counts(bundle: DataBundle) -> None:
    """One warning listing every (split, class) count that differs from the published one."""
    counts = bundle.counts()
    have = {"train": counts.loc["train"] + counts.loc["val"], "test": counts.loc["test"]}
    diffs = [f"{split} {cls}: {int(have[split][cls])} (published {n})"
             for split, published in PUBLISHED.items() for cls, n in zip(CXR_CLASSES, published)
             if int(have[split][cls]) != n]
    if diffs:
        warnings.warn(f"Kermany counts differ from the published v2 counts (train includes val): "
                      f"{'; '.join(diffs)}. A partial or modified copy: results are not comparable "
                      "with published numbers", KermanyCountWarning, stacklevel=3)


def _patients_together(table: pd.DataFrame) -> None:
    """Move every train film of a patient who has a film in val to val (patients from ``personNNN_``)."""
    groups = patient_groups(table["name"])
    in_val = set(groups[(table["split"] == "val").to_numpy()])
    move = (table["split"] == "train").to_numpy() & np.isin(groups, list(in_val))
    table.loc[move, "split"] = "val"


@register_source("kermany", version=2, fingerprint=_fingerprint)
def build(root: str, image_size: int = 256, val_split: str = "first10", val_fraction: float = 0.1,
          seed: int = 0, strict: bool = False, group_patients: bool = True) -> DataBundle:
    """The Kermany pediatric CXR set from ``root`` (see module doc); classes normal/bacterial/viral."""
    root_path = check_root(root, "kermany", _HINT)
    check_options(image_size, val_fraction=val_fraction)
    if val_split not in VAL_SPLITS:
        raise ValueError(f"kermany: val_split={val_split!r} is unknown; use one of {', '.join(VAL_SPLITS)}")
    data = find_data_dir(root_path)
    splits = _subdirs(data)
    rows, skipped = [], []
    for folder_name, split in (("train", "train"), ("val", "train"), ("test", "test")):
        if folder_name not in splits:
            continue
        class_dirs = _subdirs(splits[folder_name])
        for cls in ("normal", "pneumonia"):
            if cls not in class_dirs:
                continue  # only Kaggle's val/ may lack one (checked by find_data_dir)
            files = list_images(class_dirs[cls])
            if not files and folder_name != "val":
                raise ValueError(f"kermany: class folder {class_dirs[cls]} holds no images; the copy is "
                                 f"incomplete. {_HINT}")
            for f in files:
                label = _label(cls, f.name)
                if label is None:
                    skipped.append(f"{f}: file name in PNEUMONIA/ has neither 'bacteria' nor 'virus'")
                else:
                    rows.append((split, label, str(f), f.relative_to(root_path).as_posix(), f.name, folder_name))
    table = pd.DataFrame(rows, columns=["split", "label", "path", "id", "name", "folder"])
    if val_split == "first10":
        for label in range(len(CXR_CLASSES)):
            train = table[(table["split"] == "train") & (table["label"] == label)]
            first = train.sort_values(["name", "id"]).index[: int(val_fraction * len(train))]
            table.loc[first, "split"] = "val"
    else:
        carve(table, val_fraction, seed, "val")
    if group_patients:
        _patients_together(table)
    bundle = DataBundle(classes=CXR_CLASSES, source=f"Kermany pediatric CXR (local: {root})",
                        splits=assemble(table, CXR_CLASSES, image_size, strict, str(data), skipped))
    merged = (f"; Kaggle val/ ({int((table['folder'] == 'val').sum())} images) merged into train"
              if "val" in splits else "")
    log.info(f"Kermany from {data}{merged}; val = {val_split} {val_fraction:g} of train\n"
          f"{bundle.counts().to_string()}")
    _warn_counts(bundle)
    return bundle
