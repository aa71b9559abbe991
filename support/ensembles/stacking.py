"""``stacking``: a cross-validated scikit-learn meta-learner on the members' log-probabilities."""
from __future__ import annotations

import numpy as np

from .base import _EPS, ENSEMBLES, Ensemble, EnsembleError


def _plain_l2() -> dict:
    """Keyword arguments for a plain-L2 ``LogisticRegressionCV`` without FutureWarnings on every sklearn:
    from 1.8 the ``l1_ratios``/``use_legacy_attributes`` defaults are "warn"; older releases lack them."""
    import inspect

    from sklearn.linear_model import LogisticRegressionCV

    defaults = inspect.signature(LogisticRegressionCV).parameters
    out = {}
    if defaults.get("l1_ratios") and defaults["l1_ratios"].default == "warn":
        out["l1_ratios"] = (0.0,)
    if defaults.get("use_legacy_attributes") and defaults["use_legacy_attributes"].default == "warn":
        out["use_legacy_attributes"] = False
    return out


@ENSEMBLES.register("stacking")
class Stacking(Ensemble):
    """A scikit-learn meta-learner on the members' concatenated log-probabilities ``[N, M*K]``.

    ``meta="logistic"`` (default): multinomial logistic regression whose
    inverse regularisation ``C`` is chosen by stratified ``cv``-fold
    cross-validation (log-loss) on the fitting split (sklearn ``LogisticRegressionCV``, 13 values of ``C``
    in 1e-3..1e3). ``meta="mlp"``: the paper's meta-learner shape, one hidden ReLU layer of
    width ``M*K`` (``MLPClassifier``), its L2 penalty chosen by the same
    cross-validation (``GridSearchCV``). Log-probabilities make the logistic meta-learner a
    learned, per-class weighted geometric mean of the members.

    ``info`` holds the chosen penalty and ``heldout_log_loss``: nested cross-validation, where each
    outer fold is predicted by a meta-learner whose whole search (inner folds) ran without that fold.
    The search's own best score is selection-biased and is not reported. ``heldout_log_loss`` is None
    when a class has too few samples for two nested levels (< 4). ``cv`` shrinks to the smallest
    class count; fewer than 2 samples of a class is an error.
    """

    name = "stacking"

    def __init__(self, meta: str = "logistic", cv: int = 5, seed: int = 0):
        super().__init__()
        if meta not in ("logistic", "mlp"):
            raise ValueError(f"unknown meta-learner {meta!r}; valid: logistic, mlp")
        self.meta, self.cv, self.seed = meta, int(cv), seed

    @property
    def params(self):
        return {"meta": self.meta}

    @staticmethod
    def _features(P):
        return np.log(np.clip(P, _EPS, 1.0)).transpose(1, 0, 2).reshape(P.shape[1], -1)

    def _folds(self, y, n_classes: int) -> int:
        """Stratified folds that fit ``y``: ``cv``, or fewer when the smallest class is smaller."""
        counts = np.bincount(y, minlength=n_classes)
        present = counts[counts > 0]
        return min(self.cv, int(present.min())) if len(present) >= 2 else 0

    def _search(self, X, y, folds: int):
        """The meta-learner with its penalty chosen by ``folds``-fold CV on (X, y), refitted on all of it."""
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import GridSearchCV, StratifiedKFold
        from sklearn.neural_network import MLPClassifier

        split = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
        if self.meta == "logistic":
            return LogisticRegressionCV(Cs=list(np.logspace(-3, 3, 13)), cv=split, scoring="neg_log_loss",
                                        max_iter=5000, **_plain_l2()).fit(X, y)
        mlp = MLPClassifier(hidden_layer_sizes=(X.shape[1],), max_iter=2000, random_state=self.seed)
        return GridSearchCV(mlp, {"alpha": [1e-4, 1e-2, 1.0]}, cv=split, scoring="neg_log_loss").fit(X, y)

    def _fit(self, P, y):
        from sklearn.model_selection import StratifiedKFold
        from threadpoolctl import threadpool_limits

        n_classes = P.shape[2]
        folds = self._folds(y, n_classes)
        if folds < 2:
            raise EnsembleError(f"stacking needs >= 2 samples of each of >= 2 classes in the fitting split for "
                                f"cross-validation; class counts are {np.bincount(y, minlength=n_classes).tolist()}")
        X = self._features(P)
        with threadpool_limits(1):  # tiny problems: BLAS threads only contend (10x slower on 2 busy cores)
            search = self._search(X, y, folds)
            held = np.full((len(y), n_classes), np.nan)
            for train, test in StratifiedKFold(folds, shuffle=True, random_state=self.seed + 1).split(X, y):
                inner = self._folds(y[train], n_classes)
                if inner < 2:
                    held = None  # too few samples for a search inside each outer fold
                    break
                model = self._search(X[train], y[train], inner)
                held[test] = 0.0
                held[np.ix_(test, model.classes_)] = model.predict_proba(X[test])
        if self.meta == "logistic":
            self.model, chosen = search, {"C": float(np.ravel(search.C_)[0])}
        else:
            self.model, chosen = search.best_estimator_, {k: float(v) for k, v in search.best_params_.items()}
        heldout = None if held is None else float(-np.mean(np.log(np.clip(held[np.arange(len(y)), y], _EPS, 1))))
        self.info = {**chosen, "cv_folds": folds, "heldout_log_loss": heldout}

    def _combine(self, P):
        from threadpoolctl import threadpool_limits

        out = np.zeros((P.shape[1], P.shape[2]))
        with threadpool_limits(1):
            out[:, self.model.classes_] = self.model.predict_proba(self._features(P))  # absent classes stay 0
        return out + 1e-12  # keep rows strictly positive for log-loss
