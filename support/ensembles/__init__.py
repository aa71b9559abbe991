"""Ensembles of finished runs: prediction-level methods, model-level ensembles, evaluation.

Every ensemble is *fitted on validation predictions* and *applied to test
predictions* (``fit_on="val"``). ``fit_on="test"`` reproduces the paper's
test-set leak for comparison only; whatever it produces is named with
:data:`LEAK_SUFFIX` and flagged ``leaky``.

Modules (one job each):
    base         :data:`ENSEMBLES` registry, :class:`Ensemble` base class and
                 ``fit(method, probs, labels, **params)`` over probability arrays;
                 methods in simple (average, vote), weighted, stacking
    members      run folders as members: :func:`check_members`, :func:`select_top_k`,
                 :func:`fit_runs`, :func:`predict_runs`
    model_level  the ``model_level`` architecture (frozen members' ``dcl`` features
                 -> merge head) trained by ``training.train_one``; importing this
                 package registers it in :data:`support.models.ARCHS`
    evaluate     per-seed protocol, tables with 95 % CIs, paired tests vs the best
                 single model, the leak-versus-clean comparison (notebook 06)

Quick use::

    from support import ensembles, runs
    members = ensembles.select_top_k(runs.find_runs(seed=0), k=3)          # by validation MCC
    ens = ensembles.fit_runs("weighted", members)                           # weights from validation
    test_probs = ensembles.predict_runs(ens, members, "test")
    ens.describe()                                                          # method, members, weights, split
    level = ensembles.train_model_level(members)                            # a run folder
"""
from . import simple, weighted, stacking  # noqa: F401  (register the prediction-level methods, in this order)
from . import model_level  # noqa: F401  (registers the "model_level" architecture)
from .base import ENSEMBLES, LEAK_SUFFIX, TIE_RULES, Ensemble, EnsembleError, fit, names
from .evaluate import (BEST_SINGLE, TABLE_METRICS, EnsembleResult, build_ensembles, deep_ensemble, group_by_seed, leak_figure,
                       leak_table, metrics_table, paired_tests, weights_table, wide_table)
from .members import check_members, fit_runs, leak_label, predict_runs, rank_runs, select_top_k
from .weighted import mixture_weights
from .model_level import is_model_level, model_level_config, train_model_level

__all__ = [
    "ENSEMBLES", "LEAK_SUFFIX", "TIE_RULES", "BEST_SINGLE", "TABLE_METRICS", "Ensemble", "EnsembleError",
    "EnsembleResult", "fit", "names", "mixture_weights", "check_members", "select_top_k", "rank_runs", "fit_runs",
    "predict_runs", "leak_label", "model_level_config", "train_model_level", "is_model_level", "build_ensembles",
    "group_by_seed", "deep_ensemble", "metrics_table", "wide_table", "paired_tests", "weights_table", "leak_table", "leak_figure",
]
