"""Tables for people: saved to the report folder and formatted for display (the sibling of
:func:`support.plots.save_figure`).

:func:`save_table` writes ``runs/report/<name>.{csv,md,tex}`` with a caption that names the data
source; :func:`interval_cells` and :func:`mean_sd_cells` are the two cell formats every
``display_*`` table uses (``0.912 [0.901, 0.922]`` and ``0.912 ± 0.010``).
"""
from __future__ import annotations

from typing import Dict, Iterable

import pandas as pd

from . import artifacts, paths


def save_table(table: pd.DataFrame, name: str, caption: str) -> Dict[str, str]:
    """Write ``runs/report/<name>.{csv,md,tex}``; the caption (naming the data source) heads each file."""
    root = paths.report_dir()
    csv = paths.inside(root, f"{name}.csv")
    artifacts.write_text(csv, table.to_csv(index=False))
    md = paths.inside(root, f"{name}.md")
    artifacts.write_text(md, f"**{caption}**\n\n" + table.to_markdown(index=False) + "\n")
    tex = paths.inside(root, f"{name}.tex")
    latex = table.to_latex(index=False, caption=caption, label=f"tab:{name}", escape=True, float_format="%.3f")
    artifacts.write_text(tex, latex)
    return {"csv": str(csv), "md": str(md), "tex": str(tex)}


def interval_cells(values: Iterable, lo: Iterable, hi: Iterable, digits: int = 3) -> list:
    """``"<value> [<lo>, <hi>]"`` per row (an estimate and its interval)."""
    f = f"{{:.{digits}f}}".format
    return [f"{f(v)} [{f(a)}, {f(b)}]" for v, a, b in zip(values, lo, hi)]


def mean_sd_cells(means: Iterable, sds: Iterable, digits: int = 3) -> list:
    """``"<mean> ± <sd>"`` per row; a missing sd (one seed) shows the mean alone."""
    f = f"{{:.{digits}f}}".format
    return [f(m) + ("" if pd.isna(s) else f" ± {f(s)}") for m, s in zip(means, sds)]
