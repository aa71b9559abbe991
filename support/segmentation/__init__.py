"""Lung segmentation and the lung crop (the paper's CXR-specific stage; notes 1.2 of
../shared/papers/multiloss_ensemble.md).

1. A U-Net (segmentation-models-pytorch, randomly initialised: EfficientNet-B0 encoder in ``full``,
   a 3-stage MobileNetV2 in ``quick``, a 3-stage ResNet-18 in ``smoke``) is trained once per loss
   of :data:`SEG_LOSSES` on lung masks: the phantom's by default, or a user's Montgomery, Shenzhen
   or JSRT-style folders (data source ``lungmasks``). :func:`train_losses`, :func:`train_seg`; folders ``runs/seg-<key>/``.
2. Each model's held-out masks are scored per image (Dice, IoU, pixel accuracy, bootstrap 95 %
   intervals over images); the top-3 by validation Dice are combined with a bitwise AND
   (:func:`evaluation_table`, :func:`and_masks`).
3. The masks: :func:`make_lung_masks` writes the AND masks of a data source's films to the file
   that ``support.data.load(..., lung_crop=True)`` reads (loading never trains; options:
   :func:`lung_crop_spec`). The crop (:mod:`support.data.lungcrop`, re-exported here): the bounding
   box of the final mask + 5 % of its height/width on each side, clipped, resized back to the image
   size (:func:`crop_bundle`), with a whole-image fallback and a warning when the mask is empty or
   implausible.
4. :func:`train_cropped`: classifiers trained on the cropped films, beside the uncropped ones
   (notebook 05).

Nothing heavy happens at import (smp is imported when a model is built). The ``lungmasks`` data
source lives with the other sources, in :mod:`support.data.lungmasks`.
"""
from ..data.lungmasks import NonBinaryMaskWarning, build_lungmasks
from .classify import train_cropped
from ..data.lungcrop import (CROP_DEFAULTS, UNET_DEFAULTS, CropFallbackWarning, MissingLungMasksError, clean_mask,
                             crop_box, crop_bundle, crop_summary, lung_crop_spec)
from .config import RUN_PREFIX, SEG_LOSSES, SegConfig, SegNet, build_model, profile
from .crop import make_lung_masks, predict_masks
from .evaluate import (SegRun, and_masks, display_table, evaluation_table, find_seg_runs, per_image_table, top_k)
from .metrics import METRICS, bootstrap_summary, mean_scores, per_image_metrics
from .train import SegmentationError, run_dir_for, train_losses, train_seg

__all__ = [
    "CROP_DEFAULTS", "CropFallbackWarning", "METRICS", "NonBinaryMaskWarning", "RUN_PREFIX", "SEG_LOSSES",
    "SegConfig", "SegNet", "SegRun", "SegmentationError", "and_masks", "bootstrap_summary",
    "build_lungmasks", "build_model", "clean_mask", "crop_box", "crop_bundle", "crop_summary",
    "display_table", "evaluation_table",
    "find_seg_runs", "lung_crop_spec", "make_lung_masks", "MissingLungMasksError", "mean_scores", "per_image_metrics", "per_image_table",
    "predict_masks", "profile", "run_dir_for", "top_k", "train_cropped", "train_losses", "train_seg",
    "UNET_DEFAULTS",
]
