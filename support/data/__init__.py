"""Data sources behind one call: ``support.data.load(name, **params)``.

Sources (registry ``SOURCES``): ``phantom`` (default, generated), ``kermany``,
``pneumoniamnist``, ``imagefolder``, ``csv`` and ``nodules``. See
:mod:`support.data.core` for caching and parameter checking, :mod:`support.data.lungcrop`
for ``lung_crop`` (which only reads masks: ``support.segmentation.make_lung_masks`` writes them).
"""
from .containers import CXR_CLASSES, SPLITS, DataBundle, Split
from .core import SOURCES, data_config, load, names, parse_data_spec, register_source

__all__ = [
    "CXR_CLASSES", "SPLITS", "DataBundle", "Split", "SOURCES", "data_config", "load", "names",
    "parse_data_spec", "register_source",
]
