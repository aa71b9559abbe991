"""Cross-entropy family: ``cce``, ``cce_entropy_reg``, ``kld``, ``ls_cce``.

Also the small base class every classification loss derives from
(:class:`ClassificationLoss`): it validates the inputs, takes ``log_softmax``
once, weights each sample by its class and averages.

Shared conventions (every classification loss of the kit):

* input: raw ``logits [B, K]`` (no softmax) and integer ``target [B]`` in [0, K);
* numerics: probabilities come from ``log_softmax``; no clipping. Keras (the
  paper's framework) clips probabilities to [1e-7, 1 - 1e-7], so a sample whose
  true-class probability is below 1e-7 costs at most -log(1e-7) = 16.1 there
  and has zero gradient; here it costs its true value and keeps its gradient.
  Elsewhere the two agree to ~1e-6;
* reduction (``class_weight`` optional, a tensor [K]): Keras ``class_weight``
  convention, ``loss = (1/B) * sum_b w[y_b] * l_b`` -- divided by the batch
  size B, **not** by ``sum_b w[y_b]`` as ``torch.nn.CrossEntropyLoss(weight=)``
  does. With balanced weights the two differ by the factor B / sum_b w[y_b],
  close to 1 on average; the Keras form is what the paper trained with.
  Batch-level terms (entropy regulariser, DCA) are never class-weighted.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks


class ClassificationLoss(nn.Module):
    """Base class: override :meth:`per_sample` (and optionally :meth:`batch_term`).

    ``forward(logits [B, K], target [B] int64) -> scalar``
    = ``mean_b(w[y_b] * per_sample_b) + batch_term``.
    """

    name = "classification"

    def __init__(self, class_weight=None, name: Optional[str] = None):
        super().__init__()
        if name is not None:
            self.name = name
        self.register_buffer("class_weight", _checks.class_weight(self.name, class_weight), persistent=False)

    def per_sample(self, log_p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of each sample [B] from log-probabilities ``log_p [B, K]``."""
        raise NotImplementedError

    def batch_term(self, log_p: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
        """An unweighted scalar added after the batch mean (None = nothing)."""
        return None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.class_weight
        _checks.classification(self.name, logits, target, None if w is None else w.numel())
        log_p = F.log_softmax(logits, dim=1)
        per = self.per_sample(log_p, target)
        if w is not None:
            per = per * w.to(per)[target]
        loss = per.mean()  # (1/B) * sum_b w[y_b] l_b -- Keras "sum_over_batch_size"
        extra = self.batch_term(log_p, target)
        return loss if extra is None else loss + extra

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def true_class(log_p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p_{b, y_b} as [B]."""
    return log_p.gather(1, target[:, None]).squeeze(1)


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of each row, H_b = -sum_c p_bc log p_bc (nats) as [B]."""
    return -(log_p.exp() * log_p).sum(dim=1)


def smooth_targets(target: torch.Tensor, k: int, epsilon: float, denominator: float, like: torch.Tensor):
    """One-hot targets smoothed as y * (1 - epsilon) + epsilon / denominator, shape [B, K]."""
    y = F.one_hot(target, k).to(like)
    return y * (1.0 - epsilon) + epsilon / denominator


# ----------------------------------------------------------------------------- modules
class CCE(ClassificationLoss):
    """Categorical cross-entropy, l_b = -log p_{b,y_b}. See :func:`cce`."""

    name = "cce"

    def per_sample(self, log_p, target):
        return -true_class(log_p, target)


class KLD(ClassificationLoss):
    """KL(y || p) with one-hot y, l_b = sum_c y_bc (log y_bc - log p_bc). See :func:`kld`."""

    name = "kld"

    def per_sample(self, log_p, target):
        y = F.one_hot(target, log_p.shape[1]).to(log_p)
        return (torch.special.xlogy(y, y) - y * log_p).sum(dim=1)  # 0 log 0 = 0


class LabelSmoothedCCE(ClassificationLoss):
    """CCE against y(1 - eps) + eps/K. See :func:`ls_cce`."""

    name = "ls_cce"

    def __init__(self, epsilon: float = 0.2, class_weight=None, name: Optional[str] = None):
        super().__init__(class_weight, name)
        self.epsilon = _checks.number(self.name, "epsilon", epsilon, low=0.0, high=1.0, high_open=True,
                                      example="0.2")

    def per_sample(self, log_p, target):
        k = log_p.shape[1]
        return -(smooth_targets(target, k, self.epsilon, k, log_p) * log_p).sum(dim=1)


#: Scales of the entropy term of ``cce_entropy_reg`` (see its docstring).
ENTROPY_SCALES = ("keras", "per_sample")
#: The paper's batch size, which the Keras activity regulariser divides by (notes 3.1.2, 3.5).
PAPER_BATCH = 16


class EntropyRegularisedCCE(CCE):
    """CCE + weight * mean_b H(p_b). See :func:`cce_entropy_reg`."""

    name = "cce_entropy_reg"

    def __init__(self, beta: float = 2.0, paper_code: bool = False, scale: str = "keras",
                 paper_batch: int = PAPER_BATCH, class_weight=None, name=None):
        super().__init__(class_weight, name)
        self.beta = _checks.number(self.name, "beta", beta, low=0.0, example="2.0")
        self.paper_code = _checks.flag(self.name, "paper_code", paper_code)
        if scale not in ENTROPY_SCALES:
            raise ValueError(f"{self.name}: scale={scale!r} is unknown; use one of {', '.join(ENTROPY_SCALES)}")
        self.scale = scale
        self.paper_batch = int(_checks.number(self.name, "paper_batch", paper_batch, low=1.0, example="16"))

    def batch_term(self, log_p, target):
        if self.paper_code:  # the published regularizer() returned None: no term at all
            return None
        weight = self.beta / (log_p.shape[1] * self.paper_batch) if self.scale == "keras" else self.beta
        return weight * entropy(log_p).mean()


class ConfidencePenaltyCCE(CCE):
    """CCE - entropy_weight * H(p_b), per sample (Pereyra et al. 2017). Base of ``cal_neg_entropy``."""

    name = "neg_entropy"

    def __init__(self, entropy_weight: float = 0.001, class_weight=None, name=None):
        super().__init__(class_weight, name)
        self.entropy_weight = _checks.number(self.name, "entropy_weight", entropy_weight, low=0.0,
                                             example="0.001")

    def per_sample(self, log_p, target):
        return -true_class(log_p, target) - self.entropy_weight * entropy(log_p)


# ----------------------------------------------------------------------------- registry factories
def cce(class_weight=None) -> CCE:
    """Categorical cross-entropy (CCE).

    Formula: l_b = -sum_c y_bc log p_bc = -log p_{b,y_b}, p = softmax(logits).
    Paper: the baseline of Rajaraman et al. 2021 (PLoS ONE 16:e0261307), Keras
    ``categorical_crossentropy`` (notes: shared/papers/multiloss_ensemble.md 3.1.1).
    Shapes: logits [B, K] raw, target [B] int64. Reduction: (1/B) sum_b w[y_b] l_b.
    Defaults: no class weight (the paper passed sklearn "balanced" weights to fit()).
    Checked against: numpy formula and torch ``F.cross_entropy``.
    """
    return CCE(class_weight)


def kld(class_weight=None) -> KLD:
    """Kullback-Leibler divergence KL(y || p) (Kullback & Leibler 1951).

    Formula: l_b = sum_c y_bc log(y_bc / p_bc) with 0 log 0 = 0. With one-hot y
    it equals CCE exactly, in value and gradient (the paper trained it as a
    separate model anyway). Keras ``KLDivergence`` clips y to [1e-7, 1], which
    adds about 1e-7 * sum_{c != y} log(1e-7 / p_c) (~1e-6) per sample.
    Paper: Rajaraman et al. 2021, notes 3.1.3. Shapes/reduction: as ``cce``.
    """
    return KLD(class_weight)


def ls_cce(epsilon: float = 0.2, class_weight=None) -> LabelSmoothedCCE:
    """Label-smoothed CCE (Szegedy et al. 2016, Inception-v3 section 7).

    Formula: y' = y (1 - epsilon) + epsilon / K; l_b = -sum_c y'_bc log p_bc.
    Defaults: epsilon = 0.2 (paper: Keras ``label_smoothing=0.2``, notes 3.1.6);
    the same rule as torch ``CrossEntropyLoss(label_smoothing=epsilon)``.
    Shapes/reduction: as ``cce``.
    """
    return LabelSmoothedCCE(epsilon, class_weight)


def cce_entropy_reg(beta: float = 2.0, paper_code: bool = False, scale: str = "keras",
                    paper_batch: int = PAPER_BATCH, class_weight=None) -> EntropyRegularisedCCE:
    """CCE + entropy regulariser (penalises uncertain outputs; entropy minimisation).

    Formula: L = (1/B) sum_b w[y_b] (-log p_{b,y_b}) + weight * (1/B) sum_b H(p_b),
    H(p) = -sum_c p_c log p_c. Grandvalet & Bengio 2005 (entropy minimisation);
    in Rajaraman et al. 2021 an ``activity_regularizer`` on the softmax layer,
    beta = 2.0 (checkpoint "beta2.0"; notes 3.1.2).
    Scale (``scale``):
      "keras" (default, the paper's): Keras takes beta * the mean over batch *and*
        classes of -p log p and divides activity regularisers by the batch size
        again, so weight = beta / (K * paper_batch) with the paper's batch 16:
        2 / (3 * 16) ~ 0.042 for K = 3. ``paper_batch`` is fixed (not our batch
        size) so that the weight does not change with a profile's batch.
      "per_sample": weight = beta, the per-sample entropy averaged over the batch
        (independent of K and B; 48x stronger at K = 3; this kit's default before).
    ``paper_code=True`` reproduces the *published* code, whose ``regularizer()``
    returned None: the term is dropped (loss = CCE).
    The regulariser is not class-weighted. Shapes: as ``cce``.
    """
    return EntropyRegularisedCCE(beta, paper_code, scale, paper_batch, class_weight)
