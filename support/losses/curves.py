"""Analytic curves of the classification losses (notebook 03 and the loss explorer).

**Logit family.** For a true-class probability q in (0, 1) and K = 3 classes,
target 0 and logits z(q) = (log q, log((1-q)/2), log((1-q)/2)), so that
softmax(z) = (q, (1-q)/2, (1-q)/2): the two wrong classes share the remaining
mass equally. Each point is a batch of one sample. We plot the loss value and
the gradient magnitude ||dL/dz||_2 with respect to the logits (what the
optimiser sees), both in float64.

For a batch of one, the DCA accuracy is 0 or 1: for q > 1/3 the argmax is the
true class (DCA = 1 - q), below 1/3 it is a wrong class (DCA = (1 - q)/2), so
the calibrated losses have a kink at q = 1/3.

**DCA toy batch.** 16 samples, 3 classes, 12 correct (accuracy 0.75), and
the logits multiplied by a scale s (a temperature 1/s): s sweeps the batch
from under-confident to over-confident without changing its accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .. import losses as _losses

#: Base losses share a colour with their calibrated variant (dashed).
COLOURS = {"cce": "C0", "cce_entropy_reg": "C1", "kld": "C7", "focal": "C2", "hinge": "C3",
           "ls_cce": "C4", "ls_focal": "C5", "neg_entropy": "C6"}


def family_logits(q: np.ndarray) -> torch.Tensor:
    """Logits [N, 3] (float64) whose softmax is (q, (1-q)/2, (1-q)/2); target class 0."""
    q = torch.as_tensor(np.asarray(q, dtype=np.float64))
    if ((q <= 0) | (q >= 1)).any():
        raise ValueError(f"true-class probabilities must lie in (0, 1), got range [{float(q.min())}, {float(q.max())}]")
    rest = torch.log((1 - q) / 2)
    return torch.stack([torch.log(q), rest, rest], dim=1)


@dataclass
class Curves:
    """Loss value and gradient norm per loss, sampled at true-class probabilities ``q``."""

    q: np.ndarray
    value: Dict[str, np.ndarray] = field(default_factory=dict)
    grad: Dict[str, np.ndarray] = field(default_factory=dict)
    params: Dict[str, dict] = field(default_factory=dict)


LossSpec = Union[None, Sequence[str], Mapping[str, Mapping]]


def _specs(losses: LossSpec) -> Dict[str, dict]:
    if losses is None:
        return {n: {} for n in _losses.names("classification")}
    if isinstance(losses, str):
        raise TypeError(f"losses must be a list of names or a dict name -> params, got the string {losses!r}; "
                        f"use [{losses!r}]")
    specs = {n: dict(p or {}) for n, p in losses.items()} if isinstance(losses, Mapping) else {n: {} for n in losses}
    for n in specs:
        if _losses.family(n) != "classification":
            raise ValueError(f"loss curves need classification losses, {n!r} is {_losses.family(n)}; "
                             f"choose from {', '.join(_losses.names('classification'))}")
    return specs


def loss_curves(losses: LossSpec = None, n_points: int = 199, q_min: float = 0.005,
                q_max: float = 0.995) -> Curves:
    """Value and ||dL/dz|| against the true-class probability for each loss (see module docstring).

    ``losses``: None (every classification loss), a list of names, or a dict
    name -> build parameters.
    """
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an int >= 2, got {n_points!r}")
    q = np.linspace(q_min, q_max, n_points)
    z_all = family_logits(q)
    target = torch.zeros(1, dtype=torch.long)
    curves = Curves(q=q)
    for name, params in _specs(losses).items():
        loss = _losses.build(name, **params)
        values, grads = np.empty(n_points), np.empty(n_points)
        for i in range(n_points):
            z = z_all[i:i + 1].clone().requires_grad_(True)
            value = loss(z, target)
            (g,) = torch.autograd.grad(value, z)
            values[i], grads[i] = value.item(), g.norm().item()
        curves.value[name], curves.grad[name] = values, grads
        curves.params[name] = params
    return curves


def _style(name: str) -> dict:
    base = name[4:] if name.startswith("cal_") else name
    style = {"color": COLOURS.get(base, "k"), "linestyle": "--" if name.startswith("cal_") else "-", "lw": 1.6}
    if base == "kld":  # identical to cce for one-hot targets: drawn dotted on top of it
        style.update(linestyle=":", lw=2.4)
    elif name == "cal_cce":  # wide, so it stays visible under cal_kld and cal_neg_entropy
        style.update(lw=3.0)
    elif name == "cal_neg_entropy":  # within 0.001 * H of cal_cce: dash-dot on top
        style.update(linestyle="-.")
    return style


def _label(name: str) -> str:
    return f"{name} (= {name.replace('kld', 'cce')})" if "kld" in name else name


def plot_loss_curves(curves: Curves, fig=None, source: str = "analytic"):
    """Loss value and gradient norm against q: base losses (top row), calibrated ones (bottom row).

    Rows are dropped when no loss of that kind is in ``curves``. Returns the figure.
    """
    from ..plots import titled

    rows = [[n for n in curves.value if not n.startswith("cal_")], [n for n in curves.value if n.startswith("cal_")]]
    rows = [r for r in rows if r] or [[]]
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(11, 3.6 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), 2, squeeze=False))
    for (ax_v, ax_g), row in zip(axes, rows):
        for name in row:
            ax_v.plot(curves.q, curves.value[name], label=_label(name), **_style(name))
            ax_g.plot(curves.q, curves.grad[name], label=_label(name), **_style(name))
        kind = "+ β·DCA (calibrated)" if row and row[0].startswith("cal_") else "base losses"
        ax_v.set(ylabel="loss L", title=f"loss value — {kind}",
                 ylim=(bottom_zero({n: curves.value[n] for n in row}), None))
        ax_g.set(ylabel="gradient norm ||dL/dz||", title=f"gradient magnitude — {kind}")
        for ax in (ax_v, ax_g):
            ax.axvline(1 / 3, color="0.75", lw=0.8, zorder=0)
            ax.set_xlabel("true-class probability q")
            ax.grid(alpha=0.3)
        if row:
            ax_g.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    fig.suptitle(titled("Classification losses vs true-class probability (K = 3, one sample)", source))
    return fig


def bottom_zero(values: Mapping[str, np.ndarray]) -> Optional[float]:
    """0 unless some curve dips below it (the neg-entropy term can)."""
    low = min((float(v.min()) for v in values.values()), default=0.0)
    return min(0.0, float(low) * 1.05)


# ----------------------------------------------------------------------------- DCA toy batch
def dca_toy_batch(seed: int = 0, batch: int = 16, classes: int = 3, n_wrong: int = 4, margin: float = 2.0):
    """Logits [batch, classes] (float64) and targets with exactly ``batch - n_wrong`` correct."""
    g = torch.Generator().manual_seed(seed)
    target = torch.arange(batch) % classes
    logits = 0.5 * torch.randn(batch, classes, generator=g, dtype=torch.float64)
    wrong = torch.arange(batch) >= batch - n_wrong
    winner = torch.where(wrong, (target + 1) % classes, target)
    logits[torch.arange(batch), winner] += margin  # 0.5-sd noise cannot overturn a +2 margin here
    return logits, target


def dca_effect(scales: Optional[np.ndarray] = None, seed: int = 0, beta: float = 1.0) -> Dict[str, np.ndarray]:
    """Sweep the logit scale s of the toy batch: accuracy, confidence, DCA, losses and dL/ds."""
    from .calibrated import dca

    scales = np.logspace(-1, 1.2, 121) if scales is None else np.asarray(scales, dtype=np.float64)
    logits, target = dca_toy_batch(seed)
    variants = {"cce": _losses.build("cce"),
                "cal_cce": _losses.build("cal_cce", beta=beta),
                "cal_cce (dca_grad=False)": _losses.build("cal_cce", beta=beta, dca_grad=False)}
    out = {"scale": scales, "accuracy": np.empty(len(scales)), "confidence": np.empty(len(scales)),
           "dca": np.empty(len(scales))}
    for key in variants:
        out[f"loss:{key}"], out[f"dlds:{key}"] = np.empty(len(scales)), np.empty(len(scales))
    for i, s in enumerate(scales):
        p = torch.softmax(logits * s, dim=1)
        out["accuracy"][i] = (p.argmax(1) == target).double().mean().item()
        out["confidence"][i] = p.max(1).values.mean().item()
        out["dca"][i] = dca(logits * s, target).item()
        for key, loss in variants.items():
            st = torch.tensor(float(s), dtype=torch.float64, requires_grad=True)
            value = loss(logits * st, target)
            (g,) = torch.autograd.grad(value, st)
            out[f"loss:{key}"][i], out[f"dlds:{key}"][i] = value.item(), g.item()
    return out


def plot_dca_effect(effect: Mapping[str, np.ndarray], fig=None, source: str = "analytic"):
    """Three panels: accuracy / confidence / DCA, loss, and dL/ds against the logit scale."""
    from ..plots import titled

    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(14, 4.2), layout="constrained")
    ax_c, ax_l, ax_g = fig.subplots(1, 3)
    s = effect["scale"]
    ax_c.plot(s, effect["accuracy"], "k-", label="batch accuracy")
    ax_c.plot(s, effect["confidence"], "C0-", label="mean max-probability")
    ax_c.plot(s, effect["dca"], "C3--", label="DCA = |acc − conf|")
    ax_c.set(ylabel="value", title="accuracy, confidence and DCA")
    styles = {"cce": ("C0", "-"), "cal_cce": ("C3", "--"), "cal_cce (dca_grad=False)": ("C2", ":")}
    for key, (colour, ls) in styles.items():
        ax_g.plot(s, effect[f"dlds:{key}"], color=colour, ls=ls, lw=1.8, label=key)
        if key == "cal_cce (dca_grad=False)":
            continue  # its value equals cal_cce's; only its gradient differs
        loss = effect[f"loss:{key}"]
        i = int(np.argmin(loss))
        ax_l.plot(s, loss, color=colour, ls=ls, lw=1.8,
                  label=f"{key}: min at s = {s[i]:.2f} (conf {effect['confidence'][i]:.2f})")
        ax_l.plot(s[i], loss[i], "o", color=colour)
    ax_l.set(ylabel="loss", title="loss (value of both cal_cce variants)")
    ax_g.axhline(0, color="0.6", lw=0.8)
    ax_g.set(ylabel="dL/ds", title="gradient w.r.t. the logit scale")
    for ax in (ax_c, ax_l, ax_g):
        ax.set_xscale("log")
        ax.set_xlabel("logit scale s (1/temperature)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_l.set_ylim(top=float(np.percentile(effect["loss:cal_cce"], 80)))
    fig.suptitle(titled("Effect of the DCA term on a toy batch (16 samples, 3 classes, accuracy 0.75)", source))
    return fig
