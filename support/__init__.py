"""lossbench-cxr: how the training loss shapes medical image classifiers.

The package the notebooks import. Nothing happens at import time: no seeding,
no directory creation, no downloads. Seeds, devices and roots are parameters.

Sub-modules (one job each):
    paths       project folders (data/, runs/, figures/), overridable by env vars
    logs        the ``lossbench`` logger (``logs.get("data")``); no module prints
    registry    the one registry class behind losses, models, data sources, ...
    artifacts   atomic writes, run keys, safe checkpoint loading
    profiles    named parameter sets: smoke, quick (default), full
    data        ``load(name, **params)`` over phantom, real-data and nodule sources
    losses      ``names()`` / ``build(name, **params)`` for every loss of both studies
    models      ``build(arch, num_classes, ...)`` with ``.dcl``
    training    ``train_one(config)`` / ``train_many(configs)``: one loop for every loss
    metrics     classification metrics; ``stats`` confidence intervals and paired tests
"""

__version__ = "0.1.0"
