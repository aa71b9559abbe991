"""Classifiers on lung-cropped films: the "with and without the crop" comparison of notebook 05.

:func:`train_cropped` trains (or reads, when finished) one classifier per seed with a profile's
training settings on ``load(**data, lung_crop=...)``: the same films, labels and ids as the
uncropped runs, each cropped to its lung box. The run folders are ordinary ``runs/<key>/``
classification runs; ``lung_crop`` is part of their data, hence of their key, and
:attr:`support.runs.Run.label` marks them ``"<loss> · lung crop"``, so the loss tables and the
paired tests of :mod:`support.compare` set them beside the uncropped runs of the same loss.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from .. import profiles
from ..data import load
from ..training import TrainConfig, is_finished, run_dir_for, train_one
from .crop import make_lung_masks


def train_cropped(profile: str, data: dict, loss: str = "cce", seeds: Optional[Sequence[int]] = None,
                  lung_crop=None, runs_dir=None, force: bool = False, progress: bool = True) -> List[Path]:
    """Run folders of ``loss`` trained on the lung crop of ``data`` (a ``support.data.load`` dict).

    ``seeds``: the profile's by default. ``lung_crop``: by default the AND of the U-Nets of the
    segmentation profile of the same name (what notebook 02 trained; its masks are made here when
    missing, :func:`make_lung_masks`). ``force`` retrains the classifiers only (not the U-Nets,
    not the masks, not the crop cache).
    """
    lung_crop = {"seg_profile": profile} if lung_crop is None else lung_crop
    cropped = {**data, "lung_crop": lung_crop}
    source = dict(data)
    make_lung_masks(source.pop("name"), lung_crop, runs_dir=runs_dir, verbose=progress, **source)
    seeds = profiles.get(profile)["seeds"] if seeds is None else seeds
    configs = [TrainConfig.from_profile(profile, loss=loss, seed=int(s), data=cropped) for s in seeds]
    todo = [c for c in configs if force or not is_finished(run_dir_for(c, runs_dir))]
    bundle = load(**cropped, verbose=progress) if todo else None  # the crop is loaded once for all seeds
    return [train_one(c, runs_dir=runs_dir, force=force, progress=progress, data=bundle) for c in configs]
