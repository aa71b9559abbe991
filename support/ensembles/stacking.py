"""``stacking``: a cross-validated scikit-learn meta-learner on the members' log-probabilities."""
from __future__ import annotations

import numpy as np

from .base import _EPS, ENSEMBLES, Ensemble, EnsembleError


@ENSEMBLES.register("stacking")
class Stacking(Ensemble):
    """A scikit-learn meta-learner on the members' concatenated log-probabilities ``[N, M*K]``.

    ``meta="logistic"`` (default): multinomial logistic regression whose
    inverse regularisation ``C`` is chosen by stratified ``cv``-fold
    cross-validation (log-loss) on the fitting split (``GridSearchCV`` over 13 values of ``C`` in 1e-3..1e3).
    ``meta="mlp"``: the paper's meta-learner shape, one hidden ReLU layer of
    width ``M*K`` (``MLPClassifier``), its L2 penalty chosen by the same
    cross-validation. Log-probabilities make the logistic meta-learner a
    learned, per-class weighted geometric mean of the members. ``info``
    holds the chosen penalty and the cross-validated log-loss (out-of-fold,
    so it is an honest estimate on the fitting split). ``cv`` shrinks to the
    smallest class count; fewer than 2 samples of a class is an error.
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

    def _fit(self, P, y):
        from sklearn.base import clone
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
        from sklearn.neural_network import MLPClassifier
        from threadpoolctl import threadpool_limits

        counts = np.bincount(y, minlength=P.shape[2])
        present = counts[counts > 0]
        folds = min(self.cv, int(present.min()))
        if folds < 2 or len(present) < 2:
            raise EnsembleError(f"stacking needs >= 2 samples of each of >= 2 classes in the fitting split for "
                                f"cross-validation; class counts are {counts.tolist()}")
        split = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
        X = self._features(P)
        if self.meta == "logistic":
            base, grid = LogisticRegression(max_iter=5000), {"C": list(np.logspace(-3, 3, 13))}
        else:
            base = MLPClassifier(hidden_layer_sizes=(X.shape[1],), max_iter=2000, random_state=self.seed)
            grid = {"alpha": [1e-4, 1e-2, 1.0]}
        with threadpool_limits(1):  # tiny problems: BLAS threads only contend (10x slower on 2 busy cores)
            search = GridSearchCV(base, grid, cv=split, scoring="neg_log_loss").fit(X, y)  # refits on all of X
            self.model = search.best_estimator_
            oof = cross_val_predict(clone(self.model), X, y, cv=split, method="predict_proba")
        rows = np.searchsorted(self.model.classes_, y)
        self.info = {**{k: float(v) for k, v in search.best_params_.items()}, "cv_folds": folds,
                     "cv_log_loss": float(-np.mean(np.log(np.clip(oof[np.arange(len(y)), rows], _EPS, 1))))}

    def _combine(self, P):
        from threadpoolctl import threadpool_limits

        out = np.zeros((P.shape[1], P.shape[2]))
        with threadpool_limits(1):
            out[:, self.model.classes_] = self.model.predict_proba(self._features(P))  # absent classes stay 0
        return out + 1e-12  # keep rows strictly positive for log-loss
