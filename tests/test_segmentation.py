"""Lung segmentation (issue 8): U-Net per loss, AND ensemble, lung crop, mask folders, bad input.

The trained runs come from one module fixture: the ``smoke`` segmentation profile (a 3-stage
ResNet-18 U-Net, 32², 4 epochs on 98 phantom films), about 3 CPU seconds per loss.
"""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from support import segmentation as seg
from support.data import DataBundle, Split, lungcrop
from support.data.images import ImageDecodeError, SkippedImagesWarning
from support.segmentation import crop as crop_mod
from support.segmentation import train as train_mod


@pytest.fixture(scope="module")
def seg_env(tmp_path_factory):
    """data/, runs/ and figures/ in one tmp folder shared by this module's tests."""
    root = tmp_path_factory.mktemp("seg")
    mp = pytest.MonkeyPatch()
    for var, sub in (("LOSSBENCH_DATA_DIR", "data"), ("LOSSBENCH_RUNS_DIR", "runs"),
                     ("LOSSBENCH_FIGURES_DIR", "figures")):
        mp.setenv(var, str(root / sub))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def trained(seg_env):
    return [seg.SegRun(d) for d in seg.train_losses("smoke", progress=False)]


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("loss", seg.SEG_LOSSES)
def test_each_loss_beats_a_trivial_mask(trained, loss):
    run = next(r for r in trained if r.loss == loss)
    truth = run.truth("test")
    trivial = seg.mean_scores(torch.ones_like(truth), truth)["dice"]  # the whole image as the mask: ~0.37
    assert run.metrics["test"]["dice"] > trivial + 0.25, (loss, run.metrics["test"], trivial)
    for name in ("config.json", "log.csv", "best.pt", "masks.npz", "metrics.json"):
        assert (run.path / name).exists()
    assert not (run.path / "last.pt").exists()
    assert run.path.name.startswith("seg-")


def test_and_of_top3_is_a_subset_of_each_and_tabulated(trained):
    chosen = seg.top_k(trained, 3)
    assert [r.val_dice for r in chosen] == sorted((r.val_dice for r in trained), reverse=True)[:3]
    both = seg.and_masks(chosen, "test")
    for r in chosen:
        assert not (both & ~r.masks("test")).any()
    assert [r.key for r in seg.find_seg_runs(loss="seg_bce")] == [r.key for r in trained if r.loss == "seg_bce"]
    table = seg.evaluation_table(trained, n_boot=50)
    assert list(table["kind"]) == ["single"] * 5 + ["ensemble", "baseline", "baseline"]
    assert table["in_ensemble"].sum() == 3
    for m in seg.METRICS:
        assert ((table[f"{m}_lo"] <= table[m] + 1e-12) & (table[m] <= table[f"{m}_hi"] + 1e-12)).all()


def test_resume_continues_like_an_uninterrupted_run(seg_env, tmp_path, monkeypatch):
    config = seg.SegConfig.from_profile("smoke", loss="seg_bce", max_epochs=2)
    whole = seg.train_seg(config, runs_dir=tmp_path / "a", progress=False)
    real_epoch = train_mod._epoch

    def crash_in_second_epoch(st, *args):
        if st.next_epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(st, *args)

    monkeypatch.setattr(train_mod, "_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        seg.train_seg(config, runs_dir=tmp_path / "b", progress=False)
    cut = tmp_path / "b" / whole.name
    assert (cut / "last.pt").exists() and not (cut / "metrics.json").exists()
    monkeypatch.setattr(train_mod, "_epoch", real_epoch)
    resumed = seg.train_seg(config, runs_dir=tmp_path / "b", progress=False)
    a, b = pd.read_csv(whole / "log.csv"), pd.read_csv(resumed / "log.csv")
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=1e-5)
    # finished: a third call trains nothing
    monkeypatch.setattr(train_mod, "_epoch", lambda *a: pytest.fail("a finished run was retrained"))
    assert seg.train_seg(config, runs_dir=tmp_path / "b", progress=False) == resumed


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="multiple of 8"):
        seg.SegConfig.from_profile("smoke", image_size=36)
    with pytest.raises(ValueError, match="not a segmentation loss.*seg_bce"):
        seg.SegConfig(loss="cce")
    with pytest.raises(ValueError, match="unknown segmentation profile 'tiny'"):
        seg.SegConfig.from_profile("tiny")


def test_data_without_lung_masks_is_refused():
    split = Split(images=torch.zeros(4, 32, 32, dtype=torch.uint8), labels=torch.zeros(4, dtype=torch.int64),
                  ids=list("abcd"))
    bundle = DataBundle(classes=("x",), splits={s: split for s in ("train", "val", "test")}, source="no masks")
    with pytest.raises(seg.SegmentationError, match="no lung masks.*lungmasks"):
        train_mod.seg_splits(bundle, 32, torch.device("cpu"))


# ----------------------------------------------------------------------------- metrics
def test_metrics_by_hand():
    true = torch.zeros(2, 4, 4, dtype=torch.bool)
    pred = torch.zeros(2, 4, 4, dtype=torch.bool)
    true[0, :2, :2] = True   # 4 true pixels
    pred[0, :2, :3] = True   # 6 predicted, 4 of them true
    df = seg.per_image_metrics(pred, true)
    # image 0: Dice = 2*4/(6+4) = 0.8; IoU = 4/6; accuracy = (16 - 2 false positives)/16
    np.testing.assert_allclose(df.loc[0, ["dice", "iou", "pixel_accuracy"]], [0.8, 4 / 6, 14 / 16])
    # image 1: both empty -> Dice = IoU = 1 by convention, accuracy 1
    np.testing.assert_allclose(df.loc[1, ["dice", "iou", "pixel_accuracy"]], [1, 1, 1])
    with pytest.raises(ValueError, match="differ in shape"):
        seg.per_image_metrics(pred, true[:, :3])


# ----------------------------------------------------------------------------- crop
def test_crop_box_by_hand():
    mask = np.zeros((100, 100), bool)
    mask[10:30, 20:60] = True  # box 20 rows x 40 cols -> pad 1 row, 2 cols each side
    assert seg.crop_box(mask) == ((9, 31, 18, 62), "")
    mask[:] = False
    mask[0:50, 60:100] = True  # touches the top and right edges: clipped
    assert seg.crop_box(mask) == ((0, 53, 58, 100), "")


@pytest.mark.parametrize("seed", range(20))
def test_crop_box_contains_the_mask_and_stays_inside(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(20, 90, size=2)
    mask = np.zeros((h, w), bool)
    y, x = sorted(rng.integers(0, h, 2)), sorted(rng.integers(0, w, 2))
    mask[y[0]:y[1] + 1, x[0]:x[1] + 1] = True
    mask |= rng.random((h, w)) < 0.02  # scattered pixels, kept (min_component=0)
    box, why = seg.crop_box(mask, min_area=0, max_area=1, min_component=0)
    y0, y1, x0, x1 = box
    assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w, box
    assert mask[y0:y1, x0:x1].sum() == mask.sum()
    big = lungcrop.scale_box(box, (h, w), (3 * h, 2 * w))
    assert big[0] <= 3 * y0 and big[1] >= 3 * y1 and big[2] <= 2 * x0 and big[3] >= 2 * x1
    assert big[1] <= 3 * h and big[3] <= 2 * w


def test_crop_falls_back_to_whole_image_on_empty_or_implausible_masks():
    n, size = 4, 40
    images = torch.randint(0, 256, (n, size, size), dtype=torch.uint8)
    split = Split(images=images, labels=torch.zeros(n, dtype=torch.int64), ids=[f"i{i}" for i in range(n)])
    bundle = DataBundle(classes=("x",), splits={s: split for s in ("train", "val", "test")}, source="random")
    masks = torch.zeros(n, 20, 20, dtype=torch.bool)       # masks at half resolution
    masks[1, 5:15, 5:15] = True                            # 25 %: plausible
    masks[2, 0:2, 0:2] = True                              # 1 %: implausible
    masks[3] = True                                        # 100 %: implausible
    with pytest.warns(seg.CropFallbackWarning, match="9 of 12 image"):
        out = seg.crop_bundle(bundle, {s: masks for s in ("train", "val", "test")})
    test = out.splits["test"]
    assert test.images.shape == images.shape and test.images.dtype == torch.uint8
    assert [bool(r) for r in test.meta["crop_fallback"]] == [True, False, True, True]
    assert "empty mask" in test.meta["crop_fallback"][0] and "covers 1.0%" in test.meta["crop_fallback"][2]
    assert torch.equal(test.images[0], images[0])           # fallback: the image itself
    assert tuple(test.meta.loc[1, ["crop_y0", "crop_y1", "crop_x0", "crop_x1"]]) == (8, 32, 8, 32)
    assert "lung crop" in out.source


SMOKE_CROP = {"seg_profile": "smoke"}


def test_loading_reads_masks_and_never_trains(seg_env, trained, monkeypatch):
    from support.data import load

    monkeypatch.setattr(train_mod, "_epoch", lambda *a: pytest.fail("data loading trained a U-Net"))
    with pytest.raises(seg.MissingLungMasksError, match=r"make_lung_masks\('phantom'.*notebook 02"):
        load("phantom", n=60, image_size=64, lung_crop=SMOKE_CROP, verbose=False)
    path = seg.make_lung_masks("phantom", SMOKE_CROP, n=60, image_size=64, verbose=False)  # the fixture's U-Nets
    assert path.exists() and "lungmasks" in path.name
    monkeypatch.setattr(crop_mod, "predict_masks", lambda *a, **k: pytest.fail("finished masks predicted again"))
    assert seg.make_lung_masks("phantom", SMOKE_CROP, n=60, image_size=64, verbose=False) == path
    assert seg.make_lung_masks("phantom", "true_masks", n=60, image_size=64) is None  # no stage for true masks


def test_crop_cache_hit_on_second_load(seg_env, trained, monkeypatch):
    from support.data import load

    seg.make_lung_masks("phantom", SMOKE_CROP, n=60, image_size=64, verbose=False)
    first = load("phantom", n=60, image_size=64, lung_crop=SMOKE_CROP, verbose=False)
    lungs = first.splits["test"].lung_masks
    meta = first.splits["test"].meta
    for _, row in meta.iterrows():                          # boxes inside the image
        assert 0 <= row.crop_y0 < row.crop_y1 <= 64 and 0 <= row.crop_x0 < row.crop_x1 <= 64
    assert lungs.flatten(1).any(1).all()                    # the lungs survive the crop
    assert first.params["lung_crop"]["masks"] == "unet" and first.params["lung_crop"]["top_k"] == 3
    assert len(list((seg_env / "data" / "cache").glob("phantom-lungcrop-*.npz"))) == 1
    monkeypatch.setattr(lungcrop, "crop_bundle", lambda *a, **k: pytest.fail("crop recomputed: no cache hit"))
    monkeypatch.setattr(crop_mod, "predict_masks", lambda *a, **k: pytest.fail("masks predicted again"))
    monkeypatch.setattr(train_mod, "_epoch", lambda *a: pytest.fail("U-Net retrained"))
    again = load("phantom", n=60, image_size=64, lung_crop=SMOKE_CROP, verbose=False)
    assert torch.equal(again.splits["train"].images, first.splits["train"].images)
    assert again.source == first.source and list(again.splits["test"].meta["crop_y0"]) == list(meta["crop_y0"])
    assert again.params == first.params
    plain = load("phantom", n=60, image_size=64, verbose=False)    # the uncropped films stay as they were
    assert "lung_crop" not in plain.params and not torch.equal(plain.splits["train"].images, again.splits["train"].images)
    assert plain.splits["test"].ids == again.splits["test"].ids  # same films, same order: paired comparisons


def test_lung_crop_is_in_the_cache_and_run_keys(seg_env):
    from support.data.core import resolve_params
    from support.training import TrainConfig

    data = {"name": "phantom", "n": 60, "image_size": 64}
    plain = TrainConfig.from_profile("smoke", data=data)
    assert TrainConfig.from_profile("smoke", data={**data, "lung_crop": False}).key() == plain.key()
    keys = {TrainConfig.from_profile("smoke", data={**data, "lung_crop": c}).key()
            for c in (True, "true_masks", SMOKE_CROP, {"seg_profile": "smoke", "crop": {"pad": 0.1}})}
    assert len(keys) == 4 and plain.key() not in keys
    # equivalent spellings resolve to one canonical option (one cache file, one run key)
    a = resolve_params("phantom", {"lung_crop": True})[1]
    b = resolve_params("phantom", {"lung_crop": {"masks": "unet", "top_k": 3, "seg_losses": list(seg.SEG_LOSSES)}})[1]
    assert a == b
    with pytest.raises(ValueError, match="unknown option.*'topk'"):
        resolve_params("phantom", {"lung_crop": {"topk": 2}})
    with pytest.raises(ValueError, match="unknown segmentation profile 'tiny'"):
        resolve_params("phantom", {"lung_crop": {"seg_profile": "tiny"}})
    with pytest.raises(ValueError, match="use True .*'true_masks'"):
        resolve_params("phantom", {"lung_crop": "yes"})


def test_plain_loading_does_not_import_the_segmentation_stage(seg_env):
    import subprocess
    import sys

    code = ("import sys; from support.data import load; load('phantom', n=40, image_size=32, verbose=False); "
            "print(sorted(m for m in ('support.segmentation', 'segmentation_models_pytorch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_true_mask_crop_contains_the_true_lungs(seg_env):
    from support.data import load

    base = load("phantom", n=40, image_size=64, verbose=False)
    out = load("phantom", n=40, image_size=64, lung_crop="true_masks", verbose=False)
    for s in ("train", "test"):
        for i, row in out.splits[s].meta.iterrows():
            lung = base.splits[s].lung_masks[i]
            assert lung[row.crop_y0:row.crop_y1, row.crop_x0:row.crop_x1].sum() == lung.sum()
    with pytest.raises(ValueError, match="use True .*'true_masks'"):
        load("phantom", n=40, image_size=64, lung_crop="yes")


def test_empty_predicted_masks_keep_every_whole_film_with_a_warning(seg_env, trained, monkeypatch):
    from support.data import load

    monkeypatch.setattr(crop_mod, "predict_masks", lambda runs, images, **k: torch.zeros(
        (len(images), 32, 32), dtype=torch.bool))
    base = load("phantom", n=40, image_size=64, verbose=False)
    seg.make_lung_masks("phantom", SMOKE_CROP, n=40, image_size=64, force=True, verbose=False)
    with pytest.warns(seg.CropFallbackWarning, match="40 of 40 image.*empty mask"):
        out = load("phantom", n=40, image_size=64, lung_crop=SMOKE_CROP, cache=False, verbose=False)
    for s in ("train", "val", "test"):                      # nothing lost: every film, uncropped
        assert torch.equal(out.splits[s].images, base.splits[s].images)
        assert out.splits[s].ids == base.splits[s].ids
        assert (out.splits[s].meta["crop_fallback"] == "empty mask").all()
    # an empty predicted mask scores Dice 0 (not NaN) against a true lung, and 1 against an empty truth
    true = base.splits["test"].lung_masks[:2].clone()
    true[1] = False
    df = seg.per_image_metrics(torch.zeros_like(true), true)
    assert list(df["dice"]) == [0.0, 1.0] and list(df["iou"]) == [0.0, 1.0]


def test_crop_needs_one_mask_per_image_and_every_split():
    split = Split(images=torch.zeros(3, 16, 16, dtype=torch.uint8), labels=torch.zeros(3, dtype=torch.int64),
                  ids=list("abc"))
    bundle = DataBundle(classes=("x",), splits={s: split for s in ("train", "val", "test")}, source="x")
    masks = torch.ones(2, 16, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match="2 masks for 3 images"):
        seg.crop_bundle(bundle, {s: masks for s in ("train", "val", "test")})
    with pytest.raises(ValueError, match="no masks for the val split"):
        seg.crop_bundle(bundle, {"train": masks[:1].expand(3, -1, -1), "test": masks})


def test_cropped_classifier_runs_sit_beside_the_uncropped_ones(seg_env, trained):
    from support import runs
    from support.training import TrainConfig, train_one

    data = {"name": "phantom", "n": 60, "image_size": 64}
    plain = runs.Run(train_one(TrainConfig.from_profile("smoke", data=data), progress=False))
    [cropped] = [runs.Run(d) for d in seg.train_cropped("smoke", data, "cce", seeds=[0], progress=False)]
    assert cropped.path != plain.path and cropped.label == "cce · lung crop" and plain.label == "cce"
    assert cropped.metrics["data"]["lung_crop"]["seg_profile"] == "smoke"
    assert "lung crop" in cropped.metrics["data_source"]
    assert [r.path for r in runs.find_runs(data=data)] == [plain.path]   # cropped data is other data
    assert {r.path for r in runs.find_runs()} == {plain.path, cropped.path}  # seg-* folders are not read
    from support import compare
    table = compare.loss_table([plain, cropped], n_boot=50)
    assert sorted(table["loss"]) == ["cce", "cce · lung crop"]


# ----------------------------------------------------------------------------- mask folders
def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _montgomery(root, n=8, size=40):
    """A Montgomery-style tree: CXR_png/ + ManualMask/{leftMask,rightMask}/, same file names."""
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"MCUCXR_{i:04d}_0.png"
        _png(root / "CXR_png" / name, rng.integers(0, 256, (size, size)))
        left, right = np.zeros((size, size)), np.zeros((size, size))
        left[5:30, 4:16], right[5:30, 24:36] = 255, 255
        _png(root / "ManualMask" / "leftMask" / name, left)
        _png(root / "ManualMask" / "rightMask" / name, right)
    _png(root / "ManualMask" / "heart" / "MCUCXR_0000_0.png", np.zeros((size, size)))  # not a lung: ignored


def test_lungmasks_montgomery_layout_unites_left_and_right(seg_env, tmp_path):
    from support.data import load

    _montgomery(tmp_path)
    bundle = load("lungmasks", root=str(tmp_path), image_size=40, verbose=False)
    all_masks = torch.cat([bundle.splits[s].lung_masks for s in ("train", "val", "test")])
    assert len(all_masks) == 8 and all_masks[:, 10, 10].all() and all_masks[:, 10, 30].all()
    assert not all_masks[:, 10, 20].any()                 # the gap between the lungs
    assert bundle.splits["test"].ids[0].startswith("CXR_png/")


def test_lungmasks_bad_input_is_reported_and_nothing_lost(seg_env, tmp_path):
    from support.data import load

    _montgomery(tmp_path, n=10)
    mm = tmp_path / "ManualMask"
    (mm / "rightMask" / "MCUCXR_0001_0.png").unlink()                                    # missing mask
    _png(mm / "leftMask" / "MCUCXR_0002_0.png", np.full((30, 50), 255))                  # other size
    _png(mm / "leftMask" / "MCUCXR_0003_0.png", np.zeros((40, 40)))                      # empty
    noisy = np.zeros((40, 40))
    noisy[5:30, 4:16] = 250
    noisy[0, 0], noisy[0, 1] = 3, 7                                                       # JPEG-like levels
    _png(mm / "leftMask" / "MCUCXR_0004_0.png", noisy)
    _png(mm / "rightMask" / "MCUCXR_0005_0.png", np.kron(np.asarray(Image.open(mm / "rightMask" / "MCUCXR_0006_0.png")),
                                                         np.ones((2, 2))))                # 80x80: a common scale, fine
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = load("lungmasks", root=str(tmp_path), image_size=40, cache=False, verbose=False)
    text = "\n".join(str(w.message) for w in caught)
    assert any(w.category is SkippedImagesWarning for w in caught)
    assert "MCUCXR_0001_0" in text and "no mask named" in text
    assert "MCUCXR_0002_0" in text and "sizes differ" in text
    assert "MCUCXR_0003_0" in text and "empty" in text
    assert any(w.category is seg.NonBinaryMaskWarning and "MCUCXR_0004_0" in str(w.message) for w in caught)
    ids = [i for s in ("train", "val", "test") for i in bundle.splits[s].ids]
    assert len(ids) == 7 and any("0004" in i for i in ids) and any("0005" in i for i in ids)
    assert (tmp_path / "CXR_png" / "MCUCXR_0002_0.png").exists()  # nothing deleted
    with pytest.raises(ImageDecodeError, match="3 file"):
        load("lungmasks", root=str(tmp_path), image_size=40, cache=False, strict=True, verbose=False)


def test_lungmasks_shenzhen_layout_and_missing_folders(seg_env, tmp_path):
    from support.data import load

    rng = np.random.default_rng(1)
    for i in range(6):
        _png(tmp_path / "CXR_png" / f"CHNCXR_{i:04d}_0.png", rng.integers(0, 256, (32, 48)))
        mask = np.zeros((32, 48))
        mask[4:28, 6:42] = 255
        _png(tmp_path / "masks" / f"CHNCXR_{i:04d}_0_mask.png", mask)
    bundle = load("lungmasks", root=str(tmp_path), image_size=32, verbose=False)
    assert sum(len(bundle.splits[s]) for s in ("train", "val", "test")) == 6
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load("lungmasks", root=str(tmp_path / "nowhere"), verbose=False)
    with pytest.raises(FileNotFoundError, match="mask folder .*nope"):
        load("lungmasks", root=str(tmp_path), masks="nope", verbose=False)
