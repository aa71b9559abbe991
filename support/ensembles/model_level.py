"""Model-level (feature-level) ensemble: frozen members' deepest conv features, merged.

Paper (Rajaraman et al. 2021; section 5.2 of ``multiloss_ensemble.md``): each
top-K model is cut at its deepest conv layer (512 channels), the K feature maps
are concatenated (K*512 channels) and followed by a new Conv 1x1 512 + ReLU,
global average pooling and a Dense softmax layer, trained with CCE while the
members stay frozen. (The paper's code froze ``layers[:9]``, which also froze
the new conv for K=5 and *everything* for K=3; we implement the stated intent:
frozen members, trainable merge head.)

Here that is an ordinary architecture of :data:`support.models.ARCHS`,
``model_level``, whose trunk holds the member :class:`~support.models.Classifier`
s and outputs the concatenation of their ``feature_map(x)``; the
``merge`` head of :class:`~support.models.Classifier` adds Conv 1x1 512 +
ReLU (``.dcl``) -> GAP -> Linear. It is trained by the one training loop,
:func:`support.training.train_one`, so the result is a run folder like any
other model::

    TrainConfig(arch="model_level", arch_params={"members": [run keys]}, head="merge", loss="cce", ...)

Importing this module registers the architecture (``import support.ensembles``
does it). Member references are run keys (looked up under
:func:`support.paths.runs_dir` when the model is built) or absolute paths of
run folders elsewhere. They are sorted, so a member *set* has one run key; the
key changes with the members. The key does not cover the members' weights:
retraining a member with ``force=True`` leaves an old model-level run keyed
the same, so retrain it with ``force=True`` too.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

import torch
from torch import nn

from .. import artifacts, models, paths
from ..runs import Run
from .members import check_members
from .base import EnsembleError

ARCH = "model_level"


def member_ref(run: Run) -> str:
    """A run's key when it lives in the runs folder (portable), else its absolute path."""
    path = run.path.resolve()
    return run.key if path.parent == paths.runs_dir().resolve() else str(path)


def resolve_member(ref: Union[str, Path]) -> Path:
    """Run folder of a member reference (key under the runs folder, or a path)."""
    path = Path(ref)
    if not path.is_absolute():
        path = paths.inside(paths.runs_dir(), str(ref))
    if not (path / "metrics.json").exists():
        raise EnsembleError(f"model-level member {ref!r}: {path} is not a finished run folder "
                            f"(no metrics.json); train it first or point LOSSBENCH_RUNS_DIR at its runs folder")
    return path


class MemberTrunk(models.Trunk):
    """Frozen member Classifiers side by side: ``forward(x)`` = concat of their ``feature_map(x)``.

    The members stay in eval mode (BatchNorm uses its running statistics,
    dropout is off) even when the surrounding model is put in train mode,
    and their parameters have ``requires_grad=False`` so the optimiser of
    :mod:`support.training` never sees them. Each member standardises the
    [0, 1] input with its own ``input_mean``/``input_std``; the trunk sets
    ``standardize_input=False`` so the surrounding Classifier passes the
    input through unchanged.
    """

    def __init__(self, members: Sequence[models.Classifier]):
        body = nn.ModuleList(members)
        # each member standardises its input with its own training statistics, so the outer model must not
        super().__init__(body, sum(m.feature_dim for m in members), standardize_input=False)
        for p in body.parameters():
            p.requires_grad_(False)
        body.eval()

    def train(self, mode: bool = True) -> "MemberTrunk":
        super().train(mode)
        self.body.eval()  # frozen members never leave eval mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.feature_map(x) for m in self.body], dim=1)


def build_trunk(in_chans: int = 1, members: Sequence[str] = ()) -> MemberTrunk:
    """``ARCHS["model_level"]``: load and freeze the member runs (>= 2, same data and image size)."""
    if in_chans != 1:
        raise ValueError(f"model_level members are grayscale (in_chans=1) models, got in_chans={in_chans}")
    if isinstance(members, (str, Path)) or len(members) < 2:
        raise EnsembleError(f"model_level needs a list of >= 2 member runs in arch_params['members'], got {members!r}")
    runs = _check_sizes(check_members([resolve_member(m) for m in members]))
    return MemberTrunk([r.model() for r in runs])


def _check_sizes(runs: List[Run]) -> List[Run]:
    """Members must see the same input size (their feature maps are concatenated)."""
    sizes = {str(r.path): r.config.get("config", {}).get("image_size") for r in runs}
    if len(set(sizes.values())) > 1:
        raise EnsembleError(f"model_level members must share image_size; got {sizes} (run folder: size)")
    return runs


if ARCH not in models.ARCHS:  # re-import (autoreload) must not register twice
    models.ARCHS.add(ARCH, build_trunk)


def model_level_config(runs: Sequence[Union[Run, str, Path]], **overrides):
    """The :class:`~support.training.TrainConfig` of the model-level ensemble of ``runs``.

    Data, seed, image size, batch size, optimiser settings and
    ``dcl_channels`` (the width of the merge conv: 512 in the paper, the
    profile's smaller width on the CPU) come from the first member (members
    of one seed ensemble together); architecture, head and loss are the
    paper's (``model_level``, ``merge``, ``cce``, class-weighted).
    ``overrides`` change any field (e.g. ``lr``).
    """
    from ..training import TrainConfig

    runs = _check_sizes(check_members(runs))
    if len(runs) < 2:
        raise EnsembleError(f"a model-level ensemble needs >= 2 members, got {len(runs)}: {runs[0].path}")
    seeds = {r.path.name: r.seed for r in runs}
    if len(set(seeds.values())) > 1 and "seed" not in overrides:
        raise EnsembleError(f"model-level members come from different seeds {seeds}; "
                            "ensemble the runs of one seed (or pass seed=...)")
    base = dict(runs[0].config["config"])
    for f in ("arch", "arch_params", "head", "loss", "loss_params"):
        base.pop(f, None)
    base["data"] = runs[0].config["experiment"]["data"]
    settings = dict(base, arch=ARCH, arch_params={"members": sorted(member_ref(r) for r in runs)},
                    head="merge", loss="cce", loss_params={})
    settings.update(overrides)
    known = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in settings.items() if k in known})


def train_model_level(runs: Sequence[Union[Run, str, Path]], force: bool = False, progress: bool = False,
                      data=None, **overrides) -> Run:
    """Train (or reuse) the model-level ensemble of ``runs``; returns its finished :class:`Run`.

    ``data``: an already loaded bundle of the members' data source (saves
    loading it again). ``overrides`` go to :func:`model_level_config`.
    """
    from ..training import train_one

    config = model_level_config(runs, **overrides)
    return Run(train_one(config, force=force, progress=progress, data=data))


def members_of(run: Run) -> List[Path]:
    """The member run folders of a model-level run (for labels and tables)."""
    refs = (run.config.get("config", {}).get("arch_params") or {}).get("members", [])
    return [resolve_member(m) for m in refs]


def is_model_level(run: Run) -> bool:
    """True for a run folder of a model-level ensemble."""
    return run.metrics.get("arch") == ARCH
