"""Binary segmentation losses for the lung U-Net: ``seg_bce``, ``seg_bce_dice``,
``seg_focal``, ``seg_dice``, ``seg_tversky``, ``seg_focal_tversky``.

Inputs: ``logits [B, 1, H, W]`` (raw, before the sigmoid) and ``mask
[B, 1, H, W]`` (bool, or float in [0, 1]); p = sigmoid(logits).

Overlap losses (Dice, Tversky) sum over **every pixel of the whole batch**
(the paper's Keras code ``K.flatten``s y_true and y_pred), giving one overlap
score per batch, as Keras ``Tversky(axis=None)`` does. Pixel losses (BCE,
focal) average over all B*H*W pixels.

Tversky naming: here, as in the paper's code and in Abraham & Khan 2019,
``alpha`` weights the **false negatives** and ``beta`` the false positives:
TI = TP / (TP + alpha FN + beta FP). smp ``TverskyLoss`` and Keras
``Tversky`` name them the other way round (alpha -> FP, beta -> FN): our
``seg_tversky(alpha=0.7, beta=0.3)`` is smp's ``TverskyLoss(alpha=0.3, beta=0.7)``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks


class SegmentationLoss(nn.Module):
    """Base class: validates (logits, mask), casts the mask, calls :meth:`compute`."""

    name = "segmentation"

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _checks.segmentation(self.name, logits, mask)
        return self.compute(logits, mask.to(logits.dtype))

    def compute(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _sums(logits, mask):
    """TP, FN, FP and the sums of p and t over the whole batch (soft counts)."""
    p = torch.sigmoid(logits)
    tp = (p * mask).sum()
    return tp, ((1 - p) * mask).sum(), (p * (1 - mask)).sum(), p.sum(), mask.sum()


class BCE(SegmentationLoss):
    """Mean binary cross-entropy with logits over all pixels."""

    name = "seg_bce"

    def compute(self, logits, mask):
        return F.binary_cross_entropy_with_logits(logits, mask)


class Dice(SegmentationLoss):
    """1 - (2 TP + s) / (sum p + sum t + s) over the batch."""

    name = "seg_dice"

    def __init__(self, smooth: float = 1.0, name: Optional[str] = None):
        super().__init__()
        self.name = name or self.name
        self.smooth = _checks.number(self.name, "smooth", smooth, low=0.0, low_open=True, example="1.0")

    def compute(self, logits, mask):
        tp, _, _, sp, st = _sums(logits, mask)
        return 1.0 - (2.0 * tp + self.smooth) / (sp + st + self.smooth)


class BCEDice(SegmentationLoss):
    """bce_weight * BCE + dice_weight * Dice."""

    name = "seg_bce_dice"

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.bce_weight = _checks.number(self.name, "bce_weight", bce_weight, low=0.0, example="1.0")
        self.dice_weight = _checks.number(self.name, "dice_weight", dice_weight, low=0.0, example="1.0")
        self.dice = Dice(smooth, name=self.name)

    def compute(self, logits, mask):
        return self.bce_weight * F.binary_cross_entropy_with_logits(logits, mask) + \
            self.dice_weight * self.dice.compute(logits, mask)


class BinaryFocal(SegmentationLoss):
    """torchvision ``sigmoid_focal_loss`` convention, mean over pixels."""

    name = "seg_focal"

    def __init__(self, alpha: Optional[float] = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha = None if alpha is None else _checks.number(self.name, "alpha", alpha, low=0.0, high=1.0,
                                                                 example="0.25 (or None)")
        self.gamma = _checks.number(self.name, "gamma", gamma, low=0.0, example="2.0")

    def compute(self, logits, mask):
        ce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * mask + (1 - p) * (1 - mask)
        # floor keeps gamma < 1 finite (and differentiable) at p_t = 1
        loss = ce * (1 - p_t).clamp_min(torch.finfo(logits.dtype).tiny).pow(self.gamma)
        if self.alpha is not None:
            loss = loss * (self.alpha * mask + (1 - self.alpha) * (1 - mask))
        return loss.mean()


class Tversky(SegmentationLoss):
    """(1 - TI)^gamma with TI = (TP + s) / (TP + alpha FN + beta FP + s); gamma = 1: plain Tversky."""

    name = "seg_tversky"

    def __init__(self, alpha: float = 0.7, beta: float = 0.3, gamma: float = 1.0, smooth: float = 1e-10,
                 name: Optional[str] = None):
        super().__init__()
        self.name = name or self.name
        self.alpha = _checks.number(self.name, "alpha", alpha, low=0.0, example="0.7 (weight of FN)")
        self.beta = _checks.number(self.name, "beta", beta, low=0.0, example="0.3 (weight of FP)")
        self.gamma = _checks.number(self.name, "gamma", gamma, low=0.0, low_open=True, example="0.75")
        self.smooth = _checks.number(self.name, "smooth", smooth, low=0.0, low_open=True, example="1e-10")

    def index(self, logits, mask):
        tp, fn, fp, _, _ = _sums(logits, mask)
        return (tp + self.smooth) / (tp + self.alpha * fn + self.beta * fp + self.smooth)

    def compute(self, logits, mask):
        one_minus = 1.0 - self.index(logits, mask)
        if self.gamma == 1.0:
            return one_minus
        return one_minus.clamp_min(torch.finfo(logits.dtype).tiny).pow(self.gamma)


# ----------------------------------------------------------------------------- registry factories
def seg_bce() -> BCE:
    """Binary cross-entropy, mean over all pixels.

    Formula: L = -(1/N) sum_i [t_i log p_i + (1 - t_i) log(1 - p_i)], p = sigmoid(logits),
    computed stably from logits (torch ``binary_cross_entropy_with_logits``).
    Paper: loss (i) of the lung U-Net, Rajaraman et al. 2021 Fig. 1 (notes 1.2).
    Shapes: logits [B, 1, H, W], mask [B, 1, H, W]. Reduction: mean over B*H*W pixels.
    """
    return BCE()


def seg_dice(smooth: float = 1.0) -> Dice:
    """Soft Dice loss (Milletari et al. 2016, V-Net; smoothed Keras form).

    Formula: L = 1 - (2 sum p t + s) / (sum p + sum t + s), sums over every pixel
    of the batch. Defaults: s = 1 (the paper's ``dice_coef``, notes 3.3).
    Shapes: logits [B, 1, H, W], mask [B, 1, H, W]. Reduction: one score per batch.
    """
    return Dice(smooth)


def seg_bce_dice(bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0) -> BCEDice:
    """BCE + Dice ("weighted BCE-Dice", loss (ii) of Rajaraman et al. 2021 Fig. 1).

    Formula: L = bce_weight * BCE + dice_weight * (1 - Dice_s).
    Defaults: equal weights 1, 1 and Dice smooth s = 1, as in the paper's code (notes 3.3).
    Shapes/reduction: as ``seg_bce`` + ``seg_dice``.
    """
    return BCEDice(bce_weight, dice_weight, smooth)


def seg_focal(alpha: Optional[float] = 0.25, gamma: float = 2.0) -> BinaryFocal:
    """Binary (sigmoid) focal loss (Lin et al. 2017, eq. 5), loss (iii) of the lung U-Net.

    Formula: p_t = p t + (1 - p)(1 - t); alpha_t = alpha t + (1 - alpha)(1 - t);
             l_i = -alpha_t (1 - p_t)^gamma log p_t; ``alpha=None`` drops alpha_t.
    Defaults: alpha = 0.25, gamma = 2 (the paper's U-Net was compiled with these;
    torchvision's defaults too). Same as torchvision ``sigmoid_focal_loss(...,
    reduction="mean")``. Shapes: [B, 1, H, W] both. Reduction: mean over pixels.
    """
    return BinaryFocal(alpha, gamma)


def seg_tversky(alpha: float = 0.7, beta: float = 0.3, smooth: float = 1e-10) -> Tversky:
    """Tversky loss (Salehi et al. 2017; paper's code), loss (iv) of the lung U-Net.

    Formula: TI = (TP + s) / (TP + alpha FN + beta FP + s), L = 1 - TI, with soft
    counts TP = sum p t, FN = sum (1 - p) t, FP = sum p (1 - t) over the batch.
    Defaults: alpha = 0.7 on false negatives, beta = 0.3 on false positives,
    s = 1e-10 (the paper's ``tversky``, notes 3.3). NOTE: smp/Keras call the FP
    weight alpha and the FN weight beta -- the reverse of this naming.
    Shapes: [B, 1, H, W] both. Reduction: one score per batch.
    """
    return Tversky(alpha, beta, 1.0, smooth)


def seg_focal_tversky(alpha: float = 0.7, beta: float = 0.3, gamma: float = 0.75,
                      smooth: float = 1e-10) -> Tversky:
    """Focal Tversky loss (Abraham & Khan 2019, FTL = (1 - TI)^(1/gamma') with gamma' = 4/3).

    Formula: L = (1 - TI)^gamma, TI as in ``seg_tversky`` (alpha on FN, beta on FP).
    Defaults: gamma = 0.75 (= 1/(4/3), the paper's ``focal_tversky``), alpha = 0.7,
    beta = 0.3, s = 1e-10 (notes 3.3). (1 - TI) is floored at the dtype's tiny
    value so that the gradient stays finite at a perfect prediction.
    Shapes: [B, 1, H, W] both. Reduction: one score per batch.
    """
    return Tversky(alpha, beta, gamma, smooth, name="seg_focal_tversky")
