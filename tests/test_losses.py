"""Tests of support.losses: every loss against an independent reference.

References are (1) the formulas written out again in numpy below (float64,
loops where that is clearer than vectorised code) and (2) the libraries whose
conventions we match: torch ``cross_entropy`` / ``kl_div`` /
``binary_cross_entropy_with_logits``, torchvision ``sigmoid_focal_loss`` and
pytorch-metric-learning ``SupConLoss`` / ``ContrastiveLoss`` /
``TripletMarginLoss``. Registry-driven tests run over ``losses.names()``, so a
newly registered loss is tested for free.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support import losses
from support.losses import curves

TOL = dict(rtol=1e-9, atol=1e-9)  # float64 throughout; the brief asks for <= 1e-6
CLS, SEG, EMB = (losses.names(f) for f in losses.FAMILIES)


# ----------------------------------------------------------------------------- numpy references
def np_log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def np_entropy(z):
    lp = np_log_softmax(z)
    return -(np.exp(lp) * lp).sum(1)


def np_dca(z, y):
    p = np.exp(np_log_softmax(z))
    return abs((p.argmax(1) == y).mean() - p.max(1).mean())


def np_cce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_kld(z, y):
    onehot = np.eye(z.shape[1])[y]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(onehot > 0, onehot * (np.log(onehot) - np_log_softmax(z)), 0.0)
    return terms.sum(1)


def np_smoothed(y, k, eps, denom):
    return np.eye(k)[y] * (1 - eps) + eps / denom


def np_focal(z, y, alpha=1.0, gamma=2.0, eps=0.0, denom=None):
    lp = np_log_softmax(z)
    t = np_smoothed(y, z.shape[1], eps, denom or z.shape[1])
    return -alpha * (t * (1 - np.exp(lp)) ** gamma * lp).sum(1)


def np_ls_cce(z, y, eps=0.2):
    return -(np_smoothed(y, z.shape[1], eps, z.shape[1]) * np_log_softmax(z)).sum(1)


def np_hinge(z, y):
    # Keras CategoricalHinge on softmax: max(0, max((1 - y) * p) - sum(y * p) + 1)
    p = np.exp(np_log_softmax(z))
    onehot = np.eye(z.shape[1])[y]
    return np.maximum(0.0, ((1 - onehot) * p).max(1) - (onehot * p).sum(1) + 1.0)


def weighted_mean(per, y, w):
    # Keras class_weight convention: sum_b w[y_b] l_b / B (not / sum w)
    return per.mean() if w is None else (w[y] * per).sum() / len(y)


# name -> (build params, reference(z, y, w) -> float)
CLS_CASES = {
    "cce": ({}, lambda z, y, w: weighted_mean(np_cce(z, y), y, w)),
    # Keras scale: beta / (K * paper batch 16) = 2 / 48 on the per-sample mean entropy
    "cce_entropy_reg": ({}, lambda z, y, w: weighted_mean(np_cce(z, y), y, w)
                        + 2.0 / (z.shape[1] * 16) * np_entropy(z).mean()),
    "cce_entropy_reg(scale=per_sample)": ({"scale": "per_sample"},
                                          lambda z, y, w: weighted_mean(np_cce(z, y), y, w) + 2.0 * np_entropy(z).mean()),
    "kld": ({}, lambda z, y, w: weighted_mean(np_kld(z, y), y, w)),
    "focal": ({}, lambda z, y, w: weighted_mean(np_focal(z, y), y, w)),
    "hinge": ({}, lambda z, y, w: weighted_mean(np_hinge(z, y), y, w)),
    "ls_cce": ({}, lambda z, y, w: weighted_mean(np_ls_cce(z, y), y, w)),
    "ls_focal": ({}, lambda z, y, w: weighted_mean(np_focal(z, y, eps=0.2), y, w)),
    "cal_cce": ({}, lambda z, y, w: weighted_mean(np_cce(z, y), y, w) + np_dca(z, y)),
    "cal_kld": ({}, lambda z, y, w: weighted_mean(np_kld(z, y), y, w) + np_dca(z, y)),
    "cal_focal": ({}, lambda z, y, w: weighted_mean(np_focal(z, y), y, w) + np_dca(z, y)),
    "cal_hinge": ({}, lambda z, y, w: weighted_mean(np_hinge(z, y), y, w) + np_dca(z, y)),
    "cal_neg_entropy": ({}, lambda z, y, w: weighted_mean(np_cce(z, y) - 0.001 * np_entropy(z), y, w)
                        + np_dca(z, y)),
    # non-default settings
    "focal(alpha=0.25, gamma=0.5)": ({"alpha": 0.25, "gamma": 0.5},
                                     lambda z, y, w: weighted_mean(np_focal(z, y, 0.25, 0.5), y, w)),
    "ls_focal(paper_code=True)": ({"paper_code": True},  # published eps/2 smoothing
                                  lambda z, y, w: weighted_mean(np_focal(z, y, eps=0.2, denom=2), y, w)),
    "ls_cce(epsilon=0.05)": ({"epsilon": 0.05}, lambda z, y, w: weighted_mean(np_ls_cce(z, y, 0.05), y, w)),
    "cce_entropy_reg(paper_code=True)": ({"paper_code": True},  # published regulariser was a no-op
                                         lambda z, y, w: weighted_mean(np_cce(z, y), y, w)),
    "cal_focal(beta=3, gamma=1)": ({"beta": 3.0, "gamma": 1.0},
                                   lambda z, y, w: weighted_mean(np_focal(z, y, 1.0, 1.0), y, w)
                                   + 3.0 * np_dca(z, y)),
    "cal_cce(dca_grad=False)": ({"dca_grad": False},
                                lambda z, y, w: weighted_mean(np_cce(z, y), y, w) + np_dca(z, y)),
}


def _cls_inputs(seed=0, b=9, k=4, scale=2.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, k)) * scale, rng.integers(0, k, size=b)


def test_every_classification_loss_has_a_reference():
    assert set(CLS) <= {c.split("(")[0] for c in CLS_CASES}


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class_weight"])
@pytest.mark.parametrize("case", list(CLS_CASES))
def test_classification_matches_numpy(case, weighted):
    name = case.split("(")[0]
    params, ref = CLS_CASES[case]
    z, y = _cls_inputs(seed=len(case))
    w = np.array([0.7, 1.3, 1.1, 0.4]) if weighted else None
    loss = losses.build(name, **params, **({"class_weight": w} if weighted else {}))
    got = loss(torch.tensor(z), torch.tensor(y)).item()
    np.testing.assert_allclose(got, ref(z, y, w), **TOL)


def test_cce_matches_torch_cross_entropy_and_its_weight_convention():
    z, y = (torch.tensor(a) for a in _cls_inputs())
    torch.testing.assert_close(losses.build("cce")(z, y), F.cross_entropy(z, y), rtol=1e-12, atol=1e-12)
    w = torch.tensor([0.7, 1.3, 1.1, 0.4], dtype=torch.float64)
    ours = losses.build("cce", class_weight=w)(z, y)
    # torch divides by sum_b w[y_b], we (Keras) by B: ours * B / sum w = torch's
    torch.testing.assert_close(ours * len(y) / w[y].sum(), F.cross_entropy(z, y, weight=w))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.2, 0.7])
def test_ls_cce_matches_torch_label_smoothing(eps):
    z, y = (torch.tensor(a) for a in _cls_inputs(seed=3))
    torch.testing.assert_close(losses.build("ls_cce", epsilon=eps)(z, y),
                               F.cross_entropy(z, y, label_smoothing=eps), rtol=1e-12, atol=1e-12)


def test_kld_matches_torch_kl_div_and_equals_cce():
    z, y = (torch.tensor(a) for a in _cls_inputs(seed=4))
    target = F.one_hot(y, z.shape[1]).double()
    ref = F.kl_div(F.log_softmax(z, 1), target, reduction="batchmean")
    torch.testing.assert_close(losses.build("kld")(z, y), ref)
    torch.testing.assert_close(losses.build("kld")(z, y), losses.build("cce")(z, y))


def test_focal_reduces_to_cce_for_gamma_zero():
    z, y = (torch.tensor(a) for a in _cls_inputs(seed=5))
    torch.testing.assert_close(losses.build("focal", gamma=0.0)(z, y), losses.build("cce")(z, y))


def test_hand_derived_values():
    # uniform logits, K = 3: p = 1/3 everywhere, H = log 3, argmax = class 0.
    z = torch.zeros(2, 3, dtype=torch.float64)
    y = torch.tensor([0, 1])
    log3 = np.log(3.0)
    assert losses.build("cce")(z, y).item() == pytest.approx(log3)                    # -log(1/3)
    assert losses.build("cce_entropy_reg", scale="per_sample")(z, y).item() == pytest.approx(3 * log3)  # log3 + 2 log3
    assert losses.build("cce_entropy_reg")(z, y).item() == pytest.approx(log3 + 2 / 48 * log3)  # Keras: 2/(K*16)
    assert losses.build("focal")(z, y).item() == pytest.approx((2 / 3) ** 2 * log3)  # (1 - 1/3)^2 log 3
    assert losses.build("hinge")(z, y).item() == pytest.approx(1.0)                  # 1 + 1/3 - 1/3
    # accuracy 1/2 (argmax 0 is right for the first sample only), confidence 1/3 -> DCA = 1/6
    assert losses.build("cal_cce")(z, y).item() == pytest.approx(log3 + 1 / 6)
    # ls_focal, paper_code: targets (0.9, 0.1, 0.1) sum to 1.1 -> 1.1 * (2/3)^2 log 3
    assert losses.build("ls_focal", paper_code=True)(z, y).item() == pytest.approx(1.1 * (2 / 3) ** 2 * log3)


# ----------------------------------------------------------------------------- DCA gradient
def _grad(loss, z, y):
    z = z.clone().requires_grad_(True)
    loss(z, y).backward()
    return z.grad


@pytest.mark.parametrize("name", [n for n in CLS if n.startswith("cal_")])
def test_dca_gradient_on_by_default_and_exactly_zero_with_dca_grad_false(name):
    z, y = (torch.tensor(a) for a in _cls_inputs(seed=6))
    base = _grad(losses.build(name, beta=0.0), z, y)          # the base loss alone
    default = _grad(losses.build(name), z, y)
    frozen = _grad(losses.build(name, dca_grad=False), z, y)
    assert (default - base).abs().max() > 1e-3                 # DCA pushes the confidence
    assert torch.equal(frozen, base)                            # published code: no gradient at all
    assert losses.build(name, dca_grad=False)(z, y).item() == pytest.approx(losses.build(name)(z, y).item())


# ----------------------------------------------------------------------------- segmentation
def _seg_inputs(seed=0, shape=(2, 1, 6, 5)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape) * 2, (rng.random(shape) > 0.6).astype(np.float64)


def np_sig(x):
    return 1 / (1 + np.exp(-x))


def np_bce(x, t):
    return (np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))).mean()


def np_dice(x, t, s=1.0):
    p = np_sig(x)
    return 1 - (2 * (p * t).sum() + s) / (p.sum() + t.sum() + s)


def np_tversky_index(x, t, a_fn=0.7, b_fp=0.3, s=1e-10):
    p = np_sig(x)
    tp, fn, fp = (p * t).sum(), ((1 - p) * t).sum(), (p * (1 - t)).sum()
    return (tp + s) / (tp + a_fn * fn + b_fp * fp + s)


def np_seg_focal(x, t, alpha=0.25, gamma=2.0):
    p = np_sig(x)
    pt = p * t + (1 - p) * (1 - t)
    loss = -np.log(pt) * (1 - pt) ** gamma
    return (loss * (alpha * t + (1 - alpha) * (1 - t))).mean()


SEG_CASES = {
    "seg_bce": lambda x, t: np_bce(x, t),
    "seg_dice": lambda x, t: np_dice(x, t),
    "seg_bce_dice": lambda x, t: np_bce(x, t) + np_dice(x, t),
    "seg_focal": lambda x, t: np_seg_focal(x, t),
    "seg_tversky": lambda x, t: 1 - np_tversky_index(x, t),
    "seg_focal_tversky": lambda x, t: (1 - np_tversky_index(x, t)) ** 0.75,
}


@pytest.mark.parametrize("name", SEG)
def test_segmentation_matches_numpy(name):
    x, t = _seg_inputs(seed=len(name))
    got = losses.build(name)(torch.tensor(x), torch.tensor(t)).item()
    np.testing.assert_allclose(got, SEG_CASES[name](x, t), **TOL)
    # bool masks give the same value
    assert losses.build(name)(torch.tensor(x), torch.tensor(t > 0.5)).item() == pytest.approx(got, rel=1e-12)


@pytest.mark.parametrize("alpha", [0.25, 0.6, None])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 3.5])
def test_seg_focal_matches_torchvision(alpha, gamma):
    from torchvision.ops import sigmoid_focal_loss

    x, t = (torch.tensor(a) for a in _seg_inputs(seed=2))
    ref = sigmoid_focal_loss(x, t, alpha=-1 if alpha is None else alpha, gamma=gamma, reduction="mean")
    torch.testing.assert_close(losses.build("seg_focal", alpha=alpha, gamma=gamma)(x, t), ref)


def test_seg_bce_matches_torch():
    x, t = (torch.tensor(a) for a in _seg_inputs(seed=3))
    torch.testing.assert_close(losses.build("seg_bce")(x, t), F.binary_cross_entropy_with_logits(x, t))


def test_tversky_alpha_weights_false_negatives_the_reverse_of_smp():
    x, t = _seg_inputs(seed=4)
    p = np_sig(x)
    tp, fn, fp = (p * t).sum(), ((1 - p) * t).sum(), (p * (1 - t)).sum()
    smp_alpha, smp_beta = 0.3, 0.7  # smp: alpha -> FP, beta -> FN
    smp_style = 1 - tp / (tp + smp_alpha * fp + smp_beta * fn)
    got = losses.build("seg_tversky", smooth=1e-300)(torch.tensor(x), torch.tensor(t)).item()
    np.testing.assert_allclose(got, smp_style, **TOL)
    # more weight on FN -> a prediction that misses lung costs more than one that over-segments
    miss = losses.build("seg_tversky")(torch.full((1, 1, 4, 4), -3.0, dtype=torch.float64),
                                       torch.ones(1, 1, 4, 4, dtype=torch.float64))
    over = losses.build("seg_tversky")(torch.full((1, 1, 4, 4), 3.0, dtype=torch.float64),
                                       torch.tensor([[[[1.0] * 4] * 2 + [[0.0] * 4] * 2]], dtype=torch.float64))
    assert miss > over


# ----------------------------------------------------------------------------- embedding
def _emb_inputs(seed=0, b=10, d=6, classes=3, views=None):
    rng = np.random.default_rng(seed)
    shape = (b, d) if views is None else (b, views, d)
    labels = np.arange(b) % classes
    rng.shuffle(labels)
    return rng.normal(size=shape), labels


def _unit(f):
    f = f.reshape(-1, f.shape[-1])
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def _flat_labels(f, y):
    return np.repeat(y, f.shape[1]) if f.ndim == 3 else y


def np_distances(z):
    return np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))


def np_contrastive(f, y, m=1.0):
    # Hadsell et al. 2006 eq. 4, positive and negative pairs averaged separately
    z, y = _unit(f), _flat_labels(f, y)
    d = np_distances(z)
    pos = [0.5 * d[i, j] ** 2 for i in range(len(y)) for j in range(len(y)) if i != j and y[i] == y[j]]
    neg = [0.5 * max(0.0, m - d[i, j]) ** 2 for i in range(len(y)) for j in range(len(y)) if y[i] != y[j]]
    return (np.mean(pos) if pos else 0.0) + (np.mean(neg) if neg else 0.0)


def np_triplet_semihard(f, y, m=0.2):
    # FaceNet / TF triplet_semihard_loss: closest negative beyond the positive, else the farthest one
    z, y = _unit(f), _flat_labels(f, y)
    d, out = np_distances(z), []
    for a in range(len(y)):
        negs = [n for n in range(len(y)) if y[n] != y[a]]
        for p in range(len(y)):
            if p == a or y[p] != y[a] or not negs:
                continue
            beyond = [d[a, n] for n in negs if d[a, n] > d[a, p]]
            dn = min(beyond) if beyond else max(d[a, n] for n in negs)
            out.append(max(0.0, d[a, p] - dn + m))
    return np.mean(out) if out else 0.0


def np_supcon(f, y, tau=0.1):
    # Khosla et al. 2020 eq. 2 (L_out); anchors without a positive are left out of the mean
    z, y = _unit(f), _flat_labels(f, y)
    s = z @ z.T / tau
    out = []
    for i in range(len(y)):
        others = [a for a in range(len(y)) if a != i]
        pos = [p for p in others if y[p] == y[i]]
        if pos:
            log_den = np.log(np.exp(s[i, others]).sum())
            out.append(-np.mean([s[i, p] - log_den for p in pos]))
    return np.mean(out) if out else 0.0


EMB_CASES = {"contrastive": np_contrastive, "triplet": np_triplet_semihard, "supcon": np_supcon}
SINGLETONS = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4, 0, 1, 3])  # classes 2 and 4: anchors without a positive


@pytest.mark.parametrize("views", [None, 2], ids=["one_view", "two_views"])
@pytest.mark.parametrize("name", EMB)
def test_embedding_matches_numpy(name, views):
    f, y = _emb_inputs(seed=len(name), views=views)
    got = losses.build(name)(torch.tensor(f), torch.tensor(y)).item()
    np.testing.assert_allclose(got, EMB_CASES[name](f, y), **TOL)


@pytest.mark.parametrize("name", EMB)
def test_anchors_without_a_positive_follow_the_documented_rule(name):
    # contrastive: such anchors only form negative pairs; triplet: they form no triplet;
    # supcon: they are left out of the mean. The numpy references encode exactly that.
    f, _ = _emb_inputs(seed=13, b=12)
    got = losses.build(name)(torch.tensor(f), torch.tensor(SINGLETONS)).item()
    np.testing.assert_allclose(got, EMB_CASES[name](f, SINGLETONS), **TOL)


def test_supcon_anchor_without_positive_is_left_out():
    f, _ = _emb_inputs(seed=1, b=7)
    y = np.array([0, 0, 1, 1, 2, 2, 3])  # class 3: a single sample, no positive
    got = losses.build("supcon")(torch.tensor(f), torch.tensor(y)).item()
    np.testing.assert_allclose(got, np_supcon(f, y), **TOL)
    # the documented rule: mean over the 6 anchors that have a positive
    assert np.isfinite(got)


@pytest.mark.parametrize("views", [None, 2])
@pytest.mark.parametrize("labels", ["mixed", "singleton"])
def test_supcon_matches_pytorch_metric_learning(views, labels):
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    f, y = _emb_inputs(seed=7, b=8, views=views)
    if labels == "singleton":
        y = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    ref = pml.SupConLoss(temperature=0.1)(torch.tensor(_unit(f)), torch.tensor(_flat_labels(f, y)))
    torch.testing.assert_close(losses.build("supcon")(torch.tensor(f), torch.tensor(y)), ref)


def test_supcon_base_temperature_scales_like_supcontrast():
    f, y = _emb_inputs(seed=8)
    plain = losses.build("supcon", temperature=0.07)(torch.tensor(f), torch.tensor(y))
    scaled = losses.build("supcon", temperature=0.07, base_temperature=0.7)(torch.tensor(f), torch.tensor(y))
    torch.testing.assert_close(scaled, plain * 0.1)


def test_contrastive_unsquared_matches_pytorch_metric_learning():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import ContrastiveLoss
    from pytorch_metric_learning.reducers import MeanReducer

    f, y = _emb_inputs(seed=9, b=12)
    ref = ContrastiveLoss(pos_margin=0, neg_margin=1.0, distance=LpDistance(normalize_embeddings=True),
                          reducer=MeanReducer())(torch.tensor(f), torch.tensor(y))
    got = losses.build("contrastive", squared=False)(torch.tensor(f), torch.tensor(y))
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("labels", ["mixed", "singletons"])
@pytest.mark.parametrize("mining", ["all", "batch_hard"])
def test_triplet_matches_pytorch_metric_learning(mining, labels):
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.miners import BatchHardMiner
    from pytorch_metric_learning.reducers import MeanReducer

    f, y = _emb_inputs(seed=10, b=12)
    f, y = torch.tensor(f), torch.tensor(SINGLETONS if labels == "singletons" else y)
    pml_loss = TripletMarginLoss(margin=0.2, reducer=MeanReducer())
    ref = pml_loss(f, y, BatchHardMiner()(f, y)) if mining == "batch_hard" else pml_loss(f, y)
    torch.testing.assert_close(losses.build("triplet", mining=mining)(f, y), ref)


@pytest.mark.parametrize("labels, expected", [
    ([0, 0, 0, 0], "only the positive term"),
    ([0, 1, 2, 3], "only the negative term"),
])
def test_contrastive_without_positive_or_negative_pairs(labels, expected):
    f, _ = _emb_inputs(seed=11, b=4)
    # margin 2 = the diameter of the unit sphere, so every negative pair is inside it
    got = losses.build("contrastive", margin=2.0)(torch.tensor(f), torch.tensor(labels)).item()
    np.testing.assert_allclose(got, np_contrastive(f, np.array(labels), m=2.0), **TOL)
    assert np.isfinite(got) and got > 0, expected


@pytest.mark.parametrize("mining", ["semihard", "batch_hard", "all"])
@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3], [0]])
def test_triplet_without_any_triplet_is_zero_with_zero_gradient(mining, labels):
    f = torch.randn(len(labels), 5, dtype=torch.float64, requires_grad=True)
    loss = losses.build("triplet", mining=mining)(f, torch.tensor(labels))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(f.grad, torch.zeros_like(f))


def test_supcon_batch_without_any_positive_is_zero():
    f = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    loss = losses.build("supcon")(f, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(f.grad, torch.zeros_like(f))


def test_supcon_one_class_batch_is_finite():  # pml returns 0 here; Khosla's eq. 2 is well defined
    f, _ = _emb_inputs(seed=12, b=5)
    y = np.zeros(5, dtype=int)
    got = losses.build("supcon")(torch.tensor(f), torch.tensor(y)).item()
    np.testing.assert_allclose(got, np_supcon(f, y), **TOL)


# ----------------------------------------------------------------------------- registry-driven
def _inputs(name, dtype=torch.float64, scale=1.0, b=6):
    fam = losses.family(name)
    g = torch.Generator().manual_seed(0)
    if fam == "classification":
        return torch.randn(b, 3, generator=g, dtype=dtype) * scale, torch.arange(b) % 3
    if fam == "segmentation":
        x = torch.randn(2, 1, 4, 4, generator=g, dtype=dtype) * scale
        return x, torch.rand(2, 1, 4, 4, generator=g) > 0.5
    return torch.randn(b, 5, generator=g, dtype=dtype) * scale, torch.arange(b) % 3


def test_registry_lists_every_loss_once_with_a_family():
    expected = {"cce", "cce_entropy_reg", "kld", "focal", "hinge", "ls_cce", "ls_focal", "cal_cce", "cal_kld",
                "cal_focal", "cal_hinge", "cal_neg_entropy", "seg_bce", "seg_bce_dice", "seg_focal", "seg_dice",
                "seg_tversky", "seg_focal_tversky", "contrastive", "triplet", "supcon"}
    assert set(losses.names()) == expected and len(losses.names()) == len(expected)
    assert sorted(CLS + SEG + EMB) == sorted(losses.names())


@pytest.mark.parametrize("name", losses.names())
def test_build_gives_a_module_that_knows_its_name_and_is_documented(name):
    loss = losses.build(name)
    assert isinstance(loss, torch.nn.Module) and loss.name == name
    text = losses.describe(name)
    for word in ("Formula", "Shapes", "Parameters and defaults", losses.family(name)):
        assert word in text, f"describe({name!r}) lacks {word!r}"
    assert re.search(r"(19|20)\d\d", text), f"{name}: docstring must name its paper (author year)"


@pytest.mark.parametrize("name", losses.names())
def test_gradcheck(name):
    x, t = _inputs(name)
    x.requires_grad_(True)
    loss = losses.build(name)
    assert torch.autograd.gradcheck(lambda inp: loss(inp, t), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 100.0], ids=["normal", "logits_at_100"])
@pytest.mark.parametrize("name", losses.names())
def test_finite_scalar_and_gradient_on_every_input(name, scale):
    x, t = _inputs(name, dtype=torch.float32, scale=scale)
    if scale == 100.0:
        x = x.sign() * 100.0  # every logit at +-100
    x.requires_grad_(True)
    loss = losses.build(name)(x, t)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    if scale == 1.0:
        assert x.grad.abs().sum() > 0, "no gradient reaches the inputs"


CLS_EDGES = {
    "batch_of_one": (torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([1])),
    "all_one_class": (torch.randn(5, 3, generator=torch.Generator().manual_seed(1)), torch.zeros(5, dtype=torch.long)),
    "two_classes": (torch.randn(4, 2, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 1, 0])),
    "saturated_k2": (torch.tensor([[100.0, -100.0], [-100.0, 100.0]]), torch.tensor([1, 1])),
    "ties": (torch.zeros(3, 3), torch.tensor([0, 1, 2])),
}


@pytest.mark.parametrize("edge", list(CLS_EDGES))
@pytest.mark.parametrize("name", CLS)
def test_classification_edge_cases_are_finite(name, edge):
    z, y = CLS_EDGES[edge]
    z = z.clone().requires_grad_(True)
    w = torch.ones(z.shape[1])
    loss = losses.build(name, class_weight=w)(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("mask", ["empty", "full"])
@pytest.mark.parametrize("name", SEG)
def test_segmentation_edge_cases_are_finite(name, mask):
    x = torch.tensor([-100.0, 100.0]).repeat(8)[:16].reshape(1, 1, 4, 4)
    for logits in (x, -x, torch.full_like(x, 100.0), torch.full_like(x, -100.0)):
        logits = logits.clone().requires_grad_(True)
        m = torch.zeros_like(logits) if mask == "empty" else torch.ones_like(logits)
        loss = losses.build(name)(logits, m)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("labels", [[0], [0, 0, 0], [0, 1, 2], [0, 0, 1]], ids=str)
@pytest.mark.parametrize("name", EMB)
def test_embedding_edge_cases_are_finite(name, labels):
    for f in (torch.randn(len(labels), 4), torch.ones(len(labels), 4), torch.randn(len(labels), 2, 4)):
        f = f.clone().requires_grad_(True)
        loss = losses.build(name)(f, torch.tensor(labels))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(f.grad).all()


# ----------------------------------------------------------------------------- bad input
def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown loss 'focall'.*Did you mean 'focal'.*Valid names: cce"):
        losses.build("focall")
    with pytest.raises(ValueError, match="Valid names"):
        losses.family("nope")
    with pytest.raises(TypeError, match="must be a string"):
        losses.build(3)


def test_unknown_parameter_lists_the_accepted_ones():
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) 'gama'.*Did you mean 'gamma'.*Accepted: alpha"):
        losses.build("focal", gama=2)


def _bad_value(default):
    return "yes" if isinstance(default, bool) else "2"


@pytest.mark.parametrize("name, param", [(n, p) for n in losses.names() for p, d in losses.defaults(n).items()
                                         if isinstance(d, (bool, float))])
def test_wrong_parameter_type_names_the_parameter(name, param):
    default = losses.defaults(name)[param]
    with pytest.raises(TypeError, match=rf"{param} must be (a real number|True or False), got '?(2|yes)'?"):
        losses.build(name, **{param: _bad_value(default)})


@pytest.mark.parametrize("name, params, match", [
    ("ls_cce", {"epsilon": 1.5}, r"epsilon must be < 1.0, got 1.5"),
    ("focal", {"gamma": -1.0}, r"gamma must be >= 0.0, got -1.0"),
    ("cal_cce", {"beta": float("nan")}, r"beta must be finite"),
    ("cce", {"class_weight": [1.0, -2.0, 1.0]}, r"class_weight must be finite, >= 0"),
    ("cce", {"class_weight": "balanced"}, r"class_weight must be a sequence of K"),
    ("supcon", {"temperature": 0.0}, r"temperature must be > 0.0"),
    ("triplet", {"mining": "hard"}, r"mining must be one of 'semihard', 'batch_hard', 'all', got 'hard'"),
    ("seg_focal", {"alpha": 2.0}, r"alpha must be <= 1.0"),
])
def test_wrong_parameter_values(name, params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        losses.build(name, **params)


Z, Y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("name", CLS)
@pytest.mark.parametrize("logits, target, error, match", [
    (torch.randn(4), Y, ValueError, r"logits must have shape \[B, K\].*got \(4,\)"),
    (torch.randn(4, 3, 2), Y, ValueError, r"logits must have shape \[B, K\]"),
    (torch.randn(4, 1), Y, ValueError, r"K >= 2"),
    (Z, torch.tensor([0, 1, 2]), ValueError, r"target must have shape \[B\] = \[4\], got \(3,\)"),
    (Z, torch.tensor([0, 1, 3, 0]), ValueError, r"class indices in \[0, 2\] \(K = 3\), got \[3\]"),
    (Z, torch.tensor([0, -1, 2, 0]), ValueError, r"got \[-1\]"),
    (Z, Y.float(), TypeError, r"target must hold integer class indices.*float32.*target.long\(\)"),
    (Z.long(), Y, TypeError, r"logits must be a floating-point tensor"),
    (torch.tensor([[0.0, float("nan"), 1.0]] * 4), Y, ValueError, r"logits contains 4 NaN and 0 inf"),
    (torch.tensor([[0.0, float("inf"), 1.0]] * 4), Y, ValueError, r"logits contains 0 NaN and 4 inf"),
    (Z.numpy(), Y, TypeError, r"logits must be a torch.Tensor"),
], ids=["1d", "3d", "k1", "target_len", "target_high", "target_negative", "float_target", "int_logits",
        "nan", "inf", "numpy"])
def test_classification_bad_input(name, logits, target, error, match):
    with pytest.raises(error, match=re.compile(rf"^{name}: .*{match}", re.S)):
        losses.build(name)(logits, target)


def test_class_weight_length_must_match_k():
    with pytest.raises(ValueError, match=r"class_weight has 2 entries but logits have K = 3"):
        losses.build("cal_focal", class_weight=[1.0, 2.0])(Z, Y)


X, M = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4) > 0.5


@pytest.mark.parametrize("name", SEG)
@pytest.mark.parametrize("logits, mask, error, match", [
    (torch.randn(2, 2, 4, 4), M, ValueError, r"logits must have shape \[B, 1, H, W\]"),
    (X, M[:, 0], ValueError, r"mask must have the logits' shape.*unsqueeze\(1\)"),
    (X, M.float() * 255, ValueError, r"mask values must lie in \[0, 1\].*255"),
    (X.masked_fill(M, float("nan")), M, ValueError, r"NaN"),
], ids=["two_channels", "no_channel_axis", "mask_0_255", "nan"])
def test_segmentation_bad_input(name, logits, mask, error, match):
    with pytest.raises(error, match=re.compile(rf"^{name}: .*{match}", re.S)):
        losses.build(name)(logits, mask)


@pytest.mark.parametrize("name", EMB)
@pytest.mark.parametrize("features, labels, error, match", [
    (torch.randn(4), Y, ValueError, r"features must have shape \[B, D\] or \[B, V, D\]"),
    (torch.randn(4, 3), Y[:3], ValueError, r"labels must have shape \[B\] = \[4\]"),
    (torch.randn(4, 3), Y.float(), TypeError, r"labels must hold integer class labels"),
    (torch.full((4, 3), float("nan")), Y, ValueError, r"features contains 12 NaN"),
], ids=["1d", "labels_len", "float_labels", "nan"])
def test_embedding_bad_input(name, features, labels, error, match):
    with pytest.raises(error, match=re.compile(rf"^{name}: .*{match}", re.S)):
        losses.build(name)(features, labels)


# ----------------------------------------------------------------------------- curves + projection head
def test_curve_family_and_hand_derived_cce_curve():
    c = curves.loss_curves(["cce", "hinge", "cal_cce"], n_points=9, q_min=0.1, q_max=0.9)
    p = torch.softmax(curves.family_logits(c.q), 1).numpy()
    np.testing.assert_allclose(p[:, 0], c.q, **TOL)
    np.testing.assert_allclose(c.value["cce"], -np.log(c.q), **TOL)
    # dL/dz = p - onehot = (q - 1, (1-q)/2, (1-q)/2)  ->  norm (1 - q) sqrt(3/2)
    np.testing.assert_allclose(c.grad["cce"], (1 - c.q) * np.sqrt(1.5), **TOL)
    np.testing.assert_allclose(c.value["hinge"], 1.5 * (1 - c.q), **TOL)  # 1 + (1-q)/2 - q
    above = c.q > 1 / 3  # right argmax: DCA = 1 - q
    np.testing.assert_allclose(c.value["cal_cce"][above], -np.log(c.q[above]) + 1 - c.q[above], **TOL)


def test_dca_effect_toy_batch():
    e = curves.dca_effect(scales=np.array([0.5, 1.0, 4.0]))
    assert np.all(e["accuracy"] == 0.75)
    np.testing.assert_array_equal(e["dlds:cal_cce (dca_grad=False)"], e["dlds:cce"])
    assert np.all(e["dlds:cal_cce"] != e["dlds:cce"])


def test_curves_refuse_non_classification_losses():
    with pytest.raises(ValueError, match="need classification losses, 'seg_bce' is segmentation"):
        curves.loss_curves(["seg_bce"])


def _projection_module():
    try:
        from support.models.projection import ProjectionHead
    except ImportError:  # support/models/__init__.py not there yet: load the file by path
        import importlib.util
        from pathlib import Path

        path = Path(losses.__file__).parents[1] / "models" / "projection.py"
        spec = importlib.util.spec_from_file_location("projection", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ProjectionHead = module.ProjectionHead
    return ProjectionHead


def test_projection_head_outputs_unit_vectors():
    head = _projection_module()()
    z = head(torch.randn(5, 256))
    assert z.shape == (5, 128)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    assert head(torch.randn(5, 2, 256)).shape == (5, 2, 128)  # multi-view for supcon
    losses.build("supcon")(head(torch.randn(6, 2, 256)), torch.tensor([0, 0, 1, 1, 2, 2])).backward()
    with pytest.raises(ValueError, match=r"expects features \[B, 256\].*got \(5, 64\)"):
        head(torch.randn(5, 64))
    with pytest.raises(ValueError, match="out_dim must be a positive int"):
        _projection_module()(out_dim=0)
