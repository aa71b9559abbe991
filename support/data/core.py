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

``lung_crop`` (any source): each film cropped to its lung box (:mod:`support.data.lungcrop`).
Loading only *reads* lung masks: the U-Net masks are written beforehand by
``support.segmentation.make_lung_masks`` (notebook 02). The option is part of
:func:`resolve_params`' output, hence of every cache and run key; a cropped
bundle has its own cache file. :func:`data_config` turns a profile and a
``--data`` spec into ``load`` arguments.
"""
from __future__ import annotations

import importlib
import inspect
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from .. import artifacts, logs, paths, profiles
from ..registry import Registry
from .cache import read_bundle, write_bundle
from .containers import DataBundle
from .lungcrop import crop_from_masks, lung_crop_spec

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
    :func:`support.data.lungcrop.lung_crop_spec`; False/None is dropped
    (so uncropped keys are the same as before the option existed).
    """
    params = dict(params)
    lung_crop = params.pop("lung_crop", False)
    if lung_crop is not False and lung_crop is not None:
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


def data_config(profile: str, spec: str = "phantom", section: str = "data") -> dict:
    """``load`` arguments for a profile (:mod:`support.profiles`) and a ``--data`` spec.

    ``section="data"`` (the classifiers' data): the profile's data settings apply when the spec
    names the profile's source; for another source only the settings it accepts (e.g.
    ``image_size``) carry over, plus the spec's path as ``root``/``path``.
    ``section="segmentation"`` (the lung U-Nets' masks): ``""`` is the profile's phantom draw;
    any other spec is taken as it is (the phantom's settings do not carry to a mask folder).
    """
    if section not in ("data", "segmentation"):
        raise ValueError(f"data_config section={section!r}: use 'data' or 'segmentation'")
    base = profiles.get(profile)[section] if section == "data" else profiles.segmentation(profile)["data"]
    if section == "segmentation":
        if not spec:
            return base
        name, params = parse_data_spec(spec)
        return {"name": name, **params}
    name, params = parse_data_spec(spec)
    if name == base["name"]:
        return {**base, **params}
    _import_sources()
    accepted = inspect.signature(SOURCES.get(name)).parameters
    config = {"name": name, **{k: v for k, v in base.items() if k != "name" and k in accepted}}
    return {**config, **params}


def cache_path(name: str, resolved: dict) -> Path:
    """The cache file of source ``name`` with parameters ``resolved`` (as :func:`resolve_params` returns)."""
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
    of the top-3 lung U-Nets, read from the mask file that
    ``support.segmentation.make_lung_masks`` wrote (missing: a ``MissingLungMasksError``
    naming that call); ``"true_masks"`` crops to the source's own lung masks;
    a dict sets the options (see :func:`support.data.lungcrop.lung_crop_spec`).
    Cached; images whose mask is empty or implausible keep the whole frame, with a warning.
    """
    if lung_crop is not False and lung_crop is not None:
        _, resolved = resolve_params(name, {**params, "lung_crop": lung_crop})
        spec = resolved.pop("lung_crop")
        return crop_from_masks(name, resolved, spec, cache_path(name, resolved).name,
                               lambda: load(name, cache=cache, force=force, verbose=verbose, **params),
                               cache=cache, force=force, verbose=verbose)
    build, resolved = resolve_params(name, params)
    path = cache_path(name, resolved) if cache else None
    if path is not None and path.exists() and not force:
        try:
            return read_bundle(path, name, resolved)
        except artifacts.ArtifactError as exc:
            if verbose:
                log.warning(f"cache {path} unreadable ({exc}); rebuilding it")
    start = time.perf_counter()
    with logs.quiet("data", enabled=not verbose):  # verbose=False silences the builder too
        bundle = build(**resolved)
    bundle.name, bundle.params = name, resolved
    if path is not None:
        write_bundle(path, bundle)
    if verbose:
        log.info(f"built {bundle!r} in {time.perf_counter() - start:.1f}s")
    return bundle
