"""The segmentation section of a profile, the run configuration :class:`SegConfig` and the U-Net builder.

The paper's protocol (Rajaraman et al. 2021, notes 1.2 of ../shared/papers/multiloss_ensemble.md):
U-Net with an EfficientNet-B0 encoder, Adam lr 1e-4, batch 2, <= 64 epochs, early stopping on
val loss (patience 10, min_delta 1e-4), ReduceLROnPlateau(val loss, factor 0.5, patience 5),
best checkpoint by val loss, small affine augmentation, 512x512 input. ``full`` keeps all of it
(except ImageNet weights: nothing downloads, the encoder is randomly initialised); ``quick`` and
``smoke`` shrink the image, the encoder and the epochs so that they run on a laptop CPU.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Tuple

import torch
from torch import nn

from .. import artifacts, losses, profiles
from ..data.core import resolve_params
from ..profiles import SEG_LOSSES  # noqa: F401  (re-exported: support.segmentation.SEG_LOSSES)

#: Fields that choose how a run executes, not what it computes: not in the run key.
EXECUTION_FIELDS = ("device", "amp")
#: Run folders are ``runs/seg-<key>/``; the prefix keeps them apart from classification runs.
RUN_PREFIX = "seg-"


def profile(name: str) -> dict:
    """A deep copy of the ``segmentation`` section of profile ``name`` (:mod:`support.profiles`)."""
    return profiles.segmentation(name)


@dataclass
class SegConfig:
    """Everything that defines one U-Net training run. Defaults are the paper's (module docstring)."""

    data: dict = field(default_factory=lambda: {"name": "phantom", "seed": 1})  # support.data.load(**data)
    loss: str = "seg_bce_dice"
    loss_params: dict = field(default_factory=dict)
    encoder: str = "efficientnet-b0"   # any segmentation-models-pytorch encoder name
    encoder_depth: int = 5             # number of encoder stages (3..5); the input side must be divisible by 2**depth
    decoder_channels: Tuple[int, ...] = (256, 128, 64, 32, 16)
    image_size: int = 512
    batch_size: int = 2
    lr: float = 1e-4                   # Adam
    max_epochs: int = 64
    patience: int = 10                 # early stopping on val loss
    min_delta: float = 1e-4            # an epoch "improves" when val loss drops by more than this
    lr_plateau: bool = True            # ReduceLROnPlateau(val loss, factor 0.5, patience 5, min_lr 1e-6)
    augment: bool = False              # small affine warps of image and mask together (no flips)
    threshold: float = 0.5             # probability -> binary mask
    seed: int = 0
    # execution settings (not part of the run key)
    device: str = "auto"
    amp: bool = True                   # bf16 autocast on CUDA only

    def __post_init__(self):
        self.decoder_channels = tuple(int(c) for c in self.decoder_channels)
        self.validate()

    @classmethod
    def from_profile(cls, name: str, **overrides) -> "SegConfig":
        """Config from a segmentation profile's ``train``/``data`` settings plus explicit overrides."""
        p = profile(name)
        settings = dict(p["train"], data=p["data"])
        settings.update(overrides)
        return cls(**settings)

    def validate(self) -> None:
        for name in ("image_size", "batch_size", "max_epochs", "patience", "seed", "encoder_depth"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"SegConfig.{name} must be an int, got {type(v).__name__} {v!r}")
        if self.loss not in losses.names("segmentation"):
            raise ValueError(f"SegConfig.loss={self.loss!r} is not a segmentation loss; valid: "
                             f"{', '.join(losses.names('segmentation'))}")
        losses.build(self.loss, **self.loss_params)  # bad loss parameters fail here, not mid-run
        if not 3 <= self.encoder_depth <= 5 or len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(f"encoder_depth={self.encoder_depth} must be 3..5 with one decoder channel count per "
                             f"stage, got decoder_channels={self.decoder_channels}")
        step = 2 ** self.encoder_depth
        if self.image_size < 2 * step or self.image_size % step:
            raise ValueError(f"image_size={self.image_size} must be a multiple of {step} (2**encoder_depth) "
                             f"and at least {2 * step}; e.g. {max(2 * step, round(self.image_size / step) * step)}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size={self.batch_size} must be >= 2 (BatchNorm needs 2 samples)")
        if self.max_epochs < 1 or not self.lr > 0 or not 0 < self.threshold < 1:
            raise ValueError(f"need max_epochs >= 1, lr > 0 and 0 < threshold < 1; got {self.max_epochs}, "
                             f"{self.lr}, {self.threshold}")
        if not isinstance(self.data, dict) or "name" not in self.data:
            raise ValueError(f"data must be a dict with a 'name' (e.g. {{'name': 'phantom'}}), got {self.data!r}")

    def experiment(self) -> dict:
        """The fields that define the result (the run key's input), data parameters resolved."""
        d = dataclasses.asdict(self)
        for f in EXECUTION_FIELDS:
            d.pop(f)
        data = dict(self.data)
        name = data.pop("name")
        d["data"] = {"name": name, **resolve_params(name, data)[1]}
        d.update(task="segmentation", format_version=artifacts.RUN_FORMAT_VERSION)
        return d

    def key(self) -> str:
        """Short hash of :meth:`experiment`. Not covered: the package's code (bump
        ``format_version`` or pass ``force=True`` after changing the loop) and the
        contents of user mask folders (the data cache fingerprints those)."""
        return artifacts.config_key(self.experiment())


class SegNet(nn.Module):
    """A smp U-Net behind input standardisation with the training set's mean/std (saved as buffers)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.register_buffer("input_mean", torch.zeros(()))
        self.register_buffer("input_std", torch.ones(()))

    def set_input_stats(self, mean: float, std: float) -> None:
        self.input_mean.fill_(mean)
        self.input_std.fill_(max(std, 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` float [B, 1, H, W] in [0, 1] -> logits [B, 1, H, W]."""
        return self.unet((x - self.input_mean) / self.input_std)


def build_model(config: SegConfig) -> SegNet:
    """The U-Net of ``config``: one input channel, one output logit per pixel, random init (no download)."""
    import segmentation_models_pytorch as smp  # heavy import, done on first use only

    try:
        unet = smp.Unet(encoder_name=config.encoder, encoder_depth=config.encoder_depth, encoder_weights=None,
                        decoder_channels=config.decoder_channels, in_channels=1, classes=1)
    except KeyError:
        raise ValueError(f"unknown U-Net encoder {config.encoder!r}; valid: "
                         f"{', '.join(smp.encoders.get_encoder_names())}") from None
    return SegNet(unet)
