"""Prediction-level ensembles: combine the members' probabilities ``[N, K]``.

Every method is a small subclass of :class:`Ensemble` registered in
:data:`ENSEMBLES` (one module each: :mod:`.simple` for ``average`` and
``vote``, :mod:`.weighted`, :mod:`.stacking`; importing
:mod:`support.ensembles` registers them all). ``fit(probs, labels)`` sees
*one* split (the validation split unless the caller deliberately passes
another, see ``fit_on`` in :mod:`support.ensembles.members`);
``predict_proba(probs)`` applies the fitted combination to any split.
Methods (section 5.1 of ``../shared/papers/multiloss_ensemble.md``):

``vote``      majority (hard) vote over the members' argmax labels. Ties:
              ``tie="prob_sum"`` (default) picks, among the tied classes, the
              one with the largest probability summed over members (it uses
              the members' confidence, which the vote throws away);
              ``"highest_index"`` is the paper's ``find_max_mode`` (largest
              class index, i.e. viral > bacterial > normal), ``"lowest_index"``
              the opposite. ``predict_proba`` returns vote shares; the winner
              of a tie gets 1e-6 extra so that ``argmax`` is the vote's decision.
``average``   the mean of the members' probability vectors.
``weighted``  ``sum_m w_m P_m`` with ``w`` on the simplex minimising the
              log-loss of the mixture on the fitting split (see :class:`.weighted.Weighted`).
``stacking``  a scikit-learn meta-learner on the members' log-probabilities,
              its regularisation chosen by stratified cross-validation on the
              fitting split (see :class:`.stacking.Stacking`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from ..registry import Registry

ENSEMBLES: Registry = Registry("ensemble method")
"""name -> :class:`Ensemble` subclass; ``ENSEMBLES.names()`` lists the prediction-level methods."""

TIE_RULES = ("prob_sum", "highest_index", "lowest_index")
#: Appended to every name of an ensemble fitted or selected on the test split (the paper's leak).
LEAK_SUFFIX = " (fit on TEST — leak)"
_EPS = 1e-12  # probability floor inside logarithms (float32 softmax can underflow to 0)


class EnsembleError(ValueError):
    """Members that cannot be combined (different data, classes, missing predictions, ...)."""


def _stack(probs: Sequence[np.ndarray], labels=None, what: str = "probs") -> np.ndarray:
    """Validate a list of member probabilities and return float64 ``[M, N, K]``."""
    if isinstance(probs, np.ndarray) and probs.ndim == 2:
        raise EnsembleError(f"{what} must be a list of member arrays [N, K], got one array {probs.shape}; wrap it in [...]")
    if len(probs) == 0:
        raise EnsembleError(f"{what} is empty: an ensemble needs at least one member's probabilities")
    arrays = [np.asarray(p, dtype=np.float64) for p in probs]
    shapes = [a.shape for a in arrays]
    if any(a.ndim != 2 or a.shape[1] < 2 for a in arrays) or len(set(shapes)) > 1:
        raise EnsembleError(f"{what}: every member needs probabilities of one shape [N, K] with K >= 2, got {shapes}")
    P = np.stack(arrays)
    if not np.all(np.isfinite(P)):
        raise EnsembleError(f"{what} contain NaN or inf (members {np.flatnonzero(~np.isfinite(P).all((1, 2))).tolist()})")
    if labels is not None:
        y = np.asarray(labels)
        if y.ndim != 1 or len(y) != P.shape[1]:
            raise EnsembleError(f"labels must be int[{P.shape[1]}] (one per row of {what}), got shape {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= P.shape[2]):
            raise EnsembleError(f"labels must lie in 0..{P.shape[2] - 1}, got range [{y.min()}, {y.max()}]")
    return P


class Ensemble:
    """Base class: ``fit(probs, labels)`` then ``predict_proba(probs)``.

    A subclass sets ``name`` (its registry name), may override ``_fit(P, y)``
    (``P`` float64 ``[M, N, K]``) and must override ``_combine(P) -> [N, K]``.
    Attributes after fitting: ``weights`` (one per member, or None when the
    method has none), ``info`` (solver diagnostics), ``members`` (names, in
    the order the probabilities must be given), ``fit_on`` (the split the
    fit saw; "test" marks the paper's leak, see :attr:`leaky`).
    """

    name = ""

    def __init__(self):
        self.weights: Optional[np.ndarray] = None
        self.info: Dict[str, object] = {}
        self.members: List[str] = []
        self.fit_on = "val"
        self.n_members = 0
        self.num_classes = 0

    @property
    def params(self) -> dict:
        return {}

    @property
    def leaky(self) -> bool:
        """True when fitted on the test split: test metrics of this ensemble are optimistic."""
        return self.fit_on == "test"

    def fit(self, probs: Sequence[np.ndarray], labels) -> "Ensemble":
        P = _stack(probs, labels)
        self.n_members, _, self.num_classes = P.shape
        if not self.members:
            self.members = [f"member {i}" for i in range(self.n_members)]
        self._fit(P, np.asarray(labels, dtype=np.int64))
        return self

    def predict_proba(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        """Combined probabilities ``[N, K]`` (rows sum to 1) for the members' ``probs`` in fit order."""
        if not self.n_members:
            raise EnsembleError(f"{self.name} ensemble is not fitted yet; call fit(probs, labels) first")
        P = _stack(probs)
        if P.shape[0] != self.n_members or P.shape[2] != self.num_classes:
            raise EnsembleError(f"{self.name} ensemble was fitted on {self.n_members} members x {self.num_classes} "
                                f"classes ({', '.join(self.members)}), got {P.shape[0]} x {P.shape[2]}")
        out = self._combine(P)
        return out / out.sum(1, keepdims=True)

    def predict(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        return self.predict_proba(probs).argmax(1)

    def describe(self) -> str:
        """One line: method, parameters, members with weights, fitting split."""
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        if self.weights is not None:
            who = ", ".join(f"{m}: {w:.3f}" for m, w in zip(self.members, self.weights))
        else:
            who = ", ".join(self.members)
        fit = "fit on TEST — leak" if self.leaky else f"fit on {self.fit_on}"
        return f"{self.name}({params}) over [{who}]; {fit}"

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        """Nothing to fit by default."""

    def _combine(self, P: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def names() -> List[str]:
    """The prediction-level ensemble methods."""
    return ENSEMBLES.names()


def fit(method: str, probs: Sequence[np.ndarray], labels, *, members: Optional[Sequence[str]] = None,
        fit_on: str = "val", **params) -> Ensemble:
    """Fit ensemble ``method`` on the members' ``probs`` (list of ``[N, K]``) and ``labels`` (int ``[N]``).

    ``members`` names the members (same order as ``probs``); ``fit_on`` only
    records which split ``probs`` came from ("test" marks the result
    :attr:`~Ensemble.leaky`). ``params`` go to the method (e.g. ``tie=`` for
    ``vote``, ``solver=`` for ``weighted``); unknown ones raise TypeError.
    """
    cls = ENSEMBLES.get(method)
    try:
        ens = cls(**params)
    except TypeError as exc:
        raise TypeError(f"ensemble {method!r}: {exc}") from None
    if members is not None:
        if len(members) != len(probs):
            raise EnsembleError(f"{len(members)} member names for {len(probs)} members' probabilities")
        ens.members = [str(m) for m in members]
    if fit_on not in ("val", "test"):
        raise ValueError(f"fit_on must be 'val' (clean) or 'test' (the paper's leak), got {fit_on!r}")
    ens.fit_on = fit_on
    return ens.fit(probs, labels)
