"""support.metrics: hand-derived cases and cross-checks against scikit-learn."""
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from support import metrics as M

CLASSES = ("normal", "bacterial", "viral")

# Hand-made 3-class case. Labels and argmax predictions:
#   true 0 -> pred 0, 0, 0, 1      row [3, 1, 0]
#   true 1 -> pred 1, 1, 2         row [0, 2, 1]
#   true 2 -> pred 2, 2, 0         row [1, 0, 2]
Y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PROBS = np.array([
    [0.80, 0.15, 0.05], [0.60, 0.30, 0.10], [0.50, 0.20, 0.30], [0.30, 0.45, 0.25],
    [0.10, 0.70, 0.20], [0.25, 0.40, 0.35], [0.20, 0.35, 0.45],
    [0.05, 0.15, 0.80], [0.30, 0.10, 0.60], [0.55, 0.05, 0.40],
])
CONFUSION = np.array([[3, 1, 0], [0, 2, 1], [1, 0, 2]])


def test_hand_case_confusion_and_label_metrics():
    assert np.array_equal(M.confusion(Y, PROBS.argmax(1), 3), CONFUSION)
    m = M.classification_metrics(Y, PROBS, CLASSES)
    # accuracy = trace / N = 7 / 10
    assert m["accuracy"] == pytest.approx(0.7)
    # MCC (Gorodkin): t = p = [4, 3, 3], n = 10, c = 7:
    # (c·n − t·p) / sqrt((n² − p·p)(n² − t·t)) = (70 − 34) / sqrt(66 · 66) = 6/11
    assert m["mcc"] == pytest.approx(6 / 11)
    # kappa: po = 0.7, pe = t·p / n² = 0.34 -> (0.7 − 0.34) / 0.66 = 6/11
    assert m["kappa"] == pytest.approx(6 / 11)
    # per-class recall 3/4, 2/3, 2/3; weighted precision = (4·3/4 + 3·2/3 + 3·2/3) / 10 = 0.7
    assert [m[f"recall_{c}"] for c in CLASSES] == pytest.approx([0.75, 2 / 3, 2 / 3])
    assert m["precision"] == pytest.approx(0.7)


def test_hand_case_matches_sklearn():
    m = M.classification_metrics(Y, PROBS, CLASSES)
    pred, onehot = PROBS.argmax(1), label_binarize(Y, classes=[0, 1, 2])
    expected = {
        "accuracy": skm.accuracy_score(Y, pred),
        "precision": skm.precision_score(Y, pred, average="weighted"),
        "recall": skm.recall_score(Y, pred, average="weighted"),
        "f1": skm.f1_score(Y, pred, average="weighted"),
        "mcc": skm.matthews_corrcoef(Y, pred),
        "kappa": skm.cohen_kappa_score(Y, pred),
        "auroc_micro": skm.roc_auc_score(onehot, PROBS, average="micro"),
        "auroc_macro": skm.roc_auc_score(Y, PROBS, multi_class="ovr", average="macro"),
        "auprc_micro": skm.average_precision_score(onehot, PROBS, average="micro"),
        "auprc_macro": skm.average_precision_score(onehot, PROBS, average="macro"),
        "log_loss": skm.log_loss(Y, PROBS),
        "brier": skm.brier_score_loss(Y, PROBS, scale_by_half=False),
    }
    for name, value in expected.items():
        assert m[name] == pytest.approx(value), name
    for c, cls in enumerate(CLASSES):
        assert m[f"auroc_{cls}"] == pytest.approx(skm.roc_auc_score(onehot[:, c], PROBS[:, c]))
        assert m[f"auprc_{cls}"] == pytest.approx(skm.average_precision_score(onehot[:, c], PROBS[:, c]))


def test_registry_covers_report_and_directions():
    m = M.classification_metrics(Y, PROBS, CLASSES)
    for name in M.METRICS:
        assert M.METRICS.get(name)(Y, PROBS) == pytest.approx(m[name], nan_ok=True)
    assert {"mcc", "accuracy", "auroc_micro", "ece", "brier", "log_loss"} <= set(M.METRICS.names())
    assert not M.METRICS.get("log_loss").greater_is_better and M.METRICS.get("mcc").greater_is_better
    with pytest.raises(ValueError, match="unknown metric 'mccc'.*Did you mean 'mcc'"):
        M.METRICS.get("mccc")


# ECE hand case (binary, 15 bins of width 1/15, right-closed):
#   [0.92, 0.08] y=0 correct, conf 0.92 -> bin 13 (0.867, 0.933]
#   [0.88, 0.12] y=1 wrong,   conf 0.88 -> bin 13
#   [0.22, 0.78] y=1 correct, conf 0.78 -> bin 11 (0.733, 0.800]
#   [0.45, 0.55] y=0 wrong,   conf 0.55 -> bin 8  (0.533, 0.600]
# bin 13: acc 1/2, conf 0.90 -> 2/4 · 0.40 = 0.2000
# bin 11: acc 1,   conf 0.78 -> 1/4 · 0.22 = 0.0550
# bin 8:  acc 0,   conf 0.55 -> 1/4 · 0.55 = 0.1375      ECE = 0.3925
Y_CAL = np.array([0, 1, 1, 0])
P_CAL = np.array([[0.92, 0.08], [0.88, 0.12], [0.22, 0.78], [0.45, 0.55]])


def test_ece_hand_computed():
    assert M.METRICS.get("ece")(Y_CAL, P_CAL) == pytest.approx(0.3925)
    # with one bin: |mean correct − mean conf| = |0.5 − 0.7825| = 0.2825
    assert M.ece(Y_CAL, P_CAL, n_bins=1) == pytest.approx(0.2825)


def test_reliability_table():
    table = M.reliability(Y_CAL, P_CAL)
    assert list(table.columns) == ["bin", "lo", "hi", "count", "confidence", "accuracy"]
    assert len(table) == 15 and table["count"].sum() == 4
    row = table.loc[13]
    assert (row["lo"], row["hi"]) == pytest.approx((13 / 15, 14 / 15))
    assert (row["count"], row["confidence"], row["accuracy"]) == pytest.approx((2, 0.90, 0.5))
    assert table.loc[0, ["confidence", "accuracy"]].isna().all()  # empty bin
    used = table[table["count"] > 0]
    ece = (used["count"] / 4 * (used["accuracy"] - used["confidence"]).abs()).sum()
    assert ece == pytest.approx(0.3925)


def test_brier_hand_computed():
    # sum over both classes per sample: 0.0128, 1.5488, 0.0968, 0.6050 -> mean 0.56585
    assert M.METRICS.get("brier")(Y_CAL, P_CAL) == pytest.approx(0.56585)
    # = twice the one-column binary convention mean((p_1 − y)²)
    assert M.METRICS.get("brier")(Y_CAL, P_CAL) == pytest.approx(2 * skm.brier_score_loss(Y_CAL, P_CAL[:, 1]))
    # 3 classes: [0.7, 0.2, 0.1] y=0 -> 0.09 + 0.04 + 0.01 = 0.14; [0.1, 0.3, 0.6] y=1 -> 0.01 + 0.49 + 0.36 = 0.86
    assert M.METRICS.get("brier")([0, 1], [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]) == pytest.approx(0.5)
    # log-loss of the same: −(ln 0.7 + ln 0.3) / 2
    assert M.METRICS.get("log_loss")([0, 1], [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]) == pytest.approx(
        -(np.log(0.7) + np.log(0.3)) / 2)


def test_binary_case():
    m = M.classification_metrics(Y_CAL, P_CAL, ("normal", "pneumonia"))
    assert m["auroc_macro"] == pytest.approx(skm.roc_auc_score(Y_CAL, P_CAL[:, 1]))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(Y_CAL, P_CAL.argmax(1)))
    assert set(M.roc_curves(Y_CAL, P_CAL)) == {0, 1, "micro"}


def test_absent_class_gives_nan_without_warnings():
    y = np.where(Y == 2, 0, Y)  # class "viral" absent from y_true
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = M.classification_metrics(y, PROBS, CLASSES)
        curves = M.roc_curves(y, PROBS, CLASSES)
        pr = M.pr_curves(y, PROBS, CLASSES)
    assert np.isnan(m["auroc_viral"]) and np.isnan(m["auprc_viral"]) and np.isnan(m["recall_viral"])
    assert m["auroc_macro"] == pytest.approx((m["auroc_normal"] + m["auroc_bacterial"]) / 2)
    assert np.isfinite(m["auroc_micro"])
    assert set(curves) == {"normal", "bacterial", "micro"} and set(pr) == set(curves)


def test_curves_agree_with_scalar_metrics():
    roc, pr = M.roc_curves(Y, PROBS, CLASSES), M.pr_curves(Y, PROBS, CLASSES)
    m = M.classification_metrics(Y, PROBS, CLASSES)
    assert roc["micro"]["auc"] == pytest.approx(m["auroc_micro"])
    assert pr["micro"]["ap"] == pytest.approx(m["auprc_micro"])
    assert roc["micro"]["auc"] == pytest.approx(skm.auc(roc["micro"]["fpr"], roc["micro"]["tpr"]))
    assert {"fpr", "tpr", "thresholds", "auc"} <= set(roc["viral"])


@pytest.mark.parametrize("y, probs, match", [
    pytest.param([0, 1], [[0.5, 0.5]], "2 samples but probs has 1 rows", id="length"),
    pytest.param([0, 1], [0.5, 0.5], r"2-D float\[N, K\]", id="1d-probs"),
    pytest.param([0, 1], [[np.nan, 1.0], [0.5, 0.5]], "NaN", id="nan"),
    pytest.param([0, 1], [[2.0, -1.0], [0.5, 0.5]], r"\[0, 1\].*logits", id="logits"),
    pytest.param([0, 1], [[0.5, 0.4], [0.5, 0.5]], "row 0 sums to 0.9", id="row-sum"),
    pytest.param([0, 3], [[0.5, 0.5], [0.5, 0.5]], r"labels must lie in 0..1", id="label-range"),
    pytest.param([0.5, 1], [[0.5, 0.5], [0.5, 0.5]], "integer class indices", id="float-labels"),
])
def test_input_validation(y, probs, match):
    with pytest.raises(ValueError, match=match):
        M.METRICS.get("accuracy")(y, probs)


def test_class_names_must_match_columns():
    with pytest.raises(ValueError, match="2 class names"):
        M.classification_metrics(Y, PROBS, ("a", "b"))


def test_float32_softmax_rows_are_accepted_without_warnings():
    # float32 softmax rows miss 1 by ~1e-7, beyond sklearn's own tolerance for brier / log-loss
    rng = np.random.default_rng(0)
    e = np.exp(rng.normal(size=(200, 3)).astype(np.float32))
    probs = e / e.sum(1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = M.classification_metrics(rng.integers(0, 3, 200), probs, CLASSES)
    assert all(np.isfinite(v) for v in m.values())
