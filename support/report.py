"""The study report (notebook 09): every table of the studies from artifacts alone, no training.

    rep = build_report("quick", runs=found)   # per-loss tables from run folders, the rest from runs/report/
    rep.write()                               # runs/report/09_report_quick.{md,tex}
    summary_figure(rep)                       # one page: a panel per study, "not run yet" where missing

Each study's notebook saves its tables with :func:`support.tables.save_table`
as ``runs/report/<NN>_<name>_<profile>.{csv,md,tex}`` (caption with the data
source in the ``.md``). The report reads those CSV files — the human-readable
``*_display`` variant when there is one — and re-renders them, with their
caption, the data source and the CSV they came from, into one Markdown and one
LaTeX document. The per-loss tables are recomputed from the run folders
themselves. A study with no table yet gets a "not run yet" note, never an error.
"""
from __future__ import annotations

import textwrap

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from . import artifacts, compare, paths, tables

#: Study number -> (title, the notebook or command that writes its tables, preferred summary metrics).
STUDIES = {
    "02": ("Lung segmentation", "notebook 02_lung_segmentation", ("dice", "iou")),
    "05": ("Per-loss classification metrics", "notebook 04 (training) and 05_compare_losses", ("mcc",)),
    "06": ("Ensembles of the loss-specific models", "notebook 06_ensembles", ("mcc",)),
    "07": ("Localization (CAMs: lesion masks where the data has them, else ROAD)", "notebook 07_localization",
           ("pointing_game", "pointing", "energy_in_lesion", "energy", "iou", "dice", "lung_energy", "road")),
    "08": ("Synthetic lung-nodule study", "notebook 08_synthetic_nodules",
           ("accuracy", "mcc", "auroc")),
    "10": ("Losses under label noise and acquisition shift", "notebook 10_loss_regimes", ("estimate",)),
}
#: Rows a study's summary panel shows, where its table has the column: the nodule study's panel shows the
#: conflicting-shift test set (size and margin decorrelated and flipped), where the losses differ; on the
#: in-distribution test set every model is at ~1.0 and the panel would say nothing.
SUMMARY_ROWS = {"08": {"preset": "test_conflict"}, "10": {"metric": "mcc"}}
_NUMBER = re.compile(r"^\s*\[?\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)")


@dataclass
class Table:
    """One report table: its data, caption (naming the data source) and where it came from."""

    study: str
    name: str
    frame: pd.DataFrame
    caption: str
    source: str
    numeric: Optional[pd.DataFrame] = None  # the raw variant of a display table, for figures

    @property
    def full_caption(self) -> str:
        return f"{self.caption.rstrip('. ')}. Source: {self.source}."


@dataclass
class Report:
    profile: str
    studies: Dict[str, List[Table]] = field(default_factory=dict)
    root: Path = field(default_factory=paths.report_dir)

    def missing(self) -> List[str]:
        """Study numbers without any table yet."""
        return [s for s in STUDIES if not self.studies.get(s)]

    def not_run_note(self, study: str) -> str:
        title, how, _ = STUDIES[study]
        return (f"Not run yet: no table `{study}_*_{self.profile}.csv` under {self.root}. "
                f"It is written by {how} (`./run_all.sh --profile {self.profile} --only {study}`).")

    def markdown(self) -> str:
        out = [f"# lossbench-cxr report — profile `{self.profile}`", "",
               "Every table below is rebuilt from artifacts (run folders and the studies' CSV tables); "
               "nothing is trained. Each caption names the data source.", ""]
        n = 0
        for study, (title, _, _) in STUDIES.items():
            out += [f"## {study} · {title}", ""]
            if not self.studies.get(study):
                out += [f"> **{self.not_run_note(study)}**", ""]
            for t in self.studies.get(study, []):
                n += 1
                out += [f"**Table {n}.** {t.full_caption}", "", t.frame.to_markdown(index=False, floatfmt=".3f"), ""]
        return "\n".join(out)

    def latex(self) -> str:
        body = []
        for study, (title, _, _) in STUDIES.items():
            body.append(f"\\section*{{{study} $\\cdot$ {_tex_escape(title)}}}")
            if not self.studies.get(study):
                body.append(f"\\emph{{{_tex_escape(self.not_run_note(study))}}}")
            for t in self.studies.get(study, []):
                tex = t.frame.to_latex(index=False, caption=_tex_escape(t.full_caption), label=f"tab:{t.name}",
                                       escape=True, float_format="%.3f", position="htbp")
                body.append(tex.replace("\\begin{tabular}", "\\resizebox{\\textwidth}{!}{\\begin{tabular}")
                               .replace("\\end{tabular}", "\\end{tabular}}"))
        body = [_tex_unicode(b) for b in body]
        return ("\\documentclass{article}\n\\usepackage[margin=1.5cm]{geometry}\n\\usepackage{booktabs}\n"
                "\\usepackage{graphicx}\n\\usepackage[utf8]{inputenc}\n\\begin{document}\n"
                f"\\section*{{lossbench-cxr report: profile {_tex_escape(self.profile)}}}\n"
                + "\n\n".join(body) + "\n\\end{document}\n")

    def write(self) -> Dict[str, str]:
        """Write ``09_report_<profile>.md`` and ``.tex`` under the report folder; return their paths."""
        md = paths.inside(self.root, f"09_report_{self.profile}.md")
        tex = paths.inside(self.root, f"09_report_{self.profile}.tex")
        artifacts.write_text(md, self.markdown())
        artifacts.write_text(tex, self.latex())
        return {"md": str(md), "tex": str(tex)}

    def overview(self) -> pd.DataFrame:
        """One row per study: how many tables, from which files, or 'not run yet'."""
        rows = [{"study": s, "title": STUDIES[s][0], "tables": len(self.studies.get(s, [])),
                 "status": "ok" if self.studies.get(s) else "not run yet",
                 "files": ", ".join(Path(t.source).name for t in self.studies.get(s, []))} for s in STUDIES]
        return pd.DataFrame(rows)


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text


_TEX_UNICODE = {"±": r"$\pm$", "²": r"$^2$", "·": r"$\cdot$", "—": "---", "–": "--", "ρ": r"$\rho$",
                "Δ": r"$\Delta$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "β": r"$\beta$"}


def _tex_unicode(text: str) -> str:
    """Symbols that plain pdflatex cannot typeset from UTF-8, as LaTeX commands."""
    for a, b in _TEX_UNICODE.items():
        text = text.replace(a, b)
    return text


def caption_of(csv: Path, frame: Optional[pd.DataFrame] = None) -> str:
    """The caption saved beside ``csv`` (first bold line of its ``.md``), with the data source ensured."""
    md = csv.with_suffix(".md")
    caption = ""
    if md.exists():
        first = md.read_text(encoding="utf-8").strip().splitlines()[:1]
        caption = first[0].strip().strip("*").strip() if first else ""
    if "data" not in caption.lower():
        sources = sorted(frame["data_source"].astype(str).unique()) if frame is not None and "data_source" in frame else []
        caption = (caption or csv.stem) + f". Data: {', '.join(sources) if sources else 'not recorded with this table'}"
    return caption


def collect(profile: str, root=None) -> Dict[str, List[Table]]:
    """Every study table ``<NN>_*_<profile>.csv`` under the report folder, grouped by study number."""
    root = Path(root) if root else paths.report_dir()
    out: Dict[str, List[Table]] = {s: [] for s in STUDIES}
    files = sorted(root.glob(f"[0-9][0-9]_*_{profile}.csv")) if root.is_dir() else []
    for csv in files:
        study = csv.name[:2]
        if study not in STUDIES:
            continue
        display = csv.with_name(f"{csv.stem}_display.csv")
        chosen = display if display.exists() else csv
        frame = pd.read_csv(chosen)
        numeric = pd.read_csv(csv) if chosen is display else frame
        out[study].append(Table(study, csv.stem, frame, caption_of(chosen, numeric), f"runs/report/{chosen.name}",
                                numeric))
    return out


def per_loss_tables(runs: Sequence, n_boot: int = 1000) -> List[Table]:
    """The per-loss table recomputed from finished run folders (as notebook 05 makes it), saved as ``09_losses_*``."""
    from .runs import single_source

    if not runs:
        return []
    source = single_source(runs)
    table = compare.loss_table(runs, n_boot=n_boot)
    caption = (f"Test metrics per loss (mean ± sd over seeds; {compare.INTERVAL_NOTE}), "
               f"recomputed from {len(runs)} run folders. Data: {source}")
    return [Table("05", "09_losses", compare.display_table(table), caption, "the run folders runs/<key>/", table)]


def select_regime(tables: List[Table], regime: str) -> List[Table]:
    """The rows of ``regime`` (support.regimes.REGIMES) of every table with a ``regime`` column, captioned so."""
    from .regimes import check_regime

    check_regime(regime)
    out = []
    for t in tables:
        keep = lambda f: f[f["regime"] == regime].reset_index(drop=True) if f is not None and "regime" in f else f
        caption = t.caption + (f" Regime shown: {regime}." if "regime" in t.frame else "")
        out.append(Table(t.study, t.name, keep(t.frame), caption, t.source, keep(t.numeric)))
    return out


def build_report(profile: str, runs: Sequence = (), n_boot: int = 1000, root=None, regime: str = "") -> Report:
    """Collect every study's tables; the per-loss table comes from ``runs`` when given. ``regime`` (e.g.
    "label_noise"): the regime study's tables show that regime only ("" = every regime)."""
    studies = collect(profile, root)
    if regime:
        studies["10"] = select_regime(studies["10"], regime)
    fresh = per_loss_tables(runs, n_boot)
    if fresh:  # recomputed from the runs: replaces notebook 05's copy of the same table
        studies["05"] = fresh + [t for t in studies["05"] if not t.name.startswith(f"05_losses_{profile}")]
    rep = Report(profile, studies, Path(root) if root else paths.report_dir())
    for t in fresh:
        tables.save_table(t.frame, f"09_losses_{profile}", t.caption)
    return rep


# ----------------------------------------------------------------------------- summary figure
def _numbers(series: pd.Series) -> np.ndarray:
    """Floats from numbers or strings such as '0.812 ± 0.010' and '[0.70, 0.85]' (their first number)."""
    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(float)
    return np.array([float(m.group(1)) if (m := _NUMBER.match(str(v))) else np.nan for v in series])


def _ci(frame: pd.DataFrame, metric: str):
    for lo, hi in ((f"{metric}_boot_lo", f"{metric}_boot_hi"), (f"{metric}_lo", f"{metric}_hi"),
                   ("boot_lo", "boot_hi"), ("ci_lo", "ci_hi"), ("lo", "hi")):
        if lo in frame and hi in frame:
            return _numbers(frame[lo]), _numbers(frame[hi])
    text = next((c for c in (f"{metric} 95% CI (seeds × images)", f"{metric} 95% CI") if c in frame), None)
    if text:
        pairs = frame[text].astype(str).str.findall(r"-?\d+(?:\.\d+)?")
        return (np.array([float(p[0]) if len(p) == 2 else np.nan for p in pairs]),
                np.array([float(p[1]) if len(p) == 2 else np.nan for p in pairs]))
    return None


def headline(table: Table, preferred: Sequence[str], rows: Optional[dict] = None):
    """``(labels, values, (lo, hi) or None, metric)`` of the first preferred metric the table has
    (only the rows matching ``rows``, {column: value}, for the columns the table has)."""
    frame = table.numeric if table.numeric is not None else table.frame
    for column, value in (rows or {}).items():
        if column in frame.columns:
            frame = frame[frame[column] == value].drop(columns=column)
    columns = {c.lower(): c for c in frame.columns}
    metric = next((columns[m] for m in (f"{p}{s}" for p in preferred for s in ("_mean", "")) if m in columns), None)
    if metric is None:
        return None
    text_cols = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c]) and c != metric]
    if not text_cols:
        labels = frame.index.astype(str).to_numpy()
    else:  # as many leading text columns as make the rows distinct (e.g. loss / preset), at most 3
        n = next((k for k in range(1, min(3, len(text_cols)) + 1) if not frame[text_cols[:k]].duplicated().any()),
                 min(3, len(text_cols)))
        labels = frame[text_cols[:n]].astype(str).agg(" / ".join, axis=1).to_numpy()
    values = _numbers(frame[metric])
    base = metric[:-5] if metric.endswith("_mean") else metric
    ok = np.isfinite(values)
    ci = _ci(frame, base)
    ci = (ci[0][ok], ci[1][ok]) if ci is not None else None
    return labels[ok], values[ok], ci, base


def summary_figure(report: Report, source: str = ""):
    """One A4 page: a panel per study (its headline metric with 95 % CI), or a 'not run yet' note."""
    import matplotlib.pyplot as plt

    from .plots import titled

    fig, axes = plt.subplots((len(STUDIES) + 2) // 2, 2, figsize=(8.27, 11.69))
    for ax, (study, (title, how, preferred)) in zip(axes.flat, STUDIES.items()):
        tables = report.studies.get(study) or []
        rows = SUMMARY_ROWS.get(study)
        found = next(((t, h) for t in tables if (h := headline(t, preferred, rows)) is not None and len(h[0])), None)
        if found is None:
            ax.axis("off")
            why = "not run yet" if not tables else "no summary metric in its tables"
            ax.text(0.5, 0.5, f"{study} · {title}\n\n{why}\n({how})", ha="center", va="center", wrap=True,
                    fontsize=9, color="0.35", bbox={"boxstyle": "round", "fc": "0.95", "ec": "0.7"})
            continue
        table, (labels, values, ci, metric) = found
        data = re.search(r"Data: (.*?)(?:\. Source:|$)", table.full_caption)
        order = np.argsort(values)[-12:]  # best 12 on top
        y = np.arange(len(order))
        if ci is not None:
            err = np.abs(np.vstack([values[order] - ci[0][order], ci[1][order] - values[order]]))
            ax.errorbar(values[order], y, xerr=np.nan_to_num(err), fmt="o", ms=4, capsize=2, color="C0", ecolor="0.5")
        else:
            ax.plot(values[order], y, "o", ms=4, color="C0")
        ax.set_yticks(y, [str(s)[:36] for s in labels[order]], fontsize=7)
        for xi, yi in zip(values[order], y):
            ax.annotate(f"{xi:.3f}", (xi, yi), xytext=(0, 4), textcoords="offset points", ha="center", fontsize=6)
        where = "".join(f", {v}" for c, v in (rows or {}).items()
                        if c in (table.numeric if table.numeric is not None else table.frame).columns)
        ax.set_xlabel(metric + where + (" (95 % CI)" if ci is not None else ""), fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        named = textwrap.fill(f"data: {data.group(1)}" if data else "data: not recorded", 44)
        ax.set_title(textwrap.fill(f"{study} · {title}", 44) + f"\n{named}", fontsize=8)
    for ax in axes.flat[len(STUDIES):]:
        ax.axis("off")
    overview = report.overview()
    lines = [textwrap.fill(f"{r.study} · {r.title}", 44, subsequent_indent="     ") + f"\n     {r.status}, {r.tables} table(s)"
             for r in overview.itertuples()]
    axes.flat[-1].text(0, 1, "Studies in this report\n\n" + "\n".join(lines), va="top", fontsize=8, family="monospace")
    fig.suptitle(titled(f"lossbench-cxr summary, profile {report.profile}", source or "named in each panel"),
                 fontsize=11)
    fig.tight_layout()
    return fig
