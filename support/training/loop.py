"""The one training loop: ``train_one(config)`` and ``train_many(configs)`` (see the package docstring).

Hooks: ``on_epoch_end(member, epoch)`` runs after each member's epoch is saved (``log.csv``,
``last.pt``), ``on_finish(member)`` after its run folder is published. Raising from either stops
the loop as a kill would at that point (the tests use this to interrupt runs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import artifacts, fused, logs, paths
from ..data import load as load_data
from ..losses._checks import DeferredChecks, NonFiniteError, deferred
from ..rundir import RunFolder, git_sha, is_finished
from . import batches
from .batches import (augment_batch, balanced_class_weights, precision, predict_many, prepare_batch,
                      resolve_device, to_device_images, train_input_stats)
from .config import TrainConfig, TrainingError
from .embedding import KNN_REFERENCE
from .member import Member, compiled
from .publish import finish_all

log = logs.get("train")

EpochHook = Callable[[Member, int], None]
FinishHook = Callable[[Member], None]


def run_dir_for(config: TrainConfig, runs_dir=None) -> Path:
    return paths.inside(Path(runs_dir) if runs_dir else paths.runs_dir(), config.key())


def train_one(config: TrainConfig, runs_dir=None, force: bool = False, progress: bool = True,
              data=None, on_epoch_end: Optional[EpochHook] = None, on_finish: Optional[FinishHook] = None) -> Path:
    """Train one model (or return its folder if already finished) and return ``runs/<key>``.

    ``force=True`` retrains into a staging folder and replaces the finished
    one only when the new run has finished. Raises :class:`TrainingError`
    when the run fails (NaN loss, ...), leaving earlier results untouched.
    """
    return train_many([config], runs_dir=runs_dir, force=force, progress=progress, data=data,
                      on_epoch_end=on_epoch_end, on_finish=on_finish)[0]


def train_many(configs: Sequence[TrainConfig], runs_dir=None, force: bool = False, progress: bool = True,
               data=None, on_epoch_end: Optional[EpochHook] = None,
               on_finish: Optional[FinishHook] = None) -> List[Path]:
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
    hooks = _Hooks(on_epoch_end or (lambda m, epoch: None), on_finish or (lambda m: None))
    for idx in groups.values():
        errors += _train_group([configs[i] for i in idx], [dirs[i] for i in idx], force, progress, data, hooks)
    if errors:
        raise TrainingError("; ".join(errors))
    return dirs


@dataclasses.dataclass
class _Hooks:
    on_epoch_end: EpochHook
    on_finish: FinishHook


def _finished_but_broken(run_dir: Path) -> Optional[str]:
    """Why a finished run folder cannot be read back (truncated, foreign, older format), or None."""
    from .. import runs  # runs reads run folders with support.training's models: imported when needed

    try:
        runs.Run(run_dir).check()
    except artifacts.ArtifactError as exc:
        return (f"finished run folder {run_dir} is broken ({exc}); it was not retrained and is left out "
                "of every table. Recompute it with force=True (./run_all.sh --force) or delete the folder")
    return None


@dataclasses.dataclass
class _GroupData:
    """What every member of a lockstep group trains and validates on, resized on the device once."""

    bundle: object
    device: torch.device
    size: int
    k: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor  # the early-stopping half of val
    y_val: torch.Tensor
    weights: Optional[torch.Tensor]
    input_stats: tuple
    amp: bool


def _group_data(configs: Sequence[TrainConfig], bundle, device: torch.device) -> _GroupData:
    """The group's tensors, with a clear error for data no classifier can train on."""
    first = configs[0]
    k = bundle.num_classes
    tr, va = bundle.splits["train"], bundle.splits["val"]
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
    # Early stopping and the checkpoint choice see only the first validation half; the second is kept
    # for what is fitted after training (top-K, ensemble weights, temperature; support.data.halves).
    stop = torch.from_numpy(np.flatnonzero(bundle.val_half() == 0))
    return _GroupData(
        bundle=bundle, device=device, size=size, k=k, x_train=x_train, y_train=tr.labels.to(device),
        x_val=to_device_images(va.images[stop], size, device), y_val=va.labels[stop].to(device),
        weights=balanced_class_weights(tr.labels, k) if any(c.class_weights for c in configs) else None,
        input_stats=train_input_stats(x_train), amp=precision(first, device) == "bf16")


def _open_member(config: TrainConfig, folder: RunFolder, g: _GroupData) -> Member:
    """A member in its claimed folder: resumed from ``last.pt`` when there is one; config.json written."""
    m = Member(config, folder.path, g.device, g.k, g.weights, g.input_stats, folder=folder)
    if config.mode == "two_stage":  # a fixed, seeded subset of train: the kNN reference of each epoch
        gen = torch.Generator().manual_seed(config.seed)
        ref = torch.randperm(len(g.y_train), generator=gen)[:KNN_REFERENCE].to(g.device)
        m.reference = (g.x_train[ref], g.y_train[ref])
    state = folder.resume_state(g.device)
    if state is not None:
        m.restore(state)
        log.info(f"resuming {config.loss} (seed {config.seed}) at epoch {m.next_epoch} from {folder.path / 'last.pt'}")
    folder.write_config({"config": dataclasses.asdict(config), "experiment": config.experiment(),
                         "key": config.key(), "git_sha": git_sha(), "torch": torch.__version__,
                         "device": str(g.device), "precision": "bf16" if g.amp else "fp32",
                         "data_source": g.bundle.source, "classes": list(g.bundle.classes)})
    return m


def _train_group(configs, dirs, force, progress, data, hooks: _Hooks) -> List[str]:
    first = configs[0]
    device = resolve_device(first.device)
    bundle = data if data is not None else load_data(**first.data, verbose=progress)
    g = _group_data(configs, bundle, device)
    members = []
    with contextlib.ExitStack() as stack:
        for c, d in zip(configs, dirs):
            folder = RunFolder(d, force)
            stack.enter_context(folder.lock())
            if folder.claim():  # else finished by the process we waited for (the lock's wait)
                members.append(_open_member(c, folder, g))

        max_epochs = max(c.max_epochs for c in configs)
        start = min((m.next_epoch for m in members if m.active), default=max_epochs)
        label = ", ".join(c.loss for c in configs)
        bar = tqdm(range(start, max_epochs), desc=f"{label} (seed {first.seed})", disable=not progress,
                   leave=True, unit="epoch")
        for epoch in bar:
            todo = [m for m in members if m.active and m.next_epoch == epoch and epoch < m.config.max_epochs]
            if not todo:
                continue
            elapsed = _train_epoch(todo, epoch, g, first)
            ok = _checked(todo, epoch, elapsed)
            plain = [m for m in ok if m.config.mode != "two_stage"]  # two-stage: a kNN score of its own
            val_probs = dict(zip(plain, predict_many([m.model for m in plain], g.x_val, g.amp, first.fuse)))
            for m in ok:
                m.end_epoch(epoch, g.x_val, g.y_val, g.k, g.amp, elapsed, val_probs.get(m))
                hooks.on_epoch_end(m, epoch)
            # a run that stopped early is published now, not when the last member of its group stops
            _publish([m for m in ok if not m.active and not m.error], g, hooks)
            shown = todo[0].log[-1] if todo[0].log else {}
            bar.set_postfix(loss=f"{shown.get('train_loss', float('nan')):.3f}",
                            val_mcc=f"{shown.get('val_mcc', float('nan')):.3f}",
                            active=sum(m.active for m in members))
        bar.close()
        _publish([m for m in members if not m.error and not m.finished], g, hooks)
    return [m.error for m in members if m.error]


def _publish(ms: Sequence[Member], g: _GroupData, hooks: _Hooks) -> None:
    finish_all(ms, g.bundle, g.size, g.device, g.amp)
    for m in ms:
        hooks.on_finish(m)


def _train_epoch(todo: Sequence[Member], epoch: int, g: _GroupData, first: TrainConfig) -> float:
    """One pass over the training images, every member of ``todo`` stepping on each batch; returns the
    seconds per member. The batch order and augmentation come from a generator seeded by (seed, epoch)."""
    n, device = len(g.y_train), g.device
    gen = torch.Generator().manual_seed(first.seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen).to(device)  # one host-to-device copy per epoch
    t0 = time.perf_counter()
    for m in todo:
        m.train()
        m.loss_sum.zero_()
        m.checks = DeferredChecks()  # the loss input checks of this epoch, read at its end
        m.seen = 0
    steps = [perm[s:s + first.batch_size] for s in range(0, n, first.batch_size)]
    if len(steps) > 1 and len(steps[-1]) < 2:  # BatchNorm cannot train on one sample
        steps = steps[:-1]
    # Members that can be fused step as one module this epoch (support.fused); the others alone.
    groups, alone = fused.partition(todo) if first.fuse else ([], todo)
    steppers = [fused.FusedStep(grp, batches.CHANNELS_LAST, compiled if first.compile else None) for grp in groups]
    for m in (m for grp in groups for m in grp):
        m.fused_epochs += 1

    def loss_of(m, out, y, count):
        """Member m's loss on its outputs (None once it diverged); sums its epoch loss on the device."""
        try:
            with deferred(m.checks):  # checks stay on the device: no host sync per step
                loss = m.compute_loss(out, y)
        except NonFiniteError as exc:  # this run diverged: stop it, the others go on
            m.fail(epoch, f"training loss became non-finite ({exc})")
            return None
        m.loss_sum += loss.detach() * count
        m.seen += count
        return loss

    for step, idx in enumerate(steps):
        x = prepare_batch(g.x_train[idx])
        if first.augment:
            x = augment_batch(x, gen)
        y = g.y_train[idx]
        for s in steppers:
            s.step(x, g.amp, lambda m, logits: loss_of(m, (logits, None), y, len(idx)))
        for m in alone:
            if not m.active:  # diverged earlier in this epoch
                continue
            if m.stochastic:
                torch.manual_seed(m.config.seed * 7919 + epoch * 100_003 + step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=g.amp):
                out = m.outputs(x)
            loss = loss_of(m, out, y, len(idx))
            if loss is None:
                continue
            m.opt.zero_grad(set_to_none=True)
            loss.backward()
            m.opt.step()
    for s in steppers:  # weights, BatchNorm buffers and optimiser states back into the members
        s.split()
    if device.type == "cuda":  # let the queued steps finish: the epoch's true seconds
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / max(len(todo), 1)


def _checked(todo: Sequence[Member], epoch: int, elapsed: float) -> List[Member]:
    """The members still active after the epoch's deferred loss input checks (one sync each)."""
    ok = []
    for m in todo:
        if m.active:
            m.train_seconds += elapsed
            try:
                m.checks.raise_if_bad()
            except NonFiniteError as exc:  # this run diverged: stop it, the others go on
                m.fail(epoch, f"training loss became non-finite ({exc})")
                continue
            ok.append(m)
    return ok
