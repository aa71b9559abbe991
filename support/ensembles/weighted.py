"""``weighted``: simplex weights minimising the validation log-loss of the mixture."""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from .base import _EPS, ENSEMBLES, Ensemble


@ENSEMBLES.register("weighted")
class Weighted(Ensemble):
    """Weighted average ``sum_m w_m P_m``, ``w >= 0``, ``sum w = 1``, minimising the mixture's log-loss.

    Objective: ``L(w) = -(1/N) sum_i log(sum_m w_m q_im)`` with ``q_im`` the
    probability member ``m`` gives to sample ``i``'s true class. ``L`` is
    convex on the simplex (minus the log of a linear function), so a local
    optimum is the global one. The paper ran SLSQP from 50 random starts and
    kept the weights with the best *accuracy* (on the test set);
    ``solver="slsqp"`` runs SLSQP from the uniform start plus ``restarts``
    Dirichlet starts and keeps the lowest log-loss. ``solver="em"`` (default)
    then polishes that solution with the EM / multiplicative update for
    mixture weights ``w_m <- w_m * r_m``, ``r_m = (1/N) sum_i q_im / (sum_j w_j q_ij)``
    (each step never increases ``L``), until the Frank-Wolfe duality gap
    ``max_m r_m - 1`` — an upper bound on ``L(w) - min L`` — is below ``tol``.
    ``info`` holds ``log_loss``, ``gap`` and ``em_iterations``: a certificate
    rather than a hope.
    """

    name = "weighted"

    def __init__(self, solver: str = "em", restarts: int = 20, seed: int = 0, tol: float = 1e-7,
                 max_iter: int = 20000):
        super().__init__()
        if solver not in ("em", "slsqp"):
            raise ValueError(f"unknown solver {solver!r}; valid: em (SLSQP + certified EM polish), slsqp (paper)")
        self.solver, self.restarts, self.seed, self.tol, self.max_iter = solver, int(restarts), seed, tol, max_iter

    @property
    def params(self):
        return {"solver": self.solver}

    def _fit(self, P, y):
        Q = np.clip(P[:, np.arange(len(y)), y].T, _EPS, None)  # [N, M]
        self.weights, self.info = mixture_weights(Q, self.solver, self.restarts, self.seed, self.tol, self.max_iter)

    def _combine(self, P):
        return np.tensordot(self.weights, P, axes=1)


def mixture_weights(Q: np.ndarray, solver: str = "em", restarts: int = 20, seed: int = 0, tol: float = 1e-7,
                    max_iter: int = 20000):
    """Simplex weights minimising ``-mean(log(Q @ w))`` for ``Q[N, M] > 0``; returns ``(w, info)``."""
    N, M = Q.shape
    loss = lambda w: -np.mean(np.log(np.maximum(Q @ w, _EPS)))
    grad = lambda w: -(Q / np.maximum(Q @ w, _EPS)[:, None]).mean(0)
    rng = np.random.default_rng(seed)
    starts = [np.full(M, 1.0 / M)] + list(rng.dirichlet(np.ones(M), size=restarts))
    best = starts[0]
    for w0 in starts:
        res = minimize(loss, w0, jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * M,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(M)}],
                       options={"ftol": 1e-12, "maxiter": 500})
        w = _project(res.x)
        if loss(w) < loss(best):
            best = w
    gap = lambda w: float(max((Q / np.maximum(Q @ w, _EPS)[:, None]).mean(0).max() - 1.0, 0.0))
    w, it = best, 0
    if solver == "em" and gap(w) > tol:
        w = _project(np.maximum(w, 1e-6))  # an exact zero could never grow again under EM
        for it in range(1, max_iter + 1):
            r = (Q / (Q @ w)[:, None]).mean(0)
            if r.max() - 1.0 <= tol:
                break
            w = _project(w * r)
    return w, {"log_loss": float(loss(w)), "gap": gap(w), "em_iterations": it, "solver": solver,
               "starts": len(starts)}


def _project(w: np.ndarray) -> np.ndarray:
    """Clip tiny negative solver round-off to 0 and renormalise to sum 1."""
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    return w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
