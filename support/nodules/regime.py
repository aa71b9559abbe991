"""The regime map: where does cross-entropy take the size shortcut?

A grid of margin strength (how visible the label's cue is, :data:`support.data.nodules.BASE_SPEC`'s
``difficulty``) x training ρ (how often size agrees with the label). At each cell CE is trained and
scored on a ``test_conflict`` draw of the same difficulty (its validation split, :func:`map_split`: the
cell is chosen without the study's test images; the map's seeds are kept apart from the study's too) (size contradicts the label: accuracy 1 = margin
only, 0 = size only). Beside each margin strength, the **learnability control**: CE trained at ρ 0.5
on the same difficulty, scored on the same ``test_conflict`` images. A cell is a study regime when CE
splits its bets (conflict accuracy in [0.3, 0.7]) although margin alone is learnable (control >= 0.9):
:func:`choose_cell`.

The map's table is a run artefact under ``runs/nodules/regime/``, keyed by every parameter it depends on
(the runs themselves are ordinary cached runs of :func:`support.training.train_many`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd

from .. import artifacts, paths, training
from ..inference import seed_summary
from ..data import load as load_data
from ..data.core import source_version
from ..data import nodules as nd

#: The rule that makes a cell the study's regime (issue 17): CE's conflict accuracy in this range ...
CONFLICT_RANGE = (0.3, 0.7)
#: ... while CE trained at ρ 0.5 on the same difficulty reaches at least this on test_conflict.
MIN_LEARNABILITY = 0.9
LEARNABILITY_RHO = 0.5
#: The preset a training ρ is drawn from (the control's ρ 0.5 is ``test_decorrelated``'s distribution).
TRAIN_PRESETS = {1.0: "train_redundant", 0.95: "train"}


def cell_spec(base: Optional[dict], margin_strength: float) -> dict:
    """The generator spec of a cell: ``base`` (the profile's spec override) with this margin strength."""
    spec = copy.deepcopy(base or {})
    spec["difficulty"] = {**spec.get("difficulty", {}), "margin_strength": float(margin_strength)}
    return spec


def train_data(data: dict, margin_strength: float, rho: float) -> dict:
    """``support.data.load`` parameters of a cell's training set (``data``: the profile's nodule data)."""
    d = {k: v for k, v in data.items() if k != "spec"}
    preset = TRAIN_PRESETS.get(float(rho), "test_decorrelated" if float(rho) == LEARNABILITY_RHO else "")
    if not preset:
        _check_rho(rho)
    return {"name": "nodules", "preset": preset, **d, "spec": cell_spec(data.get("spec"), margin_strength)}


def test_split(data: dict, margin_strength: float, preset: str = "test_conflict", n_test: int = 0):
    """The test split of ``preset`` at a margin strength (``n_test=0``: the profile's)."""
    d = {k: v for k, v in data.items() if k not in ("spec", "n_train", "n_val", "n_test")}
    return load_data(name="nodules", preset=preset, n_train=0, n_val=0, n_test=n_test or data["n_test"],
                     spec=cell_spec(data.get("spec"), margin_strength), verbose=False, **d).splits["test"]


def map_split(data: dict, margin_strength: float, preset: str = "test_conflict"):
    """The images the map scores a cell on: ``preset``'s *validation* draw at a margin strength (as many
    images as the profile's test split). The generator keys every image by its split, so these are never
    the study's test images: choosing the cell does not select on the images the losses are compared on."""
    d = {k: v for k, v in data.items() if k not in ("spec", "n_train", "n_val", "n_test")}
    return load_data(name="nodules", preset=preset, n_train=0, n_val=data["n_test"], n_test=0,
                     spec=cell_spec(data.get("spec"), margin_strength), verbose=False, **d).splits["val"]


def cell_overrides(settings: dict, margin_strength: float, rho: float, seeds: Sequence[int] = ()) -> dict:
    """:class:`~support.nodules.Study` overrides that put the study at a cell (and on ``seeds`` if given)."""
    out = {"data": {**settings["data"], "spec": cell_spec(settings["data"].get("spec"), margin_strength)},
           "train_preset": TRAIN_PRESETS[_check_rho(rho)]}
    return {**out, "seeds": tuple(int(s) for s in seeds)} if len(seeds) else out


def _check_rho(rho: float) -> float:
    if float(rho) not in TRAIN_PRESETS:
        raise ValueError(f"training rho={rho!r} has no training preset; the map's rhos must be among "
                         f"{sorted(TRAIN_PRESETS)} (nodules.regime.rhos in support/profiles.py)")
    return float(rho)


def _configs(settings: dict) -> Dict[tuple, training.TrainConfig]:
    grid, out = settings["regime"], {}
    for rho in grid["rhos"]:
        _check_rho(rho)
    for s in grid["margin_strengths"]:
        for rho in tuple(grid["rhos"]) + (LEARNABILITY_RHO,):
            for seed in grid["seeds"][:1] if rho == LEARNABILITY_RHO else grid["seeds"]:  # control: one seed
                out[(float(s), float(rho), int(seed))] = training.TrainConfig(
                    data=train_data(settings["data"], s, rho), **settings["train"], loss="cce", seed=int(seed))
    return out


def regime_map(settings: dict, runs_dir=None, force: bool = False, progress: bool = True) -> pd.DataFrame:
    """CE's ``test_conflict`` accuracy per (margin strength, training ρ) and the learnability control.

    ``settings``: a profile's ``nodules`` section (``regime``: ``margin_strengths``, ``rhos``, ``seeds``).
    Columns: margin_strength, rho, conflict_accuracy (mean over seeds), conflict_sd, learnability, n_seeds,
    n_test. Cached under ``runs/nodules/regime/`` by its parameters.
    """
    root = Path(runs_dir) if runs_dir else paths.runs_dir()
    configs = _configs(settings)
    key = artifacts.config_key({"regime": settings["regime"], "data": settings["data"], "train": settings["train"],
                                "source_version": source_version("nodules")})
    path = paths.inside(root, "nodules", "regime", f"{key}.json")
    if path.exists() and not force:
        return pd.DataFrame(artifacts.read_json(path))
    dirs = training.train_many(list(configs.values()), runs_dir=root, force=force, progress=progress)
    from .study import load_model  # the study module imports this one's constants

    acc = {}
    for s in settings["regime"]["margin_strengths"]:
        split = map_split(settings["data"], s)
        images = training.to_device_images(split.images, settings["train"]["image_size"], "cpu")
        y = split.labels.numpy()
        for (cs, rho, seed), run in zip(configs, dirs):
            if cs == float(s):
                pred = training.predict_probs(load_model(run), images).argmax(1).numpy()
                acc[(cs, rho, seed)] = float((pred == y).mean())
    rows = []
    for s in settings["regime"]["margin_strengths"]:
        learn = np.mean([v for (cs, rho, _), v in acc.items() if cs == float(s) and rho == LEARNABILITY_RHO])
        for rho in settings["regime"]["rhos"]:
            vals = np.array([v for (cs, r, _), v in acc.items() if cs == float(s) and r == float(rho)])
            mean, sd = seed_summary(vals)
            rows.append({"margin_strength": float(s), "rho": float(rho), "conflict_accuracy": mean, "conflict_sd": sd,
                         "learnability": float(learn), "n_seeds": len(vals),
                         "n_test": int(settings["data"]["n_test"])})
    artifacts.write_json(path, rows)
    return pd.DataFrame(rows)


def choose_cell(table: pd.DataFrame, conflict_range: Sequence[float] = CONFLICT_RANGE,
                min_learnability: float = MIN_LEARNABILITY, strict: bool = True) -> pd.Series:
    """The study cell: among cells with CE conflict accuracy in ``conflict_range`` and learnability
    >= ``min_learnability``, the one closest to the middle of the range (ties: the higher learnability,
    then the higher ρ). ``meets_rule`` says whether it qualified. When none does: ``strict`` raises
    ``ValueError`` showing the map; otherwise the cell closest to the middle is returned (``meets_rule`` False)."""
    lo, hi = conflict_range
    ok = table["conflict_accuracy"].between(lo, hi) & (table["learnability"] >= min_learnability)
    if not ok.any() and strict:
        shown = table[["margin_strength", "rho", "conflict_accuracy", "learnability"]].round(3).to_string(index=False)
        raise ValueError(f"no cell of the regime map has CE conflict accuracy in [{lo}, {hi}] with learnability "
                         f">= {min_learnability}:\n{shown}\nrefine the grid (profiles: nodules.regime."
                         "margin_strengths) or change the other difficulty knobs (nodules.data.spec)")
    pool = table[ok] if ok.any() else table
    order = pool.assign(_dist=(pool["conflict_accuracy"] - (lo + hi) / 2).abs(), _l=-pool["learnability"],
                        _r=-pool["rho"])
    best = order.sort_values(["_dist", "_l", "_r"]).iloc[0].drop(["_dist", "_l", "_r"])
    best["meets_rule"] = bool(ok.any())
    return best


def neighbours(strengths: Sequence[float], chosen: float, k: int = 3) -> list:
    """``k`` margin strengths of the grid around ``chosen`` (the chosen one included), in order."""
    grid = sorted(float(s) for s in strengths)
    if chosen not in grid:
        raise ValueError(f"margin strength {chosen} is not on the grid {grid}")
    i = grid.index(chosen)
    start = min(max(i - k // 2, 0), max(len(grid) - k, 0))
    return grid[start:start + k]
