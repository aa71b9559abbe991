"""Profiles: named sets of parameter defaults (not code paths).

``smoke``  seconds per notebook; what the test suite executes.
``quick``  the default: CPU-sized, the whole ``./run_all.sh`` within ~15 min on 2 cores.
``full``   the papers' protocol (512², paper head, <= 64 epochs, batch 16), meant for a GPU.

A notebook's ``parameters`` cell names a profile; :func:`get` returns its
settings and explicit notebook parameters override them.
"""
from __future__ import annotations

import copy

#: The 12 classification losses of the multi-loss study, in the paper's order.
PAPER_LOSSES = (
    "cce", "cce_entropy_reg", "kld", "focal", "hinge", "ls_cce", "ls_focal",
    "cal_cce", "cal_kld", "cal_focal", "cal_hinge", "cal_neg_entropy",
)

PROFILES = {
    "smoke": {
        "data": {"name": "phantom", "n": 240, "image_size": 64},
        "train": {"arch": "small_cnn", "arch_params": {"width": 8}, "dcl_channels": 128, "image_size": 32,
                  "batch_size": 32, "max_epochs": 2, "patience": 2, "head": "paper", "optimizer": "adamw",
                  "lr": 3e-3},
        "losses": ("cce", "focal", "cal_cce"),
        "seeds": (0,),
        "bootstrap": 100,
        # Localization (notebook 07): CAMs of every run and ensemble on test images with lesions.
        "localization": {"methods": ("gradcam", "gradcam++", "scorecam", "eigencam", "layercam"), "n_images": 8,
                         "method_images": {"scorecam": 2}, "threshold_images": 8, "road_images": 2,
                         "road_percentiles": (20, 50, 80), "k": 3, "ensemble_methods": ("average", "weighted"),
                         "grid_images": 3,
                         "shortcut": {"losses": ("cce", "focal"), "marker_bias": 0.9, "n_images": 8}},
    },
    "quick": {
        "data": {"name": "phantom", "n": 2400, "image_size": 128},
        # CPU-sized: small_cnn (8-16-32-64) and a 128-channel paper head instead of 512 (4x cheaper
        # per image on 2 cores; the full profile keeps the paper's 512). AdamW 1e-3 (3e-3 left the hinge
        # loss stuck at constant predictions); 5 warm-up epochs before early stopping counts, because
        # every loss sits near chance for 2-5 epochs on the phantom before it finds the lesions.
        "train": {"arch": "small_cnn", "arch_params": {"width": 8}, "dcl_channels": 128, "image_size": 64,
                  "batch_size": 64, "max_epochs": 16, "patience": 5, "start_from_epoch": 5, "head": "paper",
                  "optimizer": "adamw", "lr": 1e-3},
        "losses": PAPER_LOSSES,
        "seeds": (0, 1),
        "bootstrap": 1000,
        # Localization (notebook 07; ~2 min on 2 cores, most of it the shortcut runs): Grad-CAM on 64 test images
        # with lesions, the other methods on fewer (ScoreCAM: one forward pass per channel), ROAD on 4 (a sparse
        # solve per image and percentile); the shortcut experiment adds 3 biased runs (the clean ones are 04's).
        "localization": {"methods": ("gradcam", "gradcam++", "scorecam", "eigencam", "layercam"), "n_images": 64,
                         "method_images": {"gradcam++": 32, "scorecam": 4, "eigencam": 32, "layercam": 32},
                         "threshold_images": 32, "road_images": 4,
                         "road_percentiles": (20, 50, 80), "k": 3, "ensemble_methods": ("average", "weighted"),
                         "grid_images": 4,
                         "shortcut": {"losses": ("cce", "focal", "hinge"), "marker_bias": 0.9, "n_images": 64}},
    },
    "full": {
        "data": {"name": "phantom", "n": 5856, "image_size": 512},
        "train": {"arch": "efficientnet_b0", "image_size": 512, "batch_size": 16, "max_epochs": 64,
                  "patience": 5, "head": "paper", "optimizer": "sgd", "lr": 1e-4, "compile": True},
        "losses": PAPER_LOSSES,
        "seeds": (0, 1, 2),
        "bootstrap": 1000,
        "localization": {"methods": ("gradcam", "gradcam++", "scorecam", "eigencam", "layercam"), "n_images": 256,
                         "method_images": {"scorecam": 32}, "threshold_images": 128, "road_images": 64,
                         "road_percentiles": (10, 20, 30, 40, 50, 60, 70, 80, 90), "k": 3,
                         "ensemble_methods": ("average", "weighted"), "grid_images": 4,
                         "shortcut": {"losses": ("cce", "focal", "ls_cce", "cal_cce"), "marker_bias": 0.9,
                                      "n_images": 256}},
    },
}


def names():
    return list(PROFILES)


def get(name: str) -> dict:
    """A deep copy of profile ``name`` (so callers may edit it)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}")
    return copy.deepcopy(PROFILES[name])


def data_config(profile: str, spec: str = "phantom") -> dict:
    """``support.data.load`` arguments for a profile and a ``--data`` spec.

    The profile's data settings apply when the spec names the profile's
    source; for another source only the settings it accepts (e.g.
    ``image_size``) carry over, plus the spec's path as ``root``/``path``.
    """
    import inspect

    from .data import parse_data_spec
    from .data.core import SOURCES, _import_sources

    name, params = parse_data_spec(spec)
    base = get(profile)["data"]
    if name == base["name"]:
        return {**base, **params}
    _import_sources()
    accepted = inspect.signature(SOURCES.get(name)).parameters
    config = {"name": name, **{k: v for k, v in base.items() if k != "name" and k in accepted}}
    return {**config, **params}
