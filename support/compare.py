"""Compare losses over finished runs: the tables behind ``05_compare_losses``.

A loss's score is the mean over its training seeds of a test metric on one shared test set. Its
interval carries both noise sources -- another seed, another draw of test films -- as
:mod:`support.inference` explains (image bootstrap shared by every loss and seed + the seed
variance, a t-interval). Paired comparisons use the per-seed differences on the shared test
images. Two families of tests:

* **confirmatory**: fixed in the profile before any result is seen (``profiles.CONFIRMATORY``:
  each loss vs ``cce``, each calibrated loss vs its base), Holm over that family;
* **exploratory**: every pair of losses, Holm over all pairs, labelled so.

Every test table shows its attainable p floor after correction and the minimum detectable effect.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from . import inference, stats
from .metrics import METRICS
from .runs import Run
from .tables import mean_sd_cells

#: Columns of the main table, in order (all are test-set metrics).
TABLE_METRICS = ("mcc", "accuracy", "f1", "kappa", "auroc_macro", "auprc_macro", "ece", "brier")
#: Metrics that get a seed x image interval (cheap: from confusion matrices).
BOOTSTRAP_METRICS = ("mcc", "accuracy")
#: What the intervals contain, for captions.
INTERVAL_NOTE = ("95 % interval over seeds and test images (image bootstrap + seed variance, t with "
                 "Satterthwaite df; support.inference)")


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


def shared_labels(groups: Dict[str, List[Run]], split: str) -> np.ndarray:
    """The labels of ``split``, shared by every loss; raises when the losses were scored on different images."""
    first = next(iter(groups.values()))[0]
    ids = first.ids(split)
    for label, rs in groups.items():
        if not np.array_equal(rs[0].ids(split), ids):
            raise ValueError(f"{label} was scored on other {split} images than {first.label} "
                             f"({rs[0].path} vs {first.path}); compare runs of one data source")
    return first.labels(split)


def score(run: Run, metric: str, split: str = "test") -> float:
    """``metric`` of one run on ``split``: from its metrics.json when recorded there, else from its predictions."""
    recorded = (run.metrics.get(split) or {}).get(metric) if split in ("val", "test") else None
    return float(recorded) if recorded is not None else float(METRICS.get(metric)(run.labels(split), run.probs(split)))


def seed_stack(runs: Sequence[Run], split: str = "test") -> Tuple[np.ndarray, Dict[str, np.ndarray], List[int], str]:
    """``(y, {loss: probs[S, N, K]}, seeds, note)`` over the seeds that EVERY loss has (a paired design).

    Seeds some loss lacks are left out and ``note`` says which (never a silent mix); with fewer than
    2 common seeds the note says that the intervals hold test-image noise only.
    """
    groups = group_by_loss(runs)
    if not groups:
        raise ValueError("no runs to compare; train the losses first (notebook 04 / ./run_all.sh)")
    y = shared_labels(groups, split)
    have = {label: {r.seed for r in rs} for label, rs in groups.items()}
    common = sorted(set.intersection(*have.values()))
    if not common:
        raise ValueError(f"no seed is shared by all losses ({ {k: sorted(v) for k, v in have.items()} }); "
                         "paired comparisons need the same seeds for every loss")
    notes = [f"{label}: seed(s) {sorted(s - set(common))} left out (not trained for every loss)"
             for label, s in have.items() if s - set(common)]
    if len(common) < 2:
        notes.append("1 seed: intervals and tests hold test-image noise only, not seed-to-seed noise")
    probs = {label: np.stack([r.probs(split) for r in rs if r.seed in common]) for label, rs in groups.items()}
    return y, probs, common, "; ".join(notes)


def loss_table(runs: Sequence[Run], n_boot: int = 1000, seed: int = 0,
               table_metrics: Sequence[str] = TABLE_METRICS, split: str = "test",
               boot_metrics: Sequence[str] = BOOTSTRAP_METRICS) -> pd.DataFrame:
    """One row per loss: seeds; mean and sd over seeds of each metric; intervals over seeds and images.

    Sorted by mean MCC (best first). Columns ``<m>_mean``, ``<m>_sd``, and for ``boot_metrics``
    ``<m>_lo/hi`` (the seed x image interval, :func:`support.inference.model_intervals`),
    ``<m>_se_seed`` and ``<m>_se_image`` (its two parts). Each loss uses all of its own seeds; all
    share one set of test-image resamples. ``split``: "test" (default), "val" or a validation half.
    """
    groups = group_by_loss(runs)
    if not groups:
        return pd.DataFrame()
    y = shared_labels(groups, split)
    idx = stats.resample_indices(y, n_boot, True, seed)
    rows = []
    for label, rs in groups.items():
        row = {"loss": label, "n_seeds": len(rs), "seeds": ",".join(str(r.seed) for r in rs), "n_images": len(y)}
        for m in table_metrics:
            row[f"{m}_mean"], row[f"{m}_sd"] = inference.seed_summary([score(r, m, split) for r in rs])
        probs = np.stack([r.probs(split) for r in rs])
        for m in boot_metrics:
            ci = inference.model_intervals(y, {label: probs}, m, idx=idx).iloc[0]
            row.update({f"{m}_lo": ci["lo"], f"{m}_hi": ci["hi"], f"{m}_se_seed": ci["se_seed"],
                        f"{m}_se_image": ci["se_image"]})
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("mcc_mean", ascending=False, ignore_index=True) if "mcc_mean" in table else table


def bars_frame(table: pd.DataFrame, metric: str = "mcc") -> pd.DataFrame:
    """The columns :func:`support.report_plots.metric_bars` reads, from a :func:`loss_table`."""
    out = pd.DataFrame({"loss": table["loss"], "value": table[f"{metric}_mean"]})
    if f"{metric}_lo" in table:
        out["seeds_images_lo"], out["seeds_images_hi"] = table[f"{metric}_lo"], table[f"{metric}_hi"]
    return out


def display_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Human-readable version: 'mean ± sd' (over seeds) and '[lo, hi]' (seeds x images) strings."""
    out = pd.DataFrame({"loss": table["loss"], "seeds": table["n_seeds"]})
    if "n_images" in table:
        out["test images"] = table["n_images"]
    f = f"{{:.{digits}f}}".format
    for m in TABLE_METRICS:
        if f"{m}_mean" not in table:
            continue
        out[m] = mean_sd_cells(table[f"{m}_mean"], table[f"{m}_sd"], digits)
        if f"{m}_lo" in table:
            out[f"{m} 95% CI (seeds × images)"] = [f"[{f(a)}, {f(b)}]" for a, b in zip(table[f"{m}_lo"], table[f"{m}_hi"])]
    return out


def comparison_table(runs: Sequence[Run], pairs: Sequence[Tuple[str, str]], metric: str = "mcc",
                     n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, family: str = "confirmatory",
                     split: str = "test") -> pd.DataFrame:
    """Paired seed x image tests of ``metric(A) - metric(B)`` for ``pairs`` (Holm over them), on the
    seeds every loss has (:func:`seed_stack`). Pairs naming a loss without runs are dropped and listed
    in ``attrs["note"]``. ``family`` labels the table ("confirmatory" or "exploratory")."""
    y, probs, seeds, note = seed_stack(runs, split)
    kept = [(a, b) for a, b in pairs if a in probs and b in probs]
    dropped = [f"{a} vs {b}" for a, b in pairs if (a, b) not in kept]
    if dropped:
        note = "; ".join(filter(None, [note, f"no runs for: {', '.join(dropped)}"]))
    if not kept:
        raise ValueError(f"none of the pairs {list(pairs)} has runs of both losses (losses with runs: {list(probs)})")
    table = inference.paired_tests(y, probs, kept, metric, n_boot=n_boot, seed=seed, alpha=alpha)
    table.insert(0, "family", family)
    table.attrs.update(seeds=seeds, note=note, family=family)
    return table


def confirmatory_table(runs: Sequence[Run], family: dict, n_boot: int = 1000, seed: int = 0,
                       metric: str = "mcc") -> pd.DataFrame:
    """The profile's confirmatory family (``profiles.CONFIRMATORY``-shaped dict with ``pairs`` and
    ``alpha``) on ``metric``: each pair tested, Holm over the family."""
    return comparison_table(runs, [tuple(p) for p in family["pairs"]], metric, n_boot, seed, family.get("alpha", 0.05))


def pairwise_table(runs: Sequence[Run], n_boot: int = 1000, seed: int = 0, metric: str = "mcc") -> pd.DataFrame:
    """Every pair of losses (exploratory): paired seed x image tests, Holm over all pairs."""
    groups = group_by_loss(runs)
    mean = {label: np.mean([score(r, metric) for r in rs]) for label, rs in groups.items()}
    labels = sorted(groups, key=lambda label: -mean[label])  # best first: the matrix reads top-down
    return comparison_table(runs, list(itertools.combinations(labels, 2)), metric, n_boot, seed,
                            family="exploratory")


def display_tests(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A test table for reading: Δ with interval, p, Holm p, its floor, MDE, verdict."""
    f = f"{{:.{digits}f}}".format
    metric = table.attrs.get("metric", "mcc")
    verdict = np.where(table["identical"], "identical predictions (alias)",
                       np.where(table["significant"], "differs", "no difference detected"))
    return pd.DataFrame({
        "family": table["family"], "A": table["model_a"], "B": table["model_b"],
        f"Δ{metric} (A − B)": table["delta"].map(f),
        "95% CI (seeds × images)": "[" + table["delta_lo"].map(f) + ", " + table["delta_hi"].map(f) + "]",
        "p": table["p_value"].map("{:.2g}".format), "p (Holm)": table["p_holm"].map("{:.2g}".format),
        "p floor (Holm)": table["p_floor_holm"].map("{:.0g}".format), "MDE (80 %)": table["mde"].map(f),
        "seeds": table["n_seeds"], "verdict": verdict})


def findings(tests: pd.DataFrame, digits: int = 3) -> str:
    """What a test table shows, in Markdown sentences derived from its numbers (nothing hard-coded)."""
    f = f"{{:.{digits}f}}".format
    metric = tests.attrs.get("metric", "mcc")
    n, seeds = tests.attrs.get("n_images", "?"), int(tests["n_seeds"].iloc[0])
    m, alpha = len(tests), tests.attrs.get("alpha", 0.05)
    real = tests[~tests["identical"]]
    sig = real[real["significant"]]
    out = [f"{m} {tests['family'].iloc[0]} tests on {n} test images and {seeds} seed(s) per loss, Holm over the "
           f"{m} at α = {alpha}: **{len(sig)} find{'s' if len(sig) == 1 else ''} a difference**."]
    for r in sig.sort_values("delta", ascending=False).itertuples(index=False):
        out.append(f"- {r.model_a} − {r.model_b}: Δ{metric} {f(r.delta)} [{f(r.delta_lo)}, {f(r.delta_hi)}], "
                   f"Holm p = {r.p_holm:.2g}.")
    rest = real[~real["significant"]]
    if len(rest):
        out.append(f"The other {len(rest)} show no difference: their Δ{metric} lie between {f(rest['delta'].min())} "
                   f"and {f(rest['delta'].max())}, and each could have detected |Δ{metric}| ≥ "
                   f"{f(rest['mde'].min())}–{f(rest['mde'].max())} (its MDE at 80 % power); a true effect smaller "
                   "than that can hide in these intervals.")
    alias = tests[tests["identical"]]
    if len(alias):
        out.append("Identical predictions on every seed (the same model under two names): "
                   + ", ".join(f"{a} = {b}" for a, b in zip(alias["model_a"], alias["model_b"])) + ".")
    if tests.attrs.get("note"):
        out.append(f"Note: {tests.attrs['note']}.")
    return "\n".join(out)


def first_seed_predictions(runs: Sequence[Run]) -> Dict[str, Run]:
    """The lowest-seed run of each loss (for curves and confusion matrices), best MCC first."""
    groups = group_by_loss(runs)
    chosen = {label: rs[0] for label, rs in groups.items()}
    return dict(sorted(chosen.items(), key=lambda kv: -kv[1].metrics["test"]["mcc"]))
