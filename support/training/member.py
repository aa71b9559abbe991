"""One model being trained (:class:`Member`): model, loss, optimiser, schedule, early stopping, its run
folder and its resume state; what the loop asks of it is the same for every training mode."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import torch

from .. import artifacts, logs, losses, models
from ..rundir import RunFolder
from . import batches
from .batches import predict_probs
from .config import MONITORS, TrainConfig, init_seed
from .embedding import embed_images, knn_probs

log = logs.get("train")


def val_scores(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Dict[str, float]:
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


class Member:
    """One model being trained: its config, model, optimiser, scheduler and state."""

    def __init__(self, config: TrainConfig, run_dir: Optional[Path], device: torch.device, num_classes: int,
                 class_weight: Optional[torch.Tensor], input_stats=(0.0, 1.0), folder: Optional[RunFolder] = None):
        self.config, self.run_dir, self.device, self.folder = config, run_dir, device, folder
        torch.manual_seed(init_seed(config))  # the seed alone (paired) or the seed and the loss
        self.model = models.build(config.arch, num_classes, in_chans=1, head=config.head,
                                  dcl_channels=config.dcl_channels, **config.arch_params).to(device)
        self.model.set_input_stats(*input_stats)
        if batches.CHANNELS_LAST:  # see CHANNELS_LAST
            self.model = self.model.to(memory_format=torch.channels_last)
        params = dict(config.loss_params)
        if class_weight is not None and config.class_weights and losses.family(config.loss) == "classification":
            params["class_weight"] = class_weight.to(device)
        self.loss_fn = losses.build(config.loss, **params).to(device)
        self.projection = self.ce_fn = None
        if config.mode != "end_to_end":  # embedding losses read z = ProjectionHead(h), h = model.features(x)
            from ..models.projection import ProjectionHead

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
            self.forward = compiled(self.model)
        self.stochastic = any(isinstance(m, (torch.nn.Dropout,)) or type(m).__name__ == "StochasticDepth"
                              for m in self.model.modules())
        self.next_epoch = 0
        self.best_score = -math.inf if mode == "max" else math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.log: List[dict] = []
        self.active = True
        self.finished = False  # predictions.npz and metrics.json written (publish.finish)
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

    # the end of an epoch -------------------------------------------------
    def fail(self, epoch: int, what: str) -> None:
        """Stop this diverged run: error.json in its folder, the last good checkpoint kept."""
        self.active = False
        self.error = (f"{self.config.loss} (seed {self.config.seed}): {what} in epoch {epoch}; "
                      f"run stopped, its folder {self.run_dir} keeps the last good checkpoint. "
                      "Lower the learning rate or check the loss parameters")
        self.folder.fail(self.error, epoch)
        log.error(self.error)

    def end_epoch(self, epoch: int, x_val, y_val, k: int, amp: bool, seconds: float,
                  probs: Optional[torch.Tensor] = None) -> None:
        """Validation scores, checkpoint, schedule and early stopping of one epoch; then log.csv and last.pt."""
        train_loss = float(self.loss_sum) / max(self.seen, 1)  # the one host sync of the epoch
        if not math.isfinite(train_loss):
            self.fail(epoch, f"training loss became {train_loss}")
            return
        probs = self.val_probs(x_val, amp) if probs is None else probs  # given: computed fused with the others
        scores = val_scores(probs, y_val, k)
        with torch.no_grad():
            logits = torch.log(probs.clamp_min(1e-12))  # log-probabilities act as logits for the loss
            scores["val_loss"] = (float(self.loss_fn(logits, y_val))
                                  if losses.family(self.config.loss) == "classification" else float("nan"))
        score = scores[self.config.monitor]
        row = {"epoch": epoch, "train_loss": train_loss, **scores, "lr": self.opt.param_groups[0]["lr"],
               "seconds": seconds}
        self.log.append(row)
        warm = epoch < self.config.start_from_epoch  # warm-up: no patience counted, no LR decay
        if self.improved(score):
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.save_best()
        elif not warm:
            self.bad_epochs += 1
        if self.config.lr_schedule == "cosine":
            self.sched.step()  # by epoch, warm-up included
        elif self.sched and not warm:
            self.sched.step(score)
        self.next_epoch = epoch + 1
        if self.bad_epochs >= self.config.patience or self.next_epoch >= self.config.max_epochs:
            self.active = False
        self.folder.save_progress(self.state(), self.log)


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


def compiled(model):
    """``torch.compile`` with a safe fallback to eager on failure (first call)."""
    try:
        fn = torch.compile(model)
    except Exception as exc:  # noqa: BLE001 - any backend failure means: run eager
        log.warning(f"torch.compile unavailable ({type(exc).__name__}); running eager")
        return model
    state = {"fn": fn}

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

