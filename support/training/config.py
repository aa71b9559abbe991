"""What defines a training run: :class:`TrainConfig`, its validation, its run key and its seeds."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .. import artifacts, losses, models
from ..data.core import resolve_params, source_version

MONITORS = {"val_mcc": "max", "val_accuracy": "max", "val_loss": "min", "val_nll": "min"}
#: How a loss trains the model (TrainConfig.mode; see _Member.outputs / compute_loss).
MODES = ("end_to_end", "two_stage", "joint")
#: Fields added after runs existed: left out of the run key while at their default, so older keys stay valid.
_KEY_OPTIONAL = {"mode": "end_to_end", "metric_weight": 1.0, "init": "paired"}
#: How a run's weights are initialised (TrainConfig.init).
INITS = ("paired", "independent")
OPTIMIZERS = ("sgd", "adamw", "adam")
LR_SCHEDULES = ("plateau", "cosine", "constant")
#: Fields of TrainConfig that choose how a run executes, not what it computes; not in the run key.
EXECUTION_FIELDS = ("device", "compile", "amp", "fuse")


class TrainingError(RuntimeError):
    """A run failed (NaN loss, bad configuration); finished results are untouched."""


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
        from .. import profiles

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


def init_seed(config: TrainConfig) -> int:
    """The torch seed of a run's initial weights: ``seed`` (paired), or a stable hash of (seed, loss,
    loss parameters) with ``init="independent"``."""
    if config.init == "paired":
        return config.seed
    return int(artifacts.config_key({"seed": config.seed, "loss": config.loss, "params": config.loss_params}), 16) % 2**31

