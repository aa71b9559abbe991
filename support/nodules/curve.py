"""The loss comparison across difficulty: the same study at a few margin strengths around the chosen cell.

Each strength is a :class:`~support.nodules.Study` at that cell (same training ρ, same variants); the chosen
cell keeps the study's seeds, the others may use fewer (``curve_seeds``; the table says how many).
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from .comparison import metrics_table, paired_table
from .regime import cell_overrides
from .study import Study

PRESETS = ("test_iid", "test_conflict")


def curve_studies(profile: str, settings: dict, strengths: Sequence[float], rho: float, chosen: float,
                  runs_dir=None) -> dict:
    """{margin strength: Study at (strength, rho)}; the chosen strength on the study's seeds, others on
    ``settings["curve_seeds"]``; no learnability runs (the map has them)."""
    out = {}
    for s in strengths:
        seeds = () if float(s) == float(chosen) else settings["curve_seeds"]
        out[float(s)] = Study(profile, runs_dir, {**cell_overrides(settings, s, rho, seeds),
                                                  "learnability_check": False}, tests=PRESETS)
    return out


def curve_table(studies: dict, force: bool = False, progress: bool = True, n_boot: int = 1000) -> pd.DataFrame:
    """Per (margin strength, loss): test_iid and test_conflict accuracy with seed × image intervals, and
    Δ conflict accuracy vs cce (paired per seed, Holm over the losses at that strength; only with >= 2 seeds,
    a one-seed interval holds test-patch noise only)."""
    rows = []
    for s, study in studies.items():
        study.train(force=force, progress=progress)
        preds = study.predictions(force=force)
        table = metrics_table(preds, n_boot=n_boot).set_index(["loss", "preset"])
        paired = paired_table(preds, "test_conflict", n_boot=n_boot).set_index("model_a")
        for loss in dict.fromkeys(table.index.get_level_values(0)):
            c, i = table.loc[(loss, "test_conflict")], table.loc[(loss, "test_iid")]
            row = {"margin_strength": s, "loss": loss, "n_seeds": int(c["n_seeds"]), "iid": i["accuracy_mean"],
                   "conflict": c["accuracy_mean"], "conflict_lo": c["accuracy_lo"], "conflict_hi": c["accuracy_hi"]}
            if loss in paired.index and row["n_seeds"] > 1:  # one seed: no training noise, so no test
                row.update(delta_vs_cce=paired.loc[loss, "delta"], delta_lo=paired.loc[loss, "delta_lo"],
                           delta_hi=paired.loc[loss, "delta_hi"], p_holm=paired.loc[loss, "p_holm"])
            rows.append(row)
    return pd.DataFrame(rows)
