"""ipywidgets panels. Each panel is a class that displays itself (``LossExplorer()`` as the last line
of a cell; its ipywidgets tree is ``.widget``) and has
plain methods (``update(**params)``) that work without a display, so that
tests drive them exactly as a user's slider would.

    LossExplorer   loss value and gradient vs true-class probability, with
                   loss selection and β / γ / ε / α sliders (notebook 03)
    ResultsPanel   finished runs by loss: metric bars with CIs, confusion
                   matrices, reliability, training curves, table (CSV export)
                   and Grad-CAMs of one test image (notebook 00)
"""
from .loss_explorer import LossExplorer
from .results_panel import ResultsPanel

__all__ = ["LossExplorer", "ResultsPanel"]
