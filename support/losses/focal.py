"""Focal family (softmax form): ``focal``, ``ls_focal``.

Lin et al. 2017, "Focal loss for dense object detection" (ICCV), eq. 5:
FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t). The multi-class version used by
Rajaraman et al. 2021 sums this over the classes against (possibly smoothed)
targets: l_b = -alpha * sum_c y_bc (1 - p_bc)^gamma log p_bc.

Conventions, because every library differs (shared/anchors.md A4):

* ``alpha`` is one scalar applied to every class, as in Keras
  ``CategoricalFocalCrossentropy`` and the paper's ``categorical_focal_loss``
  (not kornia's [1 - alpha, alpha, alpha, ...] background scheme, nor smp's
  one-vs-rest sigmoid form). Per-class alpha = ``class_weight``: with the
  /B reduction the two are the same thing.
* summed over classes, then averaged over the batch (kornia's ``mean``
  divides by K as well).
* log p from ``log_softmax``; (1 - p) from ``-expm1(log p)`` (exact near p = 1)
  and floored at the dtype's smallest normal number so that gamma < 1 keeps a
  finite gradient at p = 1. Keras clips p to [1e-7, 1 - 1e-7] instead.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _checks
from .cross_entropy import ClassificationLoss, smooth_targets


def focal_weight(log_p: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p)^gamma computed stably from log p."""
    one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)
    return one_minus_p.pow(gamma)


class FocalLoss(ClassificationLoss):
    """Softmax focal loss against one-hot or smoothed targets. See :func:`focal`, :func:`ls_focal`.

    ``epsilon`` > 0 smooths the targets as y (1 - epsilon) + epsilon / denominator,
    denominator = K by default (``smooth_denominator=None``).
    """

    name = "focal"

    def __init__(self, alpha: float = 1.0, gamma: float = 2.0, epsilon: float = 0.0,
                 smooth_denominator: Optional[float] = None, class_weight=None, name: Optional[str] = None):
        super().__init__(class_weight, name)
        self.alpha = _checks.number(self.name, "alpha", alpha, low=0.0, low_open=True, example="1.0")
        self.gamma = _checks.number(self.name, "gamma", gamma, low=0.0, example="2.0")
        self.epsilon = _checks.number(self.name, "epsilon", epsilon, low=0.0, high=1.0, high_open=True,
                                      example="0.2")
        self.smooth_denominator = smooth_denominator

    def per_sample(self, log_p, target):
        k = log_p.shape[1]
        if self.epsilon == 0.0:  # one-hot: only the true class contributes
            lp = log_p.gather(1, target[:, None]).squeeze(1)
            return -self.alpha * focal_weight(lp, self.gamma) * lp
        y = smooth_targets(target, k, self.epsilon, self.smooth_denominator or k, log_p)
        return -self.alpha * (y * focal_weight(log_p, self.gamma) * log_p).sum(dim=1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, epsilon={self.epsilon}"


def focal(alpha: float = 1.0, gamma: float = 2.0, class_weight=None) -> FocalLoss:
    """Categorical focal loss, softmax form (Lin et al. 2017, eq. 5).

    Formula: l_b = -alpha * sum_c y_bc (1 - p_bc)^gamma log p_bc
                 = -alpha (1 - p_{b,y_b})^gamma log p_{b,y_b}  (one-hot y).
    Defaults: alpha = 1, gamma = 2: the paper's ``categorical_focal_loss_fixed``
    (Rajaraman et al. 2021, notes 3.1.4). alpha is a plain scale; per-class
    alpha = ``class_weight``.
    Shapes: logits [B, K] raw, target [B] int64. Reduction: (1/B) sum_b w[y_b] l_b.
    Checked against: numpy formula; gamma = 0, alpha = 1 gives CCE.
    """
    return FocalLoss(alpha, gamma, 0.0, None, class_weight, name="focal")


def ls_focal(epsilon: float = 0.2, alpha: float = 1.0, gamma: float = 2.0, paper_code: bool = False,
             class_weight=None) -> FocalLoss:
    """Label-smoothed categorical focal loss (focal eq. 5 of Lin et al. 2017 on smoothed targets).

    Formula: y' = y (1 - epsilon) + epsilon / K;
             l_b = -alpha * sum_c y'_bc (1 - p_bc)^gamma log p_bc.
    Defaults: epsilon = 0.2, alpha = 1, gamma = 2 (the paper's ``smoothfocal``,
    Rajaraman et al. 2021, notes 3.1.7). ``paper_code=True`` reproduces the
    published smoothing y (1 - epsilon) + epsilon / 2 (targets sum to 1.1 for
    K = 3); the default divides by K like every other label smoothing.
    Shapes/reduction: as ``focal``.
    """
    _checks.flag("ls_focal", "paper_code", paper_code)
    return FocalLoss(alpha, gamma, epsilon, 2.0 if paper_code else None, class_weight, name="ls_focal")
