"""Seed × image inference (support.inference) on simulated studies with a known answer.

A simulated study: a fresh test draw of N images (difficulty u_i ~ U(0, 1), labels uniform over 3
classes) and one model per training seed s with threshold tau_s ~ N(tau, SEED_SD); the model is right
on image i when u_i + e_si < tau_s, e ~ U(-WIDTH, WIDTH) (a seed x image interaction). The expected
accuracy over test draws and seeds is then exactly tau, the answer the intervals must cover.
"""
import numpy as np
import pandas as pd
import pytest

from support import inference

N_IMAGES, N_SEEDS, TAU, SEED_SD, WIDTH = 1500, 5, 0.85, 0.02, 0.05


def _models(y, u, taus, rng):
    """probs[S, N, 3] of one model per threshold in ``taus`` on images (y, u)."""
    n, probs = len(y), []
    for tau in taus:
        right = u + rng.uniform(-WIDTH, WIDTH, n) < tau
        pred = np.where(right, y, (y + 1 + rng.integers(0, 2, n)) % 3)
        p = np.full((n, 3), 0.1)
        p[np.arange(n), pred] = 0.8
        probs.append(p)
    return np.stack(probs)


def _draw(rng):
    return rng.integers(0, 3, N_IMAGES), rng.random(N_IMAGES)


def _seeds(rng, shift=0.0):
    return TAU + shift + SEED_SD * rng.standard_normal(N_SEEDS)


def _one_study(rng, i):
    """One simulated study's seed x image interval of the accuracy (a fresh test draw, 5 seeds)."""
    y, u = _draw(rng)
    return inference.model_intervals(y, {"m": _models(y, u, _seeds(rng), rng)}, metric="accuracy",
                                     n_boot=100, seed=i).iloc[0]


def test_interval_covers_the_true_accuracy_93_to_97_percent():
    rng = np.random.default_rng(0)
    hits = []
    for i in range(600):
        row = _one_study(rng, i)
        hits.append(row["lo"] <= TAU <= row["hi"])
    assert 0.93 <= np.mean(hits) <= 0.97, np.mean(hits)


def test_image_only_interval_undercovers_when_seeds_vary():
    """The old interval (test images resampled for fixed seeds) leaves seed noise out: it fails here."""
    rng = np.random.default_rng(1)
    hits = []
    for i in range(200):
        row = _one_study(rng, i)
        assert row["se_seed"] > 0 and row["se_image"] > 0
        half = 1.96 * row["se_image"]
        hits.append(abs(row["estimate"] - TAU) <= half)
    assert np.mean(hits) < 0.85


def test_paired_test_rejects_about_5_percent_without_a_difference():
    rng = np.random.default_rng(2)
    rejected = []
    for i in range(500):
        y, u = _draw(rng)  # both losses scored on the same test images
        probs = {"a": _models(y, u, _seeds(rng), rng), "b": _models(y, u, _seeds(rng), rng)}
        t = inference.paired_tests(y, probs, [("a", "b")], metric="accuracy", n_boot=100, seed=i)
        rejected.append(t["p_value"].iloc[0] < 0.05)
    assert 0.03 <= np.mean(rejected) <= 0.075, np.mean(rejected)


def test_mde_is_the_difference_found_80_percent_of_the_time():
    """The MDE formula at the true standard error gives ~80 % power, and the tables' estimate (from one
    study's 5 seeds) lands near it: its median is ~0.8x the true MDE, an estimate, not a guarantee."""
    def study(rng, i, delta):
        y, u = _draw(rng)
        probs = {"a": _models(y, u, _seeds(rng, delta), rng), "b": _models(y, u, _seeds(rng), rng)}
        return inference.paired_tests(y, probs, [("a", "b")], metric="accuracy", n_boot=100, seed=i).iloc[0]

    rng = np.random.default_rng(3)
    null = [study(rng, i, 0.0) for i in range(150)]
    true_se = np.std([r["delta"] for r in null])  # the spread of the estimate over simulated studies
    true_mde = float(inference.minimum_detectable_effect(true_se, N_SEEDS - 1))
    assert 0.7 * true_mde <= np.median([r["mde"] for r in null]) <= 1.1 * true_mde
    detected = [study(rng, i, true_mde)["p_value"] < 0.05 for i in range(200)]
    assert 0.72 <= np.mean(detected) <= 0.92, (true_mde, np.mean(detected))


def test_identical_models_are_an_alias_with_p_one_and_holm_counts_the_family():
    rng = np.random.default_rng(4)
    y, u = _draw(rng)
    a = _models(y, u, _seeds(rng), rng)
    probs = {"a": a, "a_copy": a.copy(), "c": _models(y, u, _seeds(rng, 0.1), rng)}
    t = inference.paired_tests(y, probs, [("a_copy", "a"), ("c", "a")], metric="mcc", n_boot=100)
    alias, real = t.iloc[0], t.iloc[1]
    assert alias["identical"] and alias["p_value"] == 1.0 and alias["delta"] == 0
    assert real["delta"] > 0.1 and real["significant"] and real["p_holm"] == pytest.approx(min(1, 2 * real["p_value"]))
    assert (t["p_floor_holm"] <= 0.05 / len(t)).all()
    assert t.attrs["n_tests"] == 2 and t.attrs["n_seeds"] == N_SEEDS


def test_bad_inputs_name_the_problem():
    rng = np.random.default_rng(5)
    y, u = _draw(rng)
    five, four = _models(y, u, _seeds(rng), rng), _models(y, u, _seeds(rng)[:4], rng)
    with pytest.raises(ValueError, match="differ in seeds"):
        inference.model_intervals(y, {"a": five, "b": four})
    with pytest.raises(ValueError, match="not among"):
        inference.paired_tests(y, {"a": five}, [("a", "zz")])
    with pytest.raises(ValueError):
        inference.model_intervals(y[:-1], {"a": five})


def test_one_seed_gives_an_image_level_interval_only():
    rng = np.random.default_rng(6)
    y, u = _draw(rng)
    row = inference.model_intervals(y, {"a": _models(y, u, [TAU], rng)}, n_boot=100).iloc[0]
    assert row["n_seeds"] == 1 and np.isnan(row["se_seed"]) and row["se"] == pytest.approx(row["se_image"])


def test_mde_with_few_degrees_of_freedom_is_large_or_infinite_never_an_error():
    two_seeds = inference.minimum_detectable_effect(0.01, 1.0, 0.05 / 14)
    assert 1.0 < two_seeds < np.inf  # t with 1 df at alpha/14: hundreds of standard errors
    assert inference.minimum_detectable_effect(0.0, np.inf) == 0.0
    # (Satterthwaite's df is never below seeds - 1 >= 1, so df < 1 does not occur)


def test_seed_summary_leaves_undefined_seeds_out_of_mean_and_sd():
    from support.inference import seed_summary

    assert seed_summary([0.5, 0.7]) == pytest.approx((0.6, np.std([0.5, 0.7], ddof=1)))
    mean, sd = seed_summary([0.5, float("nan"), 0.7])       # a metric undefined on one seed
    assert mean == pytest.approx(0.6) and sd == pytest.approx(np.std([0.5, 0.7], ddof=1))
    mean, sd = seed_summary([0.4, float("nan")])             # one defined seed: no sd
    assert mean == pytest.approx(0.4) and np.isnan(sd)
    assert all(np.isnan(seed_summary([float("nan")])))
