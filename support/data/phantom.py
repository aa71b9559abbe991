"""The CXR phantom: procedurally generated pediatric AP chest films (data source ``phantom``, the default).

What it is
    A cheap, deterministic stand-in for the Kermany pediatric chest X-ray set: the same three classes
    in the same order ``("normal", "bacterial", "viral")``, the same split sizes, and ground-truth
    lung and lesion masks that the real data sets do not have. It lets the whole kit run, losses be
    compared and lesions be localised without downloading anything.

What it is not
    Not a medical image and not a validated simulation. Anatomy and appearance are hand-tuned
    heuristics that look like a chest film at a glance; the "lesions" only mimic textbook patterns.
    Nothing learned on it says anything about patients. Every figure title says "phantom".

How an image is made (see ``_render``)
    An attenuation map ``A`` in patient coordinates -- body (neck, sloping shoulders, arms raised or
    down), two lungs (rounded-box shapes of varying width, height, taper and asymmetry, with
    diaphragm domes, the right one higher), heart shadow, radiating vessel markings and hila,
    posterior and anterior ribs, clavicles, spine, trachea, gastric bubble -- under a random pose
    (scale, shift, ~2 degree rotation). The film is ``1 - exp(-k A)`` with a random exposure ``k``,
    blur, an automatic window on its own 0.5/99.5 percentiles (as CR/DR consoles do, so that mean
    intensity does not give the class away), a random display window and gamma, and grain.
    Sizes >= 128 are rendered at half size and upsampled (masks by nearest neighbour).

Classes (severity ~ U(0, 1) per abnormal image, in ``meta``)
    normal     clear lungs; lesion mask empty.
    bacterial  lobar consolidation: one (20 %: two) dense, fluffy region(s) in one lung, with air
               bronchograms and often one sharp fissure edge; size and density grow with severity.
               Atypical (60 %): faint bilateral perihilar streaks, fading with severity.
    viral      bilateral, diffuse, fainter perihilar interstitial streaks and haze, one side weaker;
               extent and density grow with severity. Atypical (60 %): a small dense patch in one
               lung, denser when severity is low.
    The atypical signs make mild cases ambiguous mainly between the two pneumonias, as in the real
    data. Lesion masks (where the opacity is substantial) are subsets of the lung masks; lung masks
    leave out the heart shadow (the JSRT/Montgomery convention).

Knobs (``load("phantom", ...)`` = :func:`build`)
    seed         int, 0      every draw; image i uses ``np.random.default_rng([seed, i])`` only
    n            int, 5856   total images (>= 30); the Kermany mix and splits are scaled by n/5856
    n_test       int, None   size of the test draw (Kermany's test mix) instead of n's share; e.g. 6000
                             so that a comparison of losses is not limited by test-image noise
    n_val        int, None   size of the validation draw (the carve-out's mix) instead of n's share;
                             it is halved for early stopping / post-hoc fitting (support.data.halves)
    image_size   int, 256    side in pixels (>= 32); anatomy is defined in relative units
    difficulty   float, 1.0  divides the opacity of every lesion (> 0; higher = harder). At 1.0 a
                             logistic regression on 32x32 pixels stays near 0.60-0.68 test accuracy
                             (tests/test_phantom.py checks <= 0.70) and the quick profile's small CNN
                             at 64x64 reaches ~0.88-0.93, about two thirds of its errors bacterial <->
                             viral (version 3; version 1 left small basal foci that read as normal).
    label_noise  float, 0.0  in [0, 0.5]: share of the eligible train and val labels flipped (test labels
                             stay true; meta records true_label and label_flipped)
    noise_structure str, "symmetric"  or "pneumonia_mild": bacterial <-> viral flips, mostly mild cases
    shift        None        acquisition shift of the test split ("train hospital != test hospital"):
                             a preset ("hospital_b") or a dict of exposure / contrast / grain / blur /
                             device_marker; train and val films are unchanged. Details, ranges and the
                             preset: support.data.phantom_knobs. The three regime knobs leave the cache
                             and run keys of the clean data unchanged at their defaults.
    marker_bias  float, 0.0  in [0, 1]: strength of a shortcut. Every image has a burned-in corner
                             marker state -- none, top-left or top-right (a bright square with an
                             "L"-like glyph). In train and val the state is the class's own (normal:
                             top-left, bacterial: top-right, viral: none) with probability
                             ``marker_bias`` and uniform otherwise; in test it is always uniform. So 0
                             is no shortcut, 1 makes the marker alone give the training label, and a
                             model that leans on it loses accuracy on test.

Splits (Kermany v2 at n = 5856; each count scaled by n/5856, rounded, at least 1)
    test           N 234 / B 242 / V 148  (624)
    train folder   N 1349 / B 2538 / V 1345 (5232), of which
      val          10 % of each class: N 134 / B 253 / V 134 (521)
      train        the rest: N 1215 / B 2285 / V 1211 (4711)
    Rounding surplus goes to train bacterial, so the total is exactly n. Global indices run train,
    val, test (labels shuffled within each split); ids are ``phantom-s<seed>-<index, 6 digits>``.

Determinism: image i depends only on (seed, i, its label, its marker state), so any subset can be
rendered in any process with the same bytes (:func:`generate`). Labels and markers depend on (seed, n).
Speed: about 220 images/s at 256² in one process, more with ``build``'s two forked workers.

Layout (this module registers the source and assembles the bundle; it re-exports the names below)
    phantom_plan      class mix, split sizes, labels and marker states per index, parameter checks
    phantom_geometry  drawing primitives: smooth steps, smooth noise fields, upsampling, the pose
    phantom_anatomy   the patient: body, lungs, heart shadow, vessels, bones
    phantom_lesions   consolidation and interstitial signs (the classes)
    phantom_film      exposure, blur, windowing, grain; the burned-in corner marker
    phantom_render    one image from its random stream; ``generate`` for many (forked workers)
    phantom_knobs     the regime knobs: label noise and acquisition shift
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .containers import SPLITS, DataBundle, Split
from .core import register_source
from .phantom_film import _GLYPH, _draw_marker, _film, marker_region  # noqa: F401  (re-exported)
from .phantom_knobs import check_noise, device_markers, flip_labels, resolve_shift
from .phantom_plan import (  # noqa: F401  (re-exported)
    CLASSES, KERMANY_TEST, KERMANY_TOTAL, KERMANY_TRAIN_FOLDER, MARKER_OF_CLASS, MARKER_STATES, MIN_N, MIN_SIZE,
    VAL_FRACTION, _check, _mix, _plan, split_counts)
from .phantom_render import _generate_chunk, _render, _workers, generate  # noqa: F401  (re-exported)


@register_source("phantom", version=3, keyless=("label_noise", "noise_structure", "shift"))
def build(seed: int = 0, n: int = KERMANY_TOTAL, image_size: int = 256, difficulty: float = 1.0,
          marker_bias: float = 0.0, n_test: Optional[int] = None, n_val: Optional[int] = None,
          label_noise: float = 0.0, noise_structure: str = "symmetric", shift=None) -> DataBundle:
    """The default data: ``n`` phantom chest films in Kermany's class mix and splits (see the module doc).

    ``n_test`` / ``n_val`` give the test and validation draws their own size (generated films cost
    nothing: size them to the effect a comparison must detect); the training split stays that of ``n``.
    ``label_noise`` / ``noise_structure`` / ``shift``: the regime knobs (at their defaults the bundle,
    and its cache and run keys, are those of the clean data).
    """
    _check(image_size, difficulty, marker_bias)
    check_noise(label_noise, noise_structure)
    film_shift = resolve_shift(shift)
    plan = _plan(seed, n, float(marker_bias), n_test, n_val)
    split_of = plan["split"].to_numpy()
    devices = np.zeros(len(plan), bool)
    if film_shift is not None:
        for s_i, name in enumerate(SPLITS):
            rows = np.flatnonzero(split_of == name)
            devices[rows] = device_markers(seed, s_i, len(rows), film_shift["device_marker"][name == "test"])
    big = len(plan) * image_size ** 2 >= 1000 * 128 ** 2                    # below this a pool costs more than it saves
    images, lungs, lesions, meta = generate(plan["index"].to_numpy(), plan["label"].to_numpy(), image_size, seed,
                                            difficulty, plan["marker"].to_numpy(), workers=2 if big else 1,
                                            shift=film_shift, shifted=split_of == "test", devices=devices)
    meta.insert(0, "id", [f"phantom-s{seed}-{i:06d}" for i in plan["index"]])
    meta.insert(2, "split", split_of)
    labels = plan["label"].to_numpy().copy()
    if label_noise > 0:
        meta["true_label"] = labels.copy()
        for s_i, name in enumerate(SPLITS[:2]):                               # train and val; test stays true
            rows = np.flatnonzero(split_of == name)
            labels[rows] = flip_labels(labels[rows], meta["severity"].to_numpy()[rows], label_noise,
                                       noise_structure, seed, s_i)
        meta["label"], meta["class"] = labels, np.asarray(CLASSES)[labels]
        meta["label_flipped"] = labels != meta["true_label"].to_numpy()
    if film_shift is not None:
        meta["acquisition"] = np.where(split_of == "test", "shifted", "reference")
        meta["device_marker"] = devices
    splits = {}
    for name in SPLITS:
        rows = np.flatnonzero(split_of == name)
        splits[name] = Split(images=torch.from_numpy(images[rows]), labels=torch.from_numpy(labels[rows]),
                             ids=meta["id"].iloc[rows].tolist(), lung_masks=torch.from_numpy(lungs[rows]),
                             lesion_masks=torch.from_numpy(lesions[rows]), meta=meta.iloc[rows].reset_index(drop=True))
    extra = (f", difficulty {difficulty:g}" if difficulty != 1.0 else "") + \
        (f", marker_bias {marker_bias:g}" if marker_bias else "") + \
        (f", test {n_test}" if n_test is not None else "") + (f", val {n_val}" if n_val is not None else "") + \
        (f", {label_noise:.0%} {noise_structure} label noise in train/val" if label_noise > 0 else "") + \
        (f", test acquisition shift {shift if isinstance(shift, str) else film_shift}" if film_shift else "")
    source = f"CXR phantom (generated, seed {seed}, n={n}, {image_size}²{extra})"
    return DataBundle(classes=CLASSES, splits=splits, source=source, name="phantom")


def preview_grid(bundle: DataBundle, n_per_class: int = 4, split: str = "train", seed: int = 0):
    """Random ``split`` images per class with lung (cyan) and lesion (red) contours and severities.

    The grid itself is :func:`support.explore.sample_grid` (one drawing routine for every source).
    """
    from ..explore import sample_grid

    return sample_grid(bundle, split=split, n_per_class=n_per_class, seed=seed)
