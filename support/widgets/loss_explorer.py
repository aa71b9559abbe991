"""Interactive explorer of the classification losses (notebook 03).

    explorer = LossExplorer()        # in a notebook: the last line of a cell displays it
    explorer.update(gamma=0.5, losses=["cce", "focal"])   # same as moving the widgets
    explorer.curves.value["focal"]   # the plotted data (numpy arrays)

The curves are those of :mod:`support.losses.curves` (K = 3, one sample,
loss and ||dL/dz|| against the true-class probability). The figure is drawn
with a pyplot-free matplotlib ``Figure`` and shown as a PNG in an
``ipywidgets.Image``, so the explorer works the same with or without a
display and leaves no pyplot state behind.
"""
from __future__ import annotations

import io
import numbers
from typing import Dict, Iterable, Optional

import ipywidgets as W
from matplotlib.figure import Figure

from .. import losses as _losses
from ..losses import curves as _curves
from .base import Panel

#: Slider key -> (label, min, max, step, start value, loss parameter it sets).
SLIDERS = {
    "beta_dca":     ("β (DCA weight)",    0.0, 5.0, 0.1, 1.0, "beta of every cal_* loss"),
    "beta_entropy": ("β (entropy reg.)",  0.0, 5.0, 0.1, 2.0, "beta of cce_entropy_reg"),
    "gamma":        ("γ (focal)",         0.0, 5.0, 0.1, 2.0, "gamma of focal, ls_focal, cal_focal"),
    "epsilon":      ("ε (smoothing)",     0.0, 0.9, 0.01, 0.2, "epsilon of ls_cce, ls_focal"),
    "alpha":        ("α (focal scale)",   0.05, 2.0, 0.05, 1.0, "alpha of focal, ls_focal, cal_focal"),
}
DEFAULT_LOSSES = ("cce", "focal", "hinge", "ls_cce", "cal_cce")


class LossExplorer(Panel):
    """Pick losses and move β, γ, ε, α; the loss and gradient curves update.

    Displays itself (last line of a cell); ``.widget`` is the panel; ``.sliders`` (key -> FloatSlider, keys of
    :data:`SLIDERS`) and ``.select`` (loss choice) its controls; ``.curves``
    the data last plotted (:class:`support.losses.curves.Curves`);
    ``.figure`` the matplotlib figure; ``.png`` the bytes shown.
    """

    def __init__(self, losses: Iterable[str] = DEFAULT_LOSSES, n_points: int = 101, **params):
        self.n_points = n_points
        options = _losses.names("classification")
        self.select = W.SelectMultiple(options=options, value=(), rows=len(options), description="losses")
        self.sliders: Dict[str, W.FloatSlider] = {
            key: W.FloatSlider(value=start, min=lo, max=hi, step=step, description=label, tooltip=what,
                               continuous_update=False, style={"description_width": "110px"},
                               layout=W.Layout(width="360px"))
            for key, (label, lo, hi, step, start, what) in SLIDERS.items()
        }
        self._image = W.Image(format="png", layout=W.Layout(max_width="100%"))
        self._status = W.HTML()
        self.figure = Figure(figsize=(10.5, 6.6), layout="constrained")
        self.curves: Optional[_curves.Curves] = None
        self.png = b""
        self._hold = True
        self.update(losses=list(losses), **params)
        self._hold = False
        for w in (self.select, *self.sliders.values()):
            w.observe(lambda _change: self._redraw(), names="value")
        controls = W.VBox([*self.sliders.values(), self._status])
        self.widget = W.VBox([W.HBox([self.select, controls]), self._image])

    # ------------------------------------------------------------------ state
    @property
    def values(self) -> Dict[str, float]:
        """Current slider values by key (see :data:`SLIDERS`)."""
        return {key: s.value for key, s in self.sliders.items()}

    @property
    def losses(self):
        return list(self.select.value)

    def params_for(self, name: str) -> Dict[str, float]:
        """The build parameters the sliders give loss ``name``."""
        accepted, v = _losses.defaults(name), self.values
        params = {}
        if "beta" in accepted:
            params["beta"] = v["beta_dca"] if name.startswith("cal_") else v["beta_entropy"]
        for key in ("gamma", "epsilon", "alpha"):
            if key in accepted:
                params[key] = v[key]
        return params

    # ------------------------------------------------------------------ actions
    def update(self, **params) -> _curves.Curves:
        """Set ``losses`` and/or slider values (keys of :data:`SLIDERS`), then redraw once."""
        unknown = [k for k in params if k != "losses" and k not in SLIDERS]
        if unknown:
            raise ValueError(f"LossExplorer.update got unknown key(s) {unknown}; valid keys: losses, "
                             f"{', '.join(SLIDERS)}")
        for key, value in params.items():
            if key != "losses":
                label, lo, hi = SLIDERS[key][:3]
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or not lo <= value <= hi:
                    raise ValueError(f"{key} ({label}) must be a number in [{lo}, {hi}], got {value!r}")
        held, self._hold = self._hold, True
        try:
            if "losses" in params:
                chosen = params["losses"]
                if isinstance(chosen, str):
                    chosen = [chosen]
                bad = [n for n in chosen if n not in self.select.options]
                if bad:
                    raise ValueError(f"LossExplorer plots classification losses only; got {bad}. "
                                     f"Valid: {', '.join(self.select.options)}")
                self.select.value = tuple(chosen)
            for key, value in params.items():
                if key != "losses":
                    self.sliders[key].value = float(value)
        finally:
            self._hold = held
        return self._redraw(force=True)

    def _redraw(self, force: bool = False):
        if self._hold and not force:
            return self.curves
        specs = {name: self.params_for(name) for name in self.losses}
        self.curves = _curves.loss_curves(specs, n_points=self.n_points)
        self.figure.clear()
        _curves.plot_loss_curves(self.curves, fig=self.figure)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=90)
        self.png = self._image.value = buffer.getvalue()
        shown = "; ".join(f"<b>{n}</b> {', '.join(f'{k}={v:g}' for k, v in p.items()) or '(no parameters)'}"
                          for n, p in specs.items())
        self._status.value = f"<small>{shown or 'select at least one loss'}</small>"
        return self.curves
