"""Input and parameter validation shared by every loss.

Every check raises at once with a message that names the loss, the value it
received and the fix, so that a wrong call never turns into a silent NaN.
Conventions: a wrong *type* (a string where a number belongs, a float tensor
where class indices belong) raises ``TypeError``; a wrong *value* or *shape*
raises ``ValueError``.

The tensor checks that need the data (finite values, target range) are
combined into one boolean reduction, so they cost one device sync per call.
Inside ``with deferred(checks):`` they cost none: the results stay on the
device in a :class:`DeferredChecks` and are read once, by
:meth:`DeferredChecks.raise_if_bad` (the training loop does so once per epoch,
so that its CUDA step never waits for the host).
"""
from __future__ import annotations

import contextlib
import contextvars
import numbers
from typing import Optional, Sequence

import torch


# ----------------------------------------------------------------------------- parameters
def number(loss: str, name: str, value, *, low: float = None, high: float = None,
           low_open: bool = False, high_open: bool = False, example: str = "") -> float:
    """``value`` as a float, refusing bools, strings, NaN and values out of range.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``.
    """
    hint = f"; pass e.g. {name}={example}" if example else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{loss}: {name} must be a real number, got {value!r} "
                        f"({type(value).__name__}){hint}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{loss}: {name} must be finite, got {value!r}{hint}")
    if low is not None and (value < low or (low_open and value == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{loss}: {name} must be {bound}, got {value!r}{hint}")
    if high is not None and (value > high or (high_open and value == high)):
        bound = f"< {high}" if high_open else f"<= {high}"
        raise ValueError(f"{loss}: {name} must be {bound}, got {value!r}{hint}")
    return value


def flag(loss: str, name: str, value) -> bool:
    """``value`` must be a real bool (``1``/``"yes"`` are refused: they hide typos)."""
    if not isinstance(value, bool):
        raise TypeError(f"{loss}: {name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def choice(loss: str, name: str, value, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{loss}: {name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def class_weight(loss: str, value) -> Optional[torch.Tensor]:
    """A per-class weight vector [K] (list, numpy array or tensor) as float64, or None."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, numbers.Number)):
        raise TypeError(f"{loss}: class_weight must be a sequence of K non-negative numbers "
                        f"(one per class), got {value!r}; pass e.g. class_weight=[0.69, 1.29, 1.30]")
    try:
        w = torch.as_tensor(value, dtype=torch.float64).detach().clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{loss}: class_weight must be a sequence of K numbers, got {value!r} ({err})") from None
    if w.ndim != 1 or w.numel() < 2:
        raise ValueError(f"{loss}: class_weight must be 1-D with one entry per class (K >= 2), "
                         f"got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"{loss}: class_weight must be finite, >= 0 and not all zero, got {w.tolist()}")
    return w


# ----------------------------------------------------------------------------- tensors
def _float_tensor(loss: str, name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{loss}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{loss}: {name} must be a floating-point tensor (raw scores), got dtype "
                        f"{x.dtype}; convert with {name}.float()")


def _labels(loss: str, name: str, t, batch: int, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{loss}: {name} must be a torch.Tensor of {what}, got {type(t).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{loss}: {name} must hold integer {what} (int64), got dtype {t.dtype}; "
                        f"use {name}.long() (and argmax first if you have one-hot targets)")
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"{loss}: {name} must have shape [B] = [{batch}], got {tuple(t.shape)}")


class NonFiniteError(ValueError):
    """Logits (or a mask) hold NaN/inf: the model diverged. The training loop stops that run only."""


class DeferredChecks:
    """The data checks of many loss calls, kept on the device and read back once.

    A normal check reads one boolean from the device per call; on CUDA that is a
    host synchronisation per step per model, which drains the launch queue.
    Under ``with deferred(checks):`` each check ORs its result into a flag on the
    device instead (no sync, shapes and dtypes are still checked at once), and
    :meth:`raise_if_bad` raises the same error types later: :class:`NonFiniteError`
    for NaN/inf inputs, ``ValueError`` for labels or masks out of range. The
    message says which loss and which check failed, not which call.
    """

    def __init__(self):
        self._flags: dict = {}  # (loss, what, error type) -> device bool tensor

    def note(self, loss: str, what: str, error: type, bad: torch.Tensor) -> None:
        key = (loss, what, error)
        seen = self._flags.get(key)
        self._flags[key] = bad.detach().clone() if seen is None else seen.logical_or_(bad.to(seen.device))

    def reset(self) -> None:
        self._flags.clear()

    def raise_if_bad(self) -> None:
        """Raise the first failed check (one device sync for all of them), then forget them."""
        if not self._flags:
            return
        keys = list(self._flags)
        first = next(iter(self._flags.values()))
        failed = torch.stack([self._flags[k].to(first.device) for k in keys]).tolist()
        self.reset()
        for (loss, what, error), bad in zip(keys, failed):
            if bad and error is NonFiniteError:
                raise NonFiniteError(f"{loss}: {what} held NaN or inf values in at least one call (checks "
                                     "deferred); the model diverged or the input is corrupt: check the "
                                     "learning rate and the data")
        for (loss, what, error), bad in zip(keys, failed):
            if bad:
                raise error(f"{loss}: {what} (checks deferred; call the loss outside deferred() to see the "
                            "values)")


_DEFERRED: contextvars.ContextVar[Optional[DeferredChecks]] = contextvars.ContextVar("deferred_checks",
                                                                                    default=None)


@contextlib.contextmanager
def deferred(checks: DeferredChecks):
    """Loss calls inside this block note their data checks in ``checks`` instead of syncing."""
    token = _DEFERRED.set(checks)
    try:
        yield checks
    finally:
        _DEFERRED.reset(token)


def _raise_nonfinite(loss: str, name: str, x: torch.Tensor) -> None:
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    raise NonFiniteError(f"{loss}: {name} contains {n_nan} NaN and {n_inf} inf value(s) out of {x.numel()}; "
                     "the model diverged or the input is corrupt: check the learning rate and the data")


def classification(loss: str, logits, target, num_weights: Optional[int] = None) -> None:
    """logits [B, K] float (raw, before softmax), target [B] int in [0, K)."""
    _float_tensor(loss, "logits", logits)
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
        raise ValueError(f"{loss}: logits must have shape [B, K] with B >= 1 and K >= 2 classes, got "
                         f"{tuple(logits.shape)}; pass raw scores (no softmax), one row per sample")
    batch, k = logits.shape
    _labels(loss, "target", target, batch, "class indices")
    if num_weights is not None and num_weights != k:
        raise ValueError(f"{loss}: class_weight has {num_weights} entries but logits have K = {k} classes; "
                         "pass one weight per class")
    nonfinite = (~torch.isfinite(logits)).any()
    out_of_range = (target < 0).any() | (target >= k).any()
    sink = _DEFERRED.get()
    if sink is not None:  # no sync: read later by sink.raise_if_bad()
        sink.note(loss, "logits", NonFiniteError, nonfinite)
        sink.note(loss, f"target values must be class indices in [0, {k - 1}] (K = {k})", ValueError, out_of_range)
        return
    if bool(nonfinite | out_of_range):  # one sync; details only on the error path
        if not torch.isfinite(logits).all():
            _raise_nonfinite(loss, "logits", logits)
        wrong = target[(target < 0) | (target >= k)]
        raise ValueError(f"{loss}: target values must be class indices in [0, {k - 1}] (K = {k}), got "
                         f"{wrong[:5].tolist()}; check the label encoding / num_classes")


def segmentation(loss: str, logits, mask) -> None:
    """logits [B, 1, H, W] float, mask [B, 1, H, W] bool or float in [0, 1]."""
    _float_tensor(loss, "logits", logits)
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"{loss}: logits must have shape [B, 1, H, W] (binary, one channel), got "
                         f"{tuple(logits.shape)}")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{loss}: mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != logits.shape:
        raise ValueError(f"{loss}: mask must have the logits' shape {tuple(logits.shape)}, got "
                         f"{tuple(mask.shape)}; add the channel axis with mask.unsqueeze(1)")
    if mask.is_complex():
        raise TypeError(f"{loss}: mask must be bool or real, got dtype {mask.dtype}")
    m = mask.to(logits.dtype)
    nonfinite = (~torch.isfinite(logits)).any()
    out_of_range = (m < 0).any() | (m > 1).any() | torch.isnan(m).any()
    sink = _DEFERRED.get()
    if sink is not None:
        sink.note(loss, "logits", NonFiniteError, nonfinite)
        sink.note(loss, "mask values must lie in [0, 1]", ValueError, out_of_range)
        return
    if bool(nonfinite | out_of_range):
        if not torch.isfinite(logits).all():
            _raise_nonfinite(loss, "logits", logits)
        raise ValueError(f"{loss}: mask values must lie in [0, 1] (0 = background, 1 = lung), got range "
                         f"[{float(m.nan_to_num(-1).min())}, {float(m.nan_to_num(2).max())}]; "
                         "binarise with mask > 0.5 or divide 0-255 masks by 255")


def embedding(loss: str, features, labels) -> None:
    """features [B, D] or [B, V, D] float, labels [B] int."""
    _float_tensor(loss, "features", features)
    if features.ndim not in (2, 3) or features.shape[0] < 1 or features.shape[-1] < 1:
        raise ValueError(f"{loss}: features must have shape [B, D] or [B, V, D] (V views), got "
                         f"{tuple(features.shape)}")
    _labels(loss, "labels", labels, features.shape[0], "class labels")
    sink = _DEFERRED.get()
    if sink is not None:
        sink.note(loss, "features", NonFiniteError, (~torch.isfinite(features)).any())
        return
    if not bool(torch.isfinite(features).all()):
        _raise_nonfinite(loss, "features", features)
