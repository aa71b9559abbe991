"""Embedding losses for the synthetic-nodule study: ``contrastive``, ``triplet``, ``supcon``.

Inputs: ``features [B, D]`` or ``[B, V, D]`` (V views of each sample) and
integer ``labels [B]``. Views are flattened to B*V embeddings that share their
sample's label, so two views of one sample form a positive pair. Features are
L2-normalised inside the loss (``normalize=True``, default); distances are
Euclidean, d_ij = ||z_i - z_j|| (in [0, 2] on the unit sphere).

Degenerate batches never give NaN: a term with nothing to average over (no
positive pair, no valid triplet, no anchor with a positive) contributes 0,
with a zero gradient that stays connected to the graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks


class EmbeddingLoss(nn.Module):
    """Base class: validates, flattens views, normalises, calls :meth:`compute(z, labels)`."""

    name = "embedding"

    def __init__(self, normalize: bool = True):
        super().__init__()
        self.normalize = _checks.flag(self.name, "normalize", normalize)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _checks.embedding(self.name, features, labels)
        if features.ndim == 3:
            labels = labels.repeat_interleave(features.shape[1])
            features = features.reshape(-1, features.shape[-1])
        z = F.normalize(features, dim=1) if self.normalize else features
        return self.compute(z, labels)

    def compute(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def distances(z: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix [N, N]; sqrt floored at 1e-12 so identical points keep finite gradients."""
    sq = z.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp_min(0.0)
    return d2.clamp_min(1e-24).sqrt()


def _masks(labels: torch.Tensor):
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same  # positives (self excluded), negatives


def _mean_or_zero(values: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return values.mean() if values.numel() else z.sum() * 0.0


class Contrastive(EmbeddingLoss):
    """Pairwise margin loss of Hadsell et al. 2006. See :func:`contrastive`."""

    name = "contrastive"

    def __init__(self, margin: float = 1.0, squared: bool = True, normalize: bool = True):
        super().__init__(normalize)
        self.margin = _checks.number(self.name, "margin", margin, low=0.0, low_open=True, example="1.0")
        self.squared = _checks.flag(self.name, "squared", squared)

    def compute(self, z, labels):
        d = distances(z)
        pos, neg = _masks(labels)
        hinge = torch.relu(self.margin - d)
        if self.squared:
            pos_loss, neg_loss = 0.5 * d.pow(2), 0.5 * hinge.pow(2)
        else:
            pos_loss, neg_loss = d, hinge
        return _mean_or_zero(pos_loss[pos], z) + _mean_or_zero(neg_loss[neg], z)


class Triplet(EmbeddingLoss):
    """Triplet margin loss with in-batch mining. See :func:`triplet`."""

    name = "triplet"
    MINING = ("semihard", "batch_hard", "all")

    def __init__(self, margin: float = 0.2, mining: str = "semihard", normalize: bool = True):
        super().__init__(normalize)
        self.margin = _checks.number(self.name, "margin", margin, low=0.0, low_open=True, example="0.2")
        self.mining = _checks.choice(self.name, "mining", mining, self.MINING)

    def compute(self, z, labels):
        d = distances(z)
        pos, neg = _masks(labels)
        inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
        if self.mining == "batch_hard":  # Hermans et al. 2017: hardest positive and negative per anchor
            ok = pos.any(1) & neg.any(1)
            d_ap = torch.where(pos, d, -inf).max(1).values
            d_an = torch.where(neg, d, inf).min(1).values
            return _mean_or_zero(torch.relu(d_ap - d_an + self.margin)[ok], z)
        if self.mining == "all":  # every valid (a, p, n); memory O(N^3)
            valid = pos[:, :, None] & neg[:, None, :]
            return _mean_or_zero(torch.relu(d[:, :, None] - d[:, None, :] + self.margin)[valid], z)
        # semihard (Schroff et al. 2015; TF triplet_semihard_loss): for each (a, p) the closest
        # negative farther than p; if there is none, the farthest negative.
        n_neg = neg.sum(1)
        sorted_neg = torch.where(neg, d, inf).sort(dim=1).values  # [N, N], +inf after the negatives
        idx = torch.searchsorted(sorted_neg.detach().contiguous(), d.detach().contiguous(), right=True)
        fallback = (n_neg - 1).clamp_min(0)[:, None].expand_as(idx)
        idx = torch.where(idx < n_neg[:, None], idx, fallback)
        d_an = sorted_neg.gather(1, idx)  # [a, p]: the chosen negative's distance
        ok = pos & (n_neg > 0)[:, None]
        return _mean_or_zero(torch.relu(d - d_an + self.margin)[ok], z)


class SupCon(EmbeddingLoss):
    """Supervised contrastive loss, L^sup_out of Khosla et al. 2020. See :func:`supcon`."""

    name = "supcon"

    def __init__(self, temperature: float = 0.1, base_temperature=None, normalize: bool = True):
        super().__init__(normalize)
        self.temperature = _checks.number(self.name, "temperature", temperature, low=0.0, low_open=True,
                                          example="0.1")
        self.base_temperature = None if base_temperature is None else _checks.number(
            self.name, "base_temperature", base_temperature, low=0.0, low_open=True, example="0.07")

    def compute(self, z, labels):
        pos, _ = _masks(labels)
        eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
        logits = (z @ z.T) / self.temperature
        denom = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
        log_prob = (logits - denom).masked_fill(~pos, 0.0)
        n_pos = pos.sum(1)
        has = n_pos > 0
        per_anchor = -log_prob.sum(1)[has] / n_pos[has]
        scale = 1.0 if self.base_temperature is None else self.temperature / self.base_temperature
        return scale * _mean_or_zero(per_anchor, z)


# ----------------------------------------------------------------------------- registry factories
def contrastive(margin: float = 1.0, squared: bool = True, normalize: bool = True) -> Contrastive:
    """Pairwise contrastive loss (Hadsell, Chopra & LeCun 2006, eq. 4).

    Formula (squared=True, Hadsell): positive pair l = d^2 / 2, negative pair
    l = max(0, m - d)^2 / 2; L = mean over positive pairs + mean over negative
    pairs (each averaged separately, so the class balance of the batch does
    not weight one side; pairs i != j). ``squared=False``: l = d and
    max(0, m - d), which is pytorch-metric-learning ``ContrastiveLoss(pos_margin=0,
    neg_margin=m)`` with ``MeanReducer`` (pml's default ``AvgNonZeroReducer``
    averages only the non-zero pairs).
    Defaults: m = 1.0 on L2-normalised features (shared/papers/loss_generalization.md 3.4).
    No positive (or no negative) pair in the batch: that mean is 0.
    Shapes: features [B, D] or [B, V, D], labels [B]. Reduction: scalar as above.
    """
    return Contrastive(margin, squared, normalize)


def triplet(margin: float = 0.2, mining: str = "semihard", normalize: bool = True) -> Triplet:
    """Triplet margin loss (Schroff et al. 2015, FaceNet eq. 3) with in-batch mining.

    Formula: l(a, p, n) = max(0, d(a, p) - d(a, n) + m), Euclidean d on normalised z.
    mining="semihard" (default, as TF ``triplet_semihard_loss`` used by MASF):
      for every positive pair (a, p), n = the closest negative with d(a, n) > d(a, p),
      or the farthest negative if none is; L = mean over those (a, p).
    mining="batch_hard" (Hermans et al. 2017): per anchor the farthest positive and
      the closest negative; L = mean over anchors with both (= pml ``BatchHardMiner``
      + ``TripletMarginLoss`` with ``MeanReducer``).
    mining="all": mean over every valid triplet, zero losses included (= pml
      ``TripletMarginLoss`` with ``MeanReducer``); O(N^3) memory.
    Defaults: m = 0.2 on L2-normalised features (loss_generalization.md 3.4).
    TF's tf.contrib version used *squared* distances; we use plain Euclidean ones.
    An anchor with no positive or no negative forms no triplet; a batch without
    any triplet gives 0. Shapes: features [B, D] or [B, V, D], labels [B].
    """
    return Triplet(margin, mining, normalize)


def supcon(temperature: float = 0.1, base_temperature=None, normalize: bool = True) -> SupCon:
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2, L^sup_out).

    Formula: for each anchor i of the N = B*V embeddings, P(i) = same-label
    embeddings except i, A(i) = all except i;
    l_i = -(1/|P(i)|) sum_{p in P(i)} log[ exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) ].
    L = mean of l_i over the anchors with |P(i)| > 0.
    Anchors without a positive (a singleton class with one view) are left out
    of the mean, as in pytorch-metric-learning ``SupConLoss`` (its AvgNonZero
    reducer); HobbitLong/SupContrast (after PR #142) counts them as zeros
    instead. No anchor with a positive: L = 0. A batch of one class is fine
    (A(i) then holds only positives) -- pml returns 0 there instead.
    Defaults: tau = 0.1 (pml's default; SupContrast uses 0.07). With
    ``base_temperature`` set, L is scaled by tau / base_temperature (SupContrast).
    Works with one view ([B, D]) or several ([B, V, D], SupContrast's
    ``contrast_mode='all'``). Shapes: labels [B]. Reduction: scalar mean.
    """
    return SupCon(temperature, base_temperature, normalize)
