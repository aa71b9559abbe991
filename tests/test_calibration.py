"""The calibration protocol (support.calibration) and the calibration measures it reads."""
import numpy as np
import pytest
from scipy.special import softmax

from support import calibration, metrics

K, N = 3, 20000


def _sampled(rng, sharpen=1.0):
    """Labels drawn from softmax(z); the reported probabilities are softmax(sharpen * z)."""
    z = rng.normal(0, 2, (N, K))
    true = softmax(z, axis=1)
    y = np.array([rng.choice(K, p=p) for p in true])
    return y, softmax(sharpen * z, axis=1)


def test_calibrated_probabilities_score_near_zero_and_overconfident_ones_do_not():
    rng = np.random.default_rng(0)
    y, p = _sampled(rng)
    _, over = _sampled(np.random.default_rng(0), sharpen=2.0)
    for m in ("ece", "adaptive_ece", "classwise_ece"):
        assert metrics.METRICS.get(m)(y, p) < 0.015
        assert metrics.METRICS.get(m)(y, over) > 0.05
    assert metrics.METRICS.get("mce")(y, over) >= metrics.METRICS.get("ece")(y, over)


def test_hand_values_of_the_binned_measures():
    # binary: [0.9, 0.1] y=0 (right), [0.7, 0.3] y=1 (wrong): conf 0.9 / 0.7 in different bins
    y, p = np.array([0, 1]), np.array([[0.9, 0.1], [0.7, 0.3]])
    assert metrics.METRICS.get("ece")(y, p) == pytest.approx((0.1 + 0.7) / 2)
    assert metrics.METRICS.get("mce")(y, p) == pytest.approx(0.7)
    assert metrics.METRICS.get("adaptive_ece")(y, p) == pytest.approx((0.1 + 0.7) / 2)  # 2 images: 1 per bin
    # classwise: class 0 sees p0 = 0.9 (y0 = 1) and 0.7 (y0 = 0): |1 - .9| + |0 - .7|; class 1 the same mirrored
    assert metrics.METRICS.get("classwise_ece")(y, p) == pytest.approx((0.1 + 0.7 + 0.1 + 0.7) / (2 * 2))


def test_temperature_scaling_recovers_the_temperature_and_lowers_nll_and_ece():
    rng = np.random.default_rng(1)
    y, over = _sampled(rng, sharpen=2.0)
    t = calibration.fit_temperature(over, y)
    assert t == pytest.approx(2.0, rel=0.08)
    fixed = calibration.scale(over, t)
    assert np.allclose(fixed.sum(1), 1) and (fixed.argmax(1) == over.argmax(1)).all()  # ranking unchanged
    assert metrics.METRICS.get("log_loss")(y, fixed) < metrics.METRICS.get("log_loss")(y, over)
    assert metrics.METRICS.get("ece")(y, fixed) < 0.02 < metrics.METRICS.get("ece")(y, over)
    assert calibration.scale(over, 1.0) == pytest.approx(over)


@pytest.mark.parametrize("metric", ["ece", "mce", "classwise_ece", "adaptive_ece"])
def test_vectorised_bootstrap_of_the_binned_measures_equals_the_metric_on_each_resample(metric):
    from support import stats

    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 3, 400), rng.dirichlet([2, 1, 1], 400)
    idx = stats.resample_indices(y, 25, seed=1)
    fast = stats.bootstrap_values(y, p, metric, idx)
    slow = np.array([metrics.METRICS.get(metric)(y[i], p[i]) for i in idx])
    assert fast == pytest.approx(slow, abs=1e-12)
