"""Images on the device and batches for the loop: device and precision, resizing, [0, 1] scaling,
augmentation, class weights, and the (fused) prediction helpers."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import fused
from .config import TrainConfig, TrainingError

#: Memory format of models and batches. channels_last pays on CUDA and on the CPU (oneDNN) alike
#: (measured 1.3-2x for small_cnn); False is the plain contiguous path (tests: same numbers).
CHANNELS_LAST = True

def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(
            f"device={device!r} was requested but no CUDA GPU is visible (torch {torch.__version__}, "
            f"cuda available: False). Use device='auto' or 'cpu'"
        )
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, a CPU with AVX-512 BF16 or AMX.

    Elsewhere bf16 autocast would be emulated (slower than fp32), so the loop trains in fp32 there.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.backends.mkldnn.is_available() and any(bool(f()) for f in checks if f is not None)


def precision(config: "TrainConfig", device: torch.device) -> str:
    """"bf16" (autocast) or "fp32": what a run of ``config`` computes in on ``device``."""
    return "bf16" if config.amp and native_bf16(device) else "fp32"



def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """scikit-learn's 'balanced' weights n / (K * n_c) (the paper's class_weight)."""
    from sklearn.utils.class_weight import compute_class_weight

    y = labels.cpu().numpy()
    present = np.unique(y)
    if len(present) < num_classes:
        missing = sorted(set(range(num_classes)) - set(present.tolist()))
        raise TrainingError(f"train split has no sample of class index(es) {missing}; "
                            "every class needs training data (check the data source or split)")
    return torch.tensor(compute_class_weight("balanced", classes=np.arange(num_classes), y=y), dtype=torch.float32)


def to_device_images(images: torch.Tensor, size: int, device: torch.device, chunk: int = 512) -> torch.Tensor:
    """uint8 [N,H,W] -> uint8 [N,size,size] on ``device``, resized there (antialiased bilinear)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.to(device)
    out = torch.empty((len(images), size, size), dtype=torch.uint8, device=device)
    for s in range(0, len(images), chunk):
        x = images[s:s + chunk].to(device).unsqueeze(1).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[s:s + chunk] = x.round_().clamp_(0, 255).squeeze(1).to(torch.uint8)
    return out


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small random affine warps on the device: rotation ±5°, shift ±5 %, scale 0.95–1.05.

    No flips (a chest film is not left-right symmetric). Parameters come from
    ``generator`` (CPU), so augmentation is reproducible per (seed, epoch).
    """
    b = x.shape[0]
    r = torch.rand((b, 4), generator=generator)
    angle = (r[:, 0] * 2 - 1) * math.radians(5)
    scale = 0.95 + 0.1 * r[:, 1]
    shift = (r[:, 2:] * 2 - 1) * 0.1  # affine_grid units: 2 = full image, so 0.1 = 5 %
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    theta = theta.to(x.device, x.dtype, non_blocking=True)  # no host sync in the step
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def prepare_batch(images_u8: torch.Tensor, channels_last: Optional[bool] = None) -> torch.Tensor:
    """uint8 [B,H,W] -> float [B,1,H,W] in [0, 1] (the model standardises it further).

    ``channels_last=None`` follows :data:`CHANNELS_LAST`.
    """
    x = images_u8.unsqueeze(1).float().div_(255.0)
    channels_last = CHANNELS_LAST if channels_last is None else channels_last
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_input_stats(images_u8: torch.Tensor, max_images: int = 2048) -> tuple:
    """Mean and std of the training images in [0, 1] (first ``max_images``; deterministic)."""
    x = images_u8[:max_images].float().div(255.0)
    return float(x.mean()), float(x.std())


def eval_batch(device: torch.device, models: int = 1) -> int:
    """Evaluation batch size: large on a GPU; on the CPU small enough that a layer's activations stay in
    cache (measured, small_cnn at 64², one thread: batch 32 ~10,000 img/s, batch 256 ~5,900; 12 fused
    models: 16 per model ~10,000 model-images/s, 128 ~5,900)."""
    if device.type == "cuda":
        return max(256 // models, 16)
    return 32 if models == 1 else 16


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images_u8: torch.Tensor, batch_size: Optional[int] = None,
                  amp: bool = False) -> torch.Tensor:
    """Softmax probabilities [N, K] (float32, on the images' device) for uint8 images [N,H,W]."""
    batch_size = batch_size or eval_batch(images_u8.device)
    model.eval()
    outs = []
    for s in range(0, len(images_u8), batch_size):
        x = prepare_batch(images_u8[s:s + batch_size])
        with torch.autocast(images_u8.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        outs.append(torch.softmax(logits.float(), dim=1))
    return torch.cat(outs) if outs else torch.empty(0)


def predict_many(nets: Sequence[torch.nn.Module], images_u8: torch.Tensor, amp: bool = False,
                 fuse: bool = True) -> List[torch.Tensor]:
    """:func:`predict_probs` of each model; models of one architecture run as ONE fused module (support.fused)."""
    out: List[Optional[torch.Tensor]] = [None] * len(nets)
    groups: Dict[tuple, List[int]] = {}
    for i, net in enumerate(nets):
        groups.setdefault(fused.signature(net) if fuse else (i,), []).append(i)
    for idx in groups.values():
        probs = None
        if len(idx) > 1:
            try:
                probs = fused.predict([nets[i] for i in idx], images_u8, prepare_batch, amp, CHANNELS_LAST,
                                      eval_batch(images_u8.device, len(idx)))
            except fused.NotFusable:
                pass
        probs = probs or [predict_probs(nets[i], images_u8, amp=amp) for i in idx]
        for i, p in zip(idx, probs):
            out[i] = p
    return out
