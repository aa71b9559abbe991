"""``load(name, **params)``: one entry point, parameter checks, and the uint8 cache.

A source is a function ``build(**params) -> DataBundle`` registered with
:func:`register_source`. ``load`` checks the parameters against the builder's
signature (unknown names and wrong types fail with the valid choices named),
then returns the bundle from ``data/cache/<name>-<key>.npz`` when present, or
builds it and writes the cache atomically.

The cache key hashes: the source name, the source's ``version`` (bump it when
its output changes), every resolved parameter (defaults included), and for
local-folder sources a fingerprint of the input files (paths, sizes, mtimes).
It does not hash the package's other code: after changing a generator, bump
its version or pass ``force=True``.

``lung_crop`` (any source): each film cropped to its lung box (the multi-loss
study's segmentation stage, :mod:`support.segmentation`, imported only when
asked for). The option is part of :func:`resolve_params`' output, hence of
every cache and run key; a cropped bundle has its own cache file.
"""
from __future__ import annotations

import importlib
import inspect
import json
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from .. import artifacts, logs, paths
from ..registry import Registry
from .containers import SPLITS, DataBundle, Split

log = logs.get("data")

SOURCES: Registry = Registry("data source")
_SOURCE_INFO: Dict[str, dict] = {}

#: Modules that register sources; imported on first use so nothing heavy runs at import.
_SOURCE_MODULES = (
    "support.data.phantom",
    "support.data.realdata",
    "support.data.nodules",
)
_imported = False


def register_source(name: str, version: int = 1, fingerprint: Optional[Callable[..., object]] = None,
                    keyless: Tuple[str, ...] = ()):
    """Register ``build(**params) -> DataBundle`` under ``name``.

    ``fingerprint(**params)`` (optional) returns a JSON-able summary of the
    input files so that a changed folder invalidates the cache. ``keyless``:
    parameters added after data was cached and runs were trained; at their
    default they are left out of the resolved parameters (so of every cache
    and run key), as ``lung_crop`` is.
    """

    def decorate(build):
        SOURCES.add(name, build)
        _SOURCE_INFO[name] = {"version": version, "fingerprint": fingerprint, "keyless": tuple(keyless)}
        return build

    return decorate


def source_version(name: str) -> int:
    """The registered ``version`` of source ``name`` (part of every run key: a changed generator
    must not reuse runs trained on its old output)."""
    _import_sources()
    SOURCES.get(name)  # unknown name -> the registry's error with the valid names
    return int(_SOURCE_INFO[name]["version"])


def _import_sources() -> None:
    global _imported
    if _imported:
        return
    for module in _SOURCE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a source module not written yet
            if exc.name != module:
                raise
    _imported = True


def names():
    """Names of the registered data sources."""
    _import_sources()
    return SOURCES.names()


def parse_data_spec(spec: str) -> Tuple[str, dict]:
    """``"kermany:/data/chest_xray"`` -> ``("kermany", {"root": "/data/chest_xray"})``.

    The command-line form of a data source: a name, optionally ``:`` and a
    path. The path goes to the source's ``root`` parameter, or to ``path``
    for file sources (``pneumoniamnist:/x.npz``, ``csv:/labels.csv``).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data spec must be a non-empty string like 'phantom' or 'kermany:/path', got {spec!r}")
    name, _, location = spec.partition(":")
    if not location:
        return name, {}
    _import_sources()
    accepted = inspect.signature(SOURCES.get(name)).parameters
    for key in ("root", "path"):
        if key in accepted:
            return name, {key: location}
    raise ValueError(f"data source {name!r} takes no path; use --data {name} without ':{location}'")


def _check_type(source: str, key: str, value, default) -> None:
    """Reject a value whose type clearly does not match the parameter's default."""
    if default is None or default is inspect.Parameter.empty or value is None:
        return
    ok = True
    if isinstance(default, bool):
        ok = isinstance(value, (bool, np.bool_))
    elif isinstance(default, int):
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, (str, Path))
    if not ok:
        raise TypeError(
            f"data source {source!r}: parameter {key}={value!r} has type {type(value).__name__}, "
            f"expected {type(default).__name__} (default {default!r})"
        )


def resolve_params(name: str, params: dict) -> Tuple[Callable, dict]:
    """Return the builder and the full parameter dict (defaults filled in).

    A ``lung_crop`` other than False/None is kept, in the canonical form of
    :func:`support.segmentation.crop.lung_crop_spec`; False/None is dropped
    (so uncropped keys are the same as before the option existed).
    """
    params = dict(params)
    lung_crop = params.pop("lung_crop", False)
    if lung_crop is not False and lung_crop is not None:
        from ..segmentation.crop import lung_crop_spec  # lazy: model code only when a crop is asked for

        build, resolved = resolve_params(name, params)
        return build, {**resolved, "lung_crop": lung_crop_spec(lung_crop)}
    _import_sources()
    build = SOURCES.get(name)
    sig = inspect.signature(build)
    valid = [p for p in sig.parameters if sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TypeError(
            f"data source {name!r} got unknown parameter(s) {unknown}; valid parameters: {', '.join(valid)}"
        )
    try:
        bound = sig.bind(**params)
    except TypeError as exc:
        raise TypeError(f"data source {name!r}: {exc}; valid parameters: {', '.join(valid)}") from None
    bound.apply_defaults()
    for key, value in bound.arguments.items():
        _check_type(name, key, value, sig.parameters[key].default)
    keyless = _SOURCE_INFO[name]["keyless"]
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in bound.arguments.items()
                if not (k in keyless and v == sig.parameters[k].default)}
    return build, resolved


def cache_path(name: str, resolved: dict) -> Path:
    info = _SOURCE_INFO[name]
    fp = info["fingerprint"](**resolved) if info["fingerprint"] else None
    key = artifacts.config_key({"source": name, "version": info["version"], "params": resolved, "files": fp})
    return paths.cache_dir() / f"{name}-{key}.npz"


def load(name: str = "phantom", *, cache: bool = True, force: bool = False, verbose: bool = True,
         lung_crop=False, **params) -> DataBundle:
    """Load data source ``name`` as uint8 tensors (see :mod:`support.data.containers`).

    ``cache=False`` neither reads nor writes the cache; ``force=True`` rebuilds
    and overwrites it. Unknown sources raise ``ValueError`` listing the valid
    ones; unknown or mistyped parameters raise ``TypeError``.

    ``lung_crop=True`` crops every film to the bounding box (+5 %) of the AND
    of the top-3 lung U-Nets (trained on first use), ``"true_masks"`` to the
    source's own lung masks, a dict sets the options (see
    :func:`support.segmentation.crop.lung_crop_spec`). Cached; images whose
    mask is empty or implausible keep the whole frame, with a warning.
    """
    if lung_crop is not False and lung_crop is not None:
        from ..segmentation.crop import lung_crop_source  # lazy: keeps plain loading light

        return lung_crop_source(name, lung_crop, cache=cache, force=force, verbose=verbose, **params)
    build, resolved = resolve_params(name, params)
    path = cache_path(name, resolved) if cache else None
    if path is not None and path.exists() and not force:
        try:
            return _read_cache(path, name, resolved)
        except artifacts.ArtifactError as exc:
            if verbose:
                log.warning(f"cache {path} unreadable ({exc}); rebuilding it")
    start = time.perf_counter()
    with logs.quiet("data", enabled=not verbose):  # verbose=False silences the builder too
        bundle = build(**resolved)
    bundle.name, bundle.params = name, resolved
    if path is not None:
        _write_cache(path, bundle)
    if verbose:
        log.info(f"built {bundle!r} in {time.perf_counter() - start:.1f}s")
    return bundle


# ----------------------------------------------------------------------------- cache format
def _pack_mask(mask: torch.Tensor) -> np.ndarray:
    return np.packbits(mask.numpy().astype(bool), axis=-1)


def _unpack_mask(packed: np.ndarray, width: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed, axis=-1, count=width).astype(bool))


def _write_cache(path: Path, bundle: DataBundle) -> None:
    arrays = {
        "classes": np.array(bundle.classes),
        "header": np.array(json.dumps({"source": bundle.source, "name": bundle.name,
                                       "params": artifacts._jsonable(bundle.params)})),
    }
    for s in SPLITS:
        split = bundle.splits[s]
        arrays[f"{s}_images"] = split.images.numpy()
        arrays[f"{s}_labels"] = split.labels.numpy()
        arrays[f"{s}_ids"] = np.array(split.ids, dtype=str)
        for mask in ("lung_masks", "lesion_masks"):
            if getattr(split, mask) is not None:
                arrays[f"{s}_{mask}"] = _pack_mask(getattr(split, mask))
        if split.meta is not None:
            arrays[f"{s}_meta"] = np.array(split.meta.to_json(orient="split"))
    artifacts.write_npz(path, **arrays)


def _read_cache(path: Path, name: str, resolved: dict) -> DataBundle:
    z = artifacts.read_npz(path)
    header = json.loads(str(z["header"]))
    splits = {}
    for s in SPLITS:
        images = torch.from_numpy(z[f"{s}_images"])
        width = images.shape[-1]
        masks = {m: _unpack_mask(z[f"{s}_{m}"], width) if f"{s}_{m}" in z else None
                 for m in ("lung_masks", "lesion_masks")}
        meta = None
        if f"{s}_meta" in z:
            from io import StringIO
            meta = pd.read_json(StringIO(str(z[f"{s}_meta"])), orient="split")
        splits[s] = Split(images=images, labels=torch.from_numpy(z[f"{s}_labels"]).long(),
                          ids=z[f"{s}_ids"].tolist(), meta=meta, **masks)
    return DataBundle(classes=tuple(z["classes"].tolist()), splits=splits, source=header["source"],
                      name=name, params=resolved)
