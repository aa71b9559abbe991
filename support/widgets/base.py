"""``Panel``: what makes a panel object display itself as the last expression of a cell."""
from __future__ import annotations


class Panel:
    """A panel whose ``.widget`` is the ipywidgets tree; the object renders as that widget.

    ``_repr_mimebundle_`` is IPython's display hook (ipywidgets 8 widgets implement it), so ``ResultsPanel()``
    on the last line of a cell shows the panel, as ``ResultsPanel().widget`` and ``display(panel)`` do.
    """

    widget = None  # set by the subclass's __init__

    def _repr_mimebundle_(self, **kwargs):
        if self.widget is None:
            raise RuntimeError(f"{type(self).__name__} has no widget yet; its __init__ must set self.widget")
        return self.widget._repr_mimebundle_(**kwargs)
