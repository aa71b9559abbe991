"""Notebook 07's two measurements, each driven by the profile's ``localization`` section as one object
(``profiles.get(profile)["localization"]``), so that the notebook passes the section, not its keys."""
from __future__ import annotations

from typing import Optional, Sequence

from . import shortcut
from .evaluate import LocalizationResult, ensemble_entries, evaluate, single_entries


def evaluate_section(runs: Sequence, bundle, section: dict, *, methods: Optional[Sequence[str]] = None,
                     primary: str = "gradcam", train_overrides: Optional[dict] = None, device="cpu",
                     force: bool = False) -> LocalizationResult:
    """CAM localization of ``runs`` and of their top-``k`` ensembles (``section``: ``k``, ``ensemble_methods``,
    ``methods``, ``n_images``, ``method_images``, ``threshold_images``, ``road_images``, ``road_percentiles``).

    ``methods``: None for the section's; ``primary``: the method ROAD scores; ``train_overrides``: the
    model-level ensembles' training settings (the profile's ``ensembles.model_level`` in notebook 07).
    """
    entries = single_entries(runs) + ensemble_entries(runs, k=section["k"], methods=section["ensemble_methods"],
                                                      data=bundle, train_overrides=train_overrides)
    return evaluate(entries, bundle, methods=list(methods or section["methods"]), n_images=section["n_images"],
                    method_images=section["method_images"], threshold_images=section["threshold_images"],
                    road_images=section["road_images"], road_percentiles=section["road_percentiles"],
                    road_method=primary, device=device, force=force)


def shortcut_section(profile: str, data: dict, section: dict, *, seed: int = 0, method: str = "gradcam",
                     n_boot: int = 1000, device="cpu", force: bool = False) -> shortcut.ShortcutResult:
    """The shortcut experiment with ``section["shortcut"]`` (``losses``, ``marker_bias``, ``n_images``)."""
    s = section["shortcut"]
    return shortcut.run(profile, data, s["losses"], s["marker_bias"], seed=seed, n_images=s["n_images"],
                        method=method, n_boot=n_boot, device=device, force=force)
