"""``average`` and ``vote``: combinations with nothing (or nothing but a tie rule) to fit."""
from __future__ import annotations

import numpy as np

from .base import ENSEMBLES, TIE_RULES, Ensemble


@ENSEMBLES.register("average")
class Average(Ensemble):
    """Simple (soft-vote) average of the members' probabilities; uses no labels."""

    name = "average"

    def _fit(self, P, y):
        self.weights = np.full(len(P), 1.0 / len(P))

    def _combine(self, P):
        return P.mean(0)


@ENSEMBLES.register("vote")
class Vote(Ensemble):
    """Majority vote over argmax labels; ``tie`` chooses among tied classes (module docstring)."""

    name = "vote"

    def __init__(self, tie: str = "prob_sum"):
        super().__init__()
        if tie not in TIE_RULES:
            raise ValueError(f"unknown tie rule {tie!r}; valid: {', '.join(TIE_RULES)}")
        self.tie = tie

    @property
    def params(self):
        return {"tie": self.tie}

    def _combine(self, P):
        M, N, K = P.shape
        counts = np.zeros((N, K))
        np.add.at(counts, (np.arange(N)[None, :].repeat(M, 0), P.argmax(2)), 1.0)
        tied = counts == counts.max(1, keepdims=True)
        if self.tie == "prob_sum":  # remaining exact ties -> lowest index (np.argmax)
            winner = np.where(tied, P.sum(0), -np.inf).argmax(1)
        elif self.tie == "highest_index":
            winner = K - 1 - tied[:, ::-1].argmax(1)
        else:
            winner = tied.argmax(1)
        shares = counts / M
        shares[np.arange(N), winner] += 1e-6  # argmax(shares) == the vote's decision
        return shares
