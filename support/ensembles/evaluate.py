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

Top-K members are distinct: a run whose validation predictions equal a better one's (``kld`` =
``cce``) is counted once (:func:`~support.ensembles.members.select_top_k`). Selection and fitting
read the second validation half (``val_fit``); the first chose the members' checkpoints.

Tables: test metrics averaged over seeds with intervals over seeds × test images
(:mod:`support.inference`), and paired per-seed tests of every ensemble against the best single model
and against a deep-ensemble control (:func:`deep_ensemble`: 5 seeds of ``cce`` averaged), Holm over the
ensembles of each family.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from .. import inference, logs, stats
from .. import metrics as metrics_mod
from ..runs import Run
from .base import ENSEMBLES, LEAK_SUFFIX, EnsembleError, fit
from .members import check_members, fit_runs, fit_split, leak_label, predict_runs, rank_runs, select_top_k
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
                          [str(c) for c in run.predictions["classes"]], val_probs=run.probs("val_fit"),
                          detail=detail, run=run)


def build_ensembles(runs: Sequence[Run], ks: Sequence[int] = (3, 5), methods: Optional[Sequence[str]] = None,
                    metric: str = "mcc", fit_on: str = "val", model_level: bool = True, final_blend: bool = True,
                    model_level_seeds: Optional[int] = None,
                    clip_k: bool = False, method_params: Optional[Dict[str, dict]] = None,
                    train_overrides: Optional[dict] = None, force: bool = False, progress: bool = False,
                    data=None) -> List[EnsembleResult]:
    """Every ensemble of the protocol above, per seed (see the module docstring).

    ``methods``: prediction-level methods (default all of ``ENSEMBLES``);
    ``method_params``: e.g. ``{"vote": {"tie": "highest_index"}}``;
    ``clip_k``: use ``min(K, distinct runs of the seed)`` with a logged note instead of
    failing (K values that collapse onto one are done once);
    ``train_overrides``: TrainConfig fields of the model-level runs;
    ``model_level_seeds``: build the model-level ensembles (and the final blend) for the lowest this many
    seeds only (each is a trained run; ``None`` = every seed).
    """
    if not runs:
        raise EnsembleError("no finished runs to ensemble; train the members first (notebook 04 / ./run_all.sh) "
                            "with the same profile and data source")
    methods = list(ENSEMBLES.names() if methods is None else methods)
    for m in methods:
        ENSEMBLES.get(m)
    method_params, train_overrides = method_params or {}, train_overrides or {}
    results: List[EnsembleResult] = []
    for i, (seed, rs) in enumerate(group_by_seed(runs).items()):
        rs = check_members(rs)
        level_here = model_level and (model_level_seeds is None or i < model_level_seeds)
        best = select_top_k(rs, 1, metric, split=fit_on)[0]
        results.append(_from_run(leak_label(BEST_SINGLE, fit_on), "single", best, seed, fit_on, [best.label],
                                 f"{best.label} ({best.key}), best {fit_on} {metric}"))
        level_runs, done = {}, set()
        for k in ks:
            distinct = int((rank_runs(rs, metric, split=fit_on)["alias_of"] == "").sum())  # aliases count once
            kk = min(k, distinct) if clip_k else k
            if kk != k:
                log.info(f"seed {seed}: only {distinct} distinct runs, so top-{k} uses K={kk}")
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
                    val_probs=predict_runs(ens, top, "val_fit"),
                    weights=None if ens.weights is None else [float(w) for w in ens.weights], detail=ens.describe()))
            if level_here:
                run = train_model_level(top, force=force, progress=progress, data=data, **train_overrides)
                level_runs[kk] = run
                results.append(_from_run(leak_label(f"model-level top-{kk}", fit_on), "model_level", run, seed,
                                         fit_on, labels, f"run {run.path}: merge head over {', '.join(labels)}"))
        if final_blend and len(level_runs) >= 2:
            (k1, r1), (k2, r2) = list(level_runs.items())[:2]
            split = fit_split(fit_on)
            ens = fit("weighted", [r1.probs(split), r2.probs(split)], r1.labels(split), fit_on=fit_on,
                      members=[f"model-level top-{k1}", f"model-level top-{k2}"])
            results.append(EnsembleResult(
                leak_label(f"final blend (model-level top-{k1} + top-{k2})", fit_on), "blend", seed, fit_on,
                list(ens.members), ens.predict_proba([r1.probs("test"), r2.probs("test")]), r1.labels("test"),
                [str(c) for c in r1.predictions["classes"]],
                val_probs=ens.predict_proba([r1.probs("val_fit"), r2.probs("val_fit")]),
                weights=[float(w) for w in ens.weights], detail=ens.describe()))
        elif final_blend and level_here:
            log.info(f"seed {seed}: the final blend needs two different model-level ensembles; skipped")
    return results


def _by_name(results: Sequence[EnsembleResult]) -> Dict[str, List[EnsembleResult]]:
    groups: Dict[str, List[EnsembleResult]] = {}
    for r in results:
        groups.setdefault(r.name, []).append(r)
    return groups


def _stack(group: Sequence[EnsembleResult]) -> np.ndarray:
    """probs[S, N, K] of one ensemble's seeds (checked to share the test labels)."""
    y = group[0].test_labels
    if any(not np.array_equal(g.test_labels, y) for g in group):
        raise ValueError(f"{group[0].name}: seeds were tested on different labels; compare runs of one data source")
    return np.stack([metrics_mod.check_inputs(y, g.test_probs)[1] for g in group])


def metrics_table(results: Sequence[EnsembleResult], metrics: Sequence[str] = TABLE_METRICS, n_boot: int = 1000,
                  seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Long table, one row per (ensemble, metric): mean over seeds, sd, and its interval over seeds × test images.

    Columns: ``ensemble, kind, fit_on, leaky, n_seeds, metric, value, sd, seeds_images_lo,
    seeds_images_hi`` (:func:`support.inference.model_intervals`; the same test-image resamples for
    every ensemble; ready for :func:`support.report_plots.metric_bars`).
    """
    rows = []
    groups = _by_name(results)
    if not groups:
        return pd.DataFrame(rows)
    y = metrics_mod.check_inputs(results[0].test_labels, results[0].test_probs)[0]
    idx = stats.resample_indices(y, n_boot, True, seed)  # same resamples for every ensemble
    for name, group in groups.items():
        probs = _stack(group)
        for m in metrics:
            ci = inference.model_intervals(y, {name: probs}, m, idx=idx, level=level).iloc[0]
            value, sd = inference.seed_summary([metrics_mod.METRICS.get(m)(y, p) for p in probs])
            rows.append({"ensemble": name, "kind": group[0].kind, "fit_on": group[0].fit_on,
                         "leaky": group[0].leaky, "n_seeds": len(group), "metric": m, "value": value, "sd": sd,
                         "seeds_images_lo": float(ci["lo"]), "seeds_images_hi": float(ci["hi"])})
    return pd.DataFrame(rows)


def deep_ensemble(runs: Sequence[Run], loss: str = "cce", k: int = 5) -> EnsembleResult:
    """The control: the average of ``k`` seeds of one loss (a deep ensemble, Lakshminarayanan et al. 2017).

    A multi-loss ensemble must beat this to show that *different losses* add something that more
    seeds of one loss do not. Raises when fewer than ``k`` seeds of ``loss`` exist.
    """
    own = sorted((r for r in runs if r.label == loss), key=lambda r: r.seed)
    if len(own) < k:
        raise EnsembleError(f"the deep-ensemble control needs {k} seeds of {loss!r}, found {len(own)} "
                            f"({[r.seed for r in own]}); train more seeds or lower k")
    members = check_members(own[:k])
    probs = np.mean([r.probs("test") for r in members], axis=0)
    return EnsembleResult(f"deep ensemble ({k} × {loss})", "control", -1, "val", [r.label for r in members], probs,
                          members[0].labels("test"), [str(c) for c in members[0].predictions["classes"]],
                          val_probs=np.mean([r.probs("val_fit") for r in members], axis=0),
                          detail=f"average of {loss} seeds {[r.seed for r in members]}")


def wide_table(long: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """One row per ensemble, best mean MCC first: ``<metric>`` = 'mean ± sd' and ``<metric> 95% CI``."""
    f = f"{{:.{digits}f}}".format
    out = long[["ensemble", "kind", "n_seeds"]].drop_duplicates("ensemble").set_index("ensemble")
    for m, part in long.groupby("metric", sort=False):
        part = part.set_index("ensemble")
        sd = part["sd"].map(lambda v: "" if pd.isna(v) else f" ± {f(v)}")
        out[m] = part["value"].map(f) + sd
        out[f"{m} 95% CI (seeds × images)"] = ("[" + part["seeds_images_lo"].map(f) + ", "
                                               + part["seeds_images_hi"].map(f) + "]")
    order = long[long["metric"] == long["metric"].iloc[0]].sort_values("value", ascending=False)["ensemble"]
    return out.loc[order].reset_index()


def paired_tests(results: Sequence[EnsembleResult], reference: str = BEST_SINGLE, metric: str = "mcc",
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Each ensemble vs ``reference`` (the best single model, or a control such as :func:`deep_ensemble`):
    paired per-seed Δ``metric`` on the shared test images, seed × image interval, Holm over the ensembles.

    Each ensemble is paired on the seeds it was built for (``n_seeds`` says how many: the quick profile
    builds model-level ensembles for fewer seeds). A reference with one result (the deep-ensemble
    control: seed -1) is set beside every seed; its own seed noise is then not in the interval (only
    the ensembles' is), which ``attrs["note"]`` says. Columns: :func:`support.inference.paired_tests`.
    """
    by_name = _by_name(results)
    if reference not in by_name:
        raise ValueError(f"reference {reference!r} is not among the results ({list(by_name)})")
    ref = {r.seed: r for r in by_name[reference]}
    fixed = list(ref) == [-1]
    others = {n: sorted(g, key=lambda r: r.seed) for n, g in by_name.items() if n != reference and g[0].kind != "control"}
    if not others:
        raise ValueError("no ensemble to compare with the reference")
    y = next(iter(ref.values())).test_labels
    idx = stats.resample_indices(y, n_boot, True, seed)  # one set of resamples for every test
    rows = []
    for name, group in others.items():
        group = [r for r in group if fixed or r.seed in ref]
        if not group:
            continue
        theirs = np.stack([(ref[-1] if fixed else ref[r.seed]).test_probs for r in group])
        row = inference.paired_tests(y, {name: _stack(group), reference: theirs}, [(name, reference)], metric,
                                     n_boot=n_boot, alpha=alpha, idx=idx)
        rows.append(row)
    table = pd.concat(rows, ignore_index=True)
    m = len(table)
    table["p_holm"] = stats.holm(table["p_value"].to_numpy()) if m > 1 else table["p_value"]
    table["significant"] = table["p_holm"] < alpha
    table["mde"] = inference.minimum_detectable_effect(table["se"], table["df"], alpha / m)  # at the family's α/m
    table.insert(0, "family", f"vs {reference}")
    notes = [f"{reference} is one model set beside every seed: its own seed noise is not in the intervals"] if fixed else []
    fewer = sorted({int(n) for n in table["n_seeds"]})
    if len(fewer) > 1:
        notes.append(f"ensembles were built for different numbers of seeds ({fewer}); each is paired on its own seeds")
    table.attrs.update(note="; ".join(notes), family=f"vs {reference}", metric=metric, alpha=alpha,
                       n_images=len(y), n_tests=m)
    return table


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
        return t.set_index("ensemble")[["value", "seeds_images_lo", "seeds_images_hi"]].add_prefix(f"{tag}_")

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
        err = np.abs(np.vstack([v - t[f"{tag}_seeds_images_lo"], t[f"{tag}_seeds_images_hi"] - v]))
        label = "fit on validation (clean)" if tag == "clean" else "fit on TEST (leak, optimistic)"
        ax.errorbar(v, y + dy, xerr=err, fmt="o", color=color, capsize=3, label=label)
    ax.set_yticks(y, t["ensemble"])
    ax.set_xlabel(f"test {metric} (bars: 95 % interval over seeds × test images)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.9 / (len(t) + 2)), ncol=2)  # below the axis
    ax.set_title(titled(f"Test {metric}: ensembles fit on validation vs on TEST (the paper's leak)", source))
    fig.tight_layout()
    return fig
