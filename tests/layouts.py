"""Tiny, learnable real-data layouts written from generated images (no download): issue 21.

Every film is a grey chest-like frame: two darker lung ellipses on a brighter body, noise, and one
bright blob whose position tells the class (class k: blob in lung k % 2, height by k // 2), so a small
CNN learns it in a few epochs. Writers for each layout the data sources read:

* :func:`kermany` ``root/chest_xray/{train,test}/{NORMAL,PNEUMONIA}/`` (3 classes from the file names)
* :func:`pneumoniamnist` one ``.npz`` with ``{train,val,test}_{images,labels}`` (2 classes, 28²)
* :func:`imagefolder` ``root/<class>/*.png`` (``k`` classes)
* :func:`csv_layout` ``root/labels.csv`` with ``path,label,split`` (given train/test splits)
* :func:`montgomery` ``root/CXR_png/`` + ``root/ManualMask/{leftMask,rightMask}/`` (lung masks)

Used by tests/test_realdata_pipeline.py; ``python tests/layouts.py /tmp/x 1200 30 40`` writes a bigger,
harder Kermany tree by hand (blob 30 in noise 40).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 40


def _lungs(seed: int, side: int = SIDE):
    """Left and right lung masks, shifted and scaled a little per film (seeded)."""
    rng = np.random.default_rng([seed, 7])
    dx, dy, s = rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(0.85, 1.1)
    yy, xx = np.mgrid[:side, :side] / side
    left = ((xx - 0.3 - dx) / (0.17 * s)) ** 2 + ((yy - 0.5 - dy) / (0.33 * s)) ** 2 <= 1
    right = ((xx - 0.7 - dx) / (0.17 * s)) ** 2 + ((yy - 0.5 - dy) / (0.33 * s)) ** 2 <= 1
    return left, right


def film(label: int, seed: int, side: int = SIDE, blob: float = 120.0, noise: float = 12.0) -> np.ndarray:
    """One uint8 film of class ``label`` (see the module docstring); a fainter ``blob`` in more ``noise``
    makes a harder task."""
    rng = np.random.default_rng(seed)
    left, right = _lungs(seed, side)
    img = np.full((side, side), 170.0)
    img[left | right] = 70.0
    yy, xx = np.mgrid[:side, :side] / side
    cx = 0.3 if label % 2 == 0 else 0.7
    cy = 0.35 + 0.15 * (label // 2)
    cx, cy = cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04)
    img += blob * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.06 ** 2)))
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def kermany(root, n: int = 200, **hardness) -> Path:
    """Mendeley layout, ``n`` films (¾ train, ¼ test), one patient per pneumonia film; returns the
    ``chest_xray`` folder. Classes: normal (0), bacteria (1), virus (2). ``hardness``: :func:`film`'s
    ``blob`` and ``noise``."""
    base = Path(root) / "chest_xray"
    for i in range(n):
        label, split = i % 3, "test" if i % 4 == 3 else "train"
        name = (f"NORMAL/IM-{i:04d}-0001.jpeg" if label == 0 else
                f"PNEUMONIA/person{i}_{'bacteria' if label == 1 else 'virus'}_{i}.jpeg")
        _save(base / split / name, film(label, 1000 + i, **hardness))
    return base


def pneumoniamnist(path, n: int = 90) -> Path:
    """PneumoniaMNIST-format ``.npz`` at 28²: binary labels [N, 1]; ~60/20/20 % train/val/test."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, i = {}, 0
    for split, m in (("train", int(n * 0.6)), ("val", int(n * 0.2)), ("test", n - int(n * 0.6) - int(n * 0.2))):
        labels = np.arange(m) % 2
        images = [np.asarray(Image.fromarray(film(int(y), 2000 + i + k)).resize((28, 28)))
                  for k, y in enumerate(labels)]
        arrays[f"{split}_images"] = np.stack(images).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(m, 1).astype(np.uint8)
        i += m
    np.savez(path, **arrays)
    return path


def imagefolder(root, k: int = 4, per_class: int = 48) -> Path:
    """``root/class_<c>/<i>.png`` with ``k`` classes (no split folders: the source carves val and test)."""
    root = Path(root)
    for c in range(k):
        for i in range(per_class):
            _save(root / f"class_{chr(ord('a') + c)}" / f"{i:03d}.png", film(c, 3000 + 100 * c + i))
    return root


def csv_layout(root, k: int = 3, n: int = 200) -> Path:
    """``root/images/*.png`` and ``root/labels.csv`` (``path,label,split``; ¼ given as test)."""
    root = Path(root)
    rows = []
    names = ("effusion", "healthy", "opacity", "other")[:k]
    for i in range(n):
        label = i % k
        _save(root / "images" / f"{i:04d}.png", film(label, 4000 + i))
        rows.append(f"images/{i:04d}.png,{names[label]},{'test' if i % 4 == 3 else 'train'}")
    (root / "labels.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return root / "labels.csv"


def montgomery(root, n: int = 40) -> Path:
    """Montgomery layout: ``CXR_png/MCUCXR_<i>_<y>.png`` and the left and right lung masks."""
    root = Path(root)
    for i in range(n):
        stem = f"MCUCXR_{i:04d}_{i % 2}"
        left, right = _lungs(5000 + i)
        _save(root / "CXR_png" / f"{stem}.png", film(i % 2, 5000 + i))
        _save(root / "ManualMask" / "leftMask" / f"{stem}.png", (left * 255).astype(np.uint8))
        _save(root / "ManualMask" / "rightMask" / f"{stem}.png", (right * 255).astype(np.uint8))
    return root


if __name__ == "__main__":  # python tests/layouts.py /tmp/k 1200 [blob noise]: a Kermany tree by hand
    where, count = sys.argv[1], int(sys.argv[2])
    hard = dict(zip(("blob", "noise"), map(float, sys.argv[3:5])))
    print(kermany(where, count, **hard))
