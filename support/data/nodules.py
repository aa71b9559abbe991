"""Synthetic lung-nodule patches with independently controlled factors (data source ``nodules``).

Inspired by Baltatzis et al. 2021 (iMIMIC @ MICCAI, arXiv 2108.04815), not a reproduction: the paper's
generator is unknown. This follows our design in ``shared/papers/loss_generalization.md`` §3.1-3.2.

An image is a 2D patch (64² by default, values 0..255) of one nodule on a lung-parenchyma-like background:

* background   white noise blurred (σ 2 px), rescaled per image to mean ``background`` and sd 0.04;
               ``n_vessels`` faint straight vessels (peak +0.1, 1 px core blurred σ 0.7)
* size         ``small`` r0 ~ U(4, 7) px or ``large`` r0 ~ U(10, 14) px (the preset's ``radius`` table)
* margin       boundary r(θ) = r0·(1 + a·sin(kθ + φ)), k ∈ {3, 4, 5}, edge blurred σ 0.8:
               ``smooth`` a ~ U(0, 0.05); ``lobulated`` a ~ U(0.10, 0.15);
               ``spiculated`` a ~ U(0, 0.05) plus 8-14 tapered spikes of length U(0.5, 1)·r0
* density      ``solid`` fill ≈ 0.80 (texture sd 0.03) or ``ground_glass`` ≈ 0.45 (texture sd 0.06)
* nuisance     centre ``x``/``y`` (image centre ± ``jitter``), ``background`` level, ``n_vessels``,
               additive Gaussian noise ``noise_sd``, ``n_crossing`` distractor vessels through the nodule

Difficulty knobs (the spec's ``difficulty`` section and the nuisances; defaults give the original generator):

* ``margin_strength`` s ∈ [0, 1] (default 1): one scalar for how visible the malignant margin is. Spike count
  ``round(n·(0.3 + 0.7 s))``, length ``(0.3 + 0.7 s)·U(0.5, 1)·r0``, contrast (peak opacity) ``s`` and half-width
  ``(0.6 + 0.4 s)·SPIKE_SD``; a lobulated margin's amplitude is scaled by ``s`` too. s = 0: no spikes, no
  lobulation, so every margin level renders alike (margin carries nothing a model could see).
* ``size_separation`` d ∈ [0, 1] (default 1): the two size levels' radius ranges move from the spec's ``radius``
  table (d = 1, disjoint by default) towards their union [min lo, max hi] (d = 0, identical ranges: size
  carries no information about its level, so none about the label).
* nuisance ``noise_sd`` [lo, hi] within [0, 0.5] (default 0.02): additive pixel noise that hides faint spikes.
* nuisance ``n_crossing`` [lo, hi] within [0, 4] (default 0): bright straight vessels (peak ``CROSSING_PEAK``)
  that pass within r0/2 of the nodule's centre, so their ends look like spikes of either class.

Spike tips always stay inside the patch: a spike is shortened to end ``BORDER`` px from the border (the fit
check makes sure the body plus a minimal spike fits).

Labels: ``("benign", "malignant")``, class-balanced 50/50. A preset names the **label factor** (default
margin: malignant = spiculated, benign = smooth) and an optional **shortcut factor** (default size:
large goes with malignant) with ρ = P(shortcut level matches the label), exact per class. Presets are
plain dicts (:data:`PRESETS`, overrides of :data:`BASE_SPEC`); pass ``spec=`` (dict or JSON text) to
``load`` to define your own. Every image's factors are in ``split.meta``.

Random streams: factor values of a split are drawn from one stream per factor, keyed by
(seed, preset, split, factor); each image is rendered from one stream per part (size, margin, density,
background, vessels, noise), keyed by (seed, preset, split, index, part). So :func:`counterfactual`
can redraw one factor and keep everything else, and a preset variant (another ρ, a custom spec on the
same base preset) reuses the base preset's backgrounds. Presets and splits never share streams.
"""
from __future__ import annotations

import copy
import json
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch

from .containers import SPLITS, DataBundle, Split
from .core import load, register_source

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
_CHUNK = 128               # images rendered per vectorised step

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


# ----------------------------------------------------------------------------- random streams
def _tag(preset: str, split: str) -> int:
    return zlib.crc32(f"{preset}/{split}".encode())


class _Streams:
    """Per-image random streams: one counter-based Philox, re-keyed by (seed, preset/split, index, part).

    Re-keying costs ~3 us where a new generator costs ~20 us. The generator that :meth:`get` returns
    is valid until the next call; make one ``_Streams`` per thread.
    """

    def __init__(self):
        self._bits = np.random.Philox(key=0)
        self._gen = np.random.Generator(self._bits)
        self._state = self._bits.state
        self._parts: Dict[str, int] = {}

    def get(self, seed: int, tag: int, index: int, part: str) -> np.random.Generator:
        part_id = self._parts.setdefault(part, zlib.crc32(part.encode()))
        state = self._state
        state["state"] = {"counter": np.zeros(4, np.uint64),
                          "key": np.array([int(seed) | tag << 32, int(index) | part_id << 32], np.uint64)}
        state["buffer_pos"], state["has_uint32"], state["uinteger"] = 4, 0, 0
        self._bits.state = state
        return self._gen


def _size_quantile(rows: pd.DataFrame) -> np.ndarray:
    """u ~ U(0, 1) per image from its size stream: r0 = lo + u (hi - lo) for either size level."""
    streams = _Streams()
    return np.array([streams.get(s, _tag(p, sp), i, "size").random() for s, p, sp, i in
                     zip(rows["seed"], rows["preset"], rows["split"], rows["index"])])


def _r0(rows: pd.DataFrame, radius: Mapping[str, Sequence[float]]) -> np.ndarray:
    lo = rows["size"].map(lambda s: radius[s][0]).to_numpy(float)
    hi = rows["size"].map(lambda s: radius[s][1]).to_numpy(float)
    return np.round(lo + _size_quantile(rows) * (hi - lo), 4)


# ----------------------------------------------------------------------------- sampling the factors
def sample_factors(spec: dict, *, preset: str, split: str, n: int, seed: int, image_size: int) -> pd.DataFrame:
    """The factor table of one split (one row per image); render it with :func:`render`."""
    tag = _tag(preset, split)
    rng = lambda name: np.random.default_rng([seed, tag, zlib.crc32(name.encode())])
    label = np.repeat([0, 1], [n - n // 2, n // 2])
    rng("label").shuffle(label)
    rows = pd.DataFrame({"index": np.arange(n), "seed": seed, "preset": preset, "split": split,
                         "image_size": image_size, "label": label})
    lab, short = spec["label"], spec["shortcut"]
    for factor, dist in spec["factors"].items():
        rows[factor] = _draw(rng(factor), _dist(factor, dist, f"factors.{factor}"), n)
    g = rng("label_level")
    benign, malignant = (_draw(g, _dist(lab["factor"], lab[c], c), n) for c in CLASSES)
    rows[lab["factor"]] = np.where(label == 1, malignant, benign)
    if short is not None:
        aligned = np.zeros(n, dtype=bool)
        g = rng("shortcut")
        for c in (0, 1):  # exactly round(rho * n_c) aligned images per class
            idx = np.flatnonzero(label == c)
            aligned[g.permutation(idx)[: int(round(short["rho"] * len(idx)))]] = True
        paired = np.array([short["benign"], short["malignant"]], dtype=object)
        rows[short["factor"]] = paired[np.where(aligned, label, 1 - label)]
    nui, centre = spec["nuisance"], (image_size - 1) / 2
    rows["x"], rows["y"] = np.round(centre + rng("position").uniform(-1, 1, (2, n)) * nui["jitter"], 4)
    rows["background"] = np.round(rng("background").uniform(*nui["background"], n), 4)
    rows["n_vessels"] = rng("vessels").integers(nui["n_vessels"][0], nui["n_vessels"][1] + 1, n)
    rows["noise_sd"] = np.round(rng("noise").uniform(*nui["noise_sd"], n), 4)
    rows["n_crossing"] = rng("crossing").integers(nui["n_crossing"][0], nui["n_crossing"][1] + 1, n)
    rows["margin_strength"] = float(spec["difficulty"]["margin_strength"])
    rows["r0"] = _r0(rows, radius_ranges(spec))
    rows["rho"] = np.nan if short is None else float(short["rho"])
    mal = _dist(lab["factor"], lab["malignant"], "label.malignant")
    rows["label_rule"] = f"{lab['factor']}=" + "|".join(lvl for lvl, p in mal.items() if p > 0)
    rows["shortcut_rule"] = "" if short is None else f"{short['factor']}={short['malignant']}"
    return _apply_rules(rows)


def _draw(g: np.random.Generator, dist: Mapping[str, float], n: int) -> np.ndarray:
    levels = np.array(list(dist), dtype=object)
    return levels[g.choice(len(levels), size=n, p=np.array(list(dist.values()), float))]


def _apply_rules(rows: pd.DataFrame) -> pd.DataFrame:
    """Set ``label`` from ``label_rule`` ("margin=spiculated": 1 when margin is spiculated) and
    ``shortcut_aligned`` from ``shortcut_rule`` (1 when the shortcut level is the label's, -1 = none)."""
    def holds(rule_column: str) -> np.ndarray:
        out = np.full(len(rows), -1)
        for rule, idx in rows.groupby(rule_column, sort=False).indices.items():
            factor, _, levels = rule.partition("=")
            if factor:
                out[idx] = rows[factor].iloc[idx].isin(levels.split("|")).to_numpy()
        return out

    rows = rows.copy()
    rows["label"] = holds("label_rule")
    short = holds("shortcut_rule")
    rows["shortcut_aligned"] = np.where(short < 0, -1, short == rows["label"].to_numpy())
    return rows


# ----------------------------------------------------------------------------- rendering
@lru_cache(maxsize=16)
def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """K with K @ X @ K.T = Gaussian blur of X (reflect boundary), precomputed per (size, sigma)."""
    radius = int(np.ceil(4 * sigma))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    k = np.zeros((size, size))
    for i in range(size):
        j = i + offsets
        j = np.where(j < 0, -j - 1, np.where(j >= size, 2 * size - j - 1, j))
        np.add.at(k[i], np.clip(j, 0, size - 1), weights)
    return k.astype(np.float32)


@lru_cache(maxsize=16)
def _grid(size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return torch.from_numpy(yy), torch.from_numpy(xx)


def _c(values) -> torch.Tensor:
    """Per-image values as float32 [B, 1, 1], to broadcast against [B, H, W] fields."""
    return torch.from_numpy(np.asarray(values, dtype=np.float32))[:, None, None]


def _gauss(z2: torch.Tensor) -> torch.Tensor:
    """exp(-z2 / 2) with z2 capped at 60: CPU exp is ~15x slower where it underflows."""
    return torch.exp(z2.clamp(max=60.0) * -0.5)


def _smooth_unit(noise: np.ndarray, sigma: float) -> torch.Tensor:
    """Blur a batch of white-noise fields and rescale each to mean 0, sd 1."""
    k = _blur_matrix(noise.shape[-1], sigma)
    out = torch.from_numpy(k @ noise @ k.T)  # numpy: one gemm per image, independent of the batch
    out -= out.mean(dim=(1, 2), keepdim=True)
    return out / out.square().mean(dim=(1, 2), keepdim=True).sqrt()


def render(rows: pd.DataFrame, image_size: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Images (uint8 [N,H,W]), nodule masks (bool [N,H,W]) and the rows with the drawn shape
    parameters (``a_lob``, ``n_lobes``, ``n_spikes``, ``fill``) filled in."""
    sizes = rows["image_size"].unique()
    if len(sizes) > 1:
        raise ValueError(f"rows to render mix image sizes {sorted(sizes)}; render each size separately")
    size, n = int(sizes[0]) if len(sizes) else int(image_size or 0), len(rows)
    rows = rows.copy()
    for key, default in (("margin_strength", 1.0), ("n_crossing", 0)):  # rows written before these knobs
        if key not in rows:
            rows[key] = default
    # the continuous inputs are stored with 4 decimals; re-rounding makes a JSON round trip harmless
    cont = ["x", "y", "background", "noise_sd", "r0", "margin_strength"]
    rows[cont] = rows[cont].astype(float).round(4)
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), bool)
    drawn, threads = [], torch.get_num_threads()
    # One thread: these 0.5 M-element ops gain little from two, and lose 10x when another
    # process holds a core (OpenMP threads wait on each other). Restored on exit.
    torch.set_num_threads(1)
    try:
        for start in range(0, n, _CHUNK):
            part = rows.iloc[start:start + _CHUNK]
            images[start:start + len(part)], masks[start:start + len(part)], d = _render_chunk(part, size)
            drawn.append(d)
    finally:
        torch.set_num_threads(threads)
    for key in ("a_lob", "n_lobes", "n_spikes", "fill"):
        rows[key] = np.concatenate([d[key] for d in drawn]) if drawn else np.zeros(0)
    return images, masks, rows


def _render_chunk(rows: pd.DataFrame, size: int):
    """Render up to _CHUNK rows: per-image random draws first, then whole-batch tensor ops."""
    b, n_u = len(rows), 4 + 2 * SPIKES[1]
    bg, tex, noise = (np.empty((b, size, size), np.float32) for _ in range(3))
    u_margin, u_vessel, z_fill = np.empty((b, n_u)), np.empty((b, MAX_VESSELS, 3)), np.empty(b)
    u_cross = np.empty((b, MAX_CROSSING, 2))
    streams, tags = _Streams(), {}
    for i, (seed, preset, split, index) in enumerate(zip(rows["seed"], rows["preset"], rows["split"], rows["index"])):
        tag = tags.setdefault((preset, split), _tag(preset, split))
        # uniform fields suffice where a blur and a rescale follow (the sum of many is Gaussian)
        bg[i] = streams.get(seed, tag, index, "background").random((size, size), dtype=np.float32)
        g = streams.get(seed, tag, index, "density")
        z_fill[i] = g.standard_normal()
        tex[i] = g.random((size, size), dtype=np.float32)
        u_margin[i] = streams.get(seed, tag, index, "margin").random(n_u)
        u_vessel[i] = streams.get(seed, tag, index, "vessels").random((MAX_VESSELS, 3))
        u_cross[i] = streams.get(seed, tag, index, "crossing").random((MAX_CROSSING, 2))
        noise[i] = streams.get(seed, tag, index, "noise").standard_normal((size, size), dtype=np.float32)
    col = lambda name: _c(rows[name].to_numpy())
    yy, xx = _grid(size)

    # background: smooth parenchyma texture, then straight faint vessels
    img = col("background") + BG_SD * _smooth_unit(bg, BG_BLUR)
    n_vessels = rows["n_vessels"].to_numpy()
    for v in range(int(n_vessels.max(initial=0))):
        px, py, ang = (_c(u_vessel[:, v, j]) for j in range(3))
        ang = ang * np.pi
        dist = (xx - px * (size - 1)) * torch.sin(ang) - (yy - py * (size - 1)) * torch.cos(ang)
        img += _c(n_vessels > v) * VESSEL_PEAK * _gauss((dist / VESSEL_SD) ** 2)

    # nodule body: polar boundary r0 (1 + a sin(k θ + φ)) with a blurred edge
    margin, strength = rows["margin"].to_numpy(), rows["margin_strength"].to_numpy(float)
    # margin_strength s moves a lobulated margin's amplitude range towards the smooth one (s = 0: alike)
    lob = np.array([LOBULATION[m] for m in margin])
    weak = (margin == "lobulated")[:, None] * (1 - strength[:, None])
    lob = lob * (1 - weak) + np.array(LOBULATION["smooth"])[None] * weak
    a_lob = np.round(lob[:, 0] + u_margin[:, 0] * (lob[:, 1] - lob[:, 0]), 4)
    n_lobes = 3 + np.minimum((u_margin[:, 1] * 3).astype(int), 2)
    phase = 2 * np.pi * u_margin[:, 2]
    r0 = rows["r0"].to_numpy(float)
    dx, dy = xx - col("x"), yy - col("y")
    r, theta = torch.sqrt(dx * dx + dy * dy), torch.atan2(dy, dx)
    edge = _c(r0) * (1 + _c(a_lob) * torch.sin(_c(n_lobes) * theta + _c(phase)))
    alpha = 0.5 + 0.5 * torch.erf((edge - r) / (EDGE_SD * np.sqrt(2)))
    mask = r <= edge

    # spiculated margin: n tapered radial spikes at angles φ + 2π (j ± 0.4) / n, so a pixel's
    # nearest spikes by angle are j0 = floor of its angular position and j0 + 1: render only those two
    # margin_strength s scales count, length, contrast and width of the spikes (s = 0: none)
    base = SPIKES[0] + np.minimum((u_margin[:, 3] * (SPIKES[1] - SPIKES[0] + 1)).astype(int), SPIKES[1] - SPIKES[0])
    n_spikes = np.where((margin == "spiculated") & (strength > 0),
                        np.maximum(np.round(base * (0.3 + 0.7 * strength)), 1), 0).astype(int)
    spiky = np.flatnonzero(n_spikes)
    if len(spiky):
        ns, ph, j, s_k = n_spikes[spiky], phase[spiky], np.arange(SPIKES[1]), strength[spiky, None]
        ang = ph[:, None] + 2 * np.pi * (j + 0.8 * (u_margin[spiky, 4:4 + SPIKES[1]] - 0.5)) / ns[:, None]
        u_length = u_margin[spiky, 4 + SPIKES[1]:]
        fraction = SPIKE_LENGTH[0] + (SPIKE_LENGTH[1] - SPIKE_LENGTH[0]) * u_length
        length = fraction * r0[spiky, None] * (0.3 + 0.7 * s_k)
        start = r0[spiky, None] * (1 + a_lob[spiky, None] * np.sin(n_lobes[spiky, None] * ang + ph[:, None])) - 1.5
        length = np.minimum(length, _to_border(rows["x"].to_numpy(float)[spiky, None],
                                               rows["y"].to_numpy(float)[spiky, None], ang, size) - BORDER - 1 - start)
        table = torch.from_numpy(np.stack([ang, length, start]).astype(np.float32))  # [3, S, n_max]
        thin = _c(0.6 + 0.4 * s_k[:, 0])[:, 0]
        sr, st = r[spiky].flatten(1), theta[spiky].flatten(1)
        pos = torch.remainder((st - _c(ph)[:, 0]) / (2 * np.pi), 1.0) * _c(ns)[:, 0]
        spikes = torch.zeros_like(sr)
        for offset in (0, 1):
            k = torch.remainder(pos.long() + offset, torch.from_numpy(ns)[:, None])
            a_k, len_k, start_k = (table[i].gather(1, k) for i in range(3))
            along = sr * torch.cos(st - a_k) - start_k
            across = sr * torch.sin(st - a_k)
            width = thin * (SPIKE_SD[0] + (SPIKE_SD[1] - SPIKE_SD[0]) * (along / len_k).clamp(0, 1))
            cap = (along - len_k).clamp(min=0) / 0.5  # soft round tip
            profile = _gauss((across / width) ** 2 + cap * cap) * (along > 0)
            spikes = torch.maximum(spikes, profile)
        spikes = spikes.view(len(spiky), size, size)
        alpha[spiky] = torch.maximum(alpha[spiky], _c(s_k[:, 0]) * spikes)  # contrast s
        mask[spiky] |= spikes > 0.5

    # fill: per-nodule level plus smooth internal texture; composite over the background; noise
    density = rows["density"].to_numpy()
    level = np.array([FILL[d][0] for d in density]) + FILL_JITTER * z_fill
    tex_sd = np.array([FILL[d][1] for d in density])
    fill = _c(level) + _c(tex_sd) * _smooth_unit(tex, 1.0)
    img = img * (1 - alpha) + fill * alpha
    # distractor vessels crossing the nodule: straight lines within r0/2 of its centre, over the body
    n_crossing = rows["n_crossing"].to_numpy()
    for v in range(int(n_crossing.max(initial=0))):
        offset, ang = _c((u_cross[:, v, 0] - 0.5) * r0), _c(u_cross[:, v, 1] * np.pi)
        dist = dx * torch.sin(ang) - dy * torch.cos(ang) - offset
        img += _c(n_crossing > v) * CROSSING_PEAK * _gauss((dist / VESSEL_SD) ** 2)
    img += col("noise_sd") * torch.from_numpy(noise)
    images = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return images.numpy(), mask.numpy(), {"a_lob": a_lob, "n_lobes": n_lobes, "n_spikes": n_spikes,
                                          "fill": np.round(level, 4)}


def _to_border(x: np.ndarray, y: np.ndarray, ang: np.ndarray, size: int) -> np.ndarray:
    """Distance from (x, y) to the patch border along direction ``ang`` (x = column, y = row)."""
    with np.errstate(divide="ignore"):
        cos, sin = np.cos(ang), np.sin(ang)
        tx = np.where(cos > 1e-9, (size - 1 - x) / cos, np.where(cos < -1e-9, x / -cos, np.inf))
        ty = np.where(sin > 1e-9, (size - 1 - y) / sin, np.where(sin < -1e-9, y / -sin, np.inf))
    return np.minimum(tx, ty)


# ----------------------------------------------------------------------------- the data source
def _fingerprint(preset, spec, rho, label_factor, shortcut_factor, image_size, **_) -> dict:
    """The resolved spec joins the cache key, so an edited preset or spec file is never served stale."""
    return resolve_spec(preset, spec, rho=rho, label_factor=label_factor, shortcut_factor=shortcut_factor,
                        image_size=image_size)


@register_source("nodules", version=2, fingerprint=_fingerprint)  # 2: difficulty knobs, spikes kept inside
def build(preset: str = "train", seed: int = 0, n_train: int = 10000, n_val: int = 2000, n_test: int = 2000,
          image_size: int = 64, rho: float = -1.0, label_factor: str = "", shortcut_factor: str = "",
          spec: Optional[dict] = None) -> DataBundle:
    """Synthetic nodule patches: train/val/test all drawn from ``preset``'s distribution.

    ``seed`` is the data seed (keep it apart from training seeds). ``rho=-1``, ``label_factor=""``
    and ``shortcut_factor=""`` keep the preset's choices; ``spec`` (dict, JSON text or .json path)
    overrides any part of the preset (see :data:`BASE_SPEC`). The study's test sets are other
    presets: see :func:`load_study`. Lesion masks are the nodule (body and spikes); lung masks None.
    """
    full = resolve_spec(preset, spec, rho=rho, label_factor=label_factor, shortcut_factor=shortcut_factor,
                        image_size=image_size)
    if not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed={seed} must be in [0, 2**32)")
    splits = {}
    for split, n in zip(SPLITS, (n_train, n_val, n_test)):
        if not 0 <= n < 2 ** 32:
            raise ValueError(f"n_{split}={n} must be >= 0")
        rows = sample_factors(full, preset=preset, split=split, n=n, seed=seed, image_size=image_size)
        images, masks, rows = render(rows, image_size)
        rows = rows[list(META_COLUMNS)].reset_index(drop=True)
        splits[split] = Split(images=torch.from_numpy(images),
                              labels=torch.tensor(rows["label"].to_numpy(), dtype=torch.int64),
                              ids=[f"nodules/s{seed}/{preset}/{split}/{i:06d}" for i in range(n)],
                              lesion_masks=torch.from_numpy(masks), meta=rows)
    return DataBundle(classes=CLASSES, splits=splits, source=f"synthetic nodules ({preset}, seed {seed})")


def load_study(seed: int = 0, *, n_train: int = 10000, n_val: int = 2000, n_test: int = 2000,
               image_size: int = 64, train: str = "train", tests: Sequence[str] = STUDY_TESTS,
               **load_kw) -> Dict[str, DataBundle]:
    """The nodule study's data sets, by preset name: ``train`` with all three splits, and each test
    preset with only a test split (its train and val are empty). ``load_kw`` goes to every ``load``."""
    common = dict(seed=seed, image_size=image_size, **load_kw)
    out = {train: load("nodules", preset=train, n_train=n_train, n_val=n_val, n_test=n_test, **common)}
    for name in tests:
        out[name] = load("nodules", preset=name, n_train=0, n_val=0, n_test=n_test, **common)
    return out


# ----------------------------------------------------------------------------- counterfactuals
_DEFAULT_ROW = {"index": 0, "seed": 0, "preset": "train", "split": "custom", "image_size": 64, "size": "large",
                "margin": "smooth", "density": "solid", "background": 0.15, "n_vessels": 0, "noise_sd": 0.02,
                "rho": np.nan, "label_rule": "margin=spiculated", "shortcut_rule": "size=large",
                "margin_strength": 1.0, "n_crossing": 0}


def _as_rows(rows, spec) -> pd.DataFrame:
    """Meta row(s) (Series, dict or DataFrame) -> a complete factor table; missing factors take defaults."""
    if isinstance(rows, pd.Series):
        rows = rows.to_frame().T
    elif isinstance(rows, Mapping):
        rows = pd.DataFrame([dict(rows)])
    rows = rows.reset_index(drop=True).copy()
    for key, value in _DEFAULT_ROW.items():
        if key not in rows:
            rows[key] = value
    for key in ("x", "y"):
        if key not in rows:
            rows[key] = (rows["image_size"].astype(float) - 1) / 2
    rows = rows.astype({"index": int, "seed": int, "image_size": int, "n_vessels": int, "n_crossing": int,
                        "x": float, "y": float, "background": float, "noise_sd": float, "margin_strength": float})
    _check_change(rows, {k: rows[k] for k in FACTORS}, "rows")
    if "r0" not in rows:
        rows["r0"] = _r0(rows, _radius(rows, spec))
    return rows


def _radius(rows: pd.DataFrame, spec) -> dict:
    preset = rows["preset"].iloc[0] if len(rows) and rows["preset"].iloc[0] in PRESETS else "train"
    return radius_ranges(resolve_spec(preset, spec, image_size=int(rows["image_size"].max())))


def _check_change(rows: pd.DataFrame, change: Mapping, where: str) -> None:
    for key, value in change.items():
        if key not in FACTORS:
            raise ValueError(f"unknown factor {key!r} in {where}; valid factors: {', '.join(FACTORS)}")
        values = pd.Series(value).to_numpy() if np.ndim(value) else np.array([value], dtype=object)
        if key in LEVELS:
            bad = [v for v in values if v not in LEVELS[key]]
            if bad:
                raise ValueError(f"unknown {key} level {bad[0]!r} in {where}; valid levels: {', '.join(LEVELS[key])}")
            continue
        hi = {"background": 1.0, "noise_sd": 0.5, "n_vessels": MAX_VESSELS, "n_crossing": MAX_CROSSING,
              "margin_strength": 1.0}.get(key, rows["image_size"].min() - 1)
        numeric = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)
        if np.isnan(numeric).any() or (numeric < 0).any() or (numeric > hi).any() or (
                key in ("n_vessels", "n_crossing") and (numeric % 1).any()):
            shown = value if not np.ndim(value) else values[0]
            kind = "an integer " if key in ("n_vessels", "n_crossing") else ""
            raise ValueError(f"{key}={shown!r} in {where} must be {kind}"
                             f"in [0, {hi}]")


def counterfactuals(rows, change: Optional[Mapping] = None,
                    spec=None) -> Tuple[torch.Tensor, torch.Tensor, pd.DataFrame]:
    """Re-render nodules with the factors in ``change`` replaced and every other random draw kept.

    ``rows``: meta rows of a split (DataFrame), one row (Series) or a dict of factors (missing ones
    take defaults). ``change``: {factor: value}, e.g. ``{"size": "small"}`` or ``{"n_vessels": 0}``;
    a new size redraws r0 at the same quantile of the new range (from ``spec`` / the row's preset).
    Returns images (uint8 [N,H,W]), nodule masks (bool [N,H,W]) and the new meta rows, whose label and
    ``shortcut_aligned`` follow the rows' rules. ``change={}`` reproduces the original images.
    """
    change = dict(change or {})
    rows = _as_rows(rows, spec)
    _check_change(rows, change, "change")
    for key, value in change.items():
        rows[key] = value
    if "size" in change:
        rows["r0"] = _r0(rows, _radius(rows, spec))
    images, masks, rows = render(_apply_rules(rows))
    return torch.from_numpy(images), torch.from_numpy(masks), rows


def counterfactual(row, change: Optional[Mapping] = None, spec=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One nodule re-rendered with ``change`` applied: (image uint8 [H,W], mask bool [H,W])."""
    images, masks, _ = counterfactuals(row, change, spec)
    return images[0], masks[0]


# ----------------------------------------------------------------------------- looking at it
def preview_grid(factor: str, n: int = 6, preset: str = "train", seed: int = 0, image_size: int = 64,
                 values: Optional[Sequence] = None):
    """A figure: one row per value of ``factor``, one column per nodule, every other factor fixed."""
    import matplotlib.pyplot as plt

    from ..plots import titled

    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; valid factors: {', '.join(FACTORS)}")
    spec = resolve_spec(preset, image_size=image_size)
    centre, jitter = (image_size - 1) / 2, spec["nuisance"]["jitter"]
    sweeps = {"x": (centre - jitter, centre, centre + jitter), "y": (centre - jitter, centre, centre + jitter),
              "background": (0.10, 0.15, 0.20), "n_vessels": (0, 1, 2, 3), "noise_sd": (0.0, 0.02, 0.05),
              "n_crossing": (0, 1, 2), "margin_strength": (1.0, 0.5, 0.25, 0.0)}
    values = list(values if values is not None else LEVELS.get(factor, sweeps.get(factor)))
    rows = sample_factors(spec, preset=preset, split="preview", n=n, seed=seed, image_size=image_size)
    fig, axes = plt.subplots(len(values), n, figsize=(1.3 * n, 1.35 * len(values)), squeeze=False)
    for i, value in enumerate(values):
        images, _, _ = counterfactuals(rows, {factor: value})
        for j in range(n):
            axes[i, j].imshow(images[j].numpy(), cmap="gray", vmin=0, vmax=255)
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(str(value), fontsize=9)
    fig.suptitle(titled(f"one factor at a time: {factor} (rows)", f"synthetic nodules, {preset}"), fontsize=10)
    fig.tight_layout()
    return fig
