"""Generic local sources ``imagefolder`` and ``csv``, and the helpers every folder source shares.

``imagefolder``: ``root/<class>/<files>`` (files found recursively), or
``root/{train,val,test}/<class>/<files>``. Class indices follow torchvision's
``ImageFolder`` (folder names sorted as strings: "10" before "9"), so a model
trained here agrees with a torchvision pipeline on the same folder; ``classes="b,a"``
sets another order. ``csv`` orders its labels the same way.
``csv``: a CSV with columns ``path,label`` and an optional ``split`` column
(``train``/``val``/``test``); relative paths are relative to the CSV's folder.

Splitting rules (both sources): splits given by folders or by the ``split``
column are kept. Missing ones are carved out of train, stratified by class and
seeded (sklearn ``train_test_split``): test first (``test_fraction`` of the
train images), then val (``val_fraction`` of the same train images, i.e.
``val_fraction / (1 - test_fraction)`` of what is left after test).
Images of one patient can land in different splits: these sources know nothing
about patients.

Ids are the file paths relative to ``root`` (or to the CSV's folder), POSIX style.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pandas as pd
import torch

from .containers import SPLITS, DataBundle, Split
from .core import register_source
from .images import decode_many, files_fingerprint, is_hidden, list_images, report_skipped
from .. import logs

log = logs.get("data")


# ----------------------------------------------------------------------------- shared helpers
def check_root(root, what: str, hint: str) -> Path:
    """``root`` as an existing, non-empty folder, or an error naming it and the fix (``hint``)."""
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise ValueError(f"{what}: root must be a folder path, got {root!r}; {hint}")
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what}: root {path} does not exist; {hint}")
    if not path.is_dir():
        raise NotADirectoryError(f"{what}: root {path} is a file, not a folder; {hint}")
    if not any(not is_hidden(p.name) for p in path.iterdir()):
        raise ValueError(f"{what}: root {path} is empty; {hint}")
    return path


def check_options(image_size: int, **fractions: float) -> None:
    """Reject a non-positive ``image_size`` and fractions outside [0, 1) (or summing to >= 1)."""
    if image_size < 1:
        raise ValueError(f"image_size={image_size}: must be a positive number of pixels "
                         "(the side of the square output), e.g. image_size=256")
    for name, value in fractions.items():
        if not 0 <= value < 1:
            raise ValueError(f"{name}={value}: must be a fraction in [0, 1), e.g. {name}=0.1")
    if sum(fractions.values()) >= 1:
        raise ValueError(f"{' + '.join(fractions)} = {sum(fractions.values())} leaves no training images; "
                         "use smaller fractions")


def carve(table: pd.DataFrame, fraction: float, seed: int, into: str) -> None:
    """Move a seeded, class-stratified ``fraction`` of the train rows of ``table`` to split ``into``.

    ``fraction`` is of the current train rows. Uses sklearn's ``train_test_split``.
    """
    if fraction <= 0:
        return
    from sklearn.model_selection import train_test_split

    rows = table.index[table["split"] == "train"]
    labels = table.loc[rows, "label"].to_numpy()
    try:
        _, take = train_test_split(rows.to_numpy(), test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as exc:
        counts = dict(zip(*np.unique(labels, return_counts=True))) if len(labels) else {}
        raise ValueError(
            f"cannot carve a stratified {into} split of {fraction:.3g} from {len(rows)} train images "
            f"(images per class index: {counts}): {exc}. Add images, change the fraction, "
            f"or give the {into} split explicitly"
        ) from None
    table.loc[take, "split"] = into


def assemble(table: pd.DataFrame, classes: Sequence[str], image_size: int, strict: bool,
             where: str, skipped: Sequence[str] = ()) -> Dict[str, Split]:
    """Decode the rows of ``table`` (columns split, label, path, id) into the three Splits.

    ``skipped`` are failures found before decoding (e.g. unlabelled files); they
    are reported with the decode failures in one warning (an error if ``strict``).
    """
    table = table.sort_values("id", kind="stable").reset_index(drop=True)
    arrays, failures = decode_many(table["path"], image_size, desc=f"decoding {where}")
    report_skipped(list(skipped) + failures, strict, where)
    ok = np.array([a is not None for a in arrays], dtype=bool)
    if not ok.any():
        raise ValueError(f"no readable images under {where}; check that the files are images "
                         f"({len(table)} candidates, all failed)")
    splits = {}
    for name in SPLITS:
        pick = np.flatnonzero(ok & (table["split"] == name).to_numpy())
        images = np.empty((len(pick), image_size, image_size), np.uint8)
        for row, i in enumerate(pick):  # copy and release one by one: peak memory ~1x, not 2x
            images[row], arrays[i] = arrays[i], None
        splits[name] = Split(images=torch.from_numpy(images),
                             labels=torch.as_tensor(table["label"].to_numpy()[pick], dtype=torch.int64),
                             ids=[table["id"][i] for i in pick])
    return splits


def _sorted_classes(names, order: str, where: str) -> List[str]:
    """Class names in torchvision ``ImageFolder`` order (plain string sort: "10" before "9"), or in the
    comma-separated ``order`` when given; ``order`` must name exactly the classes found."""
    found = sorted(set(names))
    if not order:
        return found
    chosen = [c.strip() for c in order.split(",") if c.strip()]
    if sorted(chosen) != found or len(set(chosen)) != len(chosen):
        raise ValueError(f"{where}: classes={order!r} must list each class found exactly once; found "
                         f"{', '.join(found)}. Pass e.g. classes={','.join(found)!r}, or omit it for that order")
    return chosen


def _split_and_build(table: pd.DataFrame, classes: List[str], given: set, image_size: int,
                     val_fraction: float, test_fraction: float, seed: int, strict: bool,
                     where: str, source: str) -> DataBundle:
    """Carve the missing splits (see module doc), decode, and print the counts."""
    if "train" not in given:
        raise ValueError(f"{where}: splits {sorted(given)} given but no 'train'; add train images")
    if "test" not in given:
        carve(table, test_fraction, seed, "test")
    if "val" not in given:
        carve(table, val_fraction / (1 - (0 if "test" in given else test_fraction)), seed, "val")
    bundle = DataBundle(classes=tuple(classes), splits=assemble(table, classes, image_size, strict, where),
                        source=source)
    log.info(f"{source}: images per split and class\n{bundle.counts().to_string()}")
    return bundle


# ----------------------------------------------------------------------------- imagefolder
_IF_HINT = ("pass the folder that holds one sub-folder per class (root/<class>/<images>) "
            "or root/{train,val,test}/<class>/<images>")


def _split_folders(root: Path) -> Dict[str, Path]:
    """``{"train": root/train, ...}`` for the split folders present (names matched case-insensitively)."""
    return {p.name.lower(): p for p in root.iterdir() if p.is_dir() and p.name.lower() in SPLITS}


def _class_folders(folder: Path) -> Dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not is_hidden(p.name)}


def _imagefolder_fingerprint(root, **_):
    root = check_root(root, "imagefolder", _IF_HINT)
    return files_fingerprint(list_images(root), root)


@register_source("imagefolder", version=2, fingerprint=_imagefolder_fingerprint)  # 2: torchvision class order
def build_imagefolder(root: str, image_size: int = 256, val_fraction: float = 0.1, test_fraction: float = 0.2,
                      seed: int = 0, strict: bool = False, classes: str = "") -> DataBundle:
    """Images in class folders (see module doc). Classes: the folder names in torchvision ``ImageFolder``
    order (string sort), or the comma-separated ``classes``."""
    root = check_root(root, "imagefolder", _IF_HINT)
    check_options(image_size, val_fraction=val_fraction, test_fraction=test_fraction)
    layout = _split_folders(root) or {"train": root}
    folders = {s: _class_folders(d) for s, d in layout.items()}
    order = classes
    classes = _sorted_classes((c for per_split in folders.values() for c in per_split), order, f"imagefolder {root}")
    if not classes:
        raise ValueError(f"imagefolder: no class folders in {root} (only files); {_IF_HINT}")
    rows = []
    for split, per_split in folders.items():
        for name, folder in per_split.items():
            files = list_images(folder)
            if not files:
                raise ValueError(f"imagefolder: class folder {folder} holds no images "
                                 "(.png/.jpg/.tif/...); add images or remove the folder")
            rows += [(split, classes.index(name), str(f), f.relative_to(root).as_posix()) for f in files]
    table = pd.DataFrame(rows, columns=["split", "label", "path", "id"])
    return _split_and_build(table, classes, set(layout), image_size, val_fraction, test_fraction, seed,
                            strict, str(root), f"image folder (local: {root})")


# ----------------------------------------------------------------------------- csv
_CSV_HINT = ("pass a CSV file with a header row 'path,label' (optional 'split' column with "
             "train/val/test); relative paths are read from the CSV's folder")


def _read_table(path) -> pd.DataFrame:
    """The CSV as columns path, label, split (None if absent) and abs_path, validated."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"csv: path must be a CSV file path, got {path!r}; {_CSV_HINT}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"csv: {file} {'is a folder' if file.is_dir() else 'does not exist'}; {_CSV_HINT}")
    try:
        table = pd.read_csv(file, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"csv: {file} cannot be parsed as CSV ({exc}); {_CSV_HINT}") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise ValueError(f"csv: {file} lacks column(s) {missing} (it has {list(table.columns)}); {_CSV_HINT}")
    if table.empty:
        raise ValueError(f"csv: {file} has no rows; no images found. {_CSV_HINT}")
    for column in ("path", "label"):
        blank = np.flatnonzero(table[column].str.strip() == "")
        if len(blank):
            raise ValueError(f"csv: {file} has an empty '{column}' in data row(s) {(blank + 1).tolist()[:10]}; "
                             "fill them in or delete those rows")
    if "split" in table.columns:
        table["split"] = table["split"].str.strip().str.lower()
        bad = sorted(set(table["split"]) - set(SPLITS))
        if bad:
            raise ValueError(f"csv: {file} column 'split' has value(s) {bad}; use only train, val or test")
    table["abs_path"] = [str(file.parent / p.strip()) for p in table["path"]]
    return table


def _csv_fingerprint(path, **_):
    table = _read_table(path)
    return {"csv": files_fingerprint([path], Path(path).parent),
            "images": files_fingerprint(table["abs_path"], Path(path).parent)}


@register_source("csv", version=2, fingerprint=_csv_fingerprint)  # 2: string-sorted classes
def build_csv(path: str, image_size: int = 256, val_fraction: float = 0.1, test_fraction: float = 0.2,
              seed: int = 0, strict: bool = False, classes: str = "") -> DataBundle:
    """Images listed in a CSV ``path,label[,split]`` (see module doc). Classes: the label values sorted as
    strings (as torchvision sorts folder names), or the comma-separated ``classes``."""
    check_options(image_size, val_fraction=val_fraction, test_fraction=test_fraction)
    csv = _read_table(path)
    folder = Path(path).expanduser().parent
    labels = csv["label"].str.strip()
    classes = _sorted_classes(labels, classes, f"csv {path}")
    table = pd.DataFrame({
        "split": csv["split"] if "split" in csv.columns else "train",
        "label": [classes.index(v) for v in labels],
        "path": csv["abs_path"],
        "id": [Path(os.path.relpath(p, folder)).as_posix() for p in csv["abs_path"]],
    })
    given = set(table["split"]) if "split" in csv.columns else {"train"}
    return _split_and_build(table, classes, given, image_size, val_fraction, test_fraction, seed, strict,
                            str(Path(path).expanduser()), f"CSV image list (local: {path})")
