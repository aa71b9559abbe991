"""support.data.halves: the two validation halves (early stopping / post-hoc fitting)."""
import numpy as np
import pytest

from support.data.halves import patient_groups, val_halves


def test_halves_are_stratified_seeded_and_keep_patients_together():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    ids = [f"train/PNEUMONIA/person{i // 2}_bacteria_{i}.jpeg" for i in range(600)]  # two films per child
    half = val_halves(y, ids, seed=0)
    assert set(np.unique(half)) == {0, 1} and abs(half.mean() - 0.5) < 0.05
    for c in range(3):  # each class split about evenly
        assert abs(half[y == c].mean() - 0.5) < 0.1
    groups = patient_groups(ids)
    assert all(len(set(half[groups == g])) == 1 for g in set(groups))
    assert np.array_equal(half, val_halves(y, ids, seed=0))           # deterministic
    assert not np.array_equal(half, val_halves(y, ids, seed=1))       # and seeded
    assert patient_groups(["a/IM-0001.jpeg", "b/person7_virus_3.png"]).tolist() == ["a/IM-0001.jpeg", "person7"]


def test_tiny_or_odd_validation_sets_fail_or_fall_back_clearly():
    with pytest.raises(ValueError, match="cannot be halved"):
        val_halves([0, 1, 2])
    assert val_halves([]).shape == (0,)
    half = val_halves([0, 0, 0, 1, 2, 2])  # a class with one image: unstratified shuffle, still two halves
    assert set(half) == {0, 1}
    with pytest.raises(ValueError, match="fit_fraction"):
        val_halves([0, 1, 0, 1], fit_fraction=1.5)


def test_phantom_test_and_validation_draws_have_their_own_size_and_train_is_unchanged():
    from support.data import phantom

    base, big = phantom.split_counts(2400), phantom.split_counts(2400, n_test=6000, n_val=1000)
    assert big["train"] == base["train"] and sum(big["test"]) == 6000 and sum(big["val"]) == 1000
    assert np.allclose(np.array(big["test"]) / 6000, np.array(phantom.KERMANY_TEST) / sum(phantom.KERMANY_TEST), atol=1e-3)
    small = phantom.build(n=240, image_size=32, n_test=60, n_val=40)
    default = phantom.build(n=240, image_size=32)
    assert len(small.splits["test"]) == 60 and len(small.splits["val"]) == 40
    assert np.array_equal(small.splits["train"].images.numpy(), default.splits["train"].images.numpy())
    with pytest.raises(ValueError, match="n_test"):
        phantom.split_counts(2400, n_test=3)
