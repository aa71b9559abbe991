"""The regime knobs of the phantom (label noise, acquisition shift) and the regime study (support.regimes)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from support.data import phantom
from support.data.core import resolve_params
from support.data.phantom_knobs import SHIFT_PRESETS

N, SIZE = 600, 32


@pytest.fixture(scope="module")
def clean():
    return phantom.build(seed=1, n=N, image_size=SIZE)


@pytest.fixture(scope="module")
def shifted():
    return phantom.build(seed=1, n=N, image_size=SIZE, shift="hospital_b")


def _noisy(structure, rate=0.2):
    return phantom.build(seed=1, n=N, image_size=SIZE, label_noise=rate, noise_structure=structure)


# ----------------------------------------------------------------------------- label noise
@pytest.mark.parametrize("structure", ["symmetric", "pneumonia_mild"])
def test_noise_flips_exactly_the_share_and_structure_and_never_a_test_label(clean, structure):
    noisy = _noisy(structure)
    for name in ("train", "val", "test"):
        a, b = clean.splits[name], noisy.splits[name]
        assert np.array_equal(a.images, b.images) and a.ids == b.ids     # the films are drawn from the true labels
        true, given = a.labels.numpy(), b.labels.numpy()
        assert np.array_equal(b.meta["true_label"], true)
        assert np.array_equal(b.meta["label_flipped"], true != given)   # the bundle records which were flipped
        assert np.array_equal(b.meta["label"], given)
        flipped = true != given
        if name == "test":
            assert not flipped.any()
            continue
        eligible = len(true) if structure == "symmetric" else int((true > 0).sum())
        assert flipped.sum() == round(0.2 * eligible) > 0
        if structure == "pneumonia_mild":
            assert set(zip(true[flipped], given[flipped])) <= {(1, 2), (2, 1)}  # bacterial <-> viral only
            severity = b.meta["severity"].to_numpy()
            kept = (true > 0) & ~flipped
            assert severity[flipped].mean() < severity[kept].mean() - 0.1    # mostly the mild cases
        else:
            assert {0, 1, 2} <= set(true[flipped]) and (given[flipped] != true[flipped]).all()


def test_bad_noise_values_are_named():
    with pytest.raises(ValueError, match="label_noise=0.8"):
        phantom.build(n=60, image_size=32, label_noise=0.8)
    with pytest.raises(ValueError, match="noise_structure='mild'.*pneumonia_mild"):
        phantom.build(n=60, image_size=32, label_noise=0.1, noise_structure="mild")
    with pytest.raises(ValueError, match="shift='hospital_c'.*hospital_b"):
        phantom.build(n=60, image_size=32, shift="hospital_c")


def test_default_knobs_keep_the_clean_data_and_its_keys(clean):
    explicit = phantom.build(seed=1, n=N, image_size=SIZE, label_noise=0.0, noise_structure="symmetric", shift=None)
    for name in ("train", "val", "test"):
        assert np.array_equal(clean.splits[name].images, explicit.splits[name].images)
        assert list(clean.splits[name].meta.columns) == list(explicit.splits[name].meta.columns)
    _, plain = resolve_params("phantom", {"n": N})
    _, defaults = resolve_params("phantom", {"n": N, "label_noise": 0.0, "shift": None})
    _, noisy = resolve_params("phantom", {"n": N, "label_noise": 0.2})
    assert plain == defaults and "label_noise" not in plain   # cache and run keys of the clean data unchanged
    assert noisy["label_noise"] == 0.2                          # a regime gets keys of its own


# ----------------------------------------------------------------------------- acquisition shift
def test_shift_changes_the_test_acquisition_and_nothing_about_labels(clean, shifted):
    for name in ("train", "val"):
        assert np.array_equal(clean.splits[name].images, shifted.splits[name].images)
    for name in ("train", "val", "test"):
        assert np.array_equal(clean.splits[name].labels, shifted.splits[name].labels)
        assert clean.splits[name].ids == shifted.splits[name].ids
    a, b = clean.splits["test"], shifted.splits["test"]
    preset = SHIFT_PRESETS["hospital_b"]
    # the same patients (anatomy, pathology, severity) filmed with the preset's film parameters
    assert np.allclose(b.meta["severity"], a.meta["severity"])
    for column in ("exposure", "contrast", "grain"):
        assert np.allclose(b.meta[column], a.meta[column] * preset[column])
    assert (b.meta["blur"] > a.meta["blur"]).all()
    x, z = (s.images.numpy().astype(float) for s in (a, b))
    assert z.std(axis=(1, 2)).mean() < 0.95 * x.std(axis=(1, 2)).mean()          # flatter films
    from scipy.ndimage import median_filter

    grain = lambda im: np.abs(im - median_filter(im, size=(1, 3, 3))).mean()     # pixel noise around a 3x3 median
    assert grain(z) > 1.3 * grain(x)                                               # grainier
    stamp = b.meta["device_marker"].to_numpy()
    assert abs(stamp.mean() - preset["device_marker"][1]) < 0.2
    assert not shifted.splits["train"].meta["device_marker"].any()
    assert set(b.meta["acquisition"]) == {"shifted"} and set(shifted.splits["train"].meta["acquisition"]) == {"reference"}
    assert not np.array_equal(x[stamp], z[stamp])


def test_a_custom_shift_dict_and_its_checks():
    b = phantom.build(seed=1, n=60, image_size=32, shift={"grain": 3.0})
    a = phantom.build(seed=1, n=60, image_size=32)
    assert np.allclose(b.splits["test"].meta["grain"], 3 * a.splits["test"].meta["grain"])
    assert np.allclose(b.splits["test"].meta["contrast"], a.splits["test"].meta["contrast"])
    with pytest.raises(ValueError, match="unknown field.*'gain'"):
        phantom.build(n=60, image_size=32, shift={"gain": 2.0})
    with pytest.raises(ValueError, match="device_marker"):
        phantom.build(n=60, image_size=32, shift={"device_marker": (0.0, 1.5)})


# ----------------------------------------------------------------------------- still a CNN task
def test_logistic_regression_on_pixels_stays_at_or_below_070_in_every_regime(clean, shifted):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    flat = lambda s: s.images.numpy().reshape(len(s), -1).astype(np.float32) / 255
    bundles = {"clean": clean, "label noise": _noisy("pneumonia_mild"), "symmetric noise": _noisy("symmetric"),
               "shift": shifted}
    for regime, b in bundles.items():
        train, val, test = (b.splits[s] for s in ("train", "val", "test"))
        X = np.concatenate([flat(train), flat(val)])
        y = np.concatenate([train.labels.numpy(), val.labels.numpy()])
        scaler = StandardScaler().fit(X)
        model = LogisticRegression(C=0.01, max_iter=300).fit(scaler.transform(X), y)
        acc = (model.predict(scaler.transform(flat(test))) == test.labels.numpy()).mean()
        assert acc <= 0.70, f"{regime}: a linear model on pixels reaches {acc:.3f}"


# ----------------------------------------------------------------------------- the regime study
def test_regime_settings_and_seeds():
    from support import profiles, regimes

    for name in profiles.names():
        spec = regimes.settings(name)
        assert spec["reference"] in spec["losses"] and set(spec["losses"]) <= set(profiles.get(name)["losses"])
    assert regimes.seeds_of("quick", "label_noise") == [0, 1, 2]                 # new runs: the section's seeds
    assert regimes.seeds_of("quick", "shift") == regimes.seeds_of("quick", "clean") == list(profiles.get("quick")["seeds"])
    assert len(regimes.settings("full")["losses"]) == 12
    assert regimes.regime_of({"n": 10}) == "clean"
    assert regimes.regime_of({"label_noise": 0.2, "noise_structure": "pneumonia_mild"}) == "label_noise"
    assert regimes.regime_of({"label_noise": 0.1}) == "other"


def test_regime_study_on_the_smoke_profile(isolated_dirs):
    from support import regimes, runs, training

    regimes.train("smoke", progress=False)
    s = regimes.study("smoke")
    assert list(s["regimes"]) == ["clean", "label_noise", "shift"]
    keys = {r: {run.key for run in regimes.runs("smoke", "phantom", r)} for r in ("clean", "label_noise")}
    assert not keys["clean"] & keys["label_noise"]                            # regimes never share a run
    noisy = regimes.runs("smoke", "phantom", "label_noise")[0]
    assert noisy.metrics["data"]["label_noise"] == 0.2 and "label noise" in noisy.metrics["data_source"]
    y, clean_probs, seeds, _ = s["regimes"]["clean"]
    _, shift_probs, _, shift_source = s["regimes"]["shift"]
    assert seeds == [0] and "shift" in shift_source
    assert shift_probs["cce"].shape == clean_probs["cce"].shape and not np.allclose(shift_probs["cce"], clean_probs["cce"])
    table = regimes.regime_table(s)
    assert len(table) == 3 * 2 * len(regimes.REGIME_METRICS)
    assert ((table["lo"] <= table["estimate"]) & (table["estimate"] <= table["hi"])).all()
    tests = regimes.tests_vs_reference(s)
    assert set(zip(tests["regime"], tests["model_a"], tests["model_b"])) == {(r, "focal", "cce") for r in s["regimes"]}
    change = regimes.changes_from_clean(s, "mcc")
    assert set(change["regime"]) == {"label_noise", "shift"} and set(change["loss"]) == {"cce", "focal"}
    expected = (regimes.regime_table(s).query("metric == 'mcc'").set_index(["regime", "loss"])["estimate"])
    for r in change.itertuples():
        assert r.delta == pytest.approx(expected[(r.regime, r.loss)] - expected[("clean", r.loss)])
    assert isinstance(regimes.findings(change, tests), str)
    fig = regimes.change_figure(pd.concat([change, regimes.changes_from_clean(s, "ece")]), "phantom")
    assert len(fig.axes) == 4 and "phantom" in fig._suptitle.get_text()
    # the shifted predictions are cached: a second study reads them back unchanged
    again = regimes.study("smoke")
    assert np.array_equal(again["regimes"]["shift"][1]["cce"], shift_probs["cce"])
    assert runs.find_runs() and training.is_finished(noisy.path)
