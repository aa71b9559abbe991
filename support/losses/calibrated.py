"""Calibrated losses: base loss + beta * DCA (``cal_cce``, ``cal_kld``, ``cal_focal``,
``cal_hinge``, ``cal_neg_entropy``).

DCA, the "difference between confidence and accuracy" auxiliary term of
Liang et al. 2020 ("Improved trainable calibration method for neural networks
on medical imaging classification", BMVC, arXiv 2009.04057)::

    DCA = | (1/B) sum_b 1[argmax_c p_bc = y_b]  -  (1/B) sum_b max_c p_bc |

i.e. |mini-batch accuracy - mean predicted confidence|. Accuracy is piecewise
constant (no gradient); the gradient flows through the confidence term and
pushes the mean confidence towards the batch accuracy.

``dca_grad`` -- the one real choice (shared/papers/multiloss_ensemble.md 3.4):

* ``True`` (default, faithful to Liang et al.): DCA is differentiable through
  the confidence term.
* ``False`` (faithful to the published code of Rajaraman et al. 2021): the code
  computed DCA with ``np.abs(...)`` on ``.numpy()`` values, a constant, so the
  term changes the loss *value* but adds exactly zero gradient: the model
  trains as with the base loss alone.

DCA is a batch-level term: it is not class-weighted and is added after the
(class-weighted) batch mean of the base loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .cross_entropy import CCE, KLD, ClassificationLoss, ConfidencePenaltyCCE
from .focal import FocalLoss
from .hinge import CategoricalHinge


def dca(logits: torch.Tensor, target: torch.Tensor, grad: bool = True) -> torch.Tensor:
    """|mean accuracy - mean max-probability| over the batch (scalar).

    ``grad=False`` detaches the whole term (the published code's behaviour).
    """
    p = F.softmax(logits, dim=1)
    confidence = p.max(dim=1).values.mean()
    accuracy = (p.argmax(dim=1) == target).to(p.dtype).mean()
    term = (accuracy - confidence).abs()
    return term if grad else term.detach()


class Calibrated(nn.Module):
    """``base(logits, target) + beta * DCA``. See the module docstring."""

    def __init__(self, base: ClassificationLoss, beta: float = 1.0, dca_grad: bool = True, name=None):
        super().__init__()
        self.name = name or f"cal_{base.name}"
        self.base = base
        self.beta = _checks.number(self.name, "beta", beta, low=0.0, example="1.0")
        self.dca_grad = _checks.flag(self.name, "dca_grad", dca_grad)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.base(logits, target)  # validates the inputs
        return loss + self.beta * dca(logits, target, self.dca_grad)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, beta={self.beta}, dca_grad={self.dca_grad}"


_DCA_DOC = """
    DCA = |(1/B) sum_b 1[argmax p_b = y_b] - (1/B) sum_b max_c p_bc| (Liang et al. 2020).
    Defaults: beta = 1 (Rajaraman et al. 2021, checkpoint "caccebeta1"; notes 3.1.8/3.2).
    ``dca_grad=True`` (default): gradient through the confidence term, as Liang
    et al. intend. ``dca_grad=False``: the published code's constant DCA (value
    added, zero gradient; notes 3.4).
    Shapes: logits [B, K] raw, target [B] int64. Reduction: class-weighted batch
    mean of the base loss, (1/B) sum_b w[y_b] l_b, plus the unweighted DCA term.
"""


def cal_cce(beta: float = 1.0, dca_grad: bool = True, class_weight=None) -> Calibrated:
    return Calibrated(CCE(class_weight, name="cal_cce"), beta, dca_grad, name="cal_cce")


def cal_kld(beta: float = 1.0, dca_grad: bool = True, class_weight=None) -> Calibrated:
    return Calibrated(KLD(class_weight, name="cal_kld"), beta, dca_grad, name="cal_kld")


def cal_focal(beta: float = 1.0, alpha: float = 1.0, gamma: float = 2.0, dca_grad: bool = True,
              class_weight=None) -> Calibrated:
    return Calibrated(FocalLoss(alpha, gamma, 0.0, None, class_weight, name="cal_focal"), beta, dca_grad,
                      name="cal_focal")


def cal_hinge(beta: float = 1.0, dca_grad: bool = True, class_weight=None) -> Calibrated:
    return Calibrated(CategoricalHinge(class_weight, name="cal_hinge"), beta, dca_grad, name="cal_hinge")


def cal_neg_entropy(beta: float = 1.0, entropy_weight: float = 0.001, dca_grad: bool = True,
                    class_weight=None) -> Calibrated:
    return Calibrated(ConfidencePenaltyCCE(entropy_weight, class_weight, name="cal_neg_entropy"), beta,
                      dca_grad, name="cal_neg_entropy")


cal_cce.__doc__ = """Calibrated CCE: L = CCE + beta * DCA (Liang et al. 2020, CCE + DCA).

    Formula: L = (1/B) sum_b w[y_b] (-log p_{b,y_b}) + beta * DCA.""" + _DCA_DOC
cal_kld.__doc__ = """Calibrated KL divergence: L = KLD(y || p) + beta * DCA (Rajaraman et al. 2021, proposed).

    Formula: L = (1/B) sum_b w[y_b] sum_c y_bc log(y_bc / p_bc) + beta * DCA
    (KLD = CCE for one-hot targets, so this equals ``cal_cce``).""" + _DCA_DOC
cal_focal.__doc__ = """Calibrated focal loss: L = Focal + beta * DCA (Rajaraman et al. 2021, proposed).

    Formula: L = (1/B) sum_b w[y_b] [-alpha (1 - p_{b,y_b})^gamma log p_{b,y_b}] + beta * DCA,
    focal of Lin et al. 2017 eq. 5 with alpha = 1, gamma = 2 (the paper's fixed focal).""" + _DCA_DOC
cal_hinge.__doc__ = """Calibrated categorical hinge: L = Hinge + beta * DCA (Rajaraman et al. 2021, proposed).

    Formula: L = (1/B) sum_b w[y_b] max(0, 1 + max_{c != y_b} p_bc - p_{b,y_b}) + beta * DCA
    (Keras ``CategoricalHinge`` on softmax probabilities).""" + _DCA_DOC
cal_neg_entropy.__doc__ = """Calibrated negative entropy: L = CCE - lambda * H(p) + beta * DCA (Rajaraman et al. 2021).

    Formula: L = (1/B) sum_b w[y_b] [-log p_{b,y_b} - lambda H(p_b)] + beta * DCA,
    H(p) = -sum_c p_c log p_c; lambda = ``entropy_weight`` = 0.001 (the paper's
    ``entropy_loss``, checkpoint "entropy0.001"). The CCE - lambda H part is the
    confidence penalty of Pereyra et al. 2017 (ICLR workshop): it *rewards*
    entropy, the opposite sign of ``cce_entropy_reg``.""" + _DCA_DOC
