"""Registers the local real-data sources; imported by :mod:`support.data.core` on first use.

``kermany`` (:mod:`.kermany`), ``pneumoniamnist`` (:mod:`.pneumoniamnist`),
``imagefolder`` and ``csv`` (:mod:`.folders`). Nothing is ever downloaded.
"""
from . import folders, kermany, pneumoniamnist  # noqa: F401  (import = registration)
