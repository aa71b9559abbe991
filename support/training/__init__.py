"""One training loop for every loss: ``train_one(config)`` and ``train_many(configs)``.

Modules, one job each: :mod:`.config` (TrainConfig, validation, run key), :mod:`.batches` (device,
images, batches, prediction), :mod:`.member` (one model being trained), :mod:`.embedding` (kNN,
linear probe), :mod:`.loop` (the loop, with ``on_epoch_end``/``on_finish`` hooks), :mod:`.publish`
(predictions and metrics of a finished run).

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

Run folder ``runs/<key>/`` (contract, see ../shared/design.md; its life cycle -- lock, staging,
resume state, publish -- is :mod:`support.rundir`, shared with the segmentation loop): ``config.json``
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

from ..rundir import WAIT_ENV, RunLocked, git_sha, is_finished, run_lock
from .batches import (CHANNELS_LAST, augment_batch, balanced_class_weights, eval_batch, native_bf16, precision,
                      predict_many, predict_probs, prepare_batch, resolve_device, to_device_images,
                      train_input_stats)
from .config import (EXECUTION_FIELDS, INITS, LR_SCHEDULES, MODES, MONITORS, OPTIMIZERS, TrainConfig, TrainingError,
                     init_seed)
from .embedding import KNN_K, KNN_REFERENCE, embed_images, fit_linear_head, knn_probs
from .loop import run_dir_for, train_many, train_one
from .member import Member, val_scores

_Member = Member  # its name before the package split, still used by tests on other branches
# CHANNELS_LAST above is a copy for reading; to switch the layout set support.training.batches.CHANNELS_LAST.

__all__ = [
    "CHANNELS_LAST", "EXECUTION_FIELDS", "INITS", "KNN_K", "KNN_REFERENCE", "LR_SCHEDULES", "MODES", "MONITORS",
    "OPTIMIZERS", "WAIT_ENV", "Member", "RunLocked", "TrainConfig", "TrainingError", "augment_batch",
    "balanced_class_weights", "embed_images", "eval_batch", "fit_linear_head", "git_sha", "init_seed",
    "is_finished", "knn_probs", "native_bf16", "precision", "predict_many", "predict_probs", "prepare_batch",
    "resolve_device", "run_dir_for", "run_lock", "to_device_images", "train_input_stats", "train_many",
    "train_one", "val_scores",
]
