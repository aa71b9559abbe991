"""The panels in a real browser: JupyterLab (127.0.0.1, token) + Debian's chromium driven by Playwright.

Opens ``notebooks/00_start_here.ipynb``, runs all cells, checks that both
panels rendered, changes the metric and checks that the plot changed, opens
three tabs, adds a run and presses Refresh. The CAM tab is unit-tested; the
command-line check ``python -m support.widgets.browser`` opens every tab.
Screenshots go to ``$LOSSBENCH_FIGURES_DIR/ui/`` (a temporary folder here).
Skipped, with the reason in pytest's summary, where no chromium or no
playwright is installed (``./run_all.sh --test`` installs chromium with
apt-get when it runs as root).
"""
import shutil

import numpy as np
import pytest

from support import paths
from support.widgets import browser
from ui_runs import make_run, splits

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.mark.timeout(420)
def test_panels_render_and_react_in_chromium(isolated_dirs, shared_data_dir, monkeypatch):
    pytest.importorskip("playwright", reason="playwright is not installed: pip install -e '.[test]'")
    chromium = browser.find_chromium()
    if chromium is None:
        pytest.skip("browser test skipped: no chromium on this machine (as root: apt-get install chromium)")
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(shared_data_dir))  # the phantom is generated once per session
    classes, labels = splits()
    rng = np.random.default_rng(0)
    for loss, acc in (("cce", 0.8), ("focal", 0.6), ("hinge", 0.45)):
        make_run(paths.runs_dir(), loss, 0, acc, labels, classes, rng)
    root = isolated_dirs / "lab"
    root.mkdir()
    shutil.copy(browser.NOTEBOOK, root / browser.NOTEBOOK.name)
    out = paths.figures_dir() / "ui"
    env = {"LOSSBENCH_RUNS_DIR": str(paths.runs_dir()), "LOSSBENCH_DATA_DIR": str(paths.data_dir())}
    with browser.jupyterlab(root, env=env) as server:
        assert server.url.startswith("http://127.0.0.1:") and len(server.token) == 32
        seen = browser.check_panels(
            server, browser.NOTEBOOK.name, out, chromium, timeout_s=180, tabs=("confusion", "curves", "table"),
            add_run=lambda: make_run(paths.runs_dir(), "ls_cce", 0, 0.7, labels, classes, rng), new_loss="ls_cce")
    assert seen["losses"] == ["cce", "focal", "hinge"]
    assert "ece" in seen["metrics"] and "mcc" in seen["metrics"]
    assert seen["bars_before"] != seen["bars_after"]  # the metric change redrew the plot
    assert "ece" in seen["message"] and "3 finished runs" in seen["message"]
    assert "ls_cce" in seen["losses_after_refresh"]
    names = {p.stem for p in seen["screenshots"]}
    assert names == {"loss_explorer", "results_bars_mcc", "results_bars_ece", "results_confusion", "results_curves",
                     "results_table"}
    assert all(p.stat().st_size > 10_000 for p in seen["screenshots"])
