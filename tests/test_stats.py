"""support.stats: intervals, vectorised bootstrap metrics and paired tests."""
import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from support import metrics as M
from support import stats as S

CLASSES = ("normal", "bacterial", "viral")


def make_case(n=624, k=3, strength=2.0, seed=0, ties=False):
    """Labels and softmax probabilities of a moderately good classifier."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += strength
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    if ties:  # coarse scores: many tied thresholds
        p = np.round(p, 1) + 1e-3
        p /= p.sum(1, keepdims=True)
    return y, p


def test_wald_matches_paper_headline():
    # paper: MCC 0.9068, n = 624 -> 0.9068 ± 0.0228 with 1.96·sqrt(p(1−p)/n)
    lo, hi = S.wald_ci(0.9068, 624)
    half = 1.959964 * math.sqrt(0.9068 * (1 - 0.9068) / 624)
    assert (hi - lo) / 2 == pytest.approx(half, rel=1e-5)
    assert round((hi - lo) / 2, 4) == 0.0228
    assert (round(lo, 4), round(hi, 4)) == (0.8840, 0.9296)
    assert all(np.isnan(S.wald_ci(-0.2, 624)))  # a negative MCC has no Wald interval


def test_resample_indices_stratified_keeps_class_counts():
    y = np.array([0] * 5 + [1] * 3 + [2] * 2)
    idx = S.resample_indices(y, 50, stratified=True, seed=1)
    assert idx.shape == (50, 10)
    for row in idx:
        assert np.array_equal(np.bincount(y[row], minlength=3), [5, 3, 2])


@pytest.mark.parametrize("k", [2, 3, 5])
def test_vectorised_confusion_metrics_equal_sklearn(k):
    y, p = make_case(n=120, k=k, strength=0.8, seed=k)
    idx = S.resample_indices(y, 40, stratified=False, seed=k)
    for name in S.FROM_CONFUSION:
        fast = S.bootstrap_values(y, p, name, idx)
        slow = [M.METRICS.get(name)(y[i], p[i]) for i in idx]
        assert fast == pytest.approx(slow, abs=1e-12, nan_ok=True), name
    cms = S.batched_confusion(y, p.argmax(1), idx, k)
    assert np.array_equal(cms[0], skm.confusion_matrix(y[idx[0]], p.argmax(1)[idx[0]], labels=range(k)))
    assert S.mcc_from_confusion(cms) == pytest.approx(
        [skm.matthews_corrcoef(y[i], p.argmax(1)[i]) for i in idx], abs=1e-12)


def test_mcc_degenerate_confusions_equal_sklearn():
    y = np.array([0, 1, 2, 0])
    for pred in (np.zeros(4, int), y, np.array([1, 2, 0, 1])):
        cm = skm.confusion_matrix(y, pred, labels=range(3))
        assert S.mcc_from_confusion(cm) == pytest.approx(skm.matthews_corrcoef(y, pred))


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "tied-scores"])
def test_vectorised_ranking_and_per_sample_metrics_equal_metrics(ties):
    y, p = make_case(n=150, ties=ties, seed=3)
    idx = S.resample_indices(y, 20, stratified=False, seed=4)
    for name in ["auroc_micro", "auroc_macro", "auprc_micro", "auprc_macro", "brier", "log_loss"]:
        fast = S.bootstrap_values(y, p, name, idx)
        slow = [M.METRICS.get(name)(y[i], p[i]) for i in idx]
        assert fast == pytest.approx(slow, abs=1e-12), name


def test_bootstrap_mcc_is_fast():
    y, p = make_case(n=624)
    start = time.perf_counter()
    S.bootstrap_ci(y, p, "mcc", n_boot=1000)
    assert time.perf_counter() - start < 2.0


def test_bootstrap_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (200, 2000):
        y, p = make_case(n=n, seed=n)
        lo, hi = S.bootstrap_ci(y, p, "mcc", n_boot=400)
        assert lo <= M.METRICS.get("mcc")(y, p) <= hi
        widths.append(hi - lo)
    assert widths[1] < 0.5 * widths[0]  # width ~ 1/sqrt(n): expect about 0.32x
    y, p = make_case(n=200)
    assert S.bootstrap_ci(y, p, "mcc", n_boot=200, seed=5) == S.bootstrap_ci(y, p, "mcc", n_boot=200, seed=5)


def test_metrics_with_ci_table():
    y, p = make_case(n=300)
    table = S.metrics_with_ci(y, p, CLASSES, n_boot=200, metrics=["mcc", "accuracy", "auroc_micro", "ece"])
    assert list(table.columns) == ["value", "wald_lo", "wald_hi", "boot_lo", "boot_hi"]
    assert list(table.index) == ["mcc", "accuracy", "auroc_micro", "ece"] + [f"recall_{c}" for c in CLASSES]
    assert (table["boot_lo"] <= table["value"]).all() and (table["value"] <= table["boot_hi"]).all()
    assert tuple(table.loc["mcc", ["wald_lo", "wald_hi"]]) == pytest.approx(S.wald_ci(table.loc["mcc", "value"], 300))
    assert table.loc["ece", ["wald_lo", "wald_hi"]].isna().all()  # no Wald interval for a loss
    n_normal = int(np.sum(y == 0))  # per-class recall: Wald on the class count
    assert tuple(table.loc["recall_normal", ["wald_lo", "wald_hi"]]) == pytest.approx(
        S.wald_ci(table.loc["recall_normal", "value"], n_normal))


def test_mcnemar_hand_table():
    # A right / B wrong on 10 samples (b), A wrong / B right on 2 (c), 20 both right, 3 both wrong
    y = np.zeros(35, int)
    pred_a = np.r_[np.zeros(10), np.ones(2), np.zeros(20), np.ones(3)].astype(int)
    pred_b = np.r_[np.ones(10), np.zeros(2), np.zeros(20), np.ones(3)].astype(int)
    stat, p, table = S.mcnemar_exact(y, pred_a, pred_b)
    assert np.array_equal(table, [[20, 10], [2, 3]])
    assert stat == 2
    assert p == pytest.approx(sps.binomtest(2, 12, 0.5).pvalue)  # exact two-sided binomial on b + c = 12


def test_holm_hand_computed():
    # sorted 0.01, 0.03, 0.04, 0.20 -> ×4, ×3, ×2, ×1 = 0.04, 0.09, 0.08, 0.20;
    # step-down keeps them non-decreasing: 0.04, 0.09, 0.09, 0.20 (back in input order)
    assert S.holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    out = S.holm([0.01, np.nan, 0.04])  # NaN is neither adjusted nor counted
    assert out[[0, 2]] == pytest.approx([0.02, 0.04]) and np.isnan(out[1])


def test_paired_bootstrap_delta_and_symmetry():
    y, pa = make_case(n=300, strength=2.5, seed=1)
    _, pb = make_case(n=300, strength=1.0, seed=2)
    ab = S.paired_bootstrap(y, pa, pb, n_boot=300)
    ba = S.paired_bootstrap(y, pb, pa, n_boot=300)
    assert ab["delta"] == pytest.approx(M.METRICS.get("mcc")(y, pa) - M.METRICS.get("mcc")(y, pb))
    assert ab["lo"] <= ab["delta"] <= ab["hi"]
    assert ba["delta"] == pytest.approx(-ab["delta"]) and ba["p_value"] == pytest.approx(ab["p_value"])
    same = S.paired_bootstrap(y, pa, pa, n_boot=300)
    assert same == {"delta": 0.0, "lo": 0.0, "hi": 0.0, "p_value": 1.0}


def test_pairwise_table_and_identical_models():
    y, pa = make_case(n=200, seed=1)
    _, pb = make_case(n=200, strength=0.5, seed=2)
    table = S.pairwise_comparisons(y, {"a": pa, "b": pb, "a_copy": pa.copy()}, n_boot=200)
    assert table.shape[0] == 3 and list(table[["model_a", "model_b"]].itertuples(index=False, name=None)) == [
        ("a", "b"), ("a", "a_copy"), ("b", "a_copy")]
    for col in ["delta", "delta_lo", "delta_hi", "p_bootstrap", "p_mcnemar", "p_bootstrap_holm",
                "p_mcnemar_holm", "significant", "mcc_a", "mcc_b"]:
        assert col in table.columns
    same = table.iloc[1]
    assert (same["delta"], same["delta_lo"], same["delta_hi"]) == (0.0, 0.0, 0.0)
    assert same["p_bootstrap"] == 1.0 and same["p_mcnemar"] == 1.0 and not same["significant"]
    assert table["p_bootstrap_holm"].tolist() == pytest.approx(S.holm(table["p_bootstrap"]).tolist())


def test_compare_to_reference():
    y, pa = make_case(n=200, seed=1)
    _, pb = make_case(n=200, strength=0.5, seed=2)
    table = S.compare_to_reference(y, {"ce": pa, "focal": pb, "ce2": pa}, reference="ce", n_boot=200)
    assert list(table["model_a"]) == ["focal", "ce2"] and set(table["model_b"]) == {"ce"}
    assert table.loc[1, "delta"] == 0.0
    with pytest.raises(ValueError, match="reference 'hinge' is not among"):
        S.compare_to_reference(y, {"ce": pa}, reference="hinge")


def test_too_few_resamples_for_holm_warns():
    y, pa = make_case(n=100)
    with pytest.warns(UserWarning, match="use n_boot >= 120"):
        S.pairwise_comparisons(y, {"a": pa, "b": pa, "c": pa}, n_boot=50)


def test_summarize_over_seeds_hand_computed():
    df = pd.DataFrame({"loss": ["ce"] * 3 + ["focal"], "seed": [0, 1, 2, 0], "mcc": [0.7, 0.8, 0.9, 0.75]})
    out = S.summarize_over_seeds(df, ["loss"], ["mcc"])
    ce = out[out["loss"] == "ce"].iloc[0]
    # mean 0.8, sd 0.1, half-width t(0.975, 2) · 0.1 / sqrt(3) = 4.302653 · 0.057735 = 0.248414
    assert (ce["mean"], ce["sd"], ce["n_seeds"]) == pytest.approx((0.8, 0.1, 3))
    assert (ce["ci_lo"], ce["ci_hi"]) == pytest.approx((0.8 - 0.248414, 0.8 + 0.248414), abs=1e-6)
    focal = out[out["loss"] == "focal"].iloc[0]
    assert focal["n_seeds"] == 1 and np.isnan(focal["sd"]) and np.isnan(focal["ci_lo"])
    with pytest.raises(ValueError, match=r"columns \['auroc'\] not in the table"):
        S.summarize_over_seeds(df, ["loss"], ["auroc"])
