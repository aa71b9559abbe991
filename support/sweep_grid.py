"""Grids of :mod:`support.sweep`: a grid (a dict or a YAML/JSON file) expanded into validated ``TrainConfig`` s,
notebook 04's configs, and which of them are finished already. The grid format: :mod:`support.sweep`.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

from . import paths, profiles, training
from .data import data_config
from .training import TrainConfig

#: A 4-config example grid, seconds per run on a CPU (the smoke profile's model, 2 epochs, cce/focal x
#: seeds 0/1): what the tests and benchmarks/sweep_backends.py run on every backend.
TINY_GRID = {
    "profile": "smoke",
    "data": {"name": "phantom", "n": 240, "image_size": 64},
    "base": {"arch": "small_cnn", "arch_params": {"width": 8}, "dcl_channels": 128, "image_size": 32,
             "max_epochs": 2, "device": "cpu"},
    "grid": {"loss": ["cce", "focal"], "seed": [0, 1]},
}
#: Keys of a grid file.
GRID_KEYS = ("profile", "data", "base", "grid")
#: Fields a grid may set (every TrainConfig field).
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))

# ----------------------------------------------------------------------------- grids
def _unknown(kind: str, names, valid) -> ValueError:
    hints = []
    for n in names:
        close = difflib.get_close_matches(str(n), valid, n=1)
        hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ValueError(f"unknown {kind} {', '.join(hints)}; valid: {', '.join(valid)}")


def load_grid(path: Union[str, os.PathLike]) -> dict:
    """Read a grid from a ``.yaml``/``.yml`` or ``.json`` file."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} does not exist; pass a YAML or JSON file "
                                "(see `python -m support.sweep --help` for the format)")
    text = path.read_text()
    try:
        grid = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ValueError(f"grid file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{exc}; fix the syntax (a mapping with keys {', '.join(GRID_KEYS)})") from None
    if not isinstance(grid, dict):
        raise ValueError(f"grid file {path} must hold a mapping with keys {', '.join(GRID_KEYS)}, "
                         f"got {type(grid).__name__}")
    return grid


def _data_dict(data, profile: Optional[str]) -> dict:
    """A --data spec string or a load() dict -> a load() dict, starting from the profile's data."""
    from .data import parse_data_spec

    if isinstance(data, str):
        if profile:
            return data_config(profile, data)
        name, params = parse_data_spec(data)
        return {"name": name, **params}
    if isinstance(data, dict) and "name" in data:
        base = profiles.get(profile)["data"] if profile else {}
        return {**base, **data} if base.get("name") == data["name"] else dict(data)
    raise ValueError(f"data {data!r} must be a spec such as 'phantom' or 'kermany:/path', or a dict with "
                     "a 'name', e.g. {'name': 'phantom', 'n': 240}")


def expand(grid: Union[dict, str, os.PathLike]) -> List[TrainConfig]:
    """Every config of ``grid`` (a dict or a YAML/JSON path), in grid order (first key varies slowest).

    Unknown keys raise ``ValueError`` naming them and the valid ones; every config
    is validated (unknown loss, arch or data parameter) before anything trains.
    """
    if not isinstance(grid, dict):
        grid = load_grid(grid)
    unknown = [k for k in grid if k not in GRID_KEYS]
    if unknown:
        raise _unknown("grid key(s)", unknown, GRID_KEYS)
    profile = grid.get("profile")
    p = profiles.get(profile) if profile else None  # unknown profile -> ValueError listing them
    base = dict(grid.get("base") or {})
    axes = dict(grid.get("grid") or {})
    for what, d in (("base", base), ("grid", axes)):
        if not isinstance(d, dict):
            raise ValueError(f"grid '{what}' must be a mapping of TrainConfig fields, got {d!r}")
        bad = [k for k in d if k not in CONFIG_FIELDS]
        if bad:
            raise _unknown(f"TrainConfig field(s) in '{what}'", bad, CONFIG_FIELDS)
    both = sorted(set(base) & set(axes))
    if both:
        raise ValueError(f"{both} set in both 'base' and 'grid'; keep each field in one of them")
    if p is not None:  # a profile's study grid, unless the grid fixes or lists them itself
        for name, values in (("loss", p["losses"]), ("seed", p["seeds"])):
            if name not in base and name not in axes:
                axes[name] = list(values)
    axes = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in axes.items()}
    empty = [k for k, v in axes.items() if not v]
    if empty:
        raise ValueError(f"grid axis {empty} has no values; give at least one or remove it")
    if "data" in grid and "data" in base:
        raise ValueError("data set both at the top of the grid and in 'base'; keep one")
    default_data = grid["data"] if "data" in grid else base.pop("data", None)
    configs = []
    for values in itertools.product(*axes.values()):
        settings = {**base, **dict(zip(axes, values))}
        data = settings.pop("data", default_data)
        if data is not None:
            settings["data"] = _data_dict(data, profile)
        configs.append(TrainConfig.from_profile(profile, **settings) if profile else TrainConfig(**settings))
    return configs


def notebook_configs(profile: str, data_spec: str = "phantom", losses: Optional[Sequence[str]] = None,
                     seeds: Optional[Sequence[int]] = None) -> List[TrainConfig]:
    """The configs notebook 04 trains under ``./run_all.sh`` (same keys, so the notebooks find them);
    ``data_spec``: the ``--data`` string."""
    p = profiles.get(profile)
    data_cfg = data_config(profile, data_spec)
    return [TrainConfig.from_profile(profile, data=data_cfg, loss=loss,
                                     loss_params={}, seed=int(seed))
            for seed in (seeds or p["seeds"]) for loss in (losses or p["losses"])]


def split_finished(configs: Sequence[TrainConfig], runs_dir=None):
    """(to train, already finished) lists of configs; duplicates (same key) are kept once."""
    root = Path(runs_dir) if runs_dir else paths.runs_dir()
    todo, done, seen = [], [], set()
    for c in configs:
        key = c.key()
        if key in seen:
            continue
        seen.add(key)
        (done if training.is_finished(training.run_dir_for(c, root)) else todo).append(c)
    return todo, done
