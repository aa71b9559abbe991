"""The phantom's data plan: class mix and split sizes, each image's label and marker state, parameter checks.

No pixels here: :func:`_plan` fixes, from (seed, n) alone, which global index goes to which split with which
label and burned-in marker state; :mod:`support.data.phantom_render` then draws the films.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import pandas as pd

from .containers import CXR_CLASSES, SPLITS

CLASSES = CXR_CLASSES
#: Kermany v2 counts per class (normal, bacterial, viral).
KERMANY_TEST = (234, 242, 148)
KERMANY_TRAIN_FOLDER = (1349, 2538, 1345)
KERMANY_TOTAL = sum(KERMANY_TEST) + sum(KERMANY_TRAIN_FOLDER)  # 5856
VAL_FRACTION = 0.10
MIN_N, MIN_SIZE = 30, 32
#: Marker states; class c's own state is MARKER_STATES[MARKER_OF_CLASS[c]].
MARKER_STATES = ("none", "top-left", "top-right")
MARKER_OF_CLASS = (1, 2, 0)          # normal -> top-left, bacterial -> top-right, viral -> none


# ----------------------------------------------------------------------------- splits
def _mix(total: int, weights) -> list:
    """``total`` images split in the proportions ``weights`` (largest remainder; each class >= 1)."""
    w = np.asarray(weights, dtype=float) / sum(weights)
    counts = np.maximum(1, np.floor(w * total)).astype(int)
    for i in np.argsort(-(w * total - np.floor(w * total)))[: max(0, total - counts.sum())]:
        counts[i] += 1
    return [int(c) for c in counts]


def split_counts(n: int, n_test: Optional[int] = None, n_val: Optional[int] = None) -> Dict[str, Tuple[int, int, int]]:
    """Images per class for each split at total ``n`` (the Kermany mix scaled by n/5856).

    ``n_test`` / ``n_val`` (optional) replace the test / validation sizes by draws of their own size
    in the same class mix (Kermany's test mix; the validation carve-out's mix); the training split
    is always the one of ``n``.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
        raise ValueError(f"phantom n={n!r} must be an int (total number of images, e.g. 5856)")
    if n < MIN_N:
        raise ValueError(f"phantom n={n} is too small for 3 classes x 3 splits; use n >= {MIN_N} "
                         f"(e.g. n=240 for a smoke test, n=5856 for the Kermany size)")
    f = n / KERMANY_TOTAL
    test = [max(1, round(c * f)) for c in KERMANY_TEST]
    folder = [max(2, round(c * f)) for c in KERMANY_TRAIN_FOLDER]
    folder[1] += n - sum(test) - sum(folder)          # exact total; bacterial is the largest class
    val = [max(1, int(c * VAL_FRACTION)) for c in folder]
    train = [a - b for a, b in zip(folder, val)]
    for name, size in (("n_test", n_test), ("n_val", n_val)):
        if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 6):
            raise ValueError(f"phantom {name}={size!r} must be an int >= 6 (two images per class), e.g. {name}=6000")
    if n_test is not None:
        test = _mix(n_test, KERMANY_TEST)
    if n_val is not None:
        val = _mix(n_val, val)
    return {"train": tuple(train), "val": tuple(val), "test": tuple(test)}


def _plan(seed: int, n: int, marker_bias: float, n_test=None, n_val=None) -> pd.DataFrame:
    """Global index, split, label and marker state of every image (no pixels)."""
    counts_of = split_counts(n, n_test, n_val)
    rows, start = [], 0
    for s_i, split in enumerate(SPLITS):
        counts = counts_of[split]
        rng = np.random.default_rng([seed, 7919, s_i])       # own stream: labels never touch pixels
        labels = rng.permutation(np.repeat(np.arange(3), counts))
        bias = marker_bias if split != "test" else 0.0
        own = np.asarray(MARKER_OF_CLASS)[labels]
        marker = np.where(rng.random(len(labels)) < bias, own, rng.integers(0, 3, len(labels)))
        rows.append(pd.DataFrame({"index": np.arange(start, start + len(labels)), "split": split,
                                  "label": labels, "marker": marker}))
        start += len(labels)
    return pd.concat(rows, ignore_index=True)



def _check(image_size, difficulty, marker_bias) -> None:
    """Reject parameter values the generator cannot honour, naming the value and the valid range."""
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < MIN_SIZE:
        raise ValueError(f"phantom image_size={image_size!r} is too small or not an int; use an int >= {MIN_SIZE}")
    if not isinstance(difficulty, (int, float, np.number)) or not np.isfinite(difficulty) or difficulty <= 0:
        raise ValueError(f"phantom difficulty={difficulty!r} must be a positive number (1.0 = default)")
    if not isinstance(marker_bias, (int, float, np.number)) or not 0.0 <= marker_bias <= 1.0:
        raise ValueError(f"phantom marker_bias={marker_bias!r} must lie in [0, 1] (0 = no shortcut)")
