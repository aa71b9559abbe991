"""Embeddings of two-stage and joint runs: features of images, the kNN vote used as their validation
score, and the linear probe (stage 2) that turns frozen features into the classifier's last layer."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .batches import eval_batch, prepare_batch

#: Training images a two-stage run embeds each epoch as the kNN reference of its validation score.
KNN_REFERENCE, KNN_K = 2048, 20


@torch.no_grad()
def embed_images(model: torch.nn.Module, images_u8: torch.Tensor, head: Optional[torch.nn.Module] = None,
                 amp: bool = False, batch_size: Optional[int] = None) -> torch.Tensor:
    """``head(model.features(x))`` (float32, on the images' device) of uint8 images [N,H,W], eval mode.

    ``head=None`` gives the pooled features h; pass a projection head for z.
    """
    batch_size = batch_size or eval_batch(images_u8.device)
    model.eval()
    if head is not None:
        head.eval()
    outs = []
    for s in range(0, len(images_u8), batch_size):
        with torch.autocast(images_u8.device.type, dtype=torch.bfloat16, enabled=amp):
            h = model.features(prepare_batch(images_u8[s:s + batch_size]))
            outs.append((head(h) if head is not None else h).float())
    return torch.cat(outs) if outs else torch.empty(0)


def knn_probs(ref_z: np.ndarray, ref_y, query_z: np.ndarray, num_classes: int, k: int = KNN_K) -> np.ndarray:
    """Class probabilities [N, K] of a k-nearest-neighbour vote (cosine) of ``query_z`` among ``ref_z``."""
    from sklearn.neighbors import KNeighborsClassifier

    ref_y = np.asarray(ref_y.cpu() if isinstance(ref_y, torch.Tensor) else ref_y)
    from threadpoolctl import threadpool_limits

    knn = KNeighborsClassifier(n_neighbors=min(k, len(ref_y)), metric="cosine").fit(ref_z, ref_y)
    probs = np.zeros((len(query_z), num_classes))
    with threadpool_limits(1):  # small problems: threaded BLAS is slower, much slower on a busy CPU
        probs[:, knn.classes_] = knn.predict_proba(query_z)
    return probs.astype(np.float32)


def fit_linear_head(model: torch.nn.Module, features: np.ndarray, labels: np.ndarray) -> dict:
    """Stage 2 of a two-stage run: a logistic regression on frozen features becomes ``model.fc``.

    scikit-learn's ``LogisticRegression`` (L2, C=1, lbfgs) on standardised features; the scaler is
    folded into the layer, so ``softmax(model(x))`` equals the fitted model's probabilities.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from threadpoolctl import threadpool_limits

    scaler = StandardScaler().fit(features)
    with threadpool_limits(1):  # see knn_probs
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(features), labels)
    coef, bias = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: sigmoid(w.x + b) = softmax([0, w.x + b])[1]
        coef, bias = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, bias[0]])
    weight = np.zeros((model.fc.out_features, features.shape[1]))
    weight[clf.classes_] = coef / scaler.scale_
    b = np.full(model.fc.out_features, -1e4)  # a class absent from train is never predicted
    b[clf.classes_] = bias - (coef * scaler.mean_ / scaler.scale_).sum(1)
    with torch.no_grad():
        model.fc.weight.copy_(torch.from_numpy(weight))
        model.fc.bias.copy_(torch.from_numpy(b))
    return {"method": "sklearn LogisticRegression(C=1) on standardised frozen features",
            "train_accuracy": float(clf.score(scaler.transform(features), labels))}

