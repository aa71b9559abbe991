"""The two validation halves: one for early stopping, one for everything fitted after training.

A single validation set that chooses the checkpoint *and* then ranks the top-K, fits ensemble
weights, stacking and temperature scaling is reused five times: what is fitted after training sees
scores already tuned on the same films. So ``val`` is split once, stratified by class and seeded,
into

* half 0 ``"val_stop"`` -- early stopping and the checkpoint choice inside the training loop;
* half 1 ``"val_fit"``  -- top-K selection, ensemble weights, stacking, temperature scaling.

The split depends only on the validation labels and ids (and ``seed``), so every run of a data
source gets the same halves (a paired design) and every run records them in ``predictions.npz``
(``val_half``). Films of one patient stay in one half: a patient id is read from the file id
(Kermany's ``personNNN_...``); ids without one are their own group.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np

#: Names of the two halves, by index.
HALVES = ("val_stop", "val_fit")
_PATIENT = re.compile(r"(person\d+)", re.IGNORECASE)


def patient_groups(ids: Sequence[str]) -> np.ndarray:
    """A group label per id: Kermany's ``personNNN`` where the file name has one, else the id itself."""
    out = []
    for i in ids:
        m = _PATIENT.search(str(i).rsplit("/", 1)[-1])
        out.append(m.group(1).lower() if m else str(i))
    return np.asarray(out)


def val_halves(labels, ids: Optional[Sequence[str]] = None, seed: int = 0, fit_fraction: float = 0.5,
               group_patients: bool = True) -> np.ndarray:
    """``int8[N]``: 0 = early-stopping half, 1 = post-hoc fitting half (see the module doc).

    Stratified by class; with ``group_patients`` (default) whole patients move together
    (sklearn's ``StratifiedGroupKFold`` with 2 folds, so halves are as equal as the groups
    allow). ``fit_fraction`` other than 0.5 uses a stratified shuffle without groups.
    """
    y = np.asarray(labels).ravel()
    n = len(y)
    if n == 0:
        return np.zeros(0, np.int8)
    if not 0 < fit_fraction < 1:
        raise ValueError(f"fit_fraction={fit_fraction!r} must lie in (0, 1), e.g. 0.5")
    if n < 4:
        raise ValueError(f"a validation split of {n} images cannot be halved; give the source at least 4 "
                         "validation images (a larger val_fraction or n_val)")
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

    half = np.zeros(n, np.int8)
    groups = patient_groups(ids) if (ids is not None and group_patients) else np.arange(n).astype(str)
    grouped = len(set(groups)) < n  # some patient has several films
    counts = np.bincount(y)
    stratifiable = counts[counts > 0].min() >= 2
    if fit_fraction == 0.5 and stratifiable:
        _, fit = next(StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed).split(np.zeros(n), y, groups))
    elif grouped:  # groups first, stratification as far as the groups allow
        _, fit = next(GroupShuffleSplit(n_splits=1, test_size=fit_fraction, random_state=seed).split(np.zeros(n), y, groups))
    else:
        _, fit = train_test_split(np.arange(n), test_size=fit_fraction, stratify=y if stratifiable else None,
                                  random_state=seed)
    half[fit] = 1
    return half
