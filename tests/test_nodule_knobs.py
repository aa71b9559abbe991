"""Difficulty knobs of the nodule generator (issue 17) and the regime rule, loss tables and text built on them."""
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from support import data, profiles
from support.data import nodules as nd
from support.nodules import comparison, regime, writeup


def knob(strength=1.0, separation=1.0, **extra):
    return {"difficulty": {"margin_strength": strength, "size_separation": separation}, **extra}


def radial_profile(split, n_bins: int = 25) -> np.ndarray:
    """Pixel probe input: mean intensity in rings around the nodule centre (r / r0 in [0, 2.5]); rotation-
    invariant, so a linear probe can see spikes whatever their angles."""
    x = split.images.numpy() / 255.0
    yy, xx = np.mgrid[:x.shape[1], :x.shape[2]]
    m = split.meta
    r = np.hypot(xx[None] - m["x"].to_numpy()[:, None, None], yy[None] - m["y"].to_numpy()[:, None, None])
    ring = np.digitize(r / m["r0"].to_numpy()[:, None, None], np.linspace(0, 2.5, n_bins + 1))
    return np.stack([[img[k == b].mean() if (k == b).any() else 0.0 for b in range(1, n_bins + 1)]
                     for img, k in zip(x, ring)])


def pixel_probe(strength: float) -> float:
    """Balanced accuracy of a logistic regression on pixels (radial profiles) for margin, size independent."""
    b = nd.build(preset="test_decorrelated", n_train=600, n_val=0, n_test=400, image_size=48, spec=knob(strength))
    tr, te = b.splits["train"], b.splits["test"]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(radial_profile(tr), tr.labels.numpy())
    return balanced_accuracy_score(te.labels.numpy(), clf.predict(radial_profile(te)))


# ----------------------------------------------------------------------------- the knobs
def test_margin_strength_zero_makes_margin_undecodable_from_pixels():
    # 400 balanced test images: chance 0.5 with sd 0.025, so 0.6 is 4 sd away
    assert pixel_probe(0.0) < 0.6
    assert pixel_probe(1.0) > 0.85


def test_margin_strength_zero_renders_every_margin_alike_and_scales_the_spikes():
    rows = nd.sample_factors(nd.resolve_spec("train", knob(0.0), image_size=48), preset="train", split="t", n=32,
                             seed=0, image_size=48)
    smooth, _, _ = nd.counterfactuals(rows, {"margin": "smooth"})
    for level in ("spiculated", "lobulated"):
        other, _, meta = nd.counterfactuals(rows, {"margin": level})
        assert np.array_equal(other.numpy(), smooth.numpy()), level  # same draws, nothing visible of the margin
    assert (meta["n_spikes"] == 0).all()
    spikes = {s: nd.counterfactuals(rows, {"margin": "spiculated", "margin_strength": s})[2]["n_spikes"].mean()
              for s in (0.25, 0.5, 1.0)}
    assert 0 < spikes[0.25] < spikes[0.5] < spikes[1.0]


def test_size_separation_zero_makes_size_carry_no_label_information():
    n = 2000
    for separation, lo, hi in ((0.0, 0.44, 0.56), (1.0, 1.0, 1.0)):
        spec = nd.resolve_spec("train_redundant", knob(separation=separation))
        rows = nd.sample_factors(spec, preset="train_redundant", split="t", n=n, seed=0, image_size=64)
        assert (rows["shortcut_aligned"] == 1).all()  # rho 1: the size level always agrees with the label
        auc = roc_auc_score(rows["label"], rows["r0"])  # 4 sd of a chance AUROC at n = 2000 is ~0.05
        assert lo <= auc <= hi, (separation, auc)
    same = nd.radius_ranges(nd.resolve_spec("train", knob(separation=0.0)))
    assert same["small"] == same["large"] == (4.0, 14.0)
    half = nd.radius_ranges(nd.resolve_spec("train", knob(separation=0.5)))
    assert half == {"small": (4.0, 10.5), "large": (7.0, 14.0)}  # overlapping


def test_spikes_stay_inside_the_patch():
    spec = nd.resolve_spec("train", {"radius": {"small": [12.0, 14.0], "large": [12.0, 14.0]}}, image_size=48)
    rows = nd.sample_factors(spec, preset="train", split="t", n=64, seed=1, image_size=48)
    _, masks, meta = nd.counterfactuals(rows, {"margin": "spiculated", "x": 27.5, "y": 19.5})
    assert (meta["n_spikes"] > 0).all()
    border = np.ones((48, 48), bool)
    border[1:-1, 1:-1] = False
    assert not masks.numpy()[:, border].any()


def test_crossing_vessels_cross_the_nodule():
    rows = nd.sample_factors(nd.resolve_spec("train", image_size=48), preset="train", split="t", n=16, seed=0,
                             image_size=48)
    plain, _, _ = nd.counterfactuals(rows, {"n_crossing": 0})
    crossed, _, meta = nd.counterfactuals(rows, {"n_crossing": 2})
    diff = crossed.float() - plain.float()
    assert (diff >= -1).all() and (meta["n_crossing"] == 2).all()
    centre = diff[:, 20:28, 20:28].flatten(1).max(1).values  # the lines pass within r0/2 of the centre
    assert (centre > 20).all()
    drawn = nd.sample_factors(nd.resolve_spec("train", {"nuisance": {"n_crossing": [0, 2]}}, image_size=48),
                              preset="train", split="t", n=300, seed=0, image_size=48)
    assert set(drawn["n_crossing"]) == {0, 1, 2}


@pytest.mark.parametrize("spec, match", [
    (knob(1.5), r"difficulty margin_strength=1.5 must be a number in \[0.0, 1.0\]"),
    ({"difficulty": {"contrast": 0.5}}, r"unknown difficulty knob 'contrast'"),
    ({"nuisance": {"n_crossing": [0, 9]}}, r"nuisance n_crossing=\[0, 9\]"),
])
def test_bad_knobs_name_the_value(spec, match, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=match):
        data.load("nodules", n_train=2, n_val=2, n_test=2, verbose=False, spec=spec)


# ----------------------------------------------------------------------------- the regime rule
def map_table(cells):
    return pd.DataFrame([{"margin_strength": s, "rho": r, "conflict_accuracy": c, "learnability": l, "n_seeds": 2}
                         for s, r, c, l in cells])


def test_choose_cell_follows_the_rule():
    m = map_table([(0.4, 1.0, 0.02, 0.80), (0.6, 1.0, 0.45, 0.85),   # in range but not learnable
                   (0.8, 1.0, 0.35, 0.97), (0.8, 0.95, 0.62, 0.97),  # both qualify: 0.62 is nearer 0.5
                   (1.0, 1.0, 0.75, 1.00), (1.0, 0.95, 0.95, 1.00)])
    cell = regime.choose_cell(m)
    assert (cell["margin_strength"], cell["rho"], cell["meets_rule"]) == (0.8, 0.95, True)
    with pytest.raises(ValueError, match=r"no cell of the regime map.*\[0.3, 0.7\].*0.9"):
        regime.choose_cell(m, min_learnability=0.99)
    fallback = regime.choose_cell(m, min_learnability=0.99, strict=False)
    assert not fallback["meets_rule"] and fallback["conflict_accuracy"] == 0.45
    assert regime.neighbours((0.4, 0.6, 0.8, 1.0), 1.0) == [0.6, 0.8, 1.0]
    assert regime.neighbours((0.4, 0.6, 0.8, 1.0), 0.6) == [0.4, 0.6, 0.8]
    with pytest.raises(ValueError, match="training rho=0.7 has no training preset"):
        regime.cell_overrides({"data": {}}, 1.0, 0.7)


def test_cell_overrides_put_the_study_at_the_cell():
    over = regime.cell_overrides({"data": {"n_test": 10, "spec": {"nuisance": {"noise_sd": [0.05, 0.05]}}}}, 0.6, 1.0,
                                 seeds=(0, 1))
    assert over["train_preset"] == "train_redundant" and over["seeds"] == (0, 1)
    assert over["data"]["spec"] == {"nuisance": {"noise_sd": [0.05, 0.05]}, "difficulty": {"margin_strength": 0.6}}


def test_the_map_never_scores_on_the_study_test_images(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(tmp_path))
    cfg = {"image_size": 48, "n_train": 4, "n_val": 4, "n_test": 6, "seed": 0}
    on_map, on_test = regime.map_split(cfg, 0.8), regime.test_split(cfg, 0.8)
    assert len(on_map.labels) == len(on_test.labels) == 6
    assert not set(on_map.ids) & set(on_test.ids)
    assert not any(np.array_equal(a, b) for a in on_map.images.numpy() for b in on_test.images.numpy())
    for name in ("quick", "full"):  # the map's CE runs are not the study's cce runs
        section = profiles.get(name)["nodules"]
        assert not set(section["regime"]["seeds"]) & set(section["seeds"])


# ----------------------------------------------------------------------------- tables and text
def group_data(n=200):
    """test_decorrelated-like meta: four balanced groups; a size-reader is right exactly where size agrees."""
    label = np.repeat([0, 1], n // 2)
    aligned = np.tile([1, 0], n // 2)
    meta = pd.DataFrame({"label": label, "shortcut_aligned": aligned})
    size_large = np.where(aligned == 1, label, 1 - label)
    split = type("S", (), {"meta": meta})()
    return label, size_large, {"test_decorrelated": split}


def test_group_table_worst_group_and_gap():
    y, size_large, sets = group_data()
    preds = pd.DataFrame([{"label": "size-reader", "seed": 0, "preset": "test_decorrelated", "y": y,
                           "probs": size_large.astype(float)},
                          {"label": "margin-reader", "seed": 0, "preset": "test_decorrelated", "y": y,
                           "probs": y.astype(float)}])
    g = comparison.group_table(preds, sets).set_index("loss")
    assert g.loc["size-reader", "worst_group"] == 0.0 and g.loc["size-reader", "gap"] == 1.0
    assert g.loc["size-reader", "malignant/size agrees"] == 1.0
    assert g.loc["margin-reader", "worst_group"] == 1.0 and g.loc["margin-reader", "gap"] == 0.0


def test_paired_table_is_the_per_seed_difference_against_cce():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    rows = []
    for seed in range(4):
        right = rng.random(200) < 0.6 + 0.02 * seed
        for loss, shift in (("cce", 0), ("better", 0.3)):
            correct = right | (rng.random(200) < shift)
            rows.append({"label": loss, "seed": seed, "preset": "test_conflict", "y": y,
                         "probs": np.where(correct, y, 1 - y).astype(float) * 0.8 + 0.1})
    preds = pd.DataFrame(rows)
    paired = comparison.paired_table(preds, n_boot=200).iloc[0]
    acc = {l: np.array([((r["probs"] >= 0.5) == r["y"]).mean() for _, r in g.sort_values("seed").iterrows()])
           for l, g in preds.groupby("label")}
    assert paired["model_a"] == "better" and paired["delta"] == pytest.approx((acc["better"] - acc["cce"]).mean())
    assert paired["delta_lo"] > 0 and paired["significant"]
    with pytest.raises(ValueError, match="reference loss 'focal'"):
        comparison.paired_table(preds, reference="focal")


def test_write_up_sentences_follow_the_numbers():
    cell = pd.Series({"margin_strength": 0.8, "rho": 1.0, "conflict_accuracy": 0.42, "learnability": 0.97,
                      "meets_rule": True})
    text = writeup.regime_text(cell, map_table([(0.8, 1.0, 0.42, 0.97)]))[0]
    assert "margin strength 0.8, training ρ 1" in text and "0.420" in text and "0.970" in text
    assert "no cell" in writeup.regime_text(cell.copy().replace({True: False}), map_table([(0.8, 1.0, 0.9, 0.97)]))[0]
    paired = pd.DataFrame([{"model_a": "triplet", "delta": -0.3, "delta_lo": -0.5, "delta_hi": -0.1, "p_holm": 0.01,
                            "mde": 0.2, "significant": True, "n_seeds": 5},
                           {"model_a": "supcon", "delta": 0.05, "delta_lo": -0.1, "delta_hi": 0.2, "p_holm": 0.5,
                            "mde": 0.3, "significant": False, "n_seeds": 5}])
    text = writeup.paired_text(paired)[0]
    assert "behind cce: triplet" in text and "not separated from cce" in text and "supcon" in text
    assert "ahead of cce" not in text
    dfr = pd.DataFrame([{"loss": "cce", "as_trained": 0.5, "after_dfr": 0.95, "recovery": 0.45, "recovery_lo": 0.3,
                         "recovery_hi": 0.6},
                        {"loss": "triplet", "as_trained": 0.2, "after_dfr": 0.25, "recovery": 0.05,
                         "recovery_lo": -0.05, "recovery_hi": 0.15}])
    text = writeup.dfr_text(dfr, 0.99)[0]
    assert "cce 0.500 -> 0.950" in text and "encoded; the trained last layer under-used it" in text
    assert "no measurable recovery" in text and "0.990" in text
