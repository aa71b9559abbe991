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

Layout (this module registers the source, assembles the bundles and re-exports the names below):
``nodules_spec`` (factors, constants, presets, spec checks), ``nodules_sampling`` (random streams, factor
tables), ``nodules_draw`` (rendering patches), ``nodules_counterfactual`` (counterfactuals, preview figure).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from .containers import SPLITS, DataBundle, Split
from .core import load, register_source
from .nodules_counterfactual import (  # noqa: F401  (re-exported)
    _DEFAULT_ROW, _as_rows, _check_change, _radius, counterfactual, counterfactuals, preview_grid)
from .nodules_draw import (  # noqa: F401  (re-exported)
    _CHUNK, _blur_matrix, _c, _gauss, _grid, _render_chunk, _smooth_unit, _to_border, render)
from .nodules_sampling import _Streams, _apply_rules, _draw, _r0, _size_quantile, _tag, sample_factors  # noqa: F401
from .nodules_spec import (  # noqa: F401  (re-exported)
    BASE_SPEC, BG_BLUR, BG_SD, BORDER, CLASS_LEVELS, CLASSES, CROSSING_PEAK, DIFFICULTY_RANGES, EDGE_SD, FACTORS, FILL,
    FILL_JITTER, LEVELS, LOBULATION, MAX_CROSSING, MAX_VESSELS, META_COLUMNS, MIN_SPIKE, PRESETS, SPIKE_LENGTH,
    SPIKE_SD, SPIKES, STUDY_TESTS, VESSEL_PEAK, VESSEL_SD, _check_factor, _dist, _parse_spec, _validate,
    radius_ranges, resolve_spec)


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

