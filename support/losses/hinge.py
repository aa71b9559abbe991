"""Categorical hinge on softmax probabilities: ``hinge``.

Crammer & Singer 2001 multi-class hinge, in the form of Keras
``CategoricalHinge`` applied to the softmax output, as Rajaraman et al. 2021
used it (notes 3.1.5): l_b = max(0, 1 + max_{c != y_b} p_bc - p_{b,y_b}).

Because 0 <= p <= 1, the bracket is >= 0 for every input: the hinge never
switches off and the loss is 1 - (p_y - max_{c != y} p_c), a margin between
probabilities in [0, 2]. Its gradient vanishes as p_y -> 1 *and* as
p_y -> 0 (softmax saturation), unlike CCE whose gradient grows there.
"""
from __future__ import annotations

import torch

from .cross_entropy import ClassificationLoss, true_class


class CategoricalHinge(ClassificationLoss):
    """Keras ``CategoricalHinge`` on softmax(logits). See :func:`hinge`."""

    name = "hinge"

    def per_sample(self, log_p, target):
        p = log_p.exp()
        pos = true_class(p, target)
        # Keras: max_c((1 - y) * p): the true class enters as 0, harmless since p >= 0.
        neg = p.scatter(1, target[:, None], 0.0).max(dim=1).values
        return torch.relu(1.0 + neg - pos)


def hinge(class_weight=None) -> CategoricalHinge:
    """Categorical hinge on softmax probabilities (Crammer & Singer 2001; Keras ``CategoricalHinge``).

    Formula: l_b = max(0, 1 + max_{c != y_b} p_bc - p_{b,y_b}), p = softmax(logits).
    Paper: Rajaraman et al. 2021 (notes 3.1.5); no parameters (margin 1 as in Keras).
    Shapes: logits [B, K] raw, target [B] int64. Reduction: (1/B) sum_b w[y_b] l_b.
    Checked against: numpy formula of Keras ``CategoricalHinge``.
    """
    return CategoricalHinge(class_weight)
