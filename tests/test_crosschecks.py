"""Our metrics and segmentation losses against independent implementations already installed.

segmentation-models-pytorch (a dependency) for the Dice / Tversky / focal-Tversky / BCE / focal losses
and for per-image Dice / IoU; for ECE, the binning loop of Guo et al. 2017's reference code
(gpleiss/temperature_scaling ``_ECELoss``), restated: no ECE library is a dependency; for the pointing
game and energy, Quantus's definitions (``PointingGame``, ``RelevanceMassAccuracy``), restated.
"""
from __future__ import annotations

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from support import losses, metrics
from support.localization import metrics as loc
from support.segmentation.metrics import per_image_metrics

TOL = dict(rtol=1e-7, atol=1e-9)  # float64 throughout


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 16, 16, generator=g, dtype=torch.float64) * 2
    mask = torch.rand(3, 1, 16, 16, generator=g) > 0.6
    return logits, mask


# ours -> smp. Tversky: our alpha weights false negatives, smp's alpha false positives (module doc of
# support.losses.segmentation), so the pair is swapped. smp's binary modes pool the whole batch, as ours do.
# Dice is compared (almost) unsmoothed: smp's smoothing changed meaning across releases (0.3: (2TP+s)/(P+T+s),
# the paper's Keras form that we keep; 0.5+: Tversky(0.5, 0.5), i.e. (2TP+2s)/(P+T+2s)).
SMP_CASES = {
    "seg_dice": (dict(smooth=1e-12), lambda: smp.losses.DiceLoss("binary", from_logits=True, smooth=0.0, eps=0.0)),
    "seg_tversky": (dict(), lambda: smp.losses.TverskyLoss("binary", from_logits=True, smooth=1e-10, eps=0.0,
                                                           alpha=0.3, beta=0.7, gamma=1.0)),
    "seg_focal_tversky": (dict(), lambda: smp.losses.TverskyLoss("binary", from_logits=True, smooth=1e-10, eps=0.0,
                                                                 alpha=0.3, beta=0.7, gamma=0.75)),
    "seg_bce": (dict(), lambda: smp.losses.SoftBCEWithLogitsLoss()),
    "seg_focal": (dict(alpha=0.25, gamma=2.0), lambda: smp.losses.FocalLoss("binary", alpha=0.25, gamma=2.0)),
}


@pytest.mark.parametrize("name", sorted(SMP_CASES))
def test_segmentation_loss_matches_smp(name, batch):
    logits, mask = batch
    params, smp_loss = SMP_CASES[name]
    ours = losses.build(name, **params)(logits, mask)
    theirs = smp_loss()(logits, mask.to(logits.dtype))
    torch.testing.assert_close(ours, theirs.to(ours.dtype), **TOL)


def test_bce_dice_is_smps_bce_plus_smps_dice(batch):
    logits, mask = batch
    t = mask.to(logits.dtype)
    theirs = smp.losses.SoftBCEWithLogitsLoss()(logits, t) + \
        smp.losses.DiceLoss("binary", from_logits=True, smooth=0.0, eps=0.0)(logits, t)
    torch.testing.assert_close(losses.build("seg_bce_dice", smooth=1e-12)(logits, mask), theirs, **TOL)


def test_per_image_dice_iou_accuracy_match_smp_metrics():
    g = torch.Generator().manual_seed(1)
    pred, true = torch.rand(6, 20, 20, generator=g) > 0.5, torch.rand(6, 20, 20, generator=g) > 0.4
    pred[0], true[0] = False, False  # both empty: 1 by our convention, smp's zero_division=1
    pred[1] = False                  # nothing found: 0
    ours = per_image_metrics(pred, true)
    tp, fp, fn, tn = smp.metrics.get_stats(pred[:, None].long(), true[:, None].long(), mode="binary")
    for column, fn_smp in (("dice", smp.metrics.f1_score), ("iou", smp.metrics.iou_score),
                           ("pixel_accuracy", smp.metrics.accuracy)):
        theirs = fn_smp(tp, fp, fn, tn, reduction="none", zero_division=1.0).double().flatten().numpy()
        np.testing.assert_allclose(ours[column].to_numpy(), theirs, **TOL, err_msg=column)
    assert ours["dice"].iloc[0] == 1.0 and ours["dice"].iloc[1] == 0.0


def _ece_reference(y, p, n_bins=15):
    """Guo et al. 2017's reference loop (temperature_scaling ``_ECELoss``): bins (lo, hi] on max probability."""
    conf, pred = p.max(1), p.argmax(1)
    correct = (pred == y).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.mean() > 0:
            ece += abs(conf[inside].mean() - correct[inside].mean()) * inside.mean()
    return ece


@pytest.mark.parametrize("n_bins", [15, 7])
def test_ece_matches_the_reference_binning(n_bins):
    rng = np.random.default_rng(2)
    z = rng.normal(size=(500, 3)) * 2
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = rng.integers(0, 3, 500)
    assert metrics.ece(y, p, n_bins=n_bins) == pytest.approx(_ece_reference(y, p, n_bins), rel=1e-9)
    y_good = p.argmax(1)  # always right: ECE = mean(1 - confidence)
    assert metrics.ece(y_good, p, n_bins=n_bins) == pytest.approx(_ece_reference(y_good, p, n_bins), rel=1e-9)


def test_pointing_and_energy_match_quantus_definitions():
    """Quantus PointingGame: hit = any(mask[argwhere(a == max a)]); RelevanceMassAccuracy: sum(a*s) / sum(a).
    Ours equal them where both are defined and the maximum is unique (ties: see support.localization.metrics)."""
    rng = np.random.default_rng(3)
    cams = rng.random((8, 12, 12))
    masks = rng.random((8, 12, 12)) > 0.7
    quantus_hit = [float(np.any(m.flatten()[np.argwhere(a.flatten() == a.max())])) for a, m in zip(cams, masks)]
    quantus_mass = [(a * m).sum() / a.sum() for a, m in zip(cams, masks)]
    np.testing.assert_array_equal(loc.pointing_game(cams, masks), quantus_hit)
    np.testing.assert_allclose(loc.energy_inside(cams, masks), quantus_mass, **TOL)
