"""Fused training: K models of one architecture stepped as ONE module (issue 19).

``train_many`` trains its members in lockstep on shared batches. Stepping each member with its own
small kernels leaves a CPU mostly idle (a width-8 small_cnn at 64² reaches ~25 % of one core's fp32
matmul peak). Here the members of one lockstep group that can be fused become one
:class:`FusedClassifier`:

- every ``Conv2d`` of the K members becomes one grouped convolution (``groups=K``) over the members'
  channels side by side; the first conv, which reads the shared input, is a plain conv with K times
  the output channels;
- every ``BatchNorm2d`` becomes one ``BatchNorm2d`` over the K·C channels: BatchNorm is per channel,
  so this is exactly each member's own BatchNorm (statistics and running buffers included);
- ReLU, max/average pooling are per channel and are shared; the final ``Linear`` is a batched
  matrix product (``baddbmm``) with the K weight matrices stacked.

Every fused tensor is the members' tensors concatenated along dim 0, so splitting back is a
``chunk``. Each member keeps its own loss (on its own slice of the logits); the loop back-propagates
the SUM of the member losses, so member i's gradients depend on loss i alone. One optimiser over the
fused tensors equals K separate ones because SGD, Adam and AdamW are elementwise (same lr, momentum,
betas, weight decay and step count, which :func:`partition` checks).

The fused module lives for ONE epoch: :meth:`FusedStep.__init__` joins the members' current weights
and optimiser states, :meth:`FusedStep.split` copies them back at the end of the epoch. Everything
per member (validation, learning-rate schedule, early stopping, best checkpoint, resume state, run
folder) therefore stays in ``training`` unchanged, and a member that stopped early simply is not
joined the next epoch. Checkpoints are ordinary single-model state dicts.

Members that cannot be fused (an embedding-loss mode, dropout, a layer type not listed in
:data:`FUSABLE`, e.g. resnet's residual blocks, or a unique optimiser setting) are stepped alone.
In fp32 a fused run equals the separate run up to float summation order (tests/test_training.py).
"""
from __future__ import annotations

import json
from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn

#: Layer types a fused trunk may contain (per-channel or shared); anything else is stepped alone.
FUSABLE = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)


class NotFusable(ValueError):
    """These models cannot be joined into one FusedClassifier (the reason names the layer)."""


def _leaves(module: nn.Module) -> List[nn.Module]:
    """The layers of a (nested) Sequential, in order; NotFusable for any other container or layer."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    if not isinstance(module, FUSABLE):
        raise NotFusable(f"{type(module).__name__} is not one of the fusable layers "
                         f"({', '.join(t.__name__ for t in FUSABLE)})")
    return [module]


def _join(layers: Sequence[nn.Module], shared_input: bool) -> nn.Module:
    """One layer computing ``layers`` (one per member) side by side on channel blocks."""
    first, k = layers[0], len(layers)
    if isinstance(first, nn.Conv2d):
        if shared_input and first.groups != 1:
            raise NotFusable("a grouped first convolution")
        cin = first.in_channels if shared_input else first.in_channels * k
        groups = first.groups if shared_input else first.groups * k
        fused = nn.Conv2d(cin, first.out_channels * k, first.kernel_size, first.stride, first.padding,
                          first.dilation, groups, first.bias is not None, first.padding_mode)
    elif isinstance(first, nn.BatchNorm2d):
        if shared_input:
            raise NotFusable("a BatchNorm before the first convolution")
        fused = nn.BatchNorm2d(first.num_features * k, first.eps, first.momentum, first.affine,
                               first.track_running_stats)
    else:  # per-channel layers without state: one copy serves every member
        return first
    with torch.no_grad():
        for name, t in list(fused.named_parameters()) + list(fused.named_buffers()):
            parts = [dict(m.named_parameters(), **dict(m.named_buffers()))[name] for m in layers]
            if t.ndim == 0:  # num_batches_tracked: equal for members trained equally long
                t.copy_(parts[0])
            else:
                t.copy_(torch.cat(parts))
    return fused


class FusedClassifier(nn.Module):
    """K :class:`support.models.Classifier` s of one architecture as one module; ``forward`` -> [K, B, classes]."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        ref, self.k = members[0], len(members)
        if ref.trunk.standardize_input:  # the members of one group share the training images' stats
            mean, std = ref.input_mean, ref.input_std
            if any(not (torch.equal(m.input_mean, mean) and torch.equal(m.input_std, std)) for m in members):
                raise NotFusable("members with different input statistics")
        self.register_buffer("input_mean", ref.input_mean.clone())
        self.register_buffer("input_std", ref.input_std.clone())
        self.standardize = ref.trunk.standardize_input
        per_member = [_leaves(m.trunk.body) for m in members]
        if ref.head_kind != "linear":  # the paper / merge head: conv + ReLU after the trunk
            per_member = [leaves + [m.dcl, m.act] for leaves, m in zip(per_member, members)]
        if len({len(x) for x in per_member}) != 1:
            raise NotFusable("members of different depth")
        layers, shared = [], True
        for column in zip(*per_member):
            if len({type(x) for x in column}) != 1:
                raise NotFusable("members of different architectures")
            layers.append(_join(column, shared))
            shared = shared and not isinstance(column[0], nn.Conv2d)
        if shared:
            raise NotFusable("a trunk without a convolution")
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        fc = [m.fc for m in members]
        self.classes, self.width = ref.fc.out_features, ref.fc.in_features
        self.fc_weight = nn.Parameter(torch.cat([f.weight.detach() for f in fc]).clone())  # [K*C, W]
        self.fc_bias = nn.Parameter(torch.cat([f.bias.detach() for f in fc]).clone())      # [K*C]
        # member tensors in the order of fused_tensors(): each fused tensor is their dim-0 concatenation
        self.member_tensors = [_member_tensors(m, ref.head_kind) for m in members]
        covered = {id(t) for t in self.member_tensors[0]}
        if any(id(p) not in covered for p in ref.parameters()):
            raise NotFusable("a parameter outside the trunk's layers, the head conv and the linear layer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            x = (x - self.input_mean) / self.input_std
        h = self.pool(self.body(x)).flatten(1)                      # [B, K*W]
        h = h.view(-1, self.k, self.width).transpose(0, 1)          # [K, B, W]
        w = self.fc_weight.view(self.k, self.classes, self.width)   # [K, C, W]
        return torch.baddbmm(self.fc_bias.view(self.k, 1, self.classes), h, w.transpose(1, 2))

    def fused_tensors(self) -> List[torch.Tensor]:
        """Parameters and BatchNorm buffers, in the order of each ``member_tensors`` entry."""
        out = []
        for layer in self.body:
            if isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
                out += list(layer.parameters()) + list(layer.buffers())
        return out + [self.fc_weight, self.fc_bias]


def _member_tensors(model: nn.Module, head_kind: str) -> List[torch.Tensor]:
    layers = _leaves(model.trunk.body) + ([model.dcl] if head_kind != "linear" else [])
    out = []
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
            out += list(layer.parameters()) + list(layer.buffers())
    return out + [model.fc.weight, model.fc.bias]


def fuse_key(member) -> str:
    """Members with equal keys may be fused: same architecture, optimiser class, settings and step count."""
    c = member.config
    group = {k: v for k, v in member.opt.param_groups[0].items() if k != "params"}
    steps = [s["step"] for s in member.opt.state.values() if "step" in s]
    return json.dumps({"arch": [c.arch, c.arch_params, c.head, c.dcl_channels], "opt": type(member.opt).__name__,
                       "group": group, "step": float(steps[0]) if steps else 0.0,
                       "compile": c.compile}, sort_keys=True, default=str)


def fusable(member) -> bool:
    """Whether a member can be trained inside a fused module at all (see the module docstring)."""
    return (member.config.mode == "end_to_end" and not member.stochastic and member.projection is None
            and len(member.opt.param_groups) == 1)


def partition(members: Sequence, min_size: int = 2) -> Tuple[List[list], list]:
    """(groups to fuse, members stepped alone): members grouped by :func:`fuse_key`."""
    groups, alone = {}, []
    for m in members:
        (groups.setdefault(fuse_key(m), []) if fusable(m) else alone).append(m)
    fused = []
    for g in groups.values():
        if len(g) < min_size:
            alone += g
            continue
        try:  # a layer we cannot fuse: step these members alone
            FusedClassifier([m.model for m in g[:2]])
            fused.append(g)
        except NotFusable:
            alone += g
    return fused, alone


def signature(model: nn.Module) -> tuple:
    """Names and shapes of a model's tensors: models with equal signatures may be fused."""
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


@torch.no_grad()
def predict(models: Sequence[nn.Module], images_u8: torch.Tensor, prepare: Callable, amp: bool,
            channels_last: bool = True, batch_size: int = 128) -> List[torch.Tensor]:
    """Softmax probabilities [N, classes] of each model (eval mode), computed as ONE fused module.

    ``prepare`` turns a uint8 batch into the models' input (``training.prepare_batch``). NotFusable
    when the models cannot be joined (the caller then evaluates them one by one).
    """
    if len({signature(m) for m in models}) != 1:
        raise NotFusable("models of different shapes")
    net = FusedClassifier(models).to(images_u8.device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.eval()
    outs = []
    for s in range(0, len(images_u8), batch_size):
        with torch.autocast(images_u8.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(prepare(images_u8[s:s + batch_size]))
        outs.append(torch.softmax(logits.float(), dim=-1))
    if not outs:
        return [torch.empty(0) for _ in models]
    return list(torch.cat(outs, dim=1))


class FusedStep:
    """One epoch of K members as one module and one optimiser; :meth:`split` writes the result back."""

    def __init__(self, members: Sequence, channels_last: bool = True, wrap: Callable = None):
        self.members = list(members)
        device = members[0].device
        self.model = FusedClassifier([m.model for m in members]).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.tensors = self.model.fused_tensors()
        params = [t for t in self.tensors if isinstance(t, nn.Parameter)]
        group = {k: v for k, v in members[0].opt.param_groups[0].items() if k != "params"}
        self.opt = type(members[0].opt)([{**group, "params": params}])
        self.param_index = [i for i, t in enumerate(self.tensors) if isinstance(t, nn.Parameter)]
        for fused_p, i in zip(params, self.param_index):  # join the members' optimiser states
            states = [m.opt.state.get(mt[i]) for m, mt in zip(members, self.model.member_tensors)]
            if not states[0]:
                continue
            self.opt.state[fused_p] = {
                name: (v.clone() if v.ndim == 0 else torch.empty_like(fused_p).copy_(torch.cat([s[name] for s in states])))
                for name, v in states[0].items() if isinstance(v, torch.Tensor)}
        self.forward = wrap(self.model) if wrap is not None else self.model  # e.g. torch.compile

    def step(self, x: torch.Tensor, amp: bool, loss_of: Callable) -> None:
        """One optimiser step of every member on batch ``x`` (``loss_of`` knows the labels).

        ``loss_of(member, logits)`` returns the member's loss, or None when that member failed (then
        its gradient is zero and, having failed, its weights are never read again).
        """
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = self.forward(x)
        total = 0
        for i, m in enumerate(self.members):
            if not m.active:
                continue
            loss = loss_of(m, logits[i])
            if loss is not None:
                total = total + loss
        if not torch.is_tensor(total):
            return
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()

    @torch.no_grad()
    def split(self) -> None:
        """Copy the fused weights, BatchNorm buffers and optimiser states back into the members."""
        k = len(self.members)
        for i, fused_t in enumerate(self.tensors):
            parts = fused_t.chunk(k) if fused_t.ndim else [fused_t] * k
            for m, mt, part in zip(self.members, self.model.member_tensors, parts):
                mt[i].copy_(part)
        for m in self.members:  # their optimisers took this epoch's steps here (silences the schedulers' warning)
            m.opt._opt_called = True
        for fused_p, i in zip(self.opt.param_groups[0]["params"], self.param_index):
            state = self.opt.state.get(fused_p)
            if not state:
                continue
            for j, (m, mt) in enumerate(zip(self.members, self.model.member_tensors)):
                m.opt.state[mt[i]] = {name: (v.clone() if v.ndim == 0 else v.chunk(k)[j].clone())
                                      for name, v in state.items()}
