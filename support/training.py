"""One training loop for every loss: ``train_one(config)`` and ``train_many(configs)``.

``train_many`` trains several members (same data, seed and batch settings;
different losses) in lockstep: each batch is prepared once and every member
takes one optimiser step on it, so the members see the SAME batches in the SAME
order (a paired design). ``train_one(config)`` is ``train_many([config])``;
there is no second loop. Members whose data-order settings differ are trained
in separate groups. Within a group, the members that can be (same architecture
and optimiser settings, end-to-end losses) step as ONE fused module each epoch
(:mod:`support.fused`: grouped convolutions, one loss per member, the sum
back-propagated), and their validation and test predictions run fused too;
per member stay the loss, the optimiser state, the schedule, early stopping,
the checkpoint and the run folder, published as soon as that member stops.

Data path: the split's uint8 images go to the device once, are resized there
once to ``image_size`` (antialiased bilinear) and stay uint8; each batch is
scaled to [0, 1] (the paper's ``rescale=1/255``, no mean/std normalisation)
and, if ``augment``, randomly affine-warped on the device. bf16 autocast where
the device computes bf16 natively (CUDA; a CPU with AVX-512 BF16 or AMX;
:func:`native_bf16`), else fp32, recorded as ``precision`` in config.json;
channels_last (CPU and CUDA). On CUDA: fused optimisers, optional ``torch.compile`` (falls
back to eager when compilation fails), and no host synchronisation inside an
epoch: the losses are summed on the device and so are the results of the loss
functions' input checks (finite logits, label range; ``losses._checks.deferred``);
both are read once per epoch, where a diverged run is stopped.

Run folder ``runs/<key>/`` (contract, see ../shared/design.md): ``config.json``
(written first), ``log.csv`` (one row per epoch), ``best.pt`` (state dict of
the best epoch by the monitored metric on the first validation half),
``predictions.npz`` (val and test probabilities, labels, ids, and ``val_half``:
0 = early-stopping half, 1 = the half kept for post-hoc fitting) and ``metrics.json`` (written LAST: its
presence marks the run finished). ``last.pt`` holds the resume state after
each epoch (model, optimiser, scheduler, early-stopping state, log) and is
removed when the run finishes. Every file is written atomically.

Reproducibility: the model is initialised from ``seed``; the batch order and
augmentation of epoch ``e`` come from a generator seeded by ``(seed, e)``, so
a run resumed after epoch ``e`` continues exactly as an uninterrupted one
(on the CPU, where kernels are deterministic).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import artifacts, fused, losses, models, paths
from .data import load as load_data
from .data.core import resolve_params, source_version
from .losses._checks import DeferredChecks, NonFiniteError, deferred
from . import logs

log = logs.get("train")

MONITORS = {"val_mcc": "max", "val_accuracy": "max", "val_loss": "min", "val_nll": "min"}
#: How a loss trains the model (TrainConfig.mode; see _Member.outputs / compute_loss).
MODES = ("end_to_end", "two_stage", "joint")
#: Fields added after runs existed: left out of the run key while at their default, so older keys stay valid.
_KEY_OPTIONAL = {"mode": "end_to_end", "metric_weight": 1.0, "init": "paired"}
#: How a run's weights are initialised (TrainConfig.init).
INITS = ("paired", "independent")
#: Training images a two-stage run embeds each epoch as the kNN reference of its validation score.
KNN_REFERENCE, KNN_K = 2048, 20
OPTIMIZERS = ("sgd", "adamw", "adam")
LR_SCHEDULES = ("plateau", "cosine", "constant")
#: Fields of TrainConfig that choose how a run executes, not what it computes; not in the run key.
EXECUTION_FIELDS = ("device", "compile", "amp", "fuse")
#: Memory format of models and batches. channels_last pays on CUDA and on the CPU (oneDNN) alike
#: (measured 1.3-2x for small_cnn); False is the plain contiguous path (tests: same numbers).
CHANNELS_LAST = True


class TrainingError(RuntimeError):
    """A run failed (NaN loss, bad configuration); finished results are untouched."""


class RunLocked(RuntimeError):
    """Another process is writing this run folder."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the paper's protocol.

    Paper (Rajaraman et al. 2021, code): SGD lr 1e-4, momentum 0.9, Nesterov;
    batch 16; <= 64 epochs; early stopping with patience 5 (the paper monitored
    val accuracy; our default is val MCC, which is robust to class imbalance);
    ReduceLROnPlateau(factor 0.5, patience 5, min_lr 1e-5) (``lr_schedule``); balanced class
    weights; no augmentation; 512x512 input. Profiles override these.
    """

    data: dict = field(default_factory=lambda: {"name": "phantom"})  # support.data.load(**data)
    arch: str = "efficientnet_b0"
    arch_params: dict = field(default_factory=dict)  # extra arguments of the architecture factory
    head: str = "paper"
    dcl_channels: int = 512  # width of the paper head's extra conv (the paper: 512)
    loss: str = "cce"
    loss_params: dict = field(default_factory=dict)
    # How the loss trains the model (shared/papers/loss_generalization.md 3.4):
    #   end_to_end  a classification loss on the logits (every loss of the multi-loss study);
    #   two_stage   an embedding loss (contrastive, triplet, supcon) on z = ProjectionHead(h): encoder and
    #               head train with it, validated by a kNN (k=20, cosine) on z; then a logistic regression
    #               on the frozen features h becomes the linear layer, so best.pt is a plain classifier;
    #   joint       cross-entropy on the logits + metric_weight * the embedding loss on z (MASF-style).
    mode: str = "end_to_end"
    metric_weight: float = 1.0  # lambda of the joint mode
    image_size: int = 512
    batch_size: int = 16
    optimizer: str = "sgd"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    max_epochs: int = 64
    patience: int = 5
    # Warm-up epochs during which early stopping and the LR plateau schedule do not count epochs without
    # improvement (Keras' EarlyStopping(start_from_epoch=...)); the best checkpoint is still tracked.
    # 0 = the paper. Losses with weak early gradients (hinge, KL, DCA variants) sit at chance for a few
    # epochs on the phantom before they find the lesions; a short patience would stop them there.
    start_from_epoch: int = 0
    monitor: str = "val_mcc"
    # "plateau": ReduceLROnPlateau(factor 0.5, patience 5, min_lr 1e-5) on the monitored metric (the paper);
    # "cosine": cosine annealing from lr to lr/100 over max_epochs (Loshchilov & Hutter 2017), stepped every
    #           epoch, warm-up included -- a stable final model within a fixed epoch budget;
    # "constant": no schedule.
    lr_schedule: str = "plateau"
    class_weights: bool = True
    augment: bool = False
    seed: int = 0
    # "paired" (default): the initial weights depend on the seed alone, so every loss of a seed starts from
    # the same model and sees the same batches -- a paired design, where a per-seed difference between two
    # losses is the loss's effect. "independent": the weights depend on (seed, loss), as in separately run
    # experiments; the batch order still follows the seed.
    init: str = "paired"
    # execution settings (not part of the run key)
    device: str = "auto"
    compile: bool = False
    # bf16 autocast where the processor computes bf16 natively (CUDA; a CPU with AVX-512 BF16 or AMX), else
    # fp32; the precision a run used is recorded in its config.json (see native_bf16).
    amp: bool = True
    # Train the members of one lockstep group that can be fused as ONE module (support.fused): same numbers
    # in fp32 up to summation order, several times the images per second on a CPU.
    fuse: bool = True

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_profile(cls, profile: str, **overrides) -> "TrainConfig":
        """Config from a profile's ``train``/``data`` settings plus explicit overrides."""
        from . import profiles

        p = profiles.get(profile)
        settings = dict(p["train"], data=p["data"])
        settings.update(overrides)
        return cls(**settings)

    def validate(self) -> None:
        def need(ok, msg):
            if not ok:
                raise ValueError(msg)

        for name in ("image_size", "batch_size", "max_epochs", "patience", "start_from_epoch", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"TrainConfig.{name} must be an int, got {type(v).__name__} {v!r}")
        need(self.batch_size >= 2, f"batch_size={self.batch_size} must be >= 2 (BatchNorm needs 2 samples)")
        need(self.max_epochs >= 1, f"max_epochs={self.max_epochs} must be >= 1")
        need(self.start_from_epoch >= 0, f"start_from_epoch={self.start_from_epoch} must be >= 0 (0 = no warm-up)")
        need(self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        need(self.lr_schedule in LR_SCHEDULES,
             f"unknown lr_schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
        need(self.monitor in MONITORS, f"unknown monitor {self.monitor!r}; valid: {', '.join(MONITORS)}")
        need(isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and math.isfinite(self.lr)
             and self.lr > 0, f"lr must be a positive finite number, got {self.lr!r}; e.g. lr=1e-3")
        need(self.patience >= 1, f"patience={self.patience} must be >= 1 (epochs without improvement before "
                                  "stopping); use patience=max_epochs to never stop early")
        need(isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1,
             f"momentum={self.momentum!r} must be a number in [0, 1), e.g. momentum=0.9")
        need(isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf,
             f"weight_decay={self.weight_decay!r} must be a number >= 0, e.g. weight_decay=1e-4")
        need(self.head in models.HEADS, f"unknown head {self.head!r}; valid heads: {', '.join(models.HEADS)}")
        need(isinstance(self.data, dict) and "name" in self.data,
             f"data must be a dict with a 'name' (e.g. {{'name': 'phantom'}}), got {self.data!r}")
        need(isinstance(self.loss_params, dict), f"loss_params must be a dict, got {self.loss_params!r}")
        data = dict(self.data)
        resolve_params(data.pop("name"), data)  # unknown source or parameter fails here, not after training
        models.get_arch(self.arch)         # unknown arch -> ValueError listing the valid ones
        losses.build(self.loss, **self.loss_params)  # unknown loss / bad params fail here, not mid-run
        need(self.mode in MODES, f"unknown mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        need(self.init in INITS, f"unknown init {self.init!r}; valid: {', '.join(INITS)}")
        wanted = "classification" if self.mode == "end_to_end" else "embedding"
        need(losses.family(self.loss) == wanted,
             f"mode={self.mode!r} needs a{'n' if wanted == 'embedding' else ''} {wanted} loss, got {self.loss!r} "
             f"({losses.family(self.loss)}); use mode='end_to_end' with {', '.join(losses.names('classification')[:3])}..."
             f" or mode='two_stage'/'joint' with {', '.join(losses.names('embedding'))}")
        need(isinstance(self.metric_weight, (int, float)) and not isinstance(self.metric_weight, bool)
             and math.isfinite(self.metric_weight) and self.metric_weight > 0,
             f"metric_weight={self.metric_weight!r} must be a positive number (lambda of the joint mode), e.g. 0.1")
        models.check_input_size(self.arch, self.image_size)
        if self.device not in ("auto", "cpu") and not str(self.device).startswith("cuda"):
            raise ValueError(f"device={self.device!r}: use 'auto', 'cpu' or 'cuda[:N]'")

    # -------------------------------------------------------------- identity
    def experiment(self) -> dict:
        """The fields that define the result (the run key's input), data params resolved."""
        d = dataclasses.asdict(self)
        for f in EXECUTION_FIELDS:
            d.pop(f)
        for f, default in _KEY_OPTIONAL.items():
            if d[f] == default:
                d.pop(f)
        data = dict(self.data)
        name = data.pop("name")
        _, resolved = resolve_params(name, data)
        d["data"] = {"name": name, **resolved}
        d["data_version"] = source_version(name)
        d["format_version"] = artifacts.RUN_FORMAT_VERSION
        return d

    def key(self) -> str:
        """Short hash of :meth:`experiment`. Execution settings (device, compile, amp) are
        deliberately excluded: a CPU and a GPU run of one config share a folder."""
        return artifacts.config_key(self.experiment())

    def order_key(self) -> str:
        """Members with equal order keys can be trained in lockstep on the same batches."""
        e = self.experiment()
        return artifacts.config_key({k: e[k] for k in ("data", "seed", "batch_size", "image_size", "augment")}
                                    | {"exec": [getattr(self, f) for f in EXECUTION_FIELDS]})


# ----------------------------------------------------------------------------- helpers
def init_seed(config: TrainConfig) -> int:
    """The torch seed of a run's initial weights: ``seed`` (paired), or a stable hash of (seed, loss,
    loss parameters) with ``init="independent"``."""
    if config.init == "paired":
        return config.seed
    return int(artifacts.config_key({"seed": config.seed, "loss": config.loss, "params": config.loss_params}), 16) % 2**31


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


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "metrics.json").exists()


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=paths.PROJECT_ROOT,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: Environment switch: "1" makes a second writer of a run folder wait for the first instead of failing
#: (set by ``./run_all.sh --jobs N`` for its notebooks, which may ask for the same run at once).
WAIT_ENV = "LOSSBENCH_WAIT_FOR_RUNS"


@contextlib.contextmanager
def run_lock(run_dir: Path, wait: Optional[bool] = None):
    """Exclusive lock on a run folder (released when the process dies).

    Held by another process: :class:`RunLocked` at once, or with ``wait`` (default: the
    ``LOSSBENCH_WAIT_FOR_RUNS=1`` environment switch) block until it is released.
    """
    wait = os.environ.get(WAIT_ENV) == "1" if wait is None else wait
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not wait:
            fh.close()
            raise RunLocked(f"{run_dir} is being written by another process; wait for it or stop it") from None
        log.info(f"{run_dir} is being trained by another process; waiting for it")
        fcntl.flock(fh, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


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


def _val_scores(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Dict[str, float]:
    """Cheap per-epoch validation scores: accuracy, MCC (from the confusion matrix), NLL."""
    pred = probs.argmax(1)
    cm = torch.bincount(labels * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    cm = cm.double().cpu().numpy()
    n = cm.sum()
    correct = np.trace(cm)
    t, p = cm.sum(1), cm.sum(0)
    denom = math.sqrt(max(n ** 2 - (p ** 2).sum(), 0.0) * max(n ** 2 - (t ** 2).sum(), 0.0))
    mcc = float((correct * n - (t * p).sum()) / denom) if denom > 0 else 0.0
    nll = float(-torch.log(probs.gather(1, labels[:, None]).clamp_min(1e-12)).mean())
    return {"val_accuracy": float(correct / n), "val_mcc": mcc, "val_nll": nll}


# ----------------------------------------------------------------------------- members
class _Member:
    """One model being trained: its config, model, optimiser, scheduler and state."""

    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device, num_classes: int,
                 class_weight: Optional[torch.Tensor], input_stats=(0.0, 1.0)):
        self.config, self.run_dir, self.device = config, run_dir, device
        torch.manual_seed(init_seed(config))  # the seed alone (paired) or the seed and the loss
        self.model = models.build(config.arch, num_classes, in_chans=1, head=config.head,
                                  dcl_channels=config.dcl_channels, **config.arch_params).to(device)
        self.model.set_input_stats(*input_stats)
        if CHANNELS_LAST:  # see CHANNELS_LAST
            self.model = self.model.to(memory_format=torch.channels_last)
        params = dict(config.loss_params)
        if class_weight is not None and config.class_weights and losses.family(config.loss) == "classification":
            params["class_weight"] = class_weight.to(device)
        self.loss_fn = losses.build(config.loss, **params).to(device)
        self.projection = self.ce_fn = None
        if config.mode != "end_to_end":  # embedding losses read z = ProjectionHead(h), h = model.features(x)
            from .models.projection import ProjectionHead

            width = self.model.feature_dim
            self.projection = ProjectionHead(width, hidden=width).to(device)
            if config.mode == "joint":
                weight = class_weight.to(device) if class_weight is not None and config.class_weights else None
                self.ce_fn = losses.build("cce", class_weight=weight).to(device)
        self.reference = None  # (images, labels) of the kNN validation score of a two-stage run
        fused = {"fused": True} if device.type == "cuda" else {}
        trainable = [p for p in self.parameters() if p.requires_grad]  # frozen members stay frozen
        if config.optimizer == "sgd":
            self.opt = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum,
                                       nesterov=config.momentum > 0, weight_decay=config.weight_decay, **fused)
        else:
            cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
            self.opt = cls(trainable, lr=config.lr, weight_decay=config.weight_decay, **fused)
        mode = MONITORS[config.monitor]
        self.sched = None
        if config.lr_schedule == "plateau":
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode=mode, factor=0.5, patience=5,
                                                                    min_lr=1e-5)
        elif config.lr_schedule == "cosine":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=config.max_epochs,
                                                                    eta_min=config.lr / 100)
        self.mode = mode
        self.forward = self.model
        if config.compile:
            self.forward = _compiled(self.model)
        self.stochastic = any(isinstance(m, (torch.nn.Dropout,)) or type(m).__name__ == "StochasticDepth"
                              for m in self.model.modules())
        self.next_epoch = 0
        self.best_score = -math.inf if mode == "max" else math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.log: List[dict] = []
        self.active = True
        self.finished = False  # predictions.npz and metrics.json written (support: _finish)
        self.error: Optional[str] = None
        self.loss_sum = torch.zeros((), device=device)
        self.seen = 0
        self.train_seconds = 0.0
        self.fused_epochs = 0  # epochs this member stepped inside a fused module (support.fused), in metrics.json

    def improved(self, score: float) -> bool:
        return score > self.best_score if self.mode == "max" else score < self.best_score

    # the hooks that let one loop train every mode ---------------------------
    def parameters(self):
        yield from self.model.parameters()
        if self.projection is not None:
            yield from self.projection.parameters()

    def train(self) -> None:
        self.model.train()
        if self.projection is not None:
            self.projection.train()

    def outputs(self, x: torch.Tensor):
        """``(logits or None, z or None)`` of a batch (run under autocast by the loop)."""
        if self.projection is None:
            return self.forward(x), None
        h = self.model.features(x)  # eager: torch.compile wraps only the classifier's forward
        return (self.model.fc(h) if self.config.mode == "joint" else None), self.projection(h)

    def compute_loss(self, out, y: torch.Tensor) -> torch.Tensor:
        logits, z = out
        if z is None:
            return self.loss_fn(logits.float(), y)
        metric = self.loss_fn(z.float(), y)
        return metric if logits is None else self.ce_fn(logits.float(), y) + self.config.metric_weight * metric

    def val_probs(self, x_val: torch.Tensor, amp: bool) -> torch.Tensor:
        """Validation probabilities: the classifier's, or (two-stage) a kNN's on z before the linear stage."""
        if self.config.mode != "two_stage":
            return predict_probs(self.model, x_val, amp=amp)
        ref_x, ref_y = self.reference
        probs = knn_probs(self.embed(ref_x, amp), ref_y, self.embed(x_val, amp), self.model.num_classes)
        return torch.from_numpy(probs).to(x_val.device)

    def embed(self, images_u8: torch.Tensor, amp: bool = False, projected: bool = True) -> np.ndarray:
        """z (or h with ``projected=False``) of uint8 images, float32 numpy."""
        head = self.projection if projected else torch.nn.Identity()
        return embed_images(self.model, images_u8, head, amp).cpu().numpy()

    def save_best(self) -> None:
        artifacts.save_state(self.run_dir / "best.pt", self.model.state_dict())
        if self.projection is not None:  # kept apart: best.pt stays loadable as a plain Classifier
            artifacts.save_state(self.run_dir / "projection.pt", self.projection.state_dict())

    # resume state ---------------------------------------------------------
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict() if self.sched else {},
                "next_epoch": self.next_epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "active": self.active, "train_seconds": self.train_seconds,
                "fused_epochs": self.fused_epochs,
                "log": pd.DataFrame(self.log).to_json(orient="split") if self.log else "",
                "projection": self.projection.state_dict() if self.projection is not None else {}}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.projection is not None:
            self.projection.load_state_dict(state["projection"])
        self.opt.load_state_dict(state["opt"])
        if self.sched and state["sched"]:
            self.sched.load_state_dict(state["sched"])
        for k in ("next_epoch", "best_score", "best_epoch", "bad_epochs", "active", "train_seconds"):
            setattr(self, k, state[k])
        self.fused_epochs = state.get("fused_epochs", 0)  # absent from resume states written before fusing
        if state["log"]:
            from io import StringIO
            self.log = pd.read_json(StringIO(state["log"]), orient="split").to_dict("records")


def _compiled(model):
    """``torch.compile`` with a safe fallback to eager on failure (first call)."""
    try:
        compiled = torch.compile(model)
    except Exception as exc:  # noqa: BLE001 - any backend failure means: run eager
        log.warning(f"torch.compile unavailable ({type(exc).__name__}); running eager")
        return model
    state = {"fn": compiled}

    def forward(x):
        try:
            return state["fn"](x)
        except Exception as exc:  # noqa: BLE001
            if state["fn"] is model:
                raise
            log.warning(f"torch.compile failed at first call ({type(exc).__name__}: {str(exc)[:120]}); eager")
            state["fn"] = model
            return model(x)

    return forward


# ----------------------------------------------------------------------------- public API
def run_dir_for(config: TrainConfig, runs_dir=None) -> Path:
    return paths.inside(Path(runs_dir) if runs_dir else paths.runs_dir(), config.key())


def train_one(config: TrainConfig, runs_dir=None, force: bool = False, progress: bool = True,
              data=None) -> Path:
    """Train one model (or return its folder if already finished) and return ``runs/<key>``.

    ``force=True`` retrains into a staging folder and replaces the finished
    one only when the new run has finished. Raises :class:`TrainingError`
    when the run fails (NaN loss, ...), leaving earlier results untouched.
    """
    return train_many([config], runs_dir=runs_dir, force=force, progress=progress, data=data)[0]


def train_many(configs: Sequence[TrainConfig], runs_dir=None, force: bool = False, progress: bool = True,
               data=None) -> List[Path]:
    """Train several configs; members that share data order are trained in lockstep.

    Returns the run folders in the order of ``configs``. A member that fails
    (e.g. NaN loss) is stopped with a message while the others go on; after
    all groups ran, a :class:`TrainingError` lists the failures.
    """
    configs = list(configs)
    if not configs:
        return []
    for c in configs:
        if not isinstance(c, TrainConfig):
            raise TypeError(f"train_many takes TrainConfig objects, got {type(c).__name__}")
    root = Path(runs_dir) if runs_dir else paths.runs_dir()
    dirs = [run_dir_for(c, root) for c in configs]
    groups: Dict[str, List[int]] = {}
    errors = []
    for i, (c, d) in enumerate(zip(configs, dirs)):
        if is_finished(d) and not force:
            broken = _finished_but_broken(d)
            if broken and broken not in errors:  # never retrained silently, never returned as a result
                errors.append(broken)
            continue
        if dirs.index(d) != i:  # the same experiment twice in one call: train it once
            continue
        groups.setdefault(c.order_key(), []).append(i)
    for idx in groups.values():
        errors += _train_group([configs[i] for i in idx], [dirs[i] for i in idx], force, progress, data)
    if errors:
        raise TrainingError("; ".join(errors))
    return dirs


def _finished_but_broken(run_dir: Path) -> Optional[str]:
    """Why a finished run folder cannot be read back (truncated, foreign, older format), or None."""
    from . import runs

    try:
        runs.Run(run_dir).check()
    except artifacts.ArtifactError as exc:
        return (f"finished run folder {run_dir} is broken ({exc}); it was not retrained and is left out "
                "of every table. Recompute it with force=True (./run_all.sh --force) or delete the folder")
    return None


def _train_group(configs, dirs, force, progress, data) -> List[str]:
    first = configs[0]
    device = resolve_device(first.device)
    bundle = data if data is not None else load_data(**first.data, verbose=progress)
    k = bundle.num_classes
    tr, va, te = (bundle.splits[s] for s in ("train", "val", "test"))
    if k < 2:
        raise TrainingError(f"data {bundle.source or first.data} has {k} class {list(bundle.classes)}; a "
                            "classifier needs at least 2: add images of another class (a folder or label per class)")
    absent = [bundle.classes[i] for i in sorted(set(range(k)) - set(tr.labels.unique().tolist()))]
    if absent:
        raise TrainingError(f"train split of {bundle.source or first.data} has no image of class(es) {absent} "
                            f"(classes {list(bundle.classes)}); every class needs training images: add some "
                            "or change the split fractions")
    for name, split in (("train", tr), ("val", va)):
        if len(split) == 0:
            raise TrainingError(f"{name} split of {bundle.source or first.data} is empty; a run needs train "
                                "and val images: add images, or give the source a larger val_fraction")
    size = first.image_size
    x_train = to_device_images(tr.images, size, device)
    y_train = tr.labels.to(device)
    # Early stopping and the checkpoint choice see only the first validation half; the second is kept
    # for what is fitted after training (top-K, ensemble weights, temperature; support.data.halves).
    stop = torch.from_numpy(np.flatnonzero(bundle.val_half() == 0))
    x_val, y_val = to_device_images(va.images[stop], size, device), va.labels[stop].to(device)
    weights = balanced_class_weights(tr.labels, k) if any(c.class_weights for c in configs) else None
    input_stats = train_input_stats(x_train)
    amp = precision(first, device) == "bf16"

    members, stack = [], contextlib.ExitStack()
    with stack:
        for c, d in zip(configs, dirs):
            # No pid in the name: the run lock makes the staging folder ours, and a later force run
            # removes what a killed one left behind instead of piling up copies on a full disk.
            work = d if not force else d.parent / f".staging-{d.name}"
            stack.enter_context(run_lock(d))
            if not force and is_finished(d):  # finished by the process we waited for (run_lock's wait)
                continue
            if force and work.exists():
                shutil.rmtree(work)
            for stale in work.glob(".*.tmp"):  # half-written by a killed process; never read, now removed
                stale.unlink(missing_ok=True)
            m = _Member(c, work, device, k, weights, input_stats)
            if c.mode == "two_stage":  # a fixed, seeded subset of train: the kNN reference of each epoch
                ref = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(c.seed))[:KNN_REFERENCE]
                m.reference = (x_train[ref.to(device)], y_train[ref.to(device)])
            m.final_dir = d
            if not force and (work / "last.pt").exists():
                try:
                    m.restore(artifacts.load_state(work / "last.pt", map_location=device))
                    log.info(f"resuming {c.loss} (seed {c.seed}) at epoch {m.next_epoch} from {work / 'last.pt'}")
                except artifacts.ArtifactError as exc:
                    log.warning(f"cannot resume ({exc}); starting {work} from scratch")
            info = {"config": dataclasses.asdict(c), "experiment": c.experiment(), "key": c.key(),
                    "git_sha": git_sha(), "torch": torch.__version__, "device": str(device),
                    "precision": "bf16" if amp else "fp32",
                    "data_source": bundle.source, "classes": list(bundle.classes)}
            artifacts.write_json(work / "config.json", info)
            members.append(m)

        max_epochs = max(c.max_epochs for c in configs)
        start = min(m.next_epoch for m in members if m.active) if any(m.active for m in members) else max_epochs
        label = ", ".join(c.loss for c in configs)
        bar = tqdm(range(start, max_epochs), desc=f"{label} (seed {first.seed})", disable=not progress,
                   leave=True, unit="epoch")
        n = len(y_train)
        for epoch in bar:
            todo = [m for m in members if m.active and m.next_epoch == epoch and epoch < m.config.max_epochs]
            if not todo:
                continue
            gen = torch.Generator().manual_seed(first.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=gen).to(device)  # one host-to-device copy per epoch
            t0 = time.perf_counter()
            for m in todo:
                m.train()
                m.loss_sum.zero_()
                m.checks = DeferredChecks()  # the loss input checks of this epoch, read at its end
                m.seen = 0
            batches = [perm[s:s + first.batch_size] for s in range(0, n, first.batch_size)]
            if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on one sample
                batches = batches[:-1]
            # Members that can be fused step as one module this epoch (support.fused); the others alone.
            groups, alone = fused.partition(todo) if first.fuse else ([], todo)
            steppers = [fused.FusedStep(g, CHANNELS_LAST, _compiled if first.compile else None) for g in groups]
            for m in (m for g in groups for m in g):
                m.fused_epochs += 1

            def loss_of(m, out):
                """Member m's loss on its outputs (None once it diverged); sums its epoch loss on the device."""
                try:
                    with deferred(m.checks):  # checks stay on the device: no host sync per step
                        loss = m.compute_loss(out, y)
                except NonFiniteError as exc:  # this run diverged: stop it, the others go on
                    _fail(m, epoch, f"training loss became non-finite ({exc})")
                    return None
                m.loss_sum += loss.detach() * len(idx)
                m.seen += len(idx)
                return loss

            for step, idx in enumerate(batches):
                x = prepare_batch(x_train[idx])
                if first.augment:
                    x = augment_batch(x, gen)
                y = y_train[idx]
                for s in steppers:
                    s.step(x, amp, lambda m, logits: loss_of(m, (logits, None)))
                for m in alone:
                    if not m.active:  # diverged earlier in this epoch
                        continue
                    if m.stochastic:
                        torch.manual_seed(m.config.seed * 7919 + epoch * 100_003 + step)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        out = m.outputs(x)
                    loss = loss_of(m, out)
                    if loss is None:
                        continue
                    m.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    m.opt.step()
            for s in steppers:  # weights, BatchNorm buffers and optimiser states back into the members
                s.split()
            if device.type == "cuda":  # let the queued steps finish: the epoch's true seconds
                torch.cuda.synchronize(device)
            elapsed = (time.perf_counter() - t0) / max(len(todo), 1)
            ok = []
            for m in todo:
                if m.active:
                    m.train_seconds += elapsed
                    try:
                        m.checks.raise_if_bad()  # the epoch's deferred loss input checks: one sync
                    except NonFiniteError as exc:  # this run diverged: stop it, the others go on
                        _fail(m, epoch, f"training loss became non-finite ({exc})")
                        continue
                    ok.append(m)
            plain = [m for m in ok if m.config.mode != "two_stage"]  # two-stage: a kNN score of its own
            val_probs = dict(zip(plain, predict_many([m.model for m in plain], x_val, amp, first.fuse)))
            for m in ok:
                _end_epoch(m, epoch, x_val, y_val, k, amp, elapsed, val_probs.get(m))
            # a run that stopped early is published now, not when the last member of its group stops
            _finish_all([m for m in ok if not m.active and not m.error], bundle, size, device, amp, force)
            shown = todo[0].log[-1] if todo[0].log else {}
            bar.set_postfix(loss=f"{shown.get('train_loss', float('nan')):.3f}",
                            val_mcc=f"{shown.get('val_mcc', float('nan')):.3f}",
                            active=sum(m.active for m in members))
        bar.close()
        _finish_all([m for m in members if not m.error and not m.finished], bundle, size, device, amp, force)
    return [m.error for m in members if m.error]


def _fail(m: _Member, epoch: int, what: str) -> None:
    """Stop one diverged run: error.json in its folder, the last good checkpoint kept."""
    m.active = False
    m.error = (f"{m.config.loss} (seed {m.config.seed}): {what} in epoch {epoch}; "
               f"run stopped, its folder {m.run_dir} keeps the last good checkpoint. "
               "Lower the learning rate or check the loss parameters")
    artifacts.write_json(m.run_dir / "error.json", {"error": m.error, "epoch": epoch})
    log.error(m.error)


def _end_epoch(m: _Member, epoch: int, x_val, y_val, k: int, amp: bool, seconds: float,
               probs: Optional[torch.Tensor] = None) -> None:
    train_loss = float(m.loss_sum) / max(m.seen, 1)  # the one host sync of the epoch
    if not math.isfinite(train_loss):
        _fail(m, epoch, f"training loss became {train_loss}")
        return
    probs = m.val_probs(x_val, amp) if probs is None else probs  # given: computed fused with the others
    scores = _val_scores(probs, y_val, k)
    with torch.no_grad():
        logits = torch.log(probs.clamp_min(1e-12))  # log-probabilities act as logits for the loss
        scores["val_loss"] = float(m.loss_fn(logits, y_val)) if losses.family(m.config.loss) == "classification" else float("nan")
    score = scores[m.config.monitor]
    row = {"epoch": epoch, "train_loss": train_loss, **scores, "lr": m.opt.param_groups[0]["lr"],
           "seconds": seconds}
    m.log.append(row)
    warm = epoch < m.config.start_from_epoch  # warm-up: no patience counted, no LR decay
    if m.improved(score):
        m.best_score, m.best_epoch, m.bad_epochs = score, epoch, 0
        m.save_best()
    elif not warm:
        m.bad_epochs += 1
    if m.config.lr_schedule == "cosine":
        m.sched.step()  # by epoch, warm-up included
    elif m.sched and not warm:
        m.sched.step(score)
    m.next_epoch = epoch + 1
    if m.bad_epochs >= m.config.patience or m.next_epoch >= m.config.max_epochs:
        m.active = False
    artifacts.write_text(m.run_dir / "log.csv", pd.DataFrame(m.log).to_csv(index=False))
    artifacts.save_state(m.run_dir / "last.pt", m.state())


def _finish_all(ms: Sequence[_Member], bundle, size: int, device, amp: bool, force: bool) -> None:
    """:func:`_finish` each member; the val/test images are resized once and the end-to-end members'
    predictions computed together (fused where their architectures allow)."""
    if not ms:
        return
    for m in ms:
        m.model.load_state_dict(artifacts.load_state(m.run_dir / "best.pt", map_location=device))
    images = {split: to_device_images(bundle.splits[split].images, size, device) for split in ("val", "test")}
    plain = [m for m in ms if m.projection is None]
    probs = {}
    for split, x in images.items():
        probs.update({(m, split): p for m, p in zip(plain, predict_many([m.model for m in plain], x, amp,
                                                                          m.config.fuse))})
    for m in ms:
        _finish(m, bundle, size, device, amp, force, images, probs)


def _finish(m: _Member, bundle, size: int, device, amp: bool, force: bool, images: dict, given: dict) -> None:
    """Best weights (loaded) -> predictions.npz and metrics.json (last), then publish the folder."""
    from . import metrics as metrics_mod

    m.finished = True
    extra = {}
    if m.projection is not None:
        m.projection.load_state_dict(artifacts.load_state(m.run_dir / "projection.pt", map_location=device))
        x_tr, y_tr = to_device_images(bundle.splits["train"].images, size, device), bundle.splits["train"].labels
        if m.config.mode == "two_stage":  # stage 2: the linear layer on frozen h, saved into best.pt
            extra["linear_stage"] = fit_linear_head(m.model, m.embed(x_tr, amp, projected=False), y_tr.numpy())
            artifacts.save_state(m.run_dir / "best.pt", m.model.state_dict())
        ref_z = m.embed(x_tr, amp)
        knn = {"k": KNN_K, "metric": "cosine", "space": "z (projection head output)"}
        for split in ("val", "test"):
            s = bundle.splits[split]
            if len(s):
                probs = knn_probs(ref_z, y_tr, m.embed(images[split], amp), len(bundle.classes))
                knn[f"{split}_accuracy"] = float((probs.argmax(1) == s.labels.numpy()).mean())
        extra["knn"] = knn
    arrays, report = {"classes": np.array(bundle.classes), "val_half": bundle.val_half()}, {}
    for split in ("val", "test"):
        s = bundle.splits[split]
        p = given.get((m, split))  # two-stage runs: here, after the linear stage fitted above
        probs_np = (p if p is not None else predict_probs(m.model, images[split], amp=amp)).cpu().numpy()
        arrays.update({f"{split}_probs": probs_np.astype(np.float32), f"{split}_labels": s.labels.numpy(),
                       f"{split}_ids": np.array(s.ids, dtype=str)})
        if len(s):
            report[split] = metrics_mod.classification_metrics(s.labels.numpy(), probs_np, bundle.classes)
    artifacts.write_npz(m.run_dir / "predictions.npz", **arrays)
    c = m.config
    epochs_run = len(m.log)
    summary = {
        "format_version": artifacts.RUN_FORMAT_VERSION, "key": c.key(), "loss": c.loss,
        "loss_params": c.loss_params, "arch": c.arch, "seed": c.seed, "data_source": bundle.source,
        "data": c.experiment()["data"], "classes": list(bundle.classes), "best_epoch": m.best_epoch,
        "epochs_run": epochs_run, "stopped_early": epochs_run < c.max_epochs, "monitor": c.monitor,
        "best_val_score": m.best_score, "train_seconds": m.train_seconds,
        "train_images_per_second": len(bundle.splits["train"]) * epochs_run / max(m.train_seconds, 1e-9),
        "device": str(device), "mode": c.mode, "fused_epochs": m.fused_epochs, **extra, **report,
    }
    artifacts.write_json(m.run_dir / "metrics.json", summary)  # written last: marks the run finished
    # Only now: a kill or a full disk before this point resumes from last.pt instead of retraining.
    (m.run_dir / "last.pt").unlink(missing_ok=True)
    if m.run_dir != m.final_dir:  # force: swap the staging folder in only now
        old = m.final_dir.parent / f".old-{m.final_dir.name}"
        lock = m.final_dir / ".lock"
        if old.exists():  # left by a swap that was killed half-way; the folder below is newer
            shutil.rmtree(old)
        if m.final_dir.exists():
            os.replace(m.final_dir, old)
        os.replace(m.run_dir, m.final_dir)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        lock.touch()
