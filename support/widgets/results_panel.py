"""Results panel: finished runs side by side, by loss (JupyterLab, ipywidgets 8).

    panel = ResultsPanel()                   # in a notebook: the last line of a cell displays it
    panel.update(metric="ece", split="val")  # same as using the controls
    panel.bars                               # the data behind the bar plot
    panel.export_csv()                       # the table view -> runs/report/panel_*.csv

Controls: the experiment (runs sharing data source and training settings
other than loss and seed), losses, seeds, metric and split. Views: metric per
loss with 95 % intervals over seeds × test images (:func:`support.compare.loss_table`),
confusion matrices, reliability diagrams and training curves of each loss's
lowest selected seed (:mod:`support.report_plots`), the table (exportable to
CSV), and Grad-CAMs of one chosen test image across losses
(:mod:`support.widgets.cams`). Only finished run folders are read
(:func:`support.runs.find_runs`); :meth:`ResultsPanel.refresh` (the Refresh
button, and every ``watch`` seconds inside a kernel) picks up new ones. Figures
are drawn for the visible tab only, on the CPU.
"""
from __future__ import annotations

import asyncio
import html
import io
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import ipywidgets as W
import numpy as np

from .. import artifacts, compare, metrics, paths, report_plots
from ..runs import Run, find_runs
from .base import Panel

VIEWS = {"bars": "Metric per loss (CI)", "confusion": "Confusions", "reliability": "Reliability",
         "curves": "Training curves", "table": "Table", "cams": "CAMs"}
FIGURE_VIEWS = ("bars", "confusion", "reliability", "curves")
SPLITS = ("test", "val")


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)  # never left for the inline backend to display a second time
    return buffer.getvalue()


def _experiment_key(run: Run) -> str:
    """The group a run belongs to, headed by its data regime (:func:`support.regimes.regime_of`)."""
    from ..regimes import regime_of

    cfg = run.config.get("experiment") or run.config.get("config") or {}
    rest = {k: v for k, v in cfg.items() if k not in ("loss", "loss_params", "seed")}
    regime = regime_of(run.metrics.get("data") or {})
    return f"[{regime}] {run.metrics['data_source']} · {run.metrics['arch']} · {artifacts.config_key(rest, 6)}"


class ResultsPanel(Panel):
    """Pick losses, seeds, metric and split; every view follows (see module docstring).

    Displays itself (last line of a cell); ``.widget`` is the panel. Data behind the views: ``.table`` (one row per
    loss, :func:`support.compare.loss_table` of the selection), ``.bars`` (the
    plotted metric with CI), ``.chosen`` ({"loss · seed s": Run}) and
    ``.pngs`` ({view: PNG bytes last drawn}). ``.message`` tells what is shown
    or why nothing is.
    """

    def __init__(self, runs_dir=None, n_boot: int = 200, watch: Optional[float] = 10.0):
        self.runs_dir = Path(runs_dir) if runs_dir else paths.runs_dir()
        self.n_boot = n_boot
        self.runs: List[Run] = []
        self.groups: Dict[str, List[Run]] = {}
        self.problems: list = []
        self.table = self.bars = None
        self.chosen: Dict[str, Run] = {}
        self.pngs: Dict[str, bytes] = {}
        self.cams = self.source = None
        self.unfinished, self._cam_default_set = 0, False
        self._signature, self._hold, self._stale, self._watch_task = None, True, set(), None
        c = lambda cls, w: (w.add_class(cls), w)[1]  # noqa: E731 - DOM classes for the browser test
        self.group = c("lossbench-group", W.Dropdown(description="runs", layout=W.Layout(width="560px")))
        self.losses = c("lossbench-losses", W.SelectMultiple(description="losses", rows=8))
        self.seeds = c("lossbench-seeds", W.SelectMultiple(description="seeds", rows=4))
        self.metric = c("lossbench-metric", W.Dropdown(options=compare.TABLE_METRICS, value="mcc",
                                                       description="metric"))
        self.split = c("lossbench-split", W.ToggleButtons(options=SPLITS, value="test", description="split",
                                                           style={"button_width": "70px", "description_width": "initial"}))
        self.refresh_button = c("lossbench-refresh", W.Button(description="Refresh", icon="refresh"))
        self.export_button = c("lossbench-export", W.Button(description="Export CSV", icon="download"))
        self.message = c("lossbench-message", W.HTML())
        self.images = {v: c(f"lossbench-view-{v}", W.Image(format="png", layout=W.Layout(max_width="100%")))
                       for v in FIGURE_VIEWS + ("cams",)}
        self.table_html = c("lossbench-view-table", W.HTML())
        self.cam_index = c("lossbench-cam-index", W.BoundedIntText(value=0, min=0, max=0, description="test image"))
        self.cam_button = c("lossbench-cam-button", W.Button(description="Show CAMs", icon="eye"))
        self.cam_note = W.HTML("<small>Grad-CAM of the chosen test image for each loss (lowest selected seed); "
                               "computed on the CPU when you press the button.</small>")
        pages = [self.images[v] for v in FIGURE_VIEWS] + [
            self.table_html, W.VBox([W.HBox([self.cam_index, self.cam_button]), self.cam_note, self.images["cams"]])]
        self.tabs = c("lossbench-tabs", W.Tab(children=pages, titles=list(VIEWS.values())))
        self.refresh(force=True)
        self._hold = False
        self._recompute()
        for w in (self.losses, self.seeds, self.metric, self.split):
            w.observe(lambda _change: self._recompute(), names="value")
        self.group.observe(lambda _change: self._on_group(), names="value")
        self.tabs.observe(lambda _change: self._draw_visible(), names="selected_index")
        self.refresh_button.on_click(lambda _b: self._shown_errors(self._refresh_clicked))
        self.export_button.on_click(lambda _b: self._shown_errors(self.export_csv))
        self.cam_button.on_click(lambda _b: self._shown_errors(self.show_cams))
        controls = W.VBox([self.group, W.HBox([self.split, self.metric]), W.HBox([self.losses, self.seeds]),
                           W.HBox([self.refresh_button, self.export_button])])
        self.widget = c("lossbench-results", W.VBox([controls, self.message, self.tabs]))
        if watch:
            self.watch(watch)

    # ------------------------------------------------------------------ runs folder
    def _scan(self) -> tuple:
        if not self.runs_dir.is_dir():
            return (), 0
        dirs = [d for d in self.runs_dir.iterdir() if d.is_dir() and (d / "config.json").exists()]
        done = tuple(sorted(d.name for d in dirs if (d / "metrics.json").exists()))
        return done, len(dirs) - len(done)

    def refresh(self, force: bool = False) -> bool:
        """Re-read the runs folder if its finished runs changed (or ``force``); True if it did."""
        (done, self.unfinished) = self._scan()
        if done == self._signature and not force:
            return False
        self._signature = done
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # broken runs are listed in the message instead
            self.runs = find_runs(self.runs_dir)
            self.problems = list(find_runs.problems)
        self.groups = {}
        for r in self.runs:
            self.groups.setdefault(_experiment_key(r), []).append(r)
        labels = {f"{k} ({len(rs)} runs)": k for k, rs in sorted(self.groups.items(), key=lambda kv: -len(kv[1]))}
        held, self._hold = self._hold, True
        previous = self.group.value
        self.group.options = list(labels.items())
        self.group.value = previous if previous in self.groups else (next(iter(labels.values()), None))
        self._hold = held
        self._on_group(keep=True)
        return True

    def _refresh_clicked(self) -> None:
        if not self.refresh():
            self.message.value += (f"<div><small>checked {html.escape(str(self.runs_dir))} at "
                                   f"{time.strftime('%H:%M:%S')}: no new finished runs</small></div>")

    def _shown_errors(self, action) -> None:
        """Run a button's action; a bad selection or a broken file is shown in the panel, not lost in a log."""
        try:
            action()
        except (ValueError, artifacts.ArtifactError) as exc:
            self.message.value += f"<div style='color:#a30'><b>{html.escape(str(exc))}</b></div>"

    def watch(self, seconds: float = 10.0) -> bool:
        """Call :meth:`refresh` every ``seconds`` while the kernel is idle; False outside an event loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or not loop.is_running():
            return False

        async def poll():
            while True:
                await asyncio.sleep(seconds)
                try:
                    self.refresh()
                except Exception as exc:  # noqa: BLE001 - keep polling; show what went wrong
                    self.message.value = f"<b>refresh failed:</b> {html.escape(str(exc))}"

        self.unwatch()
        self._watch_task = loop.create_task(poll())
        return True

    def unwatch(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None

    # ------------------------------------------------------------------ selection
    def _on_group(self, keep: bool = False) -> None:
        runs = self.groups.get(self.group.value, [])
        losses = sorted({r.label for r in runs})
        seeds = sorted({r.seed for r in runs})
        held, self._hold = self._hold, True
        for box, values in ((self.losses, losses), (self.seeds, seeds)):
            was_shown, was_chosen = set(box.options), set(box.value)
            box.options = values
            # a refresh keeps the user's choice; losses or seeds that just appeared are shown selected
            box.value = tuple(v for v in values if not keep or v in was_chosen or v not in was_shown)
        self._hold = held
        self._recompute()

    def update(self, **params) -> "ResultsPanel":
        """Set any of ``group, regime, losses, seeds, metric, split`` as a user would, then recompute once.

        ``regime`` (``support.regimes.REGIMES``: clean, label_noise, ...) picks the first group of runs trained
        in that regime; the ``shift`` regime trains no runs (notebook 10 scores the clean ones on shifted films).
        """
        if "regime" in params:
            params = dict(params)
            params["group"] = self._group_of_regime(params.pop("regime"))
        allowed = {"group": self.group, "losses": self.losses, "seeds": self.seeds, "metric": self.metric,
                   "split": self.split}
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"ResultsPanel.update got unknown key(s) {unknown}; valid: {', '.join(allowed)}")
        held, self._hold = self._hold, True
        try:
            if "group" in params:
                if params["group"] not in self.groups:
                    raise ValueError(f"group {params['group']!r} is not in this runs folder; valid: {list(self.groups)}")
                self.group.value = params["group"]
                self._on_group()
            for key in ("losses", "seeds"):
                if key in params:
                    want = [params[key]] if isinstance(params[key], (str, int)) else list(params[key])
                    bad = [v for v in want if v not in allowed[key].options]
                    if bad:
                        raise ValueError(f"{key} {bad} not among the finished runs shown; valid: "
                                         f"{list(allowed[key].options)}")
                    allowed[key].value = tuple(want)
            for key in ("metric", "split"):
                if key in params:
                    if params[key] not in allowed[key].options:
                        raise ValueError(f"{key} must be one of {list(allowed[key].options)}, got {params[key]!r}")
                    allowed[key].value = params[key]
        finally:
            self._hold = held
        self._recompute()
        return self

    def _group_of_regime(self, regime: str) -> str:
        from ..regimes import REGIMES, check_regime

        check_regime(regime)
        found = [g for g in self.groups if g.startswith(f"[{regime}] ")]
        if not found:
            trained = [r for r, spec in REGIMES.items() if not spec.test]
            raise ValueError(f"no runs of regime {regime!r} in {self.runs_dir}; regimes with runs here: "
                             f"{sorted({g[1:g.index(']')] for g in self.groups})}. Runs exist for {', '.join(trained)} "
                             "(notebook 10 trains the label-noise runs; the shift regime only re-scores clean runs)")
        return found[0]

    @property
    def selected(self) -> List[Run]:
        """Runs of the chosen experiment, losses and seeds."""
        return [r for r in self.groups.get(self.group.value, [])
                if r.label in self.losses.value and r.seed in self.seeds.value]

    # ------------------------------------------------------------------ data and views
    def _say(self, text: str, problem: bool = False) -> None:
        extra = []
        if self.unfinished:
            extra.append(f"{self.unfinished} unfinished run folder(s) (training, or interrupted) are not read.")
        for path, why in self.problems:
            extra.append(f"skipped broken run {html.escape(str(path))}: {html.escape(why)}")
        colour = "#a30" if problem else "#333"
        self.message.value = (f"<div style='color:{colour}'>{text}</div>"
                              + "".join(f"<div><small>{e}</small></div>" for e in extra))

    def _recompute(self) -> None:
        if self._hold:
            return
        self.table = self.bars = None
        self.chosen, self.pngs = {}, {}
        self._stale = set(FIGURE_VIEWS) | {"table"}
        if not self.runs:
            self._say(f"<b>No finished runs in {html.escape(str(self.runs_dir))}.</b> Train some with "
                      "<code>./run_all.sh --only 04</code> (or notebook 04); a run appears here once its "
                      "<code>metrics.json</code> is written. Press Refresh, or wait for the automatic check.", True)
            self._blank()
            return
        chosen = self.selected
        if not chosen:
            self._say("<b>Nothing selected:</b> pick at least one loss and one seed.", True)
            self._blank()
            return
        split, metric = self.split.value, self.metric.value
        try:
            self.table = compare.loss_table(chosen, n_boot=self.n_boot, split=split, boot_metrics=(metric,))
        except (ValueError, artifacts.ArtifactError) as exc:  # e.g. seeds of one loss tested on other images
            self._say(f"<b>cannot compare this selection:</b> {html.escape(str(exc))}", True)
            self._blank()
            return
        self.bars = compare.bars_frame(self.table, metric)
        groups = compare.group_by_loss(chosen)  # lowest selected seed of each loss, best mean MCC first
        self.chosen = {f"{label} · seed {groups[label][0].seed}": groups[label][0] for label in self.table["loss"]}
        self.source = chosen[0].metrics["data_source"]
        n = len(chosen[0].labels(split))
        y_test, classes = chosen[0].labels("test"), chosen[0].metrics["classes"]
        self.cam_index.max = len(y_test) - 1
        if not self._cam_default_set and "normal" in classes:  # start on an image with a finding
            sick = np.flatnonzero(y_test != classes.index("normal"))
            self.cam_index.value = int(sick[0]) if len(sick) else 0
            self._cam_default_set = True
        self._say(f"{len(chosen)} finished runs, {len(self.table)} losses, seeds "
                  f"{', '.join(map(str, self.seeds.value))}; <b>{metric}</b> on the <b>{split}</b> split "
                  f"({n} images); CIs: 95 % over seeds × test images (stratified bootstrap, {self.n_boot} resamples, "
                  "+ seed variance). "
                  f"Data: {html.escape(self.source)}")
        self._draw_visible()

    def _blank(self) -> None:
        for v in FIGURE_VIEWS:
            self.images[v].value = b""
        self.table_html.value = ""

    def _draw_visible(self) -> None:
        index = self.tabs.selected_index or 0
        view = list(VIEWS)[index]
        if view in self._stale and self.table is not None:
            self.render(view)

    def render(self, view: str) -> bytes:
        """Draw ``view`` (a key of :data:`VIEWS` other than cams) for the current selection."""
        if view not in FIGURE_VIEWS and view != "table":
            raise ValueError(f"view must be one of {', '.join(FIGURE_VIEWS)}, table; got {view!r}")
        if self.table is None:
            raise ValueError("nothing to draw: the folder has no finished runs or nothing is selected (see .message)")
        split, source = self.split.value, self.source
        self._stale.discard(view)
        if view == "table":
            caption = f"{self.split.value} split, seeds {', '.join(map(str, self.seeds.value))}; data: {source}"
            body = compare.display_table(self.table).to_html(index=False, classes="lossbench-table", border=0)
            self.table_html.value = f"<p><small>{html.escape(caption)}</small></p>{body}"
            return self.table_html.value.encode()
        runs = self.chosen
        y = next(iter(runs.values())).labels(split)
        if view == "bars":
            fig = report_plots.metric_bars(self.bars, self.metric.value, f"{source}, {split}")
        elif view == "confusion":
            classes = next(iter(runs.values())).metrics["classes"]
            cms = {k: metrics.confusion(r.labels(split), r.probs(split).argmax(1), len(classes)) for k, r in runs.items()}
            fig = report_plots.confusion_grid(cms, classes, f"{source}, {split}", ncols=4)
        elif view == "reliability":
            fig = report_plots.reliability_diagrams(y, {k: r.probs(split) for k, r in runs.items()},
                                                    f"{source}, {split}", ncols=4)
        else:
            fig = report_plots.training_curves({k: r.log for k, r in runs.items()}, source)
        self.pngs[view] = self.images[view].value = _png(fig)
        return self.pngs[view]

    # ------------------------------------------------------------------ actions
    def export_csv(self, path=None) -> Path:
        """Write the table view (numeric, one row per loss) as CSV; default ``<runs>/report/panel_*.csv``."""
        if self.table is None:
            raise ValueError("no table to export: the panel shows no runs (see its message)")
        name = f"panel_{self.split.value}_{self.metric.value}.csv"
        path = Path(path) if path else paths.inside(self.runs_dir / "report", name)
        out = self.table.assign(split=self.split.value, data_source=self.source)
        artifacts.write_text(path, out.to_csv(index=False))
        self._say(self.message.value + f"<div>table exported to <code>{html.escape(str(path))}</code></div>")
        return path

    def show_cams(self, index: Optional[int] = None) -> bytes:
        """Grad-CAMs of test image ``index`` (default: the box) for each loss's run in view."""
        from .cams import cam_figure, run_cams

        if not self.chosen:
            raise ValueError("no runs selected: pick at least one loss and one seed")
        if index is not None:
            if not 0 <= index <= self.cam_index.max:
                raise ValueError(f"test image index {index} is outside 0..{self.cam_index.max}")
            self.cam_index.value = index
        self.cam_note.value = "<small>computing Grad-CAMs…</small>"
        self.cams = run_cams(list(self.chosen.values()), self.cam_index.value, labels=list(self.chosen))
        self.pngs["cams"] = self.images["cams"].value = _png(cam_figure(self.cams, self.source))
        self.cam_note.value = (f"<small>test image {self.cam_index.value} ({html.escape(self.cams.image_id)}, "
                               f"true class {self.cams.true_class}); target: each model's predicted class.</small>")
        return self.pngs["cams"]
