"""Ensemble members are finished run folders: checking, ranking and top-K selection.

Members can only be combined when they describe the same images in the same
order: :func:`check_members` compares the data configuration, the class
order, and the validation and test ids of every member with the first one,
and names the run folders that differ. The selection (:func:`select_top_k`)
and the fit (:func:`fit_runs`) read the split named by ``fit_on``:

* ``"val"`` (default, clean): selection and fitting see validation
  predictions only; the test split is touched once, to score the result;
* ``"test"``: the paper's code (``multiloss_ensemble.md`` section 5) ranked
  and weighted the members on the test set. Kept only to *measure* how
  optimistic that is; every name it produces carries :data:`LEAK_SUFFIX`.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import pandas as pd

from .. import artifacts
from ..runs import Run
from .base import LEAK_SUFFIX, EnsembleError, Ensemble, fit

FIT_SPLITS = ("val", "test")


def _as_run(r: Union[Run, str, Path]) -> Run:
    return r if isinstance(r, Run) else Run(Path(r))


def _names(runs: Sequence[Run]) -> str:
    return ", ".join(str(r.path) for r in runs)


def _groups(runs: Sequence[Run], value) -> str:
    """'<value>: run, run; <value>: run' for an error message."""
    groups = {}
    for r in runs:
        groups.setdefault(repr(value(r)), []).append(str(r.path))
    return "; ".join(f"{v} in {', '.join(ps)}" for v, ps in groups.items())


def check_members(runs: Sequence[Union[Run, str, Path]]) -> List[Run]:
    """Return the members as :class:`Run` objects, or raise :class:`EnsembleError` naming the runs involved.

    Checks: at least one member, no member twice, each finished with
    readable metrics and val/test predictions (a non-empty validation split),
    one data configuration, one class order, and identical validation and
    test ids in identical order.
    """
    runs = [_as_run(r) for r in runs]
    if not runs:
        raise EnsembleError("no member runs given; train some models first (notebook 04)")
    keys = [r.path.resolve() for r in runs]
    dupes = sorted({str(k) for k in keys if keys.count(k) > 1})
    if dupes:
        raise EnsembleError(f"the same run is given twice: {', '.join(dupes)}")
    for r in runs:
        try:
            _ = r.metrics, r.predictions
        except artifacts.ArtifactError as exc:
            raise EnsembleError(f"run {r.path} cannot be an ensemble member: {exc}") from None
    empty = [r for r in runs if len(r.predictions["val_labels"]) == 0]
    if empty:
        raise EnsembleError(f"runs without validation predictions (empty val split): {_names(empty)}; "
                            "ensembles are fitted on validation predictions")
    first = runs[0]
    checks = (
        ("were trained on different data", lambda r: r.metrics.get("data")),
        ("have different class orders", lambda r: [str(c) for c in r.predictions["classes"]]),
        ("were validated on different images (or in another order)", lambda r: r.predictions["val_ids"].tolist()),
        ("were tested on different images (or in another order)", lambda r: r.predictions["test_ids"].tolist()),
    )
    for problem, value in checks:
        if any(value(r) != value(first) for r in runs[1:]):
            if "images" in problem:  # ids lists are long: name the runs, not the values
                odd = [r for r in runs if value(r) != value(first)]
                raise EnsembleError(f"members {problem}: {_names(odd)} differ from {first.path}; "
                                    "ensemble runs of one data source and split")
            raise EnsembleError(f"members {problem}: {_groups(runs, value)}")
    return runs


def fit_split(fit_on: str) -> str:
    """The predictions a fit reads: ``"val"`` means the validation half kept for post-hoc fitting
    (``"val_fit"``; the other half chose the members' checkpoints, :mod:`support.data.halves`)."""
    if fit_on not in FIT_SPLITS:
        raise ValueError(f"fit_on must be 'val' (clean) or 'test' (the paper's leak), got {fit_on!r}")
    return "val_fit" if fit_on == "val" else fit_on



def _alias_of(runs: Sequence[Run], split: str) -> List[str]:
    """Per run, the label of an earlier run with bit-identical ``split`` predictions ('' if none).

    ``kld`` and ``cce`` (and ``cal_kld`` / ``cal_cce``) are the same loss for one-hot targets: with the
    same seed they train the same model, and a top-K holding both would count one model twice.
    """
    out = []
    for i, r in enumerate(runs):
        same = next((q for q in runs[:i] if np.array_equal(q.probs(split), r.probs(split))), None)
        out.append("" if same is None else same.label)
    return out


def rank_runs(runs: Sequence[Union[Run, str, Path]], metric: str = "mcc", split: str = "val") -> pd.DataFrame:
    """Members ranked by ``metric`` on ``split`` predictions (best first): columns key, label, seed, score."""
    from .. import metrics as metrics_mod

    runs = check_members(runs)
    fn = metrics_mod.METRICS.get(metric)
    higher = getattr(fn, "greater_is_better", True)
    split = fit_split(split)
    rows = [{"key": r.key, "label": r.label, "seed": r.seed,
             "score": float(fn(r.labels(split), r.probs(split))), "run": r} for r in runs]
    table = pd.DataFrame(rows)
    table["_order"] = -table["score"] if higher else table["score"]
    table = table.sort_values(["_order", "label", "key"], kind="stable").drop(columns="_order").reset_index(drop=True)
    table["alias_of"] = _alias_of(list(table["run"]), split)
    return table


def select_top_k(runs: Sequence[Union[Run, str, Path]], k: int, metric: str = "mcc", split: str = "val") -> List[Run]:
    """The ``k`` best distinct members by ``metric`` on ``split`` (default: validation MCC), best first.

    A run whose predictions are identical to a better-ranked one (an alias, e.g. ``kld`` = ``cce``)
    is counted once. ``k`` larger than the number of distinct runs is an error naming the runs; pass
    ``min(k, len(runs))`` explicitly when fewer are acceptable.
    """
    runs = check_members(runs)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    ranked = rank_runs(runs, metric, split)
    distinct = ranked[ranked["alias_of"] == ""]
    if k > len(distinct):
        aliases = "; ".join(f"{a} = {b}" for a, b in zip(ranked["label"], ranked["alias_of"]) if b)
        raise EnsembleError(f"top-{k} needs {k} distinct finished runs, only {len(distinct)} available: "
                            f"{_names(runs)}" + (f" (aliases counted once: {aliases})" if aliases else "")
                            + "; lower K or train more losses/seeds")
    return list(distinct["run"][:k])


def fit_runs(method: str, runs: Sequence[Union[Run, str, Path]], fit_on: str = "val", **params) -> Ensemble:
    """Fit ``method`` on the members' ``fit_on`` predictions (default validation).

    Member names are run labels (loss + parameters) and keys. With
    ``fit_on="test"`` the result is :attr:`~Ensemble.leaky`.
    """
    runs = check_members(runs)
    split = fit_split(fit_on)
    names = [f"{r.label} ({r.key})" for r in runs]
    return fit(method, [r.probs(split) for r in runs], runs[0].labels(split), members=names, fit_on=fit_on, **params)


def predict_runs(ensemble: Ensemble, runs: Sequence[Union[Run, str, Path]], split: str = "test") -> np.ndarray:
    """Apply a fitted ensemble to the members' ``split`` probabilities (same members, same order)."""
    runs = check_members(runs)
    if len(runs) != ensemble.n_members:
        raise EnsembleError(f"ensemble was fitted on {ensemble.n_members} members, got {len(runs)}: {_names(runs)}")
    return ensemble.predict_proba([r.probs(split) for r in runs])


def leak_label(name: str, fit_on: str) -> str:
    """``name`` with :data:`LEAK_SUFFIX` when ``fit_on == "test"``."""
    return name + LEAK_SUFFIX if fit_split(fit_on) == "test" else name
