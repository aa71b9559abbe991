"""Localization: where do the loss-specific models look, measured against known lesion masks.

The multi-loss study checked its Grad-CAMs by eye. The phantom knows where
every lesion (and lung) is, so here the CAMs are *scored* (notebook 07).

Modules (one job each):
    cams      :data:`CAM_METHODS` registry on pytorch-grad-cam (gradcam, gradcam++,
              scorecam, eigencam, layercam) on ``model.dcl``; :class:`CamExtractor`
              (built once, a context manager); :func:`ensemble_cam`
    metrics   :data:`LOC_METRICS` (pointing game, energy inside the mask, IoU / Dice
              of the thresholded CAM, the mask's area as chance level), the
              validation-chosen threshold, ROAD faithfulness (pytorch-grad-cam)
    evaluate  runs and ensembles -> per-image metrics on test images with lesions;
              :func:`summary` with 95 % bootstrap intervals over images
    shortcut  the corner-marker shortcut experiment (phantom ``marker_bias``)
    boxes     RSNA-style box CSV -> lesion masks for real data
    figures   CAM grid, metric bars, method heatmap, shortcut figure

Quick use::

    from support import localization as loc, runs
    from support.data import load
    bundle = load("phantom", n=2400, image_size=128)
    result = loc.evaluate(loc.single_entries(runs.find_runs(seed=0)), bundle, methods=["gradcam"])
    loc.display_table(loc.summary(result.per_image))
"""
from .cams import (CAM_METHODS, CamExtractor, LocalizationError, compute_cams, ensemble_cam, get_method, names,
                   resize_cams, target_layer)
from .metrics import (FIXED_THRESHOLDS, LOC_METRICS, THRESHOLD_GRID, area_fraction, best_threshold, dice,
                      energy_inside, image_metrics, iou, pointing_game, road_scores)
from .evaluate import (Entry, LocalizationResult, chance_level, conclusions, display_table, ensemble_entries, evaluate,
                       lesion_index, numeric_table, run_cams, shown_metrics, single_entries, skipped_note,
                       summary)
from .boxes import box_masks, read_boxes, with_box_masks
from . import figures, shortcut
from .study import evaluate_section, shortcut_section

__all__ = [
    "CAM_METHODS", "CamExtractor", "LocalizationError", "compute_cams", "ensemble_cam", "get_method", "names",
    "resize_cams", "target_layer", "FIXED_THRESHOLDS", "LOC_METRICS", "THRESHOLD_GRID", "area_fraction",
    "best_threshold", "dice", "energy_inside", "image_metrics", "iou", "pointing_game", "road_scores", "Entry",
    "LocalizationResult", "chance_level", "conclusions", "display_table", "ensemble_entries", "evaluate",
    "lesion_index", "numeric_table", "run_cams", "shown_metrics", "single_entries", "skipped_note",
    "summary", "box_masks", "evaluate_section", "shortcut_section",
    "read_boxes", "with_box_masks", "figures", "shortcut",
]
