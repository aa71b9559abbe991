"""The synthetic-nodule source: determinism, preset distributions, counterfactuals, errors, cache.

Distribution checks use binomial 4-sigma bounds: a level with probability p among n draws has
count sd sqrt(n p (1 - p)), so |frequency - p| <= 4 sqrt(p (1 - p) / n) fails by chance ~6e-5 times.
"""
import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from support import data
from support.data import nodules as nd

N = 4000  # rows per factor table: 4 sigma at p = 0.5 is 0.032


def within_4_sigma(freq: float, p: float, n: int) -> bool:
    return abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12


def table(preset: str, n: int = N, seed: int = 0, **overrides) -> pd.DataFrame:
    spec = nd.resolve_spec(preset, **overrides)
    return nd.sample_factors(spec, preset=preset, split="train", n=n, seed=seed, image_size=64)


@pytest.fixture(scope="module")
def small():
    """One small rendered bundle shared by the pixel tests (no cache)."""
    return nd.build(n_train=64, n_val=8, n_test=8)


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_data_other_seed_other_data(small):
    again = nd.build(n_train=64, n_val=8, n_test=8)
    other = nd.build(seed=1, n_train=64, n_val=8, n_test=8)
    for s in data.SPLITS:
        assert torch.equal(small.splits[s].images, again.splits[s].images)
        assert torch.equal(small.splits[s].lesion_masks, again.splits[s].lesion_masks)
        pd.testing.assert_frame_equal(small.splits[s].meta, again.splits[s].meta)
    assert not torch.equal(small.splits["train"].images, other.splits["train"].images)
    # splits draw from different streams: no image repeats across them
    assert not torch.equal(small.splits["val"].images, small.splits["train"].images[:8])


def test_bundle_follows_the_data_contract(small):
    assert small.classes == ("benign", "malignant")
    split = small.splits["train"]
    assert split.images.dtype == torch.uint8 and split.images.shape == (64, 64, 64)
    assert split.lung_masks is None and split.lesion_masks.dtype == torch.bool
    assert list(split.meta.columns) == list(nd.META_COLUMNS)
    assert torch.equal(split.labels, torch.tensor(split.meta["label"].to_numpy()))
    assert len(set(split.ids)) == len(split)


# ----------------------------------------------------------------------------- distributions
@pytest.mark.parametrize("preset", list(nd.PRESETS))
def test_factor_frequencies_and_rho_match_the_preset(preset):
    spec = nd.resolve_spec(preset)
    rows = table(preset)
    label, short = spec["label"], spec["shortcut"]
    assert (rows["label"] == 1).sum() == N // 2  # exact 50/50
    if short is not None:  # rho = P(shortcut level is the label's), per class
        for y in (0, 1):
            aligned = rows.loc[rows["label"] == y, "shortcut_aligned"]
            assert within_4_sigma(aligned.mean(), short["rho"], len(aligned)), (preset, y, aligned.mean())
    else:
        assert (rows["shortcut_aligned"] == -1).all()
    for factor, dist in spec["factors"].items():
        if factor in (label["factor"], short and short["factor"]):
            continue
        for y in (0, 1):  # independent of the label
            values = rows.loc[rows["label"] == y, factor]
            for level, p in dist.items():
                assert within_4_sigma((values == level).mean(), p, len(values)), (preset, factor, level)
    nui = spec["nuisance"]
    assert rows["background"].between(*nui["background"]).all()
    assert rows["n_vessels"].between(*nui["n_vessels"]).all() and rows["n_vessels"].nunique() == 4
    assert ((rows[["x", "y"]] - 31.5).abs() <= nui["jitter"]).all().all()
    for size, (lo, hi) in spec["radius"].items():
        assert rows.loc[rows["size"] == size, "r0"].between(lo, hi).all()


def test_label_follows_margin_by_default_and_the_configured_factor_otherwise(small):
    meta = small.splits["train"].meta
    assert ((meta["margin"] == "spiculated") == (meta["label"] == 1)).all()
    assert set(meta.loc[meta["label"] == 0, "margin"]) == {"smooth"}
    rows = table("train", n=400, label_factor="density", shortcut_factor="none")
    assert ((rows["density"] == "ground_glass") == (rows["label"] == 1)).all()
    assert set(table("test_lobulated", n=200).query("label == 0")["margin"]) == {"lobulated"}
    sizes = table("test_size_only", n=400)
    assert ((sizes["size"] == "large") == (sizes["label"] == 1)).all()


@pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
def test_requested_rho_overrides_the_preset(rho):
    rows = table("train", rho=rho)
    assert within_4_sigma(rows["shortcut_aligned"].mean(), rho, N)
    assert (rows["rho"] == rho).all()


def test_user_spec_as_dict_json_text_and_file(tmp_path):
    spec = {"shortcut": {"factor": "density", "benign": "solid", "malignant": "ground_glass", "rho": 0.8},
            "factors": {"size": {"small": 0.25, "large": 0.75}}}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(spec))
    resolved = [nd.resolve_spec("train", s) for s in (spec, json.dumps(spec), str(path))]
    assert resolved[0] == resolved[1] == resolved[2]
    rows = nd.sample_factors(resolved[0], preset="train", split="train", n=N, seed=3, image_size=64)
    assert within_4_sigma((rows["size"] == "large").mean(), 0.75, N)
    assert within_4_sigma(rows["shortcut_aligned"].mean(), 0.8, N)


# ----------------------------------------------------------------------------- pixels
def test_pixels_show_the_factors(small):
    split = small.splits["train"]
    meta, images, masks = split.meta, split.images.float() / 255, split.lesion_masks
    area = masks.flatten(1).sum(1).numpy()
    body = meta["margin"] != "spiculated"  # mask area of a body without spikes ~ pi r0^2 (1 + a^2/2)
    ratio = area[body] / (np.pi * meta.loc[body, "r0"] ** 2)
    assert ratio.between(0.8, 1.25).all(), ratio.describe()
    inside = (images * masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
    solid = torch.tensor((meta["density"] == "solid").to_numpy())
    assert inside[solid].min() > inside[~solid].max()  # solid ~0.8, ground-glass ~0.45


# ----------------------------------------------------------------------------- counterfactuals
def test_unchanged_counterfactual_reproduces_the_data(small):
    split = small.splits["train"]
    images, masks, meta = nd.counterfactuals(split.meta, {})
    assert torch.equal(images, split.images) and torch.equal(masks, split.lesion_masks)
    pd.testing.assert_frame_equal(meta[list(nd.META_COLUMNS)], split.meta)


@pytest.mark.parametrize("factor, value, derived", [
    ("density", "ground_glass", {"fill"}),
    ("size", "small", {"r0", "shortcut_aligned"}),
    ("margin", "lobulated", {"a_lob", "n_spikes", "label", "shortcut_aligned"}),  # margin is the label
    ("n_vessels", 0, set()),
])
def test_counterfactual_changes_only_its_factor(small, factor, value, derived):
    split = small.splits["train"]
    keep = np.array(split.meta[factor] != value)
    before = split.meta[keep].reset_index(drop=True)
    images, masks, after = nd.counterfactuals(before, {factor: value})
    after = after[list(nd.META_COLUMNS)]
    changed = {c for c in after if not after[c].equals(before[c])}
    assert factor in changed and changed <= {factor} | derived, changed
    assert (after[factor] == value).all()
    assert (images != split.images[keep]).flatten(1).any(1).all()  # every image's pixels differ
    if factor == "density":  # same background and noise: pixels far from the nodule are identical
        yy, xx = np.mgrid[0:64, 0:64]
        far = torch.as_tensor(np.stack([np.hypot(xx - x, yy - y) > 2.2 * r + 3 for x, y, r in
                                        before[["x", "y", "r0"]].to_numpy()]))
        assert torch.equal(images[far], split.images[keep][far])
    if factor == "margin":
        assert (after["label"] == 0).all()  # "margin=spiculated" rule: lobulated is benign


def test_counterfactual_of_a_factor_dict_and_one_row(small):
    image, mask = nd.counterfactual({"size": "small", "margin": "spiculated"})
    big, big_mask = nd.counterfactual({"size": "large", "margin": "spiculated"})
    assert image.shape == (64, 64) and mask.sum() < big_mask.sum()
    row = small.splits["val"].meta.iloc[3]
    same, _ = nd.counterfactual(row)
    assert torch.equal(same, small.splits["val"].images[3])


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("params, error, match", [
    ({"preset": "test_nope"}, ValueError, r"unknown nodule preset 'test_nope'.*test_conflict"),
    ({"label_factor": "colour"}, ValueError, r"unknown factor 'colour'.*size, margin, density"),
    ({"spec": {"factors": {"texture": {"a": 1.0}}}}, ValueError, r"unknown factor 'texture'"),
    ({"rho": 1.5}, ValueError, r"rho=1.5 is outside \[0, 1\]"),
    ({"rho": -0.5}, ValueError, r"rho=-0.5 is outside"),
    ({"label_factor": "size"}, ValueError, r"label factor 'size' is also marked as the shortcut"),
    ({"image_size": 24}, ValueError, r"does not fit image_size=24"),
    ({"spec": {"radius": {"small": [4, 7], "large": [30, 40]}}}, ValueError, r"r0 up to 40 px"),
    ({"spec": {"label": {"malignant": "huge"}}}, ValueError, r"unknown margin level 'huge'"),
    ({"seed": "0"}, TypeError, r"seed='0'"),
])
def test_bad_input_names_the_value(params, error, match, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(tmp_path))
    with pytest.raises(error, match=match):
        data.load("nodules", n_train=2, n_val=2, n_test=2, verbose=False, **params)


@pytest.mark.parametrize("change, match", [
    ({"colour": 1}, r"unknown factor 'colour'"),
    ({"size": "huge"}, r"unknown size level 'huge'"),
    ({"n_vessels": 2.5}, r"n_vessels=2.5"),
    ({"x": 80.0}, r"x=80.0"),
])
def test_bad_counterfactual_names_the_value(small, change, match):
    with pytest.raises(ValueError, match=match):
        nd.counterfactual(small.splits["test"].meta.iloc[0], change)


# ----------------------------------------------------------------------------- speed and cache
def test_speed_is_reported():
    rows = table("train", n=1000)
    nd.render(rows.iloc[:8])  # warm-up: blur matrices and grids
    start = time.perf_counter()
    nd.render(rows)
    rate = len(rows) / (time.perf_counter() - start)
    print(f"\nnodules: {rate:.0f} patches/s at 64x64 (torch threads {torch.get_num_threads()})")


def test_load_round_trips_through_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(tmp_path))
    study = nd.load_study(seed=2, n_train=40, n_val=10, n_test=20, tests=("test_conflict",), verbose=False)
    assert set(study) == {"train", "test_conflict"} and len(study["test_conflict"].splits["train"]) == 0
    files = sorted((tmp_path / "cache").glob("nodules-*.npz"))
    assert len(files) == 2
    again = nd.load_study(seed=2, n_train=40, n_val=10, n_test=20, tests=("test_conflict",), verbose=False)
    assert sorted((tmp_path / "cache").glob("nodules-*.npz")) == files  # read, not rebuilt
    for name, bundle in study.items():
        for s in data.SPLITS:
            a, b = bundle.splits[s], again[name].splits[s]
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.ids == b.ids
            assert torch.equal(a.lesion_masks, b.lesion_masks)
            assert list(a.meta.columns) == list(b.meta.columns)
            if len(a):  # the cache keeps meta as JSON: dtypes (rho 0.0 -> int, empty tables) may change
                pd.testing.assert_frame_equal(a.meta, b.meta, check_exact=False, rtol=1e-12, check_dtype=False)
    cached = again["test_conflict"].splits["test"]
    assert (cached.meta["shortcut_aligned"] == 0).all()
    assert torch.equal(nd.counterfactuals(cached.meta, {})[0], cached.images)  # from cached meta
    # a changed preset definition changes the cache key (the resolved spec is fingerprinted)
    monkeypatch.setitem(nd.PRESETS, "test_conflict", {"shortcut": {"rho": 0.1}})
    changed = data.load("nodules", preset="test_conflict", seed=2, n_train=0, n_val=0, n_test=20, verbose=False)
    assert len(list((tmp_path / "cache").glob("nodules-*.npz"))) == 3
    assert changed.splits["test"].meta["shortcut_aligned"].sum() == 2


def test_preview_grid_has_one_row_per_level():
    import matplotlib.pyplot as plt

    fig = nd.preview_grid("margin", n=3)
    assert len(fig.axes) == 3 * 3
    plt.close(fig)
    with pytest.raises(ValueError, match="unknown factor 'shape'"):
        nd.preview_grid("shape")
