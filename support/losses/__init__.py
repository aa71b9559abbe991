"""Every loss of both studies behind one registry.

    >>> from support import losses
    >>> loss = losses.build("cal_focal", gamma=2.0, class_weight=[0.69, 1.29, 1.30])
    >>> losses.family("cal_focal"), losses.names()[:3]
    ('classification', ['cce', 'cce_entropy_reg', 'kld'])

Contracts (shared/design.md):

* classification: ``forward(logits [B, K] raw, target [B] int64) -> scalar``,
  the batch mean, optional ``class_weight`` [K] with the Keras reduction
  (1/B) sum_b w[y_b] l_b (see :mod:`.cross_entropy`);
* segmentation: ``forward(logits [B, 1, H, W], mask [B, 1, H, W]) -> scalar``;
* embedding: ``forward(features [B, D] or [B, V, D], labels [B]) -> scalar``.

``describe(name)`` prints a loss's formula, paper, defaults and their origin
(the factory docstring, the one place they are written down). "notes N.M" in
those docstrings points to section N.M of shared/papers/multiloss_ensemble.md
(the implementation notes on Rajaraman et al. 2021) unless another file is named. The table
below is the only list of losses: tests, widgets and sweeps read ``names()``.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Callable, Dict, List

from torch import nn

from ..registry import Registry
from . import calibrated, contrastive, cross_entropy, focal, hinge, segmentation

FAMILIES = ("classification", "segmentation", "embedding")

LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
_FAMILY: Dict[str, str] = {}


def _add(name: str, family: str, factory: Callable[..., nn.Module]) -> None:
    LOSSES.add(name, factory)
    _FAMILY[name] = family


# name                 family            factory (its docstring is the loss's documentation)
_add("cce",               "classification", cross_entropy.cce)
_add("cce_entropy_reg",   "classification", cross_entropy.cce_entropy_reg)
_add("kld",               "classification", cross_entropy.kld)
_add("focal",             "classification", focal.focal)
_add("hinge",             "classification", hinge.hinge)
_add("ls_cce",            "classification", cross_entropy.ls_cce)
_add("ls_focal",          "classification", focal.ls_focal)
_add("cal_cce",           "classification", calibrated.cal_cce)
_add("cal_kld",           "classification", calibrated.cal_kld)
_add("cal_focal",         "classification", calibrated.cal_focal)
_add("cal_hinge",         "classification", calibrated.cal_hinge)
_add("cal_neg_entropy",   "classification", calibrated.cal_neg_entropy)
_add("seg_bce",           "segmentation",   segmentation.seg_bce)
_add("seg_bce_dice",      "segmentation",   segmentation.seg_bce_dice)
_add("seg_focal",         "segmentation",   segmentation.seg_focal)
_add("seg_dice",          "segmentation",   segmentation.seg_dice)
_add("seg_tversky",       "segmentation",   segmentation.seg_tversky)
_add("seg_focal_tversky", "segmentation",   segmentation.seg_focal_tversky)
_add("contrastive",       "embedding",      contrastive.contrastive)
_add("triplet",           "embedding",      contrastive.triplet)
_add("supcon",            "embedding",      contrastive.supcon)


def names(family: str | None = None) -> List[str]:
    """Registered loss names, optionally only those of one family."""
    if family is None:
        return LOSSES.names()
    if family not in FAMILIES:
        raise ValueError(f"unknown loss family {family!r}; valid families: {', '.join(FAMILIES)}")
    return [n for n in LOSSES.names() if _FAMILY[n] == family]


def family(name: str) -> str:
    """``"classification"``, ``"segmentation"`` or ``"embedding"``."""
    LOSSES.get(name)  # unknown name -> ValueError listing the names
    return _FAMILY[name]


def defaults(name: str) -> Dict[str, object]:
    """The parameters ``build(name, ...)`` accepts, with their default values."""
    sig = inspect.signature(LOSSES.get(name))
    return {p.name: p.default for p in sig.parameters.values()}


def build(name: str, **params) -> nn.Module:
    """Instantiate loss ``name`` with ``params`` overriding its defaults.

    Unknown name -> ValueError listing the valid names; unknown parameter ->
    TypeError listing the accepted ones; wrong value or type -> a message that
    names the parameter, the value and the fix.
    """
    factory = LOSSES.get(name)
    accepted = defaults(name)
    unknown = [k for k in params if k not in accepted]
    if unknown:
        close = difflib.get_close_matches(unknown[0], accepted, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"loss {name!r} got unknown parameter(s) {', '.join(map(repr, unknown))}.{hint} "
                        f"Accepted: {', '.join(accepted) or '(none)'}")
    module = factory(**params)
    module.name = name
    return module


def describe(name: str) -> str:
    """Formula, paper, defaults and their origin for loss ``name`` (plain text)."""
    doc = inspect.getdoc(LOSSES.get(name)) or ""
    params = ", ".join(f"{k}={v!r}" for k, v in defaults(name).items()) or "(none)"
    return f"{name}  [{family(name)}]\n{doc}\nParameters and defaults: {params}"


__all__ = ["FAMILIES", "LOSSES", "build", "defaults", "describe", "family", "names"]
