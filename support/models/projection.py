"""Projection head for the embedding losses of the synthetic-nodule study.

``ProjectionHead(in_dim=256, hidden=256, out_dim=128)``: Linear -> ReLU ->
Linear -> L2 normalisation, mapping the encoder's pooled feature ``h`` [B, 256]
to the unit-sphere embedding ``z`` [B, 128] that ``contrastive``, ``triplet``
and ``supcon`` consume (shared/papers/loss_generalization.md 3.3; the same
two-layer MLP as SimCLR / SupCon's projection head). Linear probes read ``h``,
not ``z``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ProjectionHead: {name} must be a positive int, got {value!r}")
    return value


class ProjectionHead(nn.Module):
    """MLP ``in_dim -> hidden -> out_dim`` with ReLU; output L2-normalised.

    ``forward(h [..., in_dim]) -> z [..., out_dim]`` with ||z|| = 1 on the last axis,
    so it also accepts multi-view features [B, V, in_dim].
    """

    def __init__(self, in_dim: int = 256, hidden: int = 256, out_dim: int = 128):
        super().__init__()
        self.in_dim = _positive_int("in_dim", in_dim)
        self.hidden = _positive_int("hidden", hidden)
        self.out_dim = _positive_int("out_dim", out_dim)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not isinstance(h, torch.Tensor) or h.ndim < 2 or h.shape[-1] != self.in_dim:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"ProjectionHead expects features [B, {self.in_dim}] (or [B, V, {self.in_dim}]), "
                             f"got {shape}; build it with in_dim equal to the encoder's feature width")
        return F.normalize(self.net(h), dim=-1)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden={self.hidden}, out_dim={self.out_dim}, output=L2-normalised"
