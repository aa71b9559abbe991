"""Profiles: named sets of parameter defaults (not code paths).

``smoke``  seconds per notebook; what the test suite executes.
``quick``  the default: CPU-sized, the whole ``./run_all.sh`` within 15 min on 2 cores (measured 12.6 min cold with 8 seeds x 12 losses, benchmarks/pipeline_quick.md).
``full``   the papers' protocol (512², paper head, <= 64 epochs, batch 16), meant for a GPU.

A notebook's ``parameters`` cell names a profile; :func:`get` returns its
settings and explicit notebook parameters override them.
"""
from __future__ import annotations

import copy

#: The paper's five U-Net losses, in its order (Fig. 1: BCE, weighted BCE-Dice, focal, Tversky, focal Tversky).
SEG_LOSSES = ("seg_bce", "seg_bce_dice", "seg_focal", "seg_tversky", "seg_focal_tversky")

#: The 12 classification losses of the multi-loss study, in the paper's order.
PAPER_LOSSES = (
    "cce", "cce_entropy_reg", "kld", "focal", "hinge", "ls_cce", "ls_focal",
    "cal_cce", "cal_kld", "cal_focal", "cal_hinge", "cal_neg_entropy",
)

#: Calibrated (DCA) loss -> the loss it adds |accuracy - confidence| to. cal_neg_entropy's own base,
#: CCE - 0.001 H (the Pereyra confidence penalty), is not one of the 12 trained losses; cce is its
#: nearest trained base (they differ by 0.001 H).
CALIBRATED_BASE = {"cal_cce": "cce", "cal_kld": "kld", "cal_focal": "focal", "cal_hinge": "hinge",
                   "cal_neg_entropy": "cce"}

#: The confirmatory family of the multi-loss study, fixed before any result is seen: each loss vs cce,
#: then each calibrated loss vs its base where that pair is not already in the first list, tested on
#: test MCC with Holm over the family (support.compare.confirmatory_table). The calibrated-vs-base pairs
#: are also tested on ECE (support.calibration.calibrated_pairs_table), one more family of 5.
CONFIRMATORY = {
    "metric": "mcc", "alpha": 0.05, "reference": "cce",
    "pairs": tuple((loss, "cce") for loss in PAPER_LOSSES if loss != "cce")
    + tuple((cal, base) for cal, base in CALIBRATED_BASE.items() if base != "cce"),
    "calibration_pairs": tuple(CALIBRATED_BASE.items()),
}

#: The CAM methods notebook 07 scores (support.localization), in every profile.
CAM_METHODS = ("gradcam", "gradcam++", "scorecam", "eigencam", "layercam")

#: The synthetic-nodule study's loss variants (support.nodules): CE end to end, the embedding losses in
#: two stages (metric loss on a projection head, then a linear layer on frozen features).
NODULE_VARIANTS = (
    {"loss": "cce"},
    {"loss": "contrastive", "mode": "two_stage"},
    {"loss": "triplet", "mode": "two_stage"},
    {"loss": "supcon", "mode": "two_stage"},
)
#: Joint CE + lambda * metric variants (MASF-style): the cross-entropy head and the embedding loss train together.
NODULE_JOINT = tuple({"loss": loss, "mode": "joint", "metric_weight": 1.0} for loss in ("contrastive", "triplet"))
#: Training settings shared by every nodule profile (shared/papers/loss_generalization.md 3.5): Adam,
#: lr 1e-3, betas (0.9, 0.999), no weight decay, no augmentation (it could destroy a factor), constant lr.
_NODULE_TRAIN = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "augment": False, "lr_schedule": "constant",
                 "head": "linear", "monitor": "val_accuracy"}

PROFILES = {
    "smoke": {
        "data": {"name": "phantom", "n": 240, "image_size": 64},
        "train": {"arch": "small_cnn", "arch_params": {"width": 8}, "dcl_channels": 128, "image_size": 32,
                  "batch_size": 32, "max_epochs": 2, "patience": 2, "head": "paper", "optimizer": "adamw",
                  "lr": 3e-3},
        "losses": ("cce", "focal", "cal_cce"),
        "seeds": (0,),
        "bootstrap": 100,
        "confirmatory": {**CONFIRMATORY, "pairs": (("focal", "cce"), ("cal_cce", "cce")),
                         "calibration_pairs": (("cal_cce", "cce"),)},
        "ensembles": {"model_level": {}},
        # Localization (notebook 07): CAMs of every run and ensemble on test images with lesions.
        "localization": {"methods": CAM_METHODS, "n_images": 8,
                         "method_images": {"scorecam": 2}, "threshold_images": 8, "road_images": 2,
                         "road_percentiles": (20, 50, 80), "k": 3, "ensemble_methods": ("average", "weighted"),
                         "grid_images": 3,
                         "shortcut": {"losses": ("cce", "focal"), "marker_bias": 0.9, "n_images": 8}},
        "nodules": {
            "data": {"image_size": 48, "n_train": 192, "n_val": 64, "n_test": 64, "seed": 0},
            "train": {**_NODULE_TRAIN, "arch": "small_cnn", "arch_params": {"width": 8}, "image_size": 48,
                      "batch_size": 64, "max_epochs": 2, "patience": 2},
            "variants": NODULE_VARIANTS, "seeds": (0,), "learnability_check": False,
            "n_probe": 128, "n_counterfactual": 24, "n_embed": 128, "embedding": "tsne", "bootstrap": 100,
            # the regime map (support.nodules.regime); smoke models are too short-trained for the rule to hold,
            # so the closest cell is used and the notebook says so (require_regime False)
            "train_preset": "train", "regime": {"margin_strengths": (0.5, 1.0), "rhos": (1.0,), "seeds": (100,)},
            "require_regime": False, "curve_strengths": 2, "curve_seeds": (0,), "n_dfr": 64, "analysis_seeds": 1,
        },
        # The regime study (notebook 10, support.regimes): 2 losses, 1 seed -- that it runs, not what it finds.
        # "seeds": those of the regimes that train new runs (label noise); clean and shift use the profile's seeds.
        "regimes": {"regimes": ("clean", "label_noise", "shift"), "losses": ("cce", "focal"), "seeds": (0,),
                    "reference": "cce", "alpha": 0.05, "bootstrap": 100},
        # Lung segmentation (notebook 02, support.segmentation): seconds; a 3-stage ResNet-18 U-Net at 32²,
        # 4 epochs (steadier than MobileNetV2 in so few steps). The U-Net trains on a *different* phantom draw
        # (seed 1) from the classification data (seed 0): the masks it predicts on the classifier's films come
        # from a model that never saw them.
        "segmentation": {
            "data": {"name": "phantom", "seed": 1, "n": 120, "image_size": 64},
            "train": {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": (32, 16, 8),
                      "image_size": 32, "batch_size": 16, "lr": 3e-3, "max_epochs": 4, "patience": 4,
                      "augment": False},
            "bootstrap": 200,
        },
        "execution_timeout": 600,  # seconds one notebook cell may run before run_all stops it (--timeout)
    },
    "quick": {
        # Test and validation draws sized for the question (generated films cost nothing to score): 6,000
        # test films (Kermany's test mix) put the image-level part of a seed-mean MCC interval at ~+-0.01,
        # so seed-to-seed noise dominates; 1,000 validation films, halved: 500 for early stopping (was
        # ~214 for everything), 500 for what is fitted after training. Training: 1,930 films, as before.
        "data": {"name": "phantom", "n": 2400, "image_size": 128, "n_test": 6000, "n_val": 1000},
        # CPU-sized: small_cnn (8-16-32-64) and a 128-channel paper head instead of 512 (4x cheaper
        # per image on 2 cores; the full profile keeps the paper's 512). AdamW 1e-3 (3e-3 left the hinge
        # loss stuck at constant predictions), batch 32, cosine decay over 10 epochs: with the plateau
        # schedule and batch 64 the validation MCC still swung by 0.2-0.4 between epochs at epoch 16 and the
        # chosen checkpoint was luck; cosine ends on a settled model (cce test accuracy 0.87 -> 0.93, same
        # budget). 4 warm-up epochs before early stopping counts: losses sit near chance for 1-3 epochs.
        # 12 epochs: at 10, most runs still improved at their last epoch (best epoch 8-9 of 10: not settled),
        # and the seed-to-seed spread of the slow starters (hinge: sd 0.025 MCC) set the loss table's widest
        # interval. The fused bf16 training stage (support.fused) pays for these epochs and the 8 seeds.
        "train": {"arch": "small_cnn", "arch_params": {"width": 8}, "dcl_channels": 128, "image_size": 64,
                  "batch_size": 32, "max_epochs": 12, "patience": 5, "start_from_epoch": 4, "head": "paper",
                  "optimizer": "adamw", "lr": 1e-3, "lr_schedule": "cosine"},
        "losses": PAPER_LOSSES,
        # 8 seeds, paired across losses (a seed fixes the initialisation and the batch order of every loss).
        # With 5 the confirmatory MDEs were 0.015-0.068 ΔMCC (median 0.031; benchmarks/power_quick.md): the
        # t-quantile at Holm's alpha/14 with 4 degrees of freedom is ~7.7 standard errors; 8 seeds bring it to
        # ~5.4 and the seed part of each standard error down by sqrt(5/8).
        "seeds": (0, 1, 2, 3, 4, 5, 6, 7),
        "bootstrap": 1000,
        "confirmatory": CONFIRMATORY,
        # Model-level ensembles (notebooks 06 and 07 share these runs): the merge head trains over frozen,
        # already trained members, so half the members' epochs (cosine over 6, warm-up 2) suffice on 2 cores.
        # Built for the 2 lowest seeds only (each is a trained run: 10 of them took 8.5 min on 2 cores); the
        # prediction-level ensembles and the deep-ensemble control use all 8 seeds.
        "ensembles": {"model_level": {"max_epochs": 6, "start_from_epoch": 2}, "model_level_seeds": 2},
        # Localization (notebook 07; ~3 min on 2 cores, ~40 % of it the shortcut runs): Grad-CAM on 48 test images
        # with lesions, the other methods on fewer (ScoreCAM: one forward pass per channel), ROAD on 4 (a sparse
        # solve per image and percentile); the shortcut experiment adds 2 biased runs (the clean ones are 04's).
        # "seeds": CAMs of the runs of the 2 lowest seeds (the loss comparison of 05 uses all 5).
        "localization": {"methods": CAM_METHODS, "n_images": 48, "seeds": 2,
                         "method_images": {"gradcam++": 32, "scorecam": 4, "eigencam": 32, "layercam": 32},
                         "threshold_images": 32, "road_images": 4,
                         "road_percentiles": (20, 50, 80), "k": 3, "ensemble_methods": ("average", "weighted"),
                         "grid_images": 4,
                         "shortcut": {"losses": ("cce", "focal"), "marker_bias": 0.9, "n_images": 64}},
        # CPU-sized (the whole study ~3 min on 2 cores): 48² patches (the default radii still fit), small_cnn
        # (8-16-32-64, linear head: h is the 64-d pooled trunk output), 1000 training patches, <= 8 epochs.
        # Batch 64, not the notes' 128/256: at 128 (8 steps an epoch) CE had not finished learning margin
        # after 8 epochs (it learns size first) and its lower OOD accuracy was under-training, not the loss.
        # Issue 17: 2,000 test patches per preset and 5 seeds at the study cell, which the regime map chooses
        # (margin strength x training rho, CE, 2 seeds a cell); the difficulty curve's other 2 strengths on 1 seed
        # (with 2 the cold notebook took 4.4 min, over its 4 min budget; 2 seeds' t-intervals were useless anyway).
        "nodules": {
            "data": {"image_size": 48, "n_train": 1000, "n_val": 300, "n_test": 2000, "seed": 0},
            "train": {**_NODULE_TRAIN, "arch": "small_cnn", "arch_params": {"width": 8}, "image_size": 48,
                      "batch_size": 64, "max_epochs": 8, "patience": 3, "start_from_epoch": 4},
            "variants": NODULE_VARIANTS + NODULE_JOINT, "seeds": (0, 1, 2, 3, 4), "learnability_check": True,
            "n_probe": 600, "n_counterfactual": 160, "n_embed": 400, "embedding": "tsne", "bootstrap": 1000,
            "train_preset": "train",
            # the map's CE runs use seeds of their own (100, 101) and score a validation draw, so that choosing
            # the cell selects neither on the study's test images nor on its cce runs
            "regime": {"margin_strengths": (0.6, 0.8, 1.0), "rhos": (0.95, 1.0), "seeds": (100, 101)},
            # probes, counterfactuals and embeddings read the first 2 seeds' runs
            "require_regime": True, "curve_strengths": 3, "curve_seeds": (0,), "n_dfr": 200, "analysis_seeds": 2,
        },
        # The regime study (notebook 10, support.regimes): 5 losses; the noisy-label runs are new training, 3 seeds
        # (15 runs, ~90 CPU-s); the clean and shift regimes re-score notebook 04's runs, so they use its 8 seeds at
        # no training cost. Sized to add <= ~1.5 min to ./run_all.sh; its tables show the MDE this buys
        # (benchmarks/regimes_quick.md).
        "regimes": {"regimes": ("clean", "label_noise", "shift"), "losses": ("cce", "ls_cce", "focal", "cal_cce", "hinge"),
                    "seeds": (0, 1, 2), "reference": "cce", "alpha": 0.05, "bootstrap": 1000},
        # Lung segmentation: ~45 CPU seconds for all five losses (one thread): a 3-stage MobileNetV2 U-Net at
        # 48², 6 epochs (Dice 0.96-0.98 on the phantom; a 3-stage ResNet-18 costs 1.5x, EfficientNet-B0 cut to
        # 3 stages does not train in so few steps: its BatchNorm running statistics, momentum 0.01, lag behind)
        "segmentation": {
            "data": {"name": "phantom", "seed": 1, "n": 360, "image_size": 128},
            "train": {"encoder": "mobilenet_v2", "encoder_depth": 3, "decoder_channels": (32, 16, 8),
                      "image_size": 48, "batch_size": 16, "lr": 2e-3, "max_epochs": 6, "patience": 3,
                      "augment": False},
            "bootstrap": 1000,
        },
        "execution_timeout": 1800,  # seconds one notebook cell may run before run_all stops it (--timeout)
    },
    "full": {
        "data": {"name": "phantom", "n": 5856, "image_size": 512},
        "train": {"arch": "efficientnet_b0", "image_size": 512, "batch_size": 16, "max_epochs": 64,
                  "patience": 5, "head": "paper", "optimizer": "sgd", "lr": 1e-4, "compile": True},
        "losses": PAPER_LOSSES,
        "seeds": (0, 1, 2, 3, 4),
        "bootstrap": 1000,
        "confirmatory": CONFIRMATORY,
        "ensembles": {"model_level": {}},  # the paper: trained like the members
        "localization": {"methods": CAM_METHODS, "n_images": 256,
                         "method_images": {"scorecam": 32}, "threshold_images": 128, "road_images": 64,
                         "road_percentiles": (10, 20, 30, 40, 50, 60, 70, 80, 90), "k": 3,
                         "ensemble_methods": ("average", "weighted"), "grid_images": 4,
                         "shortcut": {"losses": ("cce", "focal", "ls_cce", "cal_cce"), "marker_bias": 0.9,
                                      "n_images": 256}},
        # The notes' design (3.3-3.5): 64², the 4-block nodule_cnn, 10k/2k/2k, batch 256, <= 30 epochs, 5 seeds,
        # plus the joint CE + lambda * metric variants (MASF-style).
        "nodules": {
            "data": {"image_size": 64, "n_train": 10000, "n_val": 2000, "n_test": 2000, "seed": 0},
            "train": {**_NODULE_TRAIN, "arch": "nodule_cnn", "image_size": 64, "batch_size": 256,
                      "max_epochs": 30, "patience": 5, "start_from_epoch": 3},
            "variants": NODULE_VARIANTS + tuple({"loss": loss, "mode": "joint", "metric_weight": w}
                                                for loss in ("contrastive", "triplet") for w in (0.1, 1.0)),
            "seeds": (0, 1, 2, 3, 4), "learnability_check": True,
            "n_probe": 2000, "n_counterfactual": 500, "n_embed": 1000, "embedding": "umap", "bootstrap": 1000,
            "train_preset": "train",
            "regime": {"margin_strengths": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), "rhos": (0.95, 1.0),
                       "seeds": (100, 101, 102)},
            "require_regime": True, "curve_strengths": 3, "curve_seeds": (0, 1, 2, 3, 4), "n_dfr": 500,
            "analysis_seeds": 5,
        },
        # The regime study: all 12 losses with the profile's seeds.
        "regimes": {"regimes": ("clean", "label_noise", "shift"), "losses": PAPER_LOSSES, "seeds": (0, 1, 2, 3, 4),
                    "reference": "cce", "alpha": 0.05, "bootstrap": 1000},
        # Lung segmentation: the paper's protocol (meant for a GPU); ~560 train / 60 val / 75 test phantom films
        "segmentation": {
            "data": {"name": "phantom", "seed": 1, "n": 700, "image_size": 512},
            "train": {"encoder": "efficientnet-b0", "encoder_depth": 5, "decoder_channels": (256, 128, 64, 32, 16),
                      "image_size": 512, "batch_size": 2, "lr": 1e-4, "max_epochs": 64, "patience": 10,
                      "augment": True},
            "bootstrap": 1000,
        },
        "execution_timeout": 21600,  # seconds one notebook cell may run before run_all stops it (--timeout)
    },
}


def names():
    return list(PROFILES)


def get(name: str) -> dict:
    """A deep copy of profile ``name`` (so callers may edit it)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}")
    return copy.deepcopy(PROFILES[name])


def segmentation(name: str) -> dict:
    """A deep copy of profile ``name``'s ``segmentation`` section (the lung U-Nets of notebook 02)."""
    if name not in PROFILES:
        raise ValueError(f"unknown segmentation profile {name!r}; valid profiles: {', '.join(PROFILES)}")
    return copy.deepcopy(PROFILES[name]["segmentation"])
