"""The nodule generator's definitions: factors and levels, generator constants, the base spec and the presets,
and the resolution and validation of a spec (preset <- user spec <- flat overrides).

A spec is plain data (module doc of :mod:`support.data.nodules`); :func:`resolve_spec` is the only way in.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, Mapping, Tuple, Union

import numpy as np

CLASSES = ("benign", "malignant")
#: Levels of the categorical factors (any of these can be the label or the shortcut).
LEVELS = {"size": ("small", "large"), "margin": ("smooth", "lobulated", "spiculated"),
          "density": ("solid", "ground_glass")}
#: (benign, malignant) levels used when a factor is made the label or shortcut by name.
CLASS_LEVELS = {"size": ("small", "large"), "margin": ("smooth", "spiculated"),
                "density": ("solid", "ground_glass")}
#: Factors a counterfactual can change: the categorical ones and the per-image nuisances.
FACTORS = tuple(LEVELS) + ("x", "y", "background", "n_vessels", "noise_sd", "n_crossing", "margin_strength")

# Generator constants (notes §3.1); not part of a preset because counterfactuals must know them.
LOBULATION = {"smooth": (0.0, 0.05), "lobulated": (0.10, 0.15), "spiculated": (0.0, 0.05)}
SPIKES = (8, 14)          # spike count range of a spiculated margin
SPIKE_LENGTH = (0.5, 1.0)  # spike length as a fraction of r0
SPIKE_SD = (0.8, 0.4)      # spike half-width (Gaussian sd, px) at base and tip: a tapered 1-2 px line
MIN_SPIKE = 2.0            # px of spike the fit check keeps room for beyond the body (longer ones are shortened)
BORDER = 1.5               # px between a spike's tip and the patch border
CROSSING_PEAK = 0.25       # peak of a distractor vessel crossing the nodule (background vessels: VESSEL_PEAK)
MAX_CROSSING = 4
EDGE_SD = 0.8              # nodule edge blur
FILL = {"solid": (0.80, 0.03), "ground_glass": (0.45, 0.06)}  # (mean level, internal texture sd)
FILL_JITTER = 0.02         # per-nodule sd of the fill level
BG_SD, BG_BLUR = 0.04, 2.0
VESSEL_PEAK, VESSEL_SD = 0.10, 0.76  # a 1-px line blurred σ 0.7 ≈ Gaussian sd sqrt(1/12 + 0.49)
MAX_VESSELS = 8

BASE_SPEC = {
    "description": "label = margin (spiculated vs smooth); size tracks the label with rho 0.95",
    "label": {"factor": "margin", "benign": "smooth", "malignant": "spiculated"},
    # rho = P(shortcut level is the one paired with the label), exactly round(rho * n) per class
    "shortcut": {"factor": "size", "benign": "small", "malignant": "large", "rho": 0.95},
    # distributions of the categorical factors that are neither label nor shortcut
    "factors": {"size": {"small": 0.5, "large": 0.5}, "margin": {"smooth": 0.5, "spiculated": 0.5},
                "density": {"solid": 0.5, "ground_glass": 0.5}},
    # per-image nuisances, uniform in [lo, hi] (n_vessels: integers); jitter: ± px around the centre
    "nuisance": {"jitter": 4.0, "background": [0.12, 0.18], "n_vessels": [0, 3], "noise_sd": [0.02, 0.02],
                 "n_crossing": [0, 0]},
    "radius": {"small": [4.0, 7.0], "large": [10.0, 14.0]},  # r0 range (px) per size level at separation 1
    # difficulty knobs (module doc): margin visibility and how far apart the two size levels' radii are
    "difficulty": {"margin_strength": 1.0, "size_separation": 1.0},
}
DIFFICULTY_RANGES = {"margin_strength": (0.0, 1.0), "size_separation": (0.0, 1.0)}

#: Named presets: overrides of BASE_SPEC (a section's keys replace the base's keys, one level deep).
PRESETS: Dict[str, dict] = {
    "train": {"description": "training distribution: label = margin, size tracks it (rho 0.95)"},
    "test_iid": {"description": "the training distribution, fresh draws"},
    "test_decorrelated": {"description": "size independent of the label (rho 0.5)", "shortcut": {"rho": 0.5}},
    "test_conflict": {"description": "size contradicts the label (rho 0): malignant small, benign large",
                      "shortcut": {"rho": 0.0}},
    "test_size_only": {"description": "label = size (large = malignant), margin random: measures size reliance",
                       "label": {"factor": "size", "benign": "small", "malignant": "large"}, "shortcut": None},
    "test_density_shift": {"description": "as train, but every nodule ground-glass",
                           "factors": {"density": {"solid": 0.0, "ground_glass": 1.0}}},
    "test_lobulated": {"description": "as train, but benign nodules lobulated instead of smooth",
                       "label": {"benign": "lobulated"}},
    "train_redundant": {"description": "redundant cues (Hermann & Lampinen 2020): size and margin both "
                                       "perfectly predictive (rho 1)", "shortcut": {"rho": 1.0}},
}
#: The test presets that :func:`load_study` loads beside the training preset.
STUDY_TESTS = ("test_iid", "test_decorrelated", "test_conflict", "test_size_only", "test_density_shift")
META_COLUMNS = ("index", "seed", "preset", "split", "image_size", "label", "size", "r0", "margin", "a_lob",
                "n_lobes", "n_spikes", "density", "fill", "x", "y", "background", "n_vessels", "noise_sd",
                "shortcut_aligned", "rho", "label_rule", "shortcut_rule", "margin_strength", "n_crossing")


# ----------------------------------------------------------------------------- presets as data
def resolve_spec(preset: str = "train", spec: Union[None, dict, str] = None, *, rho: float = -1.0,
                 label_factor: str = "", shortcut_factor: str = "", image_size: int = 64) -> dict:
    """The full, validated factor spec: BASE_SPEC <- PRESETS[preset] <- ``spec`` <- the flat overrides.

    ``spec`` is a dict or JSON text in the preset format (a partial override is enough, e.g.
    ``{"shortcut": {"rho": 0.7}}``). ``rho=-1`` keeps the preset's ρ; ``label_factor`` /
    ``shortcut_factor`` name a factor (``shortcut_factor="none"`` removes the shortcut), with the
    levels of :data:`CLASS_LEVELS`. Bad values raise ``ValueError`` naming them.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown nodule preset {preset!r}; valid presets: {', '.join(PRESETS)} "
                         "(or pass spec= with your own factor distributions)")
    out = copy.deepcopy(BASE_SPEC)
    for override in (PRESETS[preset], _parse_spec(spec)):
        for key, value in override.items():
            if key not in BASE_SPEC:
                raise ValueError(f"unknown spec section {key!r}; valid sections: {', '.join(BASE_SPEC)}")
            if key in ("label", "factors", "nuisance", "radius", "difficulty") and not isinstance(value, Mapping):
                raise ValueError(f"spec section {key!r} must be a dict, got {value!r}")
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key].update(copy.deepcopy(value))
            else:
                out[key] = copy.deepcopy(value)
    if label_factor:
        _check_factor(label_factor, "label_factor")
        out["label"] = dict(zip(("factor", "benign", "malignant"), (label_factor,) + CLASS_LEVELS[label_factor]))
    if shortcut_factor == "none":
        out["shortcut"] = None
    elif shortcut_factor:
        _check_factor(shortcut_factor, "shortcut_factor")
        old = out["shortcut"] or {}
        if "rho" not in old and rho == -1.0:
            raise ValueError(f"preset {preset!r} has no shortcut, so shortcut_factor={shortcut_factor!r} needs rho=")
        out["shortcut"] = {"factor": shortcut_factor, "benign": CLASS_LEVELS[shortcut_factor][0],
                           "malignant": CLASS_LEVELS[shortcut_factor][1], "rho": old.get("rho")}
    if rho != -1.0:
        if out["shortcut"] is None:
            raise ValueError(f"rho={rho!r} given but preset {preset!r} has no shortcut factor; "
                             "pass shortcut_factor= too")
        out["shortcut"]["rho"] = rho
    _validate(out, image_size)
    return out


def _parse_spec(spec) -> dict:
    if spec is None or spec == "":
        return {}
    if isinstance(spec, (str, Path)):
        text = str(spec)
        if not text.lstrip().startswith("{"):
            text = Path(text).expanduser().read_text(encoding="utf-8")  # a path to a .json file
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"spec is not valid JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(spec, Mapping):
        raise ValueError(f"spec must be a dict, JSON text or a .json path, got {type(spec).__name__}")
    return dict(spec)


def _check_factor(name, where: str) -> None:
    if name not in LEVELS:
        raise ValueError(f"unknown factor {name!r} in {where}; valid factors: {', '.join(LEVELS)}")


def _dist(factor: str, value, where: str) -> Dict[str, float]:
    """A level name or {level: probability} -> a validated {level: probability}."""
    dist = {value: 1.0} if isinstance(value, str) else dict(value)
    bad = [lvl for lvl in dist if lvl not in LEVELS[factor]]
    if bad:
        raise ValueError(f"unknown {factor} level {bad[0]!r} in {where}; valid levels: {', '.join(LEVELS[factor])}")
    probs = np.array(list(dist.values()), dtype=float)
    if (probs < 0).any() or abs(probs.sum() - 1) > 1e-6:
        raise ValueError(f"{where} probabilities {dist} must be >= 0 and sum to 1")
    return dist


def _validate(spec: dict, image_size: int) -> None:
    label, short = spec["label"], spec["shortcut"]
    if not isinstance(label, Mapping) or "factor" not in label:
        raise ValueError(f"spec 'label' must be a dict with 'factor', 'benign', 'malignant'; got {label!r}")
    _check_factor(label["factor"], "label")
    ben = _dist(label["factor"], label.get("benign"), "label.benign")
    mal = _dist(label["factor"], label.get("malignant"), "label.malignant")
    if set(ben) & set(mal):
        raise ValueError(f"label levels {sorted(set(ben) & set(mal))} are both benign and malignant")
    if short is not None:
        if not isinstance(short, Mapping) or "factor" not in short:
            raise ValueError(f"spec 'shortcut' must be None or a dict with 'factor'; got {short!r}")
        _check_factor(short["factor"], "shortcut")
        if short["factor"] == label["factor"]:
            raise ValueError(f"the label factor {label['factor']!r} is also marked as the shortcut factor; "
                             "choose another shortcut_factor, or 'none'")
        levels = [short.get("benign"), short.get("malignant")]
        for lvl in levels:
            if lvl not in LEVELS[short["factor"]]:
                raise ValueError(f"unknown {short['factor']} level {lvl!r} in shortcut; "
                                 f"valid levels: {', '.join(LEVELS[short['factor']])}")
        if levels[0] == levels[1]:
            raise ValueError(f"shortcut levels for benign and malignant are both {levels[0]!r}")
        rho = short.get("rho")
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho={rho!r} is outside [0, 1] (rho = P(shortcut matches the label); "
                             "-1 keeps the preset's)")
    for factor, dist in spec["factors"].items():
        _check_factor(factor, "factors")
        _dist(factor, dist, f"factors.{factor}")
    nui = spec["nuisance"]
    unknown = set(nui) - set(BASE_SPEC["nuisance"])
    if unknown:
        raise ValueError(f"unknown nuisance {sorted(unknown)[0]!r}; valid: {', '.join(BASE_SPEC['nuisance'])}")
    for key, (lo, hi) in (("background", (0, 1)), ("noise_sd", (0, 0.5)), ("n_vessels", (0, MAX_VESSELS)),
                          ("n_crossing", (0, MAX_CROSSING))):
        a, b = nui[key]
        if not lo <= a <= b <= hi:
            raise ValueError(f"nuisance {key}={nui[key]!r} must be [lo, hi] within [{lo}, {hi}]")
    if not 0 <= nui["jitter"] <= image_size / 4:
        raise ValueError(f"nuisance jitter={nui['jitter']!r} must be within [0, image_size/4]")
    unknown = set(spec["difficulty"]) - set(DIFFICULTY_RANGES)
    if unknown:
        raise ValueError(f"unknown difficulty knob {sorted(unknown)[0]!r}; valid: {', '.join(DIFFICULTY_RANGES)}")
    for key, (lo, hi) in DIFFICULTY_RANGES.items():
        value = spec["difficulty"][key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ValueError(f"difficulty {key}={value!r} must be a number in [{lo}, {hi}] "
                             f"(default {BASE_SPEC['difficulty'][key]})")
    if sorted(spec["radius"]) != sorted(LEVELS["size"]):
        raise ValueError(f"spec radius must give [lo, hi] for {LEVELS['size']}, got {spec['radius']!r}")
    for level, (lo, hi) in spec["radius"].items():
        # body with lobulation, plus a minimal spike and the tip's gap to the border
        reach = hi * (1 + LOBULATION["lobulated"][1]) + nui["jitter"] + MIN_SPIKE + BORDER
        if not 1.0 <= lo <= hi:
            raise ValueError(f"radius {level}={[lo, hi]!r} must satisfy 1 <= lo <= hi (px)")
        if reach > image_size / 2:
            raise ValueError(
                f"nodule size {level!r} (r0 up to {hi} px; with lobulation, jitter, a {MIN_SPIKE:g} px spike and "
                f"{BORDER:g} px to the border {reach:.1f} px from the centre) does not fit image_size={image_size}; "
                f"use image_size >= {int(np.ceil(2 * reach))} or a smaller 'radius' range")


def radius_ranges(spec: dict) -> Dict[str, Tuple[float, float]]:
    """{size level: (lo, hi) r0 range} after ``size_separation`` d: each end moves linearly from the
    ``radius`` table (d = 1) to the union of the levels' ranges (d = 0: both levels alike)."""
    d = float(spec.get("difficulty", {}).get("size_separation", 1.0))
    table = spec["radius"]
    union = (min(lo for lo, _ in table.values()), max(hi for _, hi in table.values()))
    return {level: (round(d * lo + (1 - d) * union[0], 4), round(d * hi + (1 - d) * union[1], 4))
            for level, (lo, hi) in table.items()}

