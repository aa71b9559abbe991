"""Build every ensemble per seed and compare it with the best single model (notebook 06).

Protocol, per training seed ``s`` (members of seed ``s`` ensemble together):

1. the *best single model* is the run with the best validation ``metric``;
2. for each K: the top-K runs by validation ``metric``; every prediction-level
   method of :data:`~support.ensembles.base.ENSEMBLES` fitted on their
   validation predictions; the model-level ensemble of the same members
   trained (train split, early-stopped on validation) as a run folder;
3. the paper's final blend: the ``weighted`` average, fitted on validation,
   of the model-level ensembles of the two K values (top-3 and top-5).

``fit_on="test"`` replaces "validation" by "test" in steps 1-3 (the paper's
leak) and every name gets :data:`~support.ensembles.base.LEAK_SUFFIX`.

Tables: test metrics averaged over seeds with a stratified bootstrap interval
of the seed-averaged value (each resample of test images scores every seed's
predictions; the same resamples for every ensemble), and paired tests against
the best single model of the same seed (exact McNemar and paired-bootstrap
ΔMCC), Holm-corrected over all ensembles and seeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from .. import logs, metrics as metrics_mod
from .. import stats
from ..runs import Run
from .base import ENSEMBLES, LEAK_SUFFIX, EnsembleError, fit
from .members import check_members, fit_runs, leak_label, predict_runs, select_top_k
from .model_level import train_model_level

log = logs.get("ensembles")

#: Test metrics of the ensemble table (ECE: lower is better).
TABLE_METRICS = ("mcc", "accuracy", "auroc_macro", "ece")
BEST_SINGLE = "best single model"


@dataclass
class EnsembleResult:
    """One ensemble (or the best single model) of one seed, with its test predictions."""

    name: str                      # display name, leak suffix included
    kind: str                      # single | prediction | model_level | blend
    seed: int
    fit_on: str
    members: List[str]             # member labels, in order
    test_probs: np.ndarray
    test_labels: np.ndarray
    classes: List[str]
    val_probs: Optional[np.ndarray] = None
    weights: Optional[List[float]] = None
    detail: str = ""
    run: Optional[Run] = field(default=None, repr=False)  # the model-level run folder

    @property
    def leaky(self) -> bool:
        return self.fit_on == "test"


def group_by_seed(runs: Sequence[Run]) -> Dict[int, List[Run]]:
    """Runs per training seed, seeds ascending."""
    groups: Dict[int, List[Run]] = {}
    for r in runs:
        groups.setdefault(r.seed, []).append(r)
    return dict(sorted(groups.items()))


def _from_run(name, kind, run: Run, seed, fit_on, members, detail) -> EnsembleResult:
    return EnsembleResult(name, kind, seed, fit_on, members, run.probs("test"), run.labels("test"),
                          [str(c) for c in run.predictions["classes"]], val_probs=run.probs("val"),
                          detail=detail, run=run)


def build_ensembles(runs: Sequence[Run], ks: Sequence[int] = (3, 5), methods: Optional[Sequence[str]] = None,
                    metric: str = "mcc", fit_on: str = "val", model_level: bool = True, final_blend: bool = True,
                    clip_k: bool = False, method_params: Optional[Dict[str, dict]] = None,
                    train_overrides: Optional[dict] = None, force: bool = False, progress: bool = False,
                    data=None) -> List[EnsembleResult]:
    """Every ensemble of the protocol above, per seed (see the module docstring).

    ``methods``: prediction-level methods (default all of ``ENSEMBLES``);
    ``method_params``: e.g. ``{"vote": {"tie": "highest_index"}}``;
    ``clip_k``: use ``min(K, runs of the seed)`` with a printed note instead of
    failing (K values that collapse onto one are done once);
    ``train_overrides``: TrainConfig fields of the model-level runs.
    """
    if not runs:
        raise EnsembleError("no finished runs to ensemble; train the members first (notebook 04 / ./run_all.sh) "
                            "with the same profile and data source")
    methods = list(ENSEMBLES.names() if methods is None else methods)
    for m in methods:
        ENSEMBLES.get(m)
    method_params, train_overrides = method_params or {}, train_overrides or {}
    results: List[EnsembleResult] = []
    for seed, rs in group_by_seed(runs).items():
        rs = check_members(rs)
        best = select_top_k(rs, 1, metric, split=fit_on)[0]
        results.append(_from_run(leak_label(BEST_SINGLE, fit_on), "single", best, seed, fit_on, [best.label],
                                 f"{best.label} ({best.key}), best {fit_on} {metric}"))
        level_runs, done = {}, set()
        for k in ks:
            kk = min(k, len(rs)) if clip_k else k
            if kk != k:
                log.info(f"seed {seed}: only {len(rs)} runs, so top-{k} uses K={kk}")
            if kk in done or kk < 2:
                log.info(f"seed {seed}: top-{kk} {'already done' if kk in done else 'is not an ensemble'}; skipped")
                continue
            done.add(kk)
            top = select_top_k(rs, kk, metric, split=fit_on)
            labels = [r.label for r in top]
            for m in methods:
                ens = fit_runs(m, top, fit_on=fit_on, **method_params.get(m, {}))
                results.append(EnsembleResult(
                    leak_label(f"{m} top-{kk}", fit_on), "prediction", seed, fit_on, labels,
                    predict_runs(ens, top, "test"), top[0].labels("test"), [str(c) for c in top[0].predictions["classes"]],
                    val_probs=predict_runs(ens, top, "val"),
                    weights=None if ens.weights is None else [float(w) for w in ens.weights], detail=ens.describe()))
            if model_level:
                run = train_model_level(top, force=force, progress=progress, data=data, **train_overrides)
                level_runs[kk] = run
                results.append(_from_run(leak_label(f"model-level top-{kk}", fit_on), "model_level", run, seed,
                                         fit_on, labels, f"run {run.path}: merge head over {', '.join(labels)}"))
        if final_blend and len(level_runs) >= 2:
            (k1, r1), (k2, r2) = list(level_runs.items())[:2]
            ens = fit("weighted", [r1.probs(fit_on), r2.probs(fit_on)], r1.labels(fit_on), fit_on=fit_on,
                      members=[f"model-level top-{k1}", f"model-level top-{k2}"])
            results.append(EnsembleResult(
                leak_label(f"final blend (model-level top-{k1} + top-{k2})", fit_on), "blend", seed, fit_on,
                list(ens.members), ens.predict_proba([r1.probs("test"), r2.probs("test")]), r1.labels("test"),
                [str(c) for c in r1.predictions["classes"]],
                val_probs=ens.predict_proba([r1.probs("val"), r2.probs("val")]),
                weights=[float(w) for w in ens.weights], detail=ens.describe()))
        elif final_blend and model_level:
            log.info(f"seed {seed}: the final blend needs two different model-level ensembles; skipped")
    return results


def _by_name(results: Sequence[EnsembleResult]) -> Dict[str, List[EnsembleResult]]:
    groups: Dict[str, List[EnsembleResult]] = {}
    for r in results:
        groups.setdefault(r.name, []).append(r)
    return groups


def metrics_table(results: Sequence[EnsembleResult], metrics: Sequence[str] = TABLE_METRICS, n_boot: int = 1000,
                  seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Long table, one row per (ensemble, metric): mean over seeds, sd, and the bootstrap CI of that mean.

    Columns: ``ensemble, kind, fit_on, leaky, n_seeds, metric, value, sd,
    boot_lo, boot_hi`` (ready for :func:`support.report_plots.metric_bars`).
    """
    rows = []
    for name, group in _by_name(results).items():
        y = group[0].test_labels
        if any(not np.array_equal(g.test_labels, y) for g in group):
            raise ValueError(f"{name}: seeds were tested on different labels; compare runs of one data source")
        y, _ = metrics_mod.check_inputs(y, group[0].test_probs)
        probs = [metrics_mod.check_inputs(y, g.test_probs)[1] for g in group]
        idx = stats.resample_indices(y, n_boot, True, seed)  # same resamples for every ensemble
        for m in metrics:
            fn = metrics_mod.METRICS.get(m)
            values = np.array([fn(y, p) for p in probs])
            boot = np.mean([stats.bootstrap_values(y, p, m, idx) for p in probs], axis=0)
            lo, hi = np.nanpercentile(boot, [50 * (1 - level), 50 * (1 + level)])
            rows.append({"ensemble": name, "kind": group[0].kind, "fit_on": group[0].fit_on,
                         "leaky": group[0].leaky, "n_seeds": len(group), "metric": m, "value": float(np.mean(values)),
                         "sd": float(np.std(values, ddof=1)) if len(values) > 1 else np.nan,
                         "boot_lo": float(lo), "boot_hi": float(hi)})
    return pd.DataFrame(rows)


def wide_table(long: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """One row per ensemble, best mean MCC first: ``<metric>`` = 'mean ± sd' and ``<metric> 95% CI``."""
    f = f"{{:.{digits}f}}".format
    out = long[["ensemble", "kind", "n_seeds"]].drop_duplicates("ensemble").set_index("ensemble")
    for m, part in long.groupby("metric", sort=False):
        part = part.set_index("ensemble")
        sd = part["sd"].map(lambda v: "" if pd.isna(v) else f" ± {f(v)}")
        out[m] = part["value"].map(f) + sd
        out[f"{m} 95% CI"] = "[" + part["boot_lo"].map(f) + ", " + part["boot_hi"].map(f) + "]"
    order = long[long["metric"] == long["metric"].iloc[0]].sort_values("value", ascending=False)["ensemble"]
    return out.loc[order].reset_index()


def paired_tests(results: Sequence[EnsembleResult], metric: str = "mcc", n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Each ensemble vs the best single model of the same seed: McNemar + paired-bootstrap Δmetric.

    Columns of :func:`support.stats.compare_to_reference` plus ``seed``; the
    Holm correction runs over all ensembles *and* seeds together.
    """
    tables = []
    for s in sorted({r.seed for r in results}):
        rs = [r for r in results if r.seed == s]
        ref = next((r for r in rs if r.kind == "single"), None)
        if ref is None or len(rs) < 2:
            continue
        table = stats.compare_to_reference(ref.test_labels, {r.name: r.test_probs for r in rs}, ref.name,
                                           metric=metric, n_boot=n_boot, seed=seed, alpha=alpha)
        tables.append(table.assign(seed=s))
    if not tables:
        raise ValueError("no seed has both a best single model and an ensemble to compare")
    out = pd.concat(tables, ignore_index=True)
    out["p_bootstrap_holm"] = stats.holm(out["p_bootstrap"].to_numpy())
    out["p_mcnemar_holm"] = stats.holm(out["p_mcnemar"].to_numpy())
    out["significant"] = out["p_bootstrap_holm"] < alpha
    return out


def weights_table(results: Sequence[EnsembleResult]) -> pd.DataFrame:
    """Weights of the weighted ensembles and blends: one row per (ensemble, seed, member)."""
    chosen = [r for r in results if r.weights is not None and (r.kind == "blend" or r.name.startswith("weighted"))]
    rows = [{"ensemble": r.name, "seed": r.seed, "member": m, "weight": w}
            for r in chosen for m, w in zip(r.members, r.weights)]
    return pd.DataFrame(rows, columns=["ensemble", "seed", "member", "weight"])


def leak_table(clean: pd.DataFrame, leaky: pd.DataFrame, metric: str = "mcc") -> pd.DataFrame:
    """Clean vs leaky value of ``metric`` per ensemble, and the optimism (leak − clean).

    ``clean`` and ``leaky`` are :func:`metrics_table` outputs of ``fit_on="val"``
    and ``fit_on="test"``; rows are matched on the name without the leak suffix.
    """
    def pick(t, tag):
        t = t[t["metric"] == metric].copy()
        t["ensemble"] = t["ensemble"].str.replace(LEAK_SUFFIX, "", regex=False)
        return t.set_index("ensemble")[["value", "boot_lo", "boot_hi"]].add_prefix(f"{tag}_")

    out = pick(clean, "clean").join(pick(leaky, "leak"), how="inner")
    out["optimism"] = out["leak_value"] - out["clean_value"]
    out.attrs["metric"] = metric
    return out.reset_index().sort_values("optimism", ascending=False, ignore_index=True)


def leak_figure(table: pd.DataFrame, source: str):
    """Clean (fit on val) vs leaky (fit on TEST) test metric per ensemble, with bootstrap intervals."""
    import matplotlib.pyplot as plt

    from ..plots import titled

    metric = table.attrs.get("metric", "mcc")
    t = table.iloc[::-1].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(t) + 1.8))
    y = np.arange(len(t))
    for tag, dy, color in (("clean", -0.13, "C0"), ("leak", 0.13, "C3")):
        v = t[f"{tag}_value"].to_numpy(float)
        err = np.abs(np.vstack([v - t[f"{tag}_boot_lo"], t[f"{tag}_boot_hi"] - v]))
        label = "fit on validation (clean)" if tag == "clean" else "fit on TEST (leak, optimistic)"
        ax.errorbar(v, y + dy, xerr=err, fmt="o", color=color, capsize=3, label=label)
    ax.set_yticks(y, t["ensemble"])
    ax.set_xlabel(f"test {metric} (bars: 95% bootstrap interval over test images)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.9 / (len(t) + 2)), ncol=2)  # below the axis
    ax.set_title(titled(f"Test {metric}: ensembles fit on validation vs on TEST (the paper's leak)", source))
    fig.tight_layout()
    return fig
