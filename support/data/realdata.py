"""Registers the local real-data sources; imported by :mod:`support.data.core` on first use.

``kermany`` (:mod:`.kermany`), ``pneumoniamnist`` (:mod:`.pneumoniamnist`),
``imagefolder`` and ``csv`` (:mod:`.folders`), ``lungmasks`` (:mod:`.lungmasks`: images with lung
masks, for the U-Net of :mod:`support.segmentation`). Nothing is ever downloaded.
"""
from . import folders, kermany, lungmasks, pneumoniamnist  # noqa: F401  (import = registration)
