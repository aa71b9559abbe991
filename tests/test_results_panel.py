"""ResultsPanel: widget callbacks change the data behind the plots; empty and partly finished folders say so."""
import asyncio
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, matthews_corrcoef

from support import artifacts
from support.runs import find_runs
from support.widgets import ResultsPanel
from ui_runs import make_run, splits

# loss -> (accuracy of its drawn predictions, seeds)
PLAN = {"cce": (0.8, (0, 1)), "focal": (0.6, (0, 1)), "hinge": (0.4, (0,))}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, shared_data_dir):
    root = tmp_path_factory.mktemp("panel")
    (root / "data").symlink_to(shared_data_dir)  # the phantom is generated once per session
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOSSBENCH_DATA_DIR", str(root / "data"))
        classes, labels = splits()
        rng = np.random.default_rng(0)
        for loss, (acc, seeds) in PLAN.items():
            for s in seeds:
                make_run(root / "runs", loss, s, acc, labels, classes, rng)
        yield root / "runs"


@pytest.fixture
def panel(runs_dir, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(runs_dir.parent / "data"))
    return ResultsPanel(runs_dir, n_boot=100, watch=None)


def _expected(runs_dir, score, split="test", seeds=(0, 1)):
    """Seed-mean of ``score`` per loss, from the stored predictions (independently of the panel)."""
    out = {}
    for r in find_runs(runs_dir):
        if r.seed in seeds:
            out.setdefault(r.loss, []).append(score(r.labels(split), r.probs(split).argmax(1)))
    return {k: float(np.mean(v)) for k, v in out.items()}


def test_panel_lists_finished_runs_and_selects_all(panel):
    assert panel.losses.options == ("cce", "focal", "hinge")
    assert panel.losses.value == ("cce", "focal", "hinge") and panel.seeds.value == (0, 1)
    assert "5 finished runs, 3 losses" in panel.message.value
    assert set(panel.bars["loss"]) == {"cce", "focal", "hinge"}


def test_metric_dropdown_changes_the_data_behind_the_plot(panel, runs_dir):
    before = panel.pngs["bars"]
    panel.metric.value = "accuracy"  # what the dropdown does in the browser
    got = dict(zip(panel.bars["loss"], panel.bars["value"]))
    assert got == pytest.approx(_expected(runs_dir, accuracy_score))
    assert got["cce"] == pytest.approx(0.8, abs=0.01)
    assert panel.pngs["bars"] != before
    panel.metric.value = "mcc"
    assert dict(zip(panel.bars["loss"], panel.bars["value"])) == pytest.approx(_expected(runs_dir, matthews_corrcoef))
    assert (panel.bars["seeds_images_lo"] <= panel.bars["value"] + 1e-12).all()
    assert (panel.bars["value"] <= panel.bars["seeds_images_hi"] + 1e-12).all()


def test_loss_seed_and_split_selection(panel, runs_dir):
    panel.losses.value = ("cce", "hinge")
    assert list(panel.bars["loss"]) == ["cce", "hinge"]
    panel.seeds.value = (1,)
    assert list(panel.table["loss"]) == ["cce"] and list(panel.table["n_seeds"]) == [1]
    assert list(panel.chosen) == ["cce · seed 1"]
    panel.update(metric="accuracy", split="val", seeds=[0, 1])
    val = _expected(runs_dir, accuracy_score, split="val")
    assert dict(zip(panel.bars["loss"], panel.bars["value"])) == pytest.approx({k: val[k] for k in ("cce", "hinge")})
    assert "val</b> split" in panel.message.value


def test_every_view_renders_from_the_selection(panel):
    pngs = {v: panel.render(v) for v in ("confusion", "reliability", "curves")}
    assert all(p.startswith(b"\x89PNG") and len(p) > 5000 for p in pngs.values())
    assert len(set(pngs.values())) == 3
    panel.losses.value = ("focal",)
    assert panel.render("confusion") != pngs["confusion"]
    table = panel.render("table").decode()
    assert "focal" in table and "cce" not in table and "seeds × images" in table


def test_export_writes_the_table_view(panel, runs_dir):
    panel.update(metric="ece")
    path = panel.export_csv()
    assert path.parent == runs_dir / "report"
    csv = pd.read_csv(path)
    assert list(csv["loss"]) == list(panel.table["loss"]) and {"ece_mean", "ece_lo", "split"} <= set(csv.columns)
    assert "exported" in panel.message.value


def test_bad_values_are_refused_with_the_valid_ones(panel):
    with pytest.raises(ValueError, match="valid: .*cce"):
        panel.update(losses=["nope"])
    with pytest.raises(ValueError, match="split must be one of"):
        panel.update(split="train")
    with pytest.raises(ValueError, match="unknown key"):
        panel.update(colour="red")


def test_a_regime_selects_its_runs_and_a_regime_without_runs_says_why(panel):
    assert all(g.startswith("[clean] ") for g in panel.groups)   # the drawn runs are clean phantom runs
    panel.update(regime="clean")
    assert panel.group.value.startswith("[clean] ") and panel.table is not None
    with pytest.raises(ValueError, match="no runs of regime 'shift'.*re-scores clean runs"):
        panel.update(regime="shift")
    with pytest.raises(ValueError, match="unknown regime 'noisy'; valid: clean, label_noise, shift"):
        panel.update(regime="noisy")


def test_nothing_selected_says_so(panel):
    panel.seeds.value = ()
    assert "Nothing selected" in panel.message.value and panel.table is None
    with pytest.raises(ValueError, match="nothing to draw"):
        panel.render("bars")


def test_empty_and_partly_finished_folders_show_a_clear_message(tmp_path):
    empty = ResultsPanel(tmp_path / "absent", watch=None)
    assert "No finished runs" in empty.message.value and "run_all.sh --only 04" in empty.message.value
    assert empty.losses.options == () and empty.images["bars"].value == b""
    with pytest.raises(ValueError, match="no table to export"):
        empty.export_csv()
    (tmp_path / "runs" / "abc123").mkdir(parents=True)  # training: config written, no metrics.json yet
    artifacts.write_json(tmp_path / "runs" / "abc123" / "config.json", {"config": {}})
    partly = ResultsPanel(tmp_path / "runs", watch=None)
    assert "No finished runs" in partly.message.value and "1 unfinished run folder" in partly.message.value


def test_refresh_picks_up_a_new_run_and_keeps_the_choice(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(runs_dir.parent / "data"))
    shutil.copytree(runs_dir, tmp_path / "runs", ignore=shutil.ignore_patterns("report"))
    panel = ResultsPanel(tmp_path / "runs", n_boot=50, watch=None)
    panel.seeds.value = (0,)
    assert panel.refresh() is False  # nothing changed
    classes, labels = splits()
    make_run(tmp_path / "runs", "ls_cce", 0, 0.7, labels, classes, np.random.default_rng(1))
    assert panel.refresh() is True
    assert "ls_cce" in panel.losses.options and "ls_cce" in panel.losses.value
    assert panel.seeds.value == (0,) and "ls_cce" in set(panel.bars["loss"])


def test_watch_refreshes_inside_a_running_event_loop(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(runs_dir.parent / "data"))
    classes, labels = splits()

    async def scenario():
        panel = ResultsPanel(tmp_path / "runs", n_boot=50, watch=0.05)
        assert panel._watch_task is not None and "No finished runs" in panel.message.value
        make_run(tmp_path / "runs", "cce", 0, 0.8, labels, classes, np.random.default_rng(2))

        async def appeared():
            while "cce" not in panel.losses.options:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(appeared(), timeout=60)
        panel.unwatch()
        return panel

    panel = asyncio.run(scenario())
    assert panel.bars is not None and list(panel.bars["loss"]) == ["cce"]
    assert ResultsPanel(tmp_path / "runs", watch=0.05)._watch_task is None  # no event loop: no polling


@pytest.mark.slow
def test_cams_of_one_test_image_across_losses(panel, runs_dir):
    panel.seeds.value = (0,)
    assert panel.cam_index.value > 0 or panel.chosen["cce · seed 0"].labels("test")[0] != 0
    png = panel.show_cams()
    cams = panel.cams
    assert png.startswith(b"\x89PNG") and list(cams.cams) == list(panel.chosen)
    run = panel.chosen["cce · seed 0"]
    assert cams.image_id == str(run.predictions["test_ids"][panel.cam_index.value])
    for heat in cams.cams.values():
        assert heat.shape == cams.image.shape and 0 <= heat.min() and heat.max() <= 1 + 1e-6
    with pytest.raises(ValueError, match="outside"):
        panel.show_cams(index=10_000)


def test_buttons_act_and_show_their_errors_in_the_panel(panel, runs_dir):
    panel.refresh_button.click()
    assert "no new finished runs" in panel.message.value
    panel.export_button.click()
    assert (runs_dir / "report" / "panel_test_mcc.csv").exists()
    panel.seeds.value = ()
    panel.export_button.click()  # nothing to export: said in the panel, no exception lost in a log
    assert "no table to export" in panel.message.value


def test_the_panel_displays_as_its_widget(panel):
    """``ResultsPanel()`` as the last line of a cell renders the panel (IPython's formatter, as Jupyter calls it)."""
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(panel)
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.widget.model_id
