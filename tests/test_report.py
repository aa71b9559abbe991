"""support.report: tables from artifacts, data source in every caption, 'not run yet' for missing studies."""
import numpy as np
import pandas as pd
import pytest

from support import paths, report, tables
from support.runs import find_runs
from ui_runs import SOURCE, make_run, splits


@pytest.fixture
def with_runs(isolated_dirs, shared_data_dir, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(shared_data_dir))  # the phantom is generated once per session
    classes, labels = splits()
    rng = np.random.default_rng(0)
    for loss, acc in (("cce", 0.8), ("focal", 0.6)):
        make_run(paths.runs_dir(), loss, 0, acc, labels, classes, rng)
    return find_runs()


def _segmentation_table():
    raw = pd.DataFrame({"model": ["seg_bce", "AND top-3"], "dice": [0.91, 0.94], "dice_lo": [0.89, 0.92],
                        "dice_hi": [0.93, 0.96]})
    caption = "Lung segmentation on 20 test images (mean, 95 % bootstrap CI). Data: lung phantom"
    tables.save_table(raw, "02_segmentation_smoke", caption)
    shown = raw.assign(dice=["0.910 [0.890, 0.930]", "0.940 [0.920, 0.960]"])
    tables.save_table(shown, "02_segmentation_smoke_display", caption)


def test_report_collects_recomputes_and_notes_missing_studies(with_runs):
    _segmentation_table()
    tables.save_table(pd.DataFrame({"x": [1]}), "07_other_quick", "another profile. Data: phantom")
    rep = report.build_report("smoke", runs=with_runs, n_boot=50)
    assert rep.missing() == ["06", "07", "08", "10"]  # 07 exists only for another profile
    seg = rep.studies["02"]
    assert [t.name for t in seg] == ["02_segmentation_smoke"]
    assert seg[0].source == "runs/report/02_segmentation_smoke_display.csv"  # the readable variant
    assert list(seg[0].numeric["dice"]) == [0.91, 0.94]
    losses = rep.studies["05"][0]
    assert list(losses.frame["loss"]) == ["cce", "focal"] and SOURCE in losses.caption
    written = rep.write()
    md = open(written["md"], encoding="utf-8").read()
    tex = open(written["tex"], encoding="utf-8").read()
    assert md.count("Not run yet") == 4 and "only 07" in md
    for t in seg + rep.studies["05"]:
        assert "Data:" in t.full_caption and t.source in t.full_caption
    assert "Data: lung phantom" in md and "\\caption{" in tex and "\\begin{document}" in tex
    assert "²" not in tex and "64$^2$" in tex  # pdflatex-safe symbols (the data source says 64²)
    assert (paths.report_dir() / "09_losses_smoke.tex").exists()


def test_missing_caption_takes_the_data_source_column(isolated_dirs):
    root = paths.report_dir()
    root.mkdir(parents=True)
    pd.DataFrame({"preset": ["a"], "auroc": [0.8], "data_source": ["nodules (generated)"]}).to_csv(
        root / "08_nodules_quick.csv", index=False)
    rep = report.build_report("quick")
    (t,) = rep.studies["08"]
    assert t.caption.endswith("Data: nodules (generated)")
    assert rep.missing() == ["02", "05", "06", "07", "10"]


def test_headline_reads_numbers_and_intervals_from_display_strings():
    frame = pd.DataFrame({"ensemble": ["avg", "vote"], "mcc": ["0.812 ± 0.010", "0.700"],
                          "mcc 95% CI": ["[0.750, 0.860]", "[0.600, 0.790]"]})
    labels, values, (lo, hi), metric = report.headline(report.Table("06", "t", frame, "c", "s"), ("mcc",))
    assert list(labels) == ["avg", "vote"] and metric == "mcc"
    np.testing.assert_allclose(values, [0.812, 0.7])
    np.testing.assert_allclose(lo, [0.75, 0.6])
    np.testing.assert_allclose(hi, [0.86, 0.79])


def test_summary_figure_has_a_panel_per_study(with_runs):
    _segmentation_table()
    rep = report.build_report("smoke", runs=with_runs, n_boot=50)
    fig = report.summary_figure(rep, SOURCE)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.replace("\n", " ") for t in titles] == [  # long sources are wrapped, never cut
        "02 · Lung segmentation data: lung phantom", f"05 · Per-loss classification metrics data: {SOURCE}"]
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert texts.count("not run yet") >= 3 and SOURCE in fig._suptitle.get_text()


def test_headline_labels_rows_by_two_columns_when_the_first_repeats():
    frame = pd.DataFrame({"loss": ["ce", "ce", "supcon"], "preset": ["iid", "shifted", "iid"], "auroc": [0.9, 0.7, 0.8]})
    labels, values, ci, metric = report.headline(report.Table("08", "t", frame, "c", "s"), ("auroc",))
    assert list(labels) == ["ce / iid", "ce / shifted", "supcon / iid"] and ci is None and metric == "auroc"


def test_headline_keeps_only_the_summary_rows_of_a_study():
    """The nodule panel shows the conflicting shift (every model is ~1.0 in distribution)."""
    frame = pd.DataFrame({"loss": ["ce", "ce", "supcon", "supcon"],
                          "preset": ["test_iid", "test_conflict", "test_iid", "test_conflict"],
                          "accuracy_mean": [1.0, 0.94, 1.0, 0.96], "accuracy_lo": [1.0, 0.92, 1.0, 0.95],
                          "accuracy_hi": [1.0, 0.96, 1.0, 0.97]})
    labels, values, (lo, hi), metric = report.headline(report.Table("08", "t", frame, "c", "s"), ("accuracy",),
                                                       report.SUMMARY_ROWS["08"])
    assert list(labels) == ["ce", "supcon"] and list(values) == [0.94, 0.96] and list(lo) == [0.92, 0.95]
    assert metric == "accuracy"


def _regime_table():
    """A notebook-10-shaped table: the long numeric variant and its display variant, three regimes."""
    rows = [{"loss": loss, "metric": m, "estimate": v, "lo": v - 0.02, "hi": v + 0.02, "n_seeds": 3, "regime": r,
             "source": "phantom"}
            for r, shift in (("clean", 0.0), ("label_noise", -0.1), ("shift", -0.3))
            for loss, base in (("cce", 0.8), ("focal", 0.7)) for m, v in (("mcc", base + shift), ("ece", 0.05))]
    raw = pd.DataFrame(rows)
    caption = "Per regime and loss. Data: phantom"
    tables.save_table(raw, "10_regimes_smoke", caption)
    shown = raw[raw["metric"] == "mcc"][["regime", "loss"]].assign(mcc=["x"] * 6)
    tables.save_table(shown, "10_regimes_smoke_display", caption)


def test_the_report_selects_a_regime_and_summarises_it(with_runs):
    _regime_table()
    every = report.build_report("smoke", runs=with_runs, n_boot=50)
    (t,) = every.studies["10"]
    assert set(t.frame["regime"]) == {"clean", "label_noise", "shift"}
    rep = report.build_report("smoke", runs=with_runs, n_boot=50, regime="shift")
    (t,) = rep.studies["10"]
    assert set(t.frame["regime"]) == {"shift"} and set(t.numeric["regime"]) == {"shift"}
    assert "Regime shown: shift" in t.full_caption
    labels, values, (lo, hi), metric = report.headline(t, report.STUDIES["10"][2], report.SUMMARY_ROWS["10"])
    assert list(labels) == ["cce", "focal"] and np.allclose(values, [0.5, 0.4]) and np.allclose(lo, [0.48, 0.38])
    fig = report.summary_figure(rep, SOURCE)
    assert any(ax.get_title().startswith("10 ·") for ax in fig.axes)
    with pytest.raises(ValueError, match="unknown regime 'noisy'; valid: clean, label_noise, shift"):
        report.build_report("smoke", regime="noisy")
