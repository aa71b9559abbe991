"""support.localization: metrics with hand-derived answers, CAM shapes, ensembles, bad input, a tiny end-to-end run."""
import numpy as np
import pandas as pd
import pytest
import torch

from support import localization as loc, models
from support.localization import metrics as M

# ----------------------------------------------------------------------------- metrics (hand-built)
SIZE = 10


def _rows_mask(r0, r1):
    m = np.zeros((SIZE, SIZE), bool)
    m[r0:r1] = True
    return m


MASK = _rows_mask(0, 5)                     # top half: area fraction 50/100 = 0.5


def test_pointing_game_peak_inside_and_outside():
    inside = np.zeros((SIZE, SIZE)); inside[2, 3] = 1.0          # row 2 is in the mask
    outside = np.zeros((SIZE, SIZE)); outside[8, 3] = 1.0        # row 8 is not
    got = loc.pointing_game(np.stack([inside, outside]), np.stack([MASK, MASK]))
    np.testing.assert_array_equal(got, [1.0, 0.0])


@pytest.mark.parametrize("value", [0.0, 0.7], ids=["all_zero", "uniform"])
def test_uninformative_cam_scores_the_mask_area(value):
    mask = np.zeros((SIZE, SIZE), bool); mask[:2, :3] = True     # 6 px of 100 -> 0.06
    cam = np.full((SIZE, SIZE), value)
    # uniform: energy = sum over mask / total = 6v / 100v; pointing: every pixel is a tied maximum, 6 of 100 inside
    assert loc.energy_inside(cam, mask)[0] == pytest.approx(0.06)
    assert loc.pointing_game(cam, mask)[0] == pytest.approx(0.06)
    assert loc.area_fraction(cam, mask)[0] == pytest.approx(0.06)


def test_energy_inside_weighted():
    mask = np.zeros((SIZE, SIZE), bool); mask[:2, :2] = True     # 4 px
    cam = np.ones((SIZE, SIZE)); cam[mask] = 3.0
    # 4 * 3 = 12 inside, 96 * 1 outside -> 12 / 108
    assert loc.energy_inside(cam, mask)[0] == pytest.approx(12 / 108)


def test_iou_dice_at_threshold_and_best_threshold():
    cam = np.full((SIZE, SIZE), 0.2); cam[:3] = 1.0                # rows 0-2 hot
    # t = 0.5: CAM region = rows 0-2 (30 px), mask = rows 0-4 (50 px): IoU = 30/50, Dice = 60/80
    assert loc.iou(cam, MASK, 0.5)[0] == pytest.approx(0.6)
    assert loc.dice(cam, MASK, 0.5)[0] == pytest.approx(0.75)
    # t <= 0.2 selects every pixel: IoU = 50/100; any t in (0.2, 1] gives 0.6 -> the first grid value above 0.2
    assert loc.iou(cam, MASK, 0.1)[0] == pytest.approx(0.5)
    assert loc.best_threshold(cam[None], MASK[None]) == pytest.approx(0.25)


def test_empty_mask_is_undefined_not_zero():
    cam = np.random.default_rng(0).random((SIZE, SIZE))
    empty = np.zeros((SIZE, SIZE), bool)
    for name in loc.LOC_METRICS.names():
        assert np.isnan(loc.LOC_METRICS.get(name)(cam, empty)[0]), name
    with pytest.raises(loc.LocalizationError, match="non-empty mask"):
        loc.best_threshold(cam[None], empty[None])


@pytest.mark.parametrize("cams, masks, match", [
    (np.ones((2, 8, 8)), np.ones((2, 4, 4), bool), "one shape"),
    (-np.ones((1, 4, 4)), np.ones((1, 4, 4), bool), ">= 0"),
    (np.ones((1, 4, 4)), np.ones((1, 4, 4), int), "must be bool"),
], ids=["size", "negative", "dtype"])
def test_metric_input_errors(cams, masks, match):
    with pytest.raises(loc.LocalizationError, match=match):
        loc.energy_inside(cams, masks)
    with pytest.raises(loc.LocalizationError, match="relative"):
        M.binarize(np.ones((1, 4, 4)), 1.5)


def test_ensemble_cam_identical_members_and_weights():
    cam = np.random.default_rng(1).random((3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(loc.ensemble_cam([cam, cam, cam], [0.2, 0.5, 0.3]), cam, rtol=1e-6)
    np.testing.assert_allclose(loc.ensemble_cam([cam, np.zeros_like(cam)], [3, 1]), 0.75 * cam, rtol=1e-6)
    with pytest.raises(loc.LocalizationError, match="non-negative"):
        loc.ensemble_cam([cam, cam], [1.0, -1.0])
    with pytest.raises(loc.LocalizationError, match="shape"):
        loc.ensemble_cam([cam, cam[:, :8]])


# ----------------------------------------------------------------------------- CAMs on models
def _images(n=3, size=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "eigencam", "layercam"])
def test_every_method_gives_input_sized_cams_in_unit_range(method):
    torch.manual_seed(0)
    model = models.build("small_cnn", 3, dcl_channels=16, width=4).eval()
    with loc.CamExtractor(model, method) as cam:
        out = cam(_images(), [0, 1, 2])
        again = cam(_images(seed=1), [2, 2, 2])      # the same object serves many batches
    assert out.shape == (3, 32, 32) and again.shape == (3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1 + 1e-6


ARCHS = [a for a in models.names() if a != "model_level"]
FAST = {"small_cnn", "nodule_cnn", "resnet18"}


@pytest.mark.parametrize("arch, head", [(a, "paper") if a in FAST else pytest.param(a, "paper", marks=pytest.mark.slow)
                                        for a in ARCHS] + [("small_cnn", "linear"), ("resnet18", "linear")])
def test_cam_size_for_every_arch(arch, head):
    torch.manual_seed(0)
    model = models.build(arch, 3, head=head, dcl_channels=8).eval()
    for size in (32, 48):
        cams = loc.compute_cams(model, _images(2, size), [1, 2], "gradcam")
        assert cams.shape == (2, size, size), (arch, head, size)


def test_bad_inputs_raise_clear_errors():
    model = models.build("small_cnn", 3, dcl_channels=8, width=4).eval()
    with pytest.raises(loc.LocalizationError, match="no layer 'nope'"):
        loc.CamExtractor(model, "gradcam", layer="nope")
    with pytest.raises(loc.LocalizationError, match="has no .dcl"):
        loc.CamExtractor(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), "gradcam")
    with pytest.raises(ValueError, match="unknown CAM method 'gradkam'.*Did you mean 'gradcam'"):
        loc.CamExtractor(model, "gradkam")
    with loc.CamExtractor(model, "gradcam") as cam:
        with pytest.raises(loc.LocalizationError, match="images are on meta but the model is on cpu"):
            cam(_images().to("meta"), [0, 0, 0])
        with pytest.raises(loc.LocalizationError, match="uint8 tensor"):
            cam(_images().float(), [0, 0, 0])
        with pytest.raises(loc.LocalizationError, match="2 targets for 3 images"):
            cam(_images(), [0, 0])
    with pytest.raises(loc.LocalizationError, match="closed"):
        cam(_images(), [0, 0, 0])


def test_resize_cams_keeps_range():
    cams = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    big = loc.resize_cams(cams, 32)
    assert big.shape == (2, 32, 32) and big.min() >= 0 and big.max() <= cams.max() + 1e-6


# ----------------------------------------------------------------------------- phantom marker, boxes, summary
def test_marker_region_covers_every_drawn_marker():
    from support.data.phantom import _draw_marker, marker_region

    for size in (64, 128):
        for state in (1, 2):
            region = marker_region(size, state)
            assert 0 < region.mean() < 0.05
            for s in range(30):
                out = np.zeros((size, size), np.uint8)
                _draw_marker(np.random.default_rng(s), out, state)
                assert (out > 0).any() and not (out > 0)[~region].any(), (size, state, s)
        assert not marker_region(size, "none").any()


def test_box_csv_to_masks_and_errors(tmp_path):
    csv = tmp_path / "boxes.csv"
    csv.write_text("patientId,x,y,width,height,Target\nabc,0,0,512,256,1\nabc,512,512,512,512,1\nneg,,,,,0\n")
    masks, listed = loc.box_masks(["/data/abc.png", "neg", "other"], loc.read_boxes(csv), (8, 8), source_size=1024)
    # box 1 -> rows 0-1, cols 0-3 (8 px); box 2 -> rows 4-7, cols 4-7 (16 px)
    assert masks[0].sum() == 24 and masks[0][:2, :4].all() and masks[0][4:, 4:].all()
    assert not masks[1].any() and not masks[2].any()
    np.testing.assert_array_equal(listed, [True, True, False])
    (tmp_path / "bad.csv").write_text("id,x,y\n1,2,3\n")
    with pytest.raises(loc.LocalizationError, match="lacks column"):
        loc.read_boxes(tmp_path / "bad.csv")
    with pytest.raises(loc.LocalizationError, match="does not exist"):
        loc.read_boxes(tmp_path / "missing.csv")


def test_summary_seed_mean_and_interval():
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1):
        for i in range(20):
            rows.append({"entry": "a", "kind": "single", "seed": seed, "method": "gradcam", "image_id": f"im{i}",
                         "label": 1 + i % 2, "lesion_energy": i / 20 + 0.1 * seed, "road": np.nan if i else 0.5})
    long = loc.summary(pd.DataFrame(rows), n_boot=200)
    e = long.set_index("metric").loc["lesion_energy"]
    # per image mean over seeds = i/20 + 0.05, mean over i = 0.475 + 0.05; seed means 0.475 and 0.575
    assert e["value"] == pytest.approx(0.525)
    assert e["sd"] == pytest.approx(np.std([0.475, 0.575], ddof=1))
    assert e["boot_lo"] < 0.525 < e["boot_hi"] and e["n_images"] == 20 and e["n_seeds"] == 2
    assert long.set_index("metric").loc["road", "n_images"] == 1     # NaN images are not counted
    _ = rng


# ----------------------------------------------------------------------------- end to end on tiny runs
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two smoke-sized runs (cce, focal; lockstep) on a 240-image phantom."""
    from support import profiles, runs, training
    from support.data import load

    root = tmp_path_factory.mktemp("loc")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("DATA", "RUNS", "FIGURES"):
            mp.setenv(f"LOSSBENCH_{var}_DIR", str(root / var.lower()))
        data = {"name": "phantom", "n": 240, "image_size": 64}
        bundle = load(**data, verbose=False)
        configs = [training.TrainConfig.from_profile("smoke", data=data, loss=l, seed=0, max_epochs=2)
                   for l in ("cce", "focal")]
        found = [runs.Run(p) for p in training.train_many(configs, progress=False, data=bundle)]
        yield found, bundle, mp, profiles


@pytest.mark.slow
def test_evaluate_runs_and_ensemble_end_to_end(tiny):
    found, bundle, mp, _ = tiny
    entries = loc.single_entries(found)
    entries.append(loc.Entry("average", "ensemble", 0, found, [0.5, 0.5]))
    entries.append(loc.Entry("cce twice", "ensemble", 0, [found[0], found[0]], [0.3, 0.7]))
    kw = dict(methods=["gradcam", "eigencam"], n_images=6, threshold_images=6, road_images=2,
              road_percentiles=(30, 70), progress=False)
    res = loc.evaluate(entries, bundle, **kw)
    pi = res.per_image
    assert set(pi["entry"]) == {"cce", "focal", "average", "cce twice"}
    assert len(pi) == 4 * 2 * 6
    test = bundle.splits["test"]
    assert test.lesion_masks[res.test_index].flatten(1).any(1).all()        # only images with lesions
    for col in ("lesion_pointing", "lesion_energy", "lesion_iou@best", "lung_energy"):
        assert pi[col].between(0, 1).all(), col
    # an ensemble of one model with itself is that model
    a = pi[(pi.entry == "cce")].drop(columns=["entry", "kind", "road"]).reset_index(drop=True)
    b = pi[(pi.entry == "cce twice")].drop(columns=["entry", "kind", "road"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert pi.loc[pi.entry == "cce", "road"].notna().sum() == 2 * 1      # gradcam only, 2 images
    assert pi.loc[pi.entry == "average", "road"].isna().all()
    # cached: a second call reads the CAM files and gives the same numbers
    from support import paths
    n_files = len(list((paths.runs_dir() / "localization").rglob("*.npz")))
    again = loc.evaluate(entries, bundle, **kw)
    assert len(list((paths.runs_dir() / "localization").rglob("*.npz"))) == n_files
    pd.testing.assert_frame_equal(again.per_image, pi)
    long = loc.summary(pi, n_boot=50)
    table = loc.display_table(long, "gradcam")
    assert list(table["entry"])[:1] and "lesion_pointing" in table.columns
    assert "pointing game" in loc.conclusions(long, "gradcam")
    numeric = loc.numeric_table(long, "gradcam")          # the CSV notebook 09 reads (headline: pointing)
    assert {"pointing", "pointing_boot_lo", "energy_boot_hi", "iou", "road"} <= set(numeric.columns)
    assert numeric["pointing"].is_monotonic_decreasing and len(numeric) == 4


@pytest.mark.slow
def test_missing_lesion_masks_are_skipped_with_a_note(tiny):
    from dataclasses import replace

    found, bundle, mp, _ = tiny
    no_lesions = replace(bundle, splits={k: replace(s, lesion_masks=None) for k, s in bundle.splits.items()})
    res = loc.evaluate(loc.single_entries(found[:1]), no_lesions, methods=["gradcam"], n_images=4, progress=False)
    assert any("no lesion masks" in n for n in res.notes)
    assert not [c for c in res.per_image.columns if c.startswith("lesion_")]   # skipped, not zeros
    assert res.per_image["lung_energy"].between(0, 1).all()


def test_shortcut_config_errors():
    with pytest.raises(loc.LocalizationError, match=r"marker_bias=0 must lie in \(0, 1\]"):
        loc.shortcut.configs("smoke", {"name": "phantom", "n": 240}, ["cce"], 0)
    with pytest.raises(loc.LocalizationError, match="needs the phantom"):
        loc.shortcut.configs("smoke", {"name": "kermany", "root": "/x"}, ["cce"], 0.5)
