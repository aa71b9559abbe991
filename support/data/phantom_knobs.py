"""The phantom's regime knobs: label noise and acquisition shift (used by :mod:`support.data.phantom`).

Label noise (``label_noise``, ``noise_structure``)
    Applied after rendering to the train and validation labels only; the films are drawn from the true
    labels and the test labels stay true. Exactly ``round(label_noise * eligible)`` labels of each of
    train and val are flipped, chosen by their own random stream ``default_rng([seed, 7933, split])``.

    ``symmetric``       eligible: every image; a flipped label goes to one of the two other classes
                        (uniformly).
    ``pneumonia_mild``  eligible: the bacterial and viral images; a flip swaps bacterial <-> viral, and
                        the flipped images are drawn with weight ``(1 - severity)**2``, so mild cases --
                        where clinicians disagree -- carry most of the noise.

    The split's ``meta`` then has ``true_label`` and ``label_flipped`` columns (``label``/``class`` are
    the labels a model is trained on); a bundle without noise has neither column.

Acquisition shift (``shift``)
    "Train hospital != test hospital": the test films are made by another acquisition chain. The same
    patients (image ``i`` draws the same anatomy and pathology) are filmed with the film parameters
    changed AFTER they are drawn, so the random stream -- and every train and validation film -- is
    untouched; only the test split differs. A shift is a preset name (:data:`SHIFT_PRESETS`) or a dict
    of these fields (missing fields: no change):

    ``exposure``       multiplies the exposure k (film response ``1 - exp(-k A)``), > 0
    ``contrast``       multiplies the display contrast (lower: a flatter film), > 0
    ``grain``          multiplies the film grain's standard deviation (higher: noisier), > 0
    ``blur``           added to the unsharpness b of the [b, 1-2b, b] kernel (scanner blur), >= 0,
                       the total capped at 0.3
    ``device_marker``  ``(train/val frequency, test frequency)`` of a label-independent burned-in
                       device stamp (a bright bar code, bottom corner): the test hospital's scanner
                       stamps its films, the training hospital's does not.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

#: Label-noise structures (see the module doc).
NOISE_STRUCTURES = ("symmetric", "pneumonia_mild")
MAX_NOISE = 0.5
#: Fields of an acquisition shift and their "no change" values.
SHIFT_FIELDS = {"exposure": 1.0, "contrast": 1.0, "grain": 1.0, "blur": 0.0, "device_marker": (0.0, 0.0)}
#: Named shifts. ``hospital_b``: an older CR unit at the test hospital -- under-exposed (k x 0.7), flatter
#: (contrast x 0.8), grainier (x 2.5), blurrier (+0.1), and a device stamp on 70 % of its films (none at the
#: training hospital).
SHIFT_PRESETS = {
    "hospital_b": {"exposure": 0.7, "contrast": 0.8, "grain": 2.5, "blur": 0.1, "device_marker": (0.0, 0.7)},
}


def check_noise(label_noise, noise_structure) -> None:
    """Reject a noise rate or structure the generator cannot honour, naming the value and the fix."""
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float, np.number)) \
            or not 0.0 <= label_noise <= MAX_NOISE:
        raise ValueError(f"phantom label_noise={label_noise!r} must be a share in [0, {MAX_NOISE}] "
                         "(0 = clean labels; e.g. 0.2 flips 20 % of the eligible train and val labels)")
    if noise_structure not in NOISE_STRUCTURES:
        raise ValueError(f"phantom noise_structure={noise_structure!r} is unknown; valid: {', '.join(NOISE_STRUCTURES)}")


def resolve_shift(shift) -> Optional[dict]:
    """The full field dict of ``shift`` (a preset name or a partial dict); None for no shift."""
    if shift is None or shift == "none":
        return None
    if isinstance(shift, str):
        if shift not in SHIFT_PRESETS:
            raise ValueError(f"phantom shift={shift!r} is unknown; valid presets: {', '.join(SHIFT_PRESETS)} "
                             f"(or a dict of {', '.join(SHIFT_FIELDS)})")
        shift = SHIFT_PRESETS[shift]
    if not isinstance(shift, dict):
        raise ValueError(f"phantom shift={shift!r} must be a preset name ({', '.join(SHIFT_PRESETS)}) or a dict "
                         f"of {', '.join(SHIFT_FIELDS)}")
    unknown = sorted(set(shift) - set(SHIFT_FIELDS))
    if unknown:
        raise ValueError(f"phantom shift: unknown field(s) {unknown}; valid: {', '.join(SHIFT_FIELDS)}")
    out = {**SHIFT_FIELDS, **shift}
    for name in ("exposure", "contrast", "grain"):
        if not isinstance(out[name], (int, float)) or not out[name] > 0:
            raise ValueError(f"phantom shift {name}={out[name]!r} must be a positive factor (1 = no change)")
    if not isinstance(out["blur"], (int, float)) or not 0 <= out["blur"] <= 0.3:
        raise ValueError(f"phantom shift blur={out['blur']!r} must lie in [0, 0.3] (added unsharpness)")
    freq = tuple(out["device_marker"])
    if len(freq) != 2 or not all(isinstance(f, (int, float)) and 0 <= f <= 1 for f in freq):
        raise ValueError(f"phantom shift device_marker={out['device_marker']!r} must be (train/val frequency, "
                         "test frequency), each in [0, 1], e.g. (0.0, 0.7)")
    out["device_marker"] = freq
    return out


def shift_film(film: dict, shift: dict) -> dict:
    """The film parameters of the shifted acquisition (a new dict; ``film`` is left as drawn)."""
    return {**film, "k": film["k"] * shift["exposure"], "contrast": film["contrast"] * shift["contrast"],
            "grain": film["grain"] * shift["grain"], "blur": min(0.3, film["blur"] + shift["blur"])}


def device_markers(seed: int, split_index: int, n: int, frequency: float) -> np.ndarray:
    """Bool ``[n]``: which films of a split carry the device stamp (own stream, label-independent)."""
    if frequency <= 0:
        return np.zeros(n, bool)
    return np.random.default_rng([seed, 7927, split_index]).random(n) < frequency


def draw_device_marker(seed: int, index: int, out: np.ndarray) -> None:
    """Burn the device stamp (a bright box with dark bars) into the bottom-left or bottom-right corner of
    ``out`` (uint8 [S, S]); drawn from ``default_rng([seed, index, 4099])``, not the film's stream."""
    rng = np.random.default_rng([seed, int(index), 4099])
    S = out.shape[0]
    h, w = max(3, round(0.06 * S)), max(6, round(0.16 * S))
    r0 = S - h - int(rng.integers(round(0.02 * S), round(0.05 * S) + 1))
    c0 = int(rng.integers(round(0.03 * S), round(0.08 * S) + 1))
    if rng.random() < 0.5:
        c0 = S - c0 - w
    patch = np.full((h, w), int(rng.integers(200, 240)), np.uint8)
    bars = rng.random(w) < 0.45
    bars[[0, -1]] = False
    patch[1:-1][:, bars] = 40
    out[r0:r0 + h, c0:c0 + w] = patch


def flip_labels(labels: np.ndarray, severity: np.ndarray, rate: float, structure: str, seed: int,
                split_index: int) -> np.ndarray:
    """``labels`` with exactly ``round(rate * eligible)`` of them flipped (see the module doc)."""
    labels = np.asarray(labels)
    noisy = labels.copy()
    if rate <= 0:
        return noisy
    rng = np.random.default_rng([seed, 7933, split_index])
    if structure == "symmetric":
        eligible = np.arange(len(labels))
        chosen = rng.choice(eligible, round(rate * len(eligible)), replace=False)
        noisy[chosen] = (labels[chosen] + rng.integers(1, 3, len(chosen))) % 3
        return noisy
    eligible = np.flatnonzero(labels > 0)
    weight = (1.0 - np.clip(np.asarray(severity, float)[eligible], 0.0, 1.0)) ** 2 + 1e-6
    chosen = rng.choice(eligible, round(rate * len(eligible)), replace=False, p=weight / weight.sum())
    noisy[chosen] = 3 - labels[chosen]                               # bacterial (1) <-> viral (2)
    return noisy
