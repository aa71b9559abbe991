"""Classifier builders: ``build(arch, num_classes, in_chans=1, head="paper", weights=None)``.

Every model is a :class:`Classifier`: a convolutional *trunk* that ends at
stride 16, then a head. The ``paper`` head follows Rajaraman et al. 2021
(section 2 of ../shared/papers/multiloss_ensemble.md)::

    trunk (stride 16) -> Conv 3x3, 512, ReLU  (``model.dcl``, the deepest conv layer)
                      -> global average pool -> Linear(num_classes)

The ``merge`` head is the paper's model-level ensemble head: Conv 1x1, 512,
ReLU (``model.dcl``) -> GAP -> Linear. The ``linear`` head skips the extra conv (``model.dcl`` is then the trunk's
last conv layer). ``model.dcl`` is what Grad-CAM and the model-level ensembles
hook into.

Architectures (registry ``ARCHS``): torchvision ``resnet18``, ``resnet50``,
``densenet121``, ``vgg16``, ``efficientnet_b0`` (randomly initialised,
first conv adapted to ``in_chans``), ``small_cnn`` (sized for the CPU
profile) and ``nodule_cnn`` (the synthetic-nodule study's 4-block encoder).
Nothing downloads: ``weights=PATH`` loads a local state dict, either one
saved by this kit or a torchvision backbone's (e.g. ImageNet weights you
keep locally), always with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import artifacts
from ..registry import Registry

ARCHS: Registry[Callable[[int], "Trunk"]] = Registry("architecture")
HEADS = ("paper", "merge", "linear")
#: Smallest input side each architecture accepts (stride 16 -> at least 2x2 features).
MIN_SIZE = 32


class Trunk(nn.Module):
    """A feature extractor to stride 16 with known output width."""

    def __init__(self, body: nn.Module, out_channels: int, backbone: nn.Module | None = None,
                 standardize_input: bool = True):
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        # False for trunks whose own members standardise (model-level ensembles).
        self.standardize_input = standardize_input
        # The full torchvision model, kept outside the module tree, for loading its weights.
        self._backbone = [backbone] if backbone is not None else []

    def forward(self, x):
        return self.body(x)


class Classifier(nn.Module):
    """Trunk -> (paper: Conv3x3 512 + ReLU) -> GAP -> Linear.

    ``forward(x)`` gives logits [B, K]; ``features(x)`` the pooled features
    [B, C] (used by embedding losses and linear probes); ``feature_map(x)`` the
    output of ``dcl`` (after its ReLU).

    Inputs are images scaled to [0, 1]. The model standardises them with the
    buffers ``input_mean`` / ``input_std`` (set from the training images by
    the training loop and saved in the state dict). Without this, BatchNorm's
    running statistics lag far behind on low-contrast images during short
    trainings and eval-mode predictions collapse to one class.
    """

    def __init__(self, trunk: Trunk, num_classes: int, head: str = "paper", dcl_channels: int = 512):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; valid heads: {', '.join(HEADS)}")
        self.trunk = trunk
        self.head_kind = head
        if head in ("paper", "merge"):
            kernel = 3 if head == "paper" else 1
            self.dcl = nn.Conv2d(trunk.out_channels, dcl_channels, kernel_size=kernel, padding=kernel // 2)
            self.act = nn.ReLU(inplace=False)
            width = dcl_channels
        else:
            self.dcl = _last_conv(trunk)
            self.act = nn.Identity()
            width = trunk.out_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        self.num_classes = num_classes
        self.feature_dim = width
        self.register_buffer("input_mean", torch.zeros(()))
        self.register_buffer("input_std", torch.ones(()))

    def set_input_stats(self, mean: float, std: float) -> None:
        """Standardise inputs as (x - mean) / std from now on (see class docstring)."""
        self.input_mean.fill_(float(mean))
        self.input_std.fill_(max(float(std), 1e-6))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        if self.trunk.standardize_input:
            x = (x - self.input_mean) / self.input_std
        z = self.trunk(x)
        return z if self.head_kind == "linear" else self.act(self.dcl(z))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _last_conv(module: nn.Module) -> nn.Conv2d:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(module).__name__} has no Conv2d layer to expose as .dcl")
    return convs[-1]


def _adapt_first_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_chans`` inputs (weights summed/repeated, the usual trick)."""
    if conv.in_channels == in_chans:
        return conv
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        w = conv.weight.sum(dim=1, keepdim=True) if in_chans == 1 else conv.weight.mean(1, keepdim=True).repeat(1, in_chans, 1, 1)
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


# ----------------------------------------------------------------------------- trunks
@ARCHS.register("resnet18")
def _resnet18(in_chans: int) -> Trunk:
    return _resnet("resnet18", in_chans)


@ARCHS.register("resnet50")
def _resnet50(in_chans: int) -> Trunk:
    return _resnet("resnet50", in_chans)


def _resnet(name: str, in_chans: int) -> Trunk:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    net.conv1 = _adapt_first_conv(net.conv1, in_chans)
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
    width = net.layer3[-1].conv2.out_channels if name == "resnet18" else net.layer3[-1].conv3.out_channels
    return Trunk(body, width, net)


@ARCHS.register("densenet121")
def _densenet121(in_chans: int) -> Trunk:
    import torchvision

    net = torchvision.models.densenet121(weights=None)
    net.features.conv0 = _adapt_first_conv(net.features.conv0, in_chans)
    f = net.features  # ... transition2 (stride 16) -> denseblock3 (1024 ch) stays at stride 16
    body = nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0, f.denseblock1, f.transition1,
                         f.denseblock2, f.transition2, f.denseblock3)
    return Trunk(body, 1024, net)


@ARCHS.register("vgg16")
def _vgg16(in_chans: int) -> Trunk:
    import torchvision

    net = torchvision.models.vgg16(weights=None)
    net.features[0] = _adapt_first_conv(net.features[0], in_chans)
    # max-pools at 4, 9, 16, 23, 30: up to (not including) the last one is stride 16.
    return Trunk(net.features[:30], 512, net)


@ARCHS.register("efficientnet_b0")
def _efficientnet_b0(in_chans: int) -> Trunk:
    import torchvision

    net = torchvision.models.efficientnet_b0(weights=None)
    net.features[0][0] = _adapt_first_conv(net.features[0][0], in_chans)
    # features[5] = stage 5 (112 ch, stride 16): Keras' block_5c_add, the paper's cut.
    return Trunk(net.features[:6], 112, net)


def _conv_block(cin: int, cout: int, double: bool) -> nn.Sequential:
    """double: (conv3x3-BN-ReLU) x 2, then max-pool (the nodule encoder, as in Baltatzis et al.).
    single: conv3x3, max-pool, BN, ReLU -- pooling first runs BN and ReLU on a quarter of the pixels,
    which halves small_cnn's CPU step time (measured 70 -> 35 ms at batch 32, 64x64, one thread; the
    full-resolution BN, ReLU and pool dominated it); the receptive field and stride are unchanged."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    if not double:
        return nn.Sequential(conv, nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
    layers = [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
              nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


@ARCHS.register("small_cnn")
def _small_cnn(in_chans: int, width: int = 16) -> Trunk:
    """Four conv-BN-ReLU-pool blocks (w, 2w, 4w, 8w), w = ``width`` (16): the CPU profile's model."""
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"small_cnn width must be a positive int, got {width!r}")
    widths = (width, 2 * width, 4 * width, 8 * width)
    blocks, cin = [], in_chans
    for w in widths:
        blocks.append(_conv_block(cin, w, double=False))
        cin = w
    return Trunk(nn.Sequential(*blocks), widths[-1])


@ARCHS.register("nodule_cnn")
def _nodule_cnn(in_chans: int) -> Trunk:
    """Baltatzis-inspired encoder: 4 blocks [32, 64, 128, 256] of two conv3x3-BN-ReLU + max-pool."""
    widths = (32, 64, 128, 256)
    blocks, cin = [], in_chans
    for w in widths:
        blocks.append(_conv_block(cin, w, double=True))
        cin = w
    return Trunk(nn.Sequential(*blocks), widths[-1])


# ----------------------------------------------------------------------------- public API
def get_arch(arch: str):
    """The trunk factory of ``arch`` (ValueError listing the valid names if unknown)."""
    if arch == "model_level" and arch not in ARCHS:
        raise ValueError("architecture 'model_level' is registered by support.ensembles (a model-level ensemble "
                         "of run folders): import support.ensembles before building or loading one")
    return ARCHS.get(arch)


def names():
    """Names of the available architectures."""
    return ARCHS.names()


def build(arch: str, num_classes: int, in_chans: int = 1, head: str = "paper", weights=None,
          dcl_channels: int = 512, **arch_params) -> Classifier:
    """Build a :class:`Classifier` (contract: ``.dcl`` is the deepest conv layer).

    ``weights``: path of a local state dict, either of a whole ``Classifier``
    (saved by this kit) or of the torchvision backbone (keys like
    ``layer1.0.conv1.weight``); a 3-channel first conv is summed to 1 channel.
    ``arch_params`` go to the architecture's factory (e.g. the member runs of a
    model-level ensemble, see :mod:`support.ensembles`).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
    trunk = get_arch(arch)(in_chans, **arch_params)
    model = Classifier(trunk, num_classes, head=head, dcl_channels=dcl_channels)
    model.arch = arch
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: Classifier, path) -> Classifier:
    """Load a local state dict into ``model`` (see :func:`build`); errors name the file."""
    state = artifacts.load_state(path)
    state = state.get("model", state)
    own = model.state_dict()
    if set(state) == set(own):
        model.load_state_dict(state)
        return model
    backbone = model.trunk._backbone[0] if model.trunk._backbone else None
    if backbone is None:
        raise artifacts.ArtifactError(
            f"{path} does not match architecture {getattr(model, 'arch', '?')} "
            f"(expected keys like {next(iter(own))!r}); pass weights saved for this arch"
        )
    target = backbone.state_dict()
    usable = {}
    for k, v in state.items():
        if k in target and target[k].shape == v.shape:
            usable[k] = v
        elif k in target and v.ndim == 4 and v.shape[1] == 3 and target[k].shape[1] == 1:
            usable[k] = v.sum(dim=1, keepdim=True)  # ImageNet RGB stem -> grayscale
    if len(usable) < 0.5 * len(target):
        raise artifacts.ArtifactError(
            f"{path} matches only {len(usable)} of {len(target)} tensors of the {getattr(model, 'arch', '?')} "
            "backbone; it is a state dict of another architecture"
        )
    backbone.load_state_dict(usable, strict=False)  # the trunk shares these modules
    return model


def check_input_size(arch: str, image_size: int) -> None:
    """Refuse inputs too small for a stride-16 trunk (clear message, before training)."""
    if not isinstance(image_size, int) or image_size < MIN_SIZE:
        raise ValueError(
            f"image_size={image_size!r} is too small for {arch} (stride 16); use at least {MIN_SIZE}"
        )
