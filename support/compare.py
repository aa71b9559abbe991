"""Compare losses over finished runs: the tables and selections behind ``05_compare_losses``.

Two sources of uncertainty are reported separately, because they answer
different questions:

* **over seeds** (training randomness): mean and standard deviation of each
  test metric over the seeds of a loss;
* **over test images** (finite test set): a stratified bootstrap of the
  *seed-averaged* metric — each resample of test images is scored with every
  seed's predictions and the scores are averaged — plus the paper's Wald
  interval on the seed mean.

Pairwise loss comparisons are paired (same test images, same resamples for
both losses) and Holm-corrected across all pairs.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import pandas as pd

from . import artifacts, metrics, paths, stats
from .runs import Run

#: Columns of the main table, in order (all are test-set metrics).
TABLE_METRICS = ("mcc", "accuracy", "f1", "kappa", "auroc_macro", "auprc_macro", "ece", "brier")
#: Metrics that get a bootstrap CI of the seed-averaged value (cheap: from confusion matrices).
BOOTSTRAP_METRICS = ("mcc", "accuracy")


def group_by_loss(runs: Sequence[Run]) -> Dict[str, List[Run]]:
    """Runs grouped by loss label (loss + non-default parameters), seeds sorted."""
    groups: Dict[str, List[Run]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    for label, rs in groups.items():
        rs.sort(key=lambda r: r.seed)
        ids = {tuple(r.predictions["test_ids"]) for r in rs}
        if len(ids) > 1:
            raise ValueError(f"runs of {label} were tested on different images: "
                             f"{[str(r.path) for r in rs]}; compare runs of one data source")
    return groups


def seed_mean_bootstrap(y: np.ndarray, probs_by_seed: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95, boot_metrics: Sequence[str] = BOOTSTRAP_METRICS) -> Dict[str, tuple]:
    """Stratified-bootstrap CI of the seed-averaged metrics (default MCC and accuracy): {metric: (lo, hi)}.

    Every seed's predictions are scored on the SAME resamples of test images,
    and the per-resample scores are averaged over seeds.
    """
    y = np.asarray(y)
    idx = stats.resample_indices(y, n_boot, stratified=True, seed=seed)
    a = (1 - level) / 2
    out = {}
    for m in boot_metrics:
        values = np.mean([stats.bootstrap_values(y, p, m, idx) for p in probs_by_seed], axis=0)
        out[m] = tuple(np.quantile(values, [a, 1 - a]))
    return out


def bars_frame(table: pd.DataFrame, metric: str = "mcc") -> pd.DataFrame:
    """The columns :func:`support.report_plots.metric_bars` reads, from a :func:`loss_table`."""
    out = pd.DataFrame({"loss": table["loss"], "value": table[f"{metric}_mean"]})
    if f"{metric}_boot_lo" in table:
        out["boot_lo"], out["boot_hi"] = table[f"{metric}_boot_lo"], table[f"{metric}_boot_hi"]
    return out


def loss_table(runs: Sequence[Run], n_boot: int = 1000, seed: int = 0,
               table_metrics: Sequence[str] = TABLE_METRICS, split: str = "test",
               boot_metrics: Sequence[str] = BOOTSTRAP_METRICS) -> pd.DataFrame:
    """One row per loss: n_seeds; mean and sd over seeds of each metric; CIs of the seed mean.

    Sorted by mean MCC (best first). Columns ``<m>_mean``, ``<m>_sd``, and for
    the ``boot_metrics`` (MCC and accuracy by default) ``<m>_boot_lo/hi``
    (image bootstrap) and ``<m>_wald_lo/hi`` (the paper's interval on the split
    size). ``split`` is ``"test"`` (default) or ``"val"``.
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    rows = []
    for label, rs in group_by_loss(runs).items():
        row = {"loss": label, "n_seeds": len(rs), "seeds": ",".join(str(r.seed) for r in rs)}
        for m in table_metrics:
            vals = np.array([(r.metrics.get(split) or {}).get(m, np.nan) for r in rs], dtype=float)
            row[f"{m}_mean"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else np.nan
            row[f"{m}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else np.nan
        y = rs[0].labels(split)
        cis = seed_mean_bootstrap(y, [r.probs(split) for r in rs], n_boot=n_boot, seed=seed,
                                  boot_metrics=boot_metrics)
        for m, (lo, hi) in cis.items():
            row[f"{m}_boot_lo"], row[f"{m}_boot_hi"] = lo, hi
            if m not in BOOTSTRAP_METRICS:
                continue  # the Wald interval is the paper's, for MCC and accuracy only
            wlo, whi = stats.wald_ci(row[f"{m}_mean"], len(y))
            row[f"{m}_wald_lo"], row[f"{m}_wald_hi"] = wlo, whi
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("mcc_mean", ascending=False, ignore_index=True) if len(table) else table


def display_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Human-readable version: 'mean ± sd' and '[lo, hi]' strings."""
    out = pd.DataFrame({"loss": table["loss"], "seeds": table["n_seeds"]})
    f = f"{{:.{digits}f}}"
    for m in TABLE_METRICS:
        if f"{m}_mean" not in table:
            continue
        sd = table[f"{m}_sd"].map(lambda v: "" if pd.isna(v) else " ± " + f.format(v))
        out[m] = table[f"{m}_mean"].map(f.format) + sd
        if f"{m}_boot_lo" in table:
            out[f"{m} 95% CI (bootstrap)"] = ("[" + table[f"{m}_boot_lo"].map(f.format) + ", "
                                              + table[f"{m}_boot_hi"].map(f.format) + "]")
    return out


def pairwise_table(runs: Sequence[Run], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every pair of losses, compared on the first common seed's test predictions.

    Exact McNemar and paired-bootstrap ΔMCC, Holm-corrected over all pairs
    (see :func:`support.stats.pairwise_comparisons`).
    """
    groups = group_by_loss(runs)
    common = sorted(set.intersection(*[{r.seed for r in rs} for rs in groups.values()])) if groups else []
    if not common:
        raise ValueError("no seed is shared by all losses; pairwise tests need paired runs")
    s = common[0]
    chosen = {label: next(r for r in rs if r.seed == s) for label, rs in groups.items()}
    y = next(iter(chosen.values())).labels("test")
    probs = {label: r.probs("test") for label, r in chosen.items()}
    table = stats.pairwise_comparisons(y, probs, metric="mcc", n_boot=n_boot, seed=seed)
    table.attrs["seed"] = s
    return table


def first_seed_predictions(runs: Sequence[Run]) -> Dict[str, Run]:
    """The lowest-seed run of each loss (for curves and confusion matrices), best MCC first."""
    groups = group_by_loss(runs)
    chosen = {label: rs[0] for label, rs in groups.items()}
    return dict(sorted(chosen.items(), key=lambda kv: -kv[1].metrics["test"]["mcc"]))


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
