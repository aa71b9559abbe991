"""The loss explorer works without a display: moving a slider changes the plotted data."""
from __future__ import annotations

import numpy as np
import pytest

from support.widgets import LossExplorer
from support.widgets.loss_explorer import SLIDERS


@pytest.fixture(scope="module")
def explorer():
    return LossExplorer(losses=["cce", "focal", "ls_focal", "cce_entropy_reg", "cal_cce"], n_points=15)


# slider key -> (new value, the loss whose curve must move, its parameter)
MOVES = {
    "gamma": (0.5, "focal", "gamma"),
    "epsilon": (0.4, "ls_focal", "epsilon"),
    "alpha": (0.3, "focal", "alpha"),
    "beta_dca": (3.0, "cal_cce", "beta"),
    "beta_entropy": (0.5, "cce_entropy_reg", "beta"),
}


def test_every_slider_is_exercised():
    assert set(MOVES) == set(SLIDERS)


@pytest.mark.parametrize("key", list(MOVES))
def test_moving_a_slider_changes_the_plotted_curve(explorer, key):
    value, loss, param = MOVES[key]
    before_value = explorer.curves.value[loss].copy()
    before_png = explorer.png
    untouched = explorer.curves.value["cce"].copy()
    start = explorer.sliders[key].value
    explorer.sliders[key].value = value  # what a user's drag does
    try:
        assert explorer.curves.params[loss][param] == value
        assert np.abs(explorer.curves.value[loss] - before_value).max() > 1e-3
        np.testing.assert_array_equal(explorer.curves.value["cce"], untouched)  # cce has no such parameter
        assert explorer.png != before_png and explorer.png.startswith(b"\x89PNG")
    finally:
        explorer.update(**{key: start})


def test_update_sets_widgets_and_redraws_once(explorer):
    explorer.update(losses=["hinge", "cal_hinge"], beta_dca=0.0)
    try:
        assert set(explorer.curves.value) == {"hinge", "cal_hinge"}
        assert tuple(explorer.select.value) == ("hinge", "cal_hinge")
        assert explorer.sliders["beta_dca"].value == 0.0
        # beta = 0 removes the DCA term: cal_hinge coincides with hinge
        np.testing.assert_allclose(explorer.curves.value["cal_hinge"], explorer.curves.value["hinge"])
    finally:
        explorer.update(losses=["cce", "focal", "ls_focal", "cce_entropy_reg", "cal_cce"], beta_dca=1.0)


def test_selecting_losses_in_the_widget_changes_the_curves(explorer):
    explorer.select.value = ("kld",)
    try:
        assert list(explorer.curves.value) == ["kld"]
    finally:
        explorer.update(losses=["cce", "focal", "ls_focal", "cce_entropy_reg", "cal_cce"])


def test_widget_tree_and_status(explorer):
    import ipywidgets

    assert isinstance(explorer.widget, ipywidgets.VBox)
    assert "gamma=" in explorer._status.value


@pytest.mark.parametrize("params, match", [
    ({"gama": 1.0}, r"unknown key\(s\) \['gama'\]; valid keys: losses, beta_dca"),
    ({"gamma": 9.0}, r"gamma \(γ \(focal\)\) must be a number in \[0.0, 5.0\], got 9.0"),
    ({"epsilon": "0.1"}, r"epsilon .* must be a number"),
    ({"losses": ["seg_bce"]}, r"classification losses only; got \['seg_bce'\]"),
])
def test_bad_updates_are_refused(explorer, params, match):
    with pytest.raises(ValueError, match=match):
        explorer.update(**params)


def test_the_object_displays_as_its_widget(explorer):
    """``LossExplorer()`` as the last line of a cell renders the panel (IPython's formatter, as Jupyter calls it)."""
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(explorer)
    view = data["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == explorer.widget.model_id
