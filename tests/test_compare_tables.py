"""support.compare / support.calibration on fake finished runs: seeds, pairing, notes and bad input."""
import numpy as np
import pandas as pd
import pytest

from support import calibration, compare, profiles
from tests.test_ensembles import fake_run, noisy_probs


@pytest.fixture
def study(tmp_path):
    """3 losses x 3 seeds on 150 val / 300 test images; 'good' is better than cce, 'same' equals cce."""
    rng = np.random.default_rng(0)
    y_val, y_test = np.arange(150) % 3, rng.permutation(np.arange(300) % 3)
    out = []
    for seed in range(3):
        for loss, strength in (("cce", 1.0), ("good", 3.0), ("same", None)):
            s = 1.0 if strength is None else strength
            pv, pt = noisy_probs(y_val, s + 0.1 * seed, rng), noisy_probs(y_test, s + 0.1 * seed, rng)
            if strength is None:  # the same model as cce under another name
                pv, pt = out[-2].probs("val"), out[-2].probs("test")
            out.append(fake_run(tmp_path, f"{loss}{seed}", y_val, y_test, pv, pt, loss=loss, seed=seed))
    return out


def test_loss_table_confirmatory_and_findings(study):
    table = compare.loss_table(study, n_boot=200)
    assert list(table["loss"])[0] == "good" and (table["n_seeds"] == 3).all() and (table["n_images"] == 300).all()
    assert (table["mcc_lo"] < table["mcc_mean"]).all() and (table["mcc_mean"] < table["mcc_hi"]).all()
    assert (table["mcc_se_seed"] > 0).all()
    family = {"pairs": (("good", "cce"), ("same", "cce")), "alpha": 0.05}
    tests = compare.confirmatory_table(study, family, n_boot=200)
    good, same = tests.set_index("model_a").loc["good"], tests.set_index("model_a").loc["same"]
    assert good["significant"] and good["delta"] > 0.1 and same["identical"] and same["p_value"] == 1
    text = compare.findings(tests)
    assert "1 finds a difference" in text and "good − cce" in text and "same = cce" in text
    shown = compare.display_tests(tests)
    assert {"p floor (Holm)", "MDE (80 %)", "verdict"} <= set(shown.columns)


def test_missing_seeds_are_left_out_with_a_note_and_one_seed_is_labelled(study):
    partial = [r for r in study if not (r.loss == "good" and r.seed == 2)]
    tests = compare.pairwise_table(partial, n_boot=100)
    assert (tests["n_seeds"] == 2).all()  # the seeds every loss has: 0 and 1
    assert "cce: seed(s) [2] left out" in tests.attrs["note"] and "same: seed(s) [2] left out" in tests.attrs["note"]
    one = [r for r in study if r.seed == 0]
    assert "1 seed" in compare.pairwise_table(one, n_boot=100).attrs["note"]


def test_runs_scored_on_different_test_images_are_refused(study, tmp_path):
    r = study[0]
    odd = fake_run(tmp_path / "odd", "odd", r.labels("val"), r.labels("test"), r.probs("val"), r.probs("test"),
                   loss="focal", seed=0, test_ids=[f"x{i}" for i in range(300)])
    with pytest.raises(ValueError, match="other test images"):
        compare.loss_table(study + [odd])


def test_calibration_table_has_six_measures_before_and_after_scaling(study):
    cal = calibration.calibration_table(study, n_boot=50)
    assert len(cal) == 3 * 6 * 2 and set(cal["scaling"]) == {"none", "temperature"}
    assert (cal["temperature"] > 0).all()
    wide = calibration.display_calibration(cal)
    assert len(wide) == 3 and "ece (after T)" in wide.columns


def test_the_confirmatory_family_is_fixed_in_the_profile():
    family = profiles.get("quick")["confirmatory"]
    losses = profiles.get("quick")["losses"]
    assert [a for a, b in family["pairs"][:11]] == [l for l in losses if l != "cce"]
    assert ("cal_focal", "focal") in family["pairs"] and len(set(family["pairs"])) == len(family["pairs"])
    assert {a for a, _ in family["calibration_pairs"]} == {l for l in losses if l.startswith("cal_")}
