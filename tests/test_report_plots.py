"""support.report_plots: every figure renders from synthetic data with titled axes (smoke tests)."""
import io

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from support import metrics as M  # noqa: E402
from support import report_plots as R  # noqa: E402
from support import stats as S  # noqa: E402

CLASSES = ("normal", "bacterial", "viral")
SOURCE = "phantom"


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    probs = {}
    for name, strength in (("cross_entropy", 1.5), ("focal", 2.0), ("hinge", 1.0)):
        logits = rng.normal(size=(150, 3))
        logits[np.arange(150), y] += strength
        probs[name] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def check(fig, n_titled_axes=1):
    """A Figure that draws, says the data source, and titles its visible axes."""
    assert isinstance(fig, matplotlib.figure.Figure)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    suptitle = fig._suptitle.get_text() if fig._suptitle else ""
    assert SOURCE in suptitle or any(SOURCE in t for t in titles)
    assert sum(bool(t) for t in titles) >= n_titled_axes
    fig.savefig(io.BytesIO(), format="png", dpi=40)
    plt.close(fig)


def test_metric_bars_long_and_wide(case):
    y, probs = case
    long = pd.concat({k: S.metrics_with_ci(y, p, CLASSES, n_boot=50, metrics=["mcc", "ece"])
                      for k, p in probs.items()}, names=["loss"]).reset_index()
    check(R.metric_bars(long, "mcc", SOURCE))
    check(R.metric_bars(long, "ece", SOURCE))
    wide = pd.DataFrame({"model": list(probs), "mcc": [M.METRICS.get("mcc")(y, p) for p in probs.values()]})
    check(R.metric_bars(wide, "mcc", SOURCE))
    with pytest.raises(ValueError, match="no rows with metric == 'auroc'"):
        R.metric_bars(long, "auroc", SOURCE)


def test_confusion_grid(case):
    y, probs = case
    check(R.confusion_grid({k: M.confusion(y, p.argmax(1), 3) for k, p in probs.items()}, CLASSES, SOURCE), 3)
    with pytest.raises(ValueError, match="expected \\(3, 3\\)"):
        R.confusion_grid({"bad": np.eye(2)}, CLASSES, SOURCE)


def test_curves_and_reliability(case):
    y, probs = case
    check(R.roc_pr_curves(y, probs, CLASSES, SOURCE), 2)
    check(R.reliability_diagrams(y, probs, SOURCE), 3)


def test_training_curves():
    epochs = np.arange(1, 6)
    logs = {name: pd.DataFrame({"epoch": epochs, "train_loss": 1 / epochs, "val_loss": 1.2 / epochs,
                                "val_mcc": 0.1 * epochs, "val_accuracy": 0.15 * epochs, "lr": 1e-3})
            for name in ("cross_entropy", "focal")}
    fig = R.training_curves(logs, SOURCE)
    assert [ax.get_title() for ax in fig.axes][1:] == ["val_accuracy", "val_mcc"]
    check(fig, 3)


def test_pvalue_matrix(case):
    y, probs = case
    check(R.pvalue_matrix(S.pairwise_comparisons(y, probs, n_boot=200), SOURCE))


def test_save_figure_keeps_wide_figures_small(tmp_path, monkeypatch):
    """A figure over plots.MAX_PIXELS at the requested dpi is saved at the dpi that fits; small ones are not touched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from support import plots

    monkeypatch.setenv("LOSSBENCH_FIGURES_DIR", str(tmp_path))
    wide, small = plt.subplots(figsize=(22, 6.5))[0], plt.subplots(figsize=(4, 3))[0]
    for fig in (wide, small):
        fig.axes[0].plot([0, 1], [0, 1])
    w, h = Image.open(plots.save_figure(wide, "wide")).size  # "tight" trims a few margin pixels
    assert w * h <= plots.MAX_PIXELS and w > 0.8 * 22 * 72
    w, h = Image.open(plots.save_figure(small, "small")).size
    assert w > 0.8 * 4 * 130 and h > 0.8 * 3 * 130  # 130 dpi, not lowered
    plt.close("all")
