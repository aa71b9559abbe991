"""Ensembles: hand-derived combinations, no test-set leakage, clear errors, and trained ensembles beating chance."""
import shutil

import numpy as np
import pytest
import torch

from support import artifacts, ensembles, metrics, runs, training
from support.data.containers import DataBundle, Split
from support.data.core import SOURCES, register_source
from support.ensembles import EnsembleError

CLASSES = ("normal", "bacterial", "viral")


# ----------------------------------------------------------------------------- helpers
def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def noisy_probs(y, strength, rng, k=3):
    """Probabilities that favour the true class by ``strength`` logits (plus noise)."""
    z = rng.normal(size=(len(y), k))
    z[np.arange(len(y)), y] += strength
    return softmax(z)


def fake_run(root, key, y_val, y_test, p_val, p_test, loss="cce", seed=0, data=None, classes=CLASSES,
             val_ids=None, test_ids=None, drop=()):
    """A finished run folder written with the kit's own artifact functions (no training)."""
    d = root / key
    arrays = {"classes": np.array(classes), "val_probs": p_val.astype(np.float32), "val_labels": y_val,
              "val_ids": np.array(val_ids if val_ids is not None else [f"v{i}" for i in range(len(y_val))]),
              "test_probs": p_test.astype(np.float32), "test_labels": y_test,
              "test_ids": np.array(test_ids if test_ids is not None else [f"t{i}" for i in range(len(y_test))])}
    artifacts.write_npz(d / "predictions.npz", **{k: v for k, v in arrays.items() if k not in drop})
    artifacts.write_json(d / "config.json", {"config": {"arch": "small_cnn", "image_size": 32}, "classes": list(classes)})
    artifacts.write_text(d / "log.csv", "epoch,val_mcc\n0,0.5\n")
    artifacts.save_state(d / "best.pt", {})
    artifacts.write_json(d / "metrics.json", {
        "format_version": artifacts.RUN_FORMAT_VERSION, "loss": loss, "loss_params": {}, "seed": seed,
        "arch": "small_cnn", "data": data or {"name": "phantom", "n": 240}, "data_source": "phantom (test)",
        "classes": list(classes)})
    return runs.Run(d)


@pytest.fixture
def members(tmp_path):
    """Five fake runs of one seed, of increasing quality, on 90 val / 90 test images."""
    rng = np.random.default_rng(0)
    y_val, y_test = np.arange(90) % 3, rng.permutation(np.arange(90) % 3)
    out = []
    for i, loss in enumerate(("cce", "focal", "cal_cce", "kld", "hinge")):
        out.append(fake_run(tmp_path / "runs", f"run{i}", y_val, y_test, noisy_probs(y_val, 0.5 + 0.4 * i, rng),
                            noisy_probs(y_test, 0.5 + 0.4 * i, rng), loss=loss))
    return out


# ----------------------------------------------------------------------------- prediction level
@pytest.mark.parametrize("method", ["average", "weighted"])
def test_averaging_identical_members_equals_the_member(method):
    rng = np.random.default_rng(1)
    y = np.arange(60) % 3
    p = noisy_probs(y, 1.0, rng)
    ens = ensembles.fit(method, [p, p, p], y)
    np.testing.assert_allclose(ens.predict_proba([p, p, p]), p, atol=1e-12)


@pytest.mark.parametrize("method", ensembles.names())
def test_every_method_of_identical_members_predicts_the_members_labels(method):
    rng = np.random.default_rng(2)
    y = np.arange(90) % 3
    p = noisy_probs(y, 2.0, rng)
    ens = ensembles.fit(method, [p, p], y)
    out = ens.predict_proba([p, p])
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-9)
    if method != "stacking":  # stacking recalibrates; on strong members it keeps almost every label
        np.testing.assert_array_equal(out.argmax(1), p.argmax(1))
    else:
        assert np.mean(out.argmax(1) == p.argmax(1)) > 0.9


def test_weighted_weights_are_on_the_simplex_and_optimal():
    rng = np.random.default_rng(3)
    y = np.arange(150) % 3
    probs = [noisy_probs(y, s, rng) for s in (0.2, 1.0, 2.0, 2.0, 0.0)]
    for solver in ("em", "slsqp"):
        w = ensembles.fit("weighted", probs, y, solver=solver).weights
        assert np.all(w >= 0) and w.sum() == pytest.approx(1.0, abs=1e-12)
    ens = ensembles.fit("weighted", probs, y)
    assert ens.info["gap"] <= 1e-7  # Frank-Wolfe gap: log-loss within 1e-7 of the optimum
    # Hand-derived: 2 members, 2 samples; true-class probabilities A = (0.8, 0.2), B = (0.4, 0.4).
    # L(w) = -1/2 [log(0.4 + 0.4 w) + log(0.4 - 0.2 w)];  L'(w) = 0  <=>  1/(1+w) = 1/(2-w)  <=>  w = 1/2.
    a = np.array([[0.8, 0.2], [0.8, 0.2]])
    b = np.array([[0.4, 0.6], [0.6, 0.4]])
    w = ensembles.fit("weighted", [a, b], np.array([0, 1])).weights
    np.testing.assert_allclose(w, [0.5, 0.5], atol=1e-6)


def test_majority_vote_tie_rules_on_a_hand_built_case():
    # Sample 0: members 1-2 vote viral (weakly, 0.4), members 3-4 vote normal (strongly, 0.9): a 2-2 tie.
    #   summed probabilities: normal 0.3+0.3+0.9+0.9 = 2.4 > viral 0.4+0.4+0.05+0.05 = 0.9  -> prob_sum: normal
    #   the paper's find_max_mode takes the highest class index                             -> viral
    # Sample 1: 3 votes bacterial vs 1 normal: no tie, every rule says bacterial.
    m12 = np.array([[0.3, 0.3, 0.4], [0.1, 0.8, 0.1]])
    m3 = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    m4 = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1]])
    probs, y = [m12, m12, m3, m4], np.array([0, 1])
    expected = {"prob_sum": [0, 1], "highest_index": [2, 1], "lowest_index": [0, 1]}
    for tie, want in expected.items():
        ens = ensembles.fit("vote", probs, y, tie=tie)
        np.testing.assert_array_equal(ens.predict(probs), want)
        np.testing.assert_allclose(ens.predict_proba(probs)[1], [0.25, 0.75, 0.0], atol=1e-5)  # vote shares
    assert ensembles.fit("vote", probs, y).tie == "prob_sum"  # the documented default
    with pytest.raises(ValueError, match="unknown tie rule 'random'.*prob_sum"):
        ensembles.fit("vote", probs, y, tie="random")


def test_unknown_method_and_bad_shapes_are_clear_errors():
    y = np.array([0, 1])
    with pytest.raises(ValueError, match="unknown ensemble method 'median'.*average"):
        ensembles.fit("median", [np.eye(2)], y)
    with pytest.raises(EnsembleError, match="one shape"):
        ensembles.fit("average", [np.eye(2), np.eye(3)[:2]], y)
    ens = ensembles.fit("average", [np.eye(2), np.eye(2)], y)
    with pytest.raises(EnsembleError, match="fitted on 2 members"):
        ens.predict_proba([np.eye(2)])


# ----------------------------------------------------------------------------- leakage
def _permute_test_labels(run_list, root):
    """Copies of the runs whose test labels are shuffled (same permutation for every run)."""
    perm = np.random.default_rng(9).permutation(len(run_list[0].labels("test")))
    out = []
    for r in run_list:
        shutil.copytree(r.path, root / r.key)
        p = dict(r.predictions)
        p["test_labels"] = p["test_labels"][perm]
        artifacts.write_npz(root / r.key / "predictions.npz", **p)
        out.append(runs.Run(root / r.key))
    return out


def _untrained_model_level(top, **_):
    """Stand-in for train_model_level (training cannot see test labels; the blend on top of it could)."""
    p_val, p_test = (softmax(np.mean([np.log(r.probs(s)) for r in top], 0)) for s in ("val", "test"))
    key = "level-" + "-".join(sorted(r.key for r in top))
    return fake_run(top[0].path.parent / "level", key, top[0].labels("val"), top[0].labels("test"), p_val, p_test)


def test_permuting_test_labels_changes_no_fitted_weight_or_test_prediction(members, tmp_path, monkeypatch):
    monkeypatch.setattr(ensembles.evaluate, "train_model_level", _untrained_model_level)
    permuted = _permute_test_labels(members, tmp_path / "permuted")
    assert not np.array_equal(members[0].labels("test"), permuted[0].labels("test"))
    a = ensembles.build_ensembles(members, ks=(3, 5))
    b = ensembles.build_ensembles(permuted, ks=(3, 5))
    assert [r.name for r in a] == [r.name for r in b] and len(a) == 1 + 2 * (len(ensembles.names()) + 1) + 1
    assert a[-1].kind == "blend" and a[-1].name == "final blend (model-level top-3 + top-5)"
    for ra, rb in zip(a, b):
        assert ra.weights == rb.weights, ra.name
        np.testing.assert_array_equal(ra.test_probs, rb.test_probs, err_msg=ra.name)
        assert ra.members == rb.members and not ra.leaky
    # the switch that reproduces the paper's leak does depend on the test labels, and says so
    leak_a = ensembles.build_ensembles(members, ks=(3,), methods=["weighted"], model_level=False, fit_on="test")
    leak_b = ensembles.build_ensembles(permuted, ks=(3,), methods=["weighted"], model_level=False, fit_on="test")
    assert leak_a[1].weights != leak_b[1].weights
    assert all(r.leaky and r.name.endswith(ensembles.LEAK_SUFFIX) for r in leak_a)


def test_selection_is_by_validation_metric(members):
    top = ensembles.select_top_k(members, 3)
    assert [r.key for r in top] == list(ensembles.rank_runs(members)["key"][:3])
    assert {r.key for r in top} == {"run4", "run3", "run2"}  # the three strongest by construction
    ens = ensembles.fit_runs("weighted", top, fit_on="test")
    assert ens.leaky and "fit on TEST" in ens.describe()


def test_tables_and_paired_tests_over_seeds(tmp_path):
    rng = np.random.default_rng(4)
    y_val, y_test = np.arange(60) % 3, np.arange(60) % 3
    rs = [fake_run(tmp_path, f"s{s}r{i}", y_val, y_test, noisy_probs(y_val, 1 + i, rng),
                   noisy_probs(y_test, 1 + i, rng), loss=f"loss{i}", seed=s) for s in (0, 1) for i in range(3)]
    res = ensembles.build_ensembles(rs, ks=(2, 3), methods=["average", "weighted"], model_level=False)
    assert {r.seed for r in res} == {0, 1}
    long = ensembles.metrics_table(res, n_boot=200)
    assert set(long["n_seeds"]) == {2} and set(long["metric"]) == set(ensembles.TABLE_METRICS)
    assert (long["seeds_images_lo"] <= long["value"]).all() and (long["value"] <= long["seeds_images_hi"]).all()
    assert ensembles.wide_table(long).shape[0] == 5
    tests = ensembles.paired_tests(res, n_boot=200)  # 4 ensembles, each paired over both seeds
    assert len(tests) == 4 and (tests["model_b"] == ensembles.BEST_SINGLE).all() and (tests["n_seeds"] == 2).all()
    assert (tests["p_holm"] >= tests["p_value"]).all() and (tests["p_floor_holm"] <= 0.05 / 4).all()
    control = ensembles.deep_ensemble(rs, loss="loss2", k=2)  # loss2: seeds 0 and 1 averaged
    assert np.allclose(control.test_probs, np.mean([r.probs() for r in rs if r.loss == "loss2"], axis=0))
    vs_control = ensembles.paired_tests(res + [control], reference=control.name, n_boot=200)
    assert len(vs_control) == 5 and "own seed noise" in vs_control.attrs["note"]  # the best single model too
    with pytest.raises(ensembles.EnsembleError, match="needs 3 seeds of 'loss2'"):
        ensembles.deep_ensemble(rs, loss="loss2", k=3)
    leaky = ensembles.metrics_table(ensembles.build_ensembles(rs, ks=(2, 3), methods=["average", "weighted"],
                                                              model_level=False, fit_on="test"), n_boot=200)
    table = ensembles.leak_table(long, leaky)
    assert len(table) == 5 and "optimism" in table


# ----------------------------------------------------------------------------- bad input
def test_k_larger_than_runs_names_the_runs(members):
    with pytest.raises(EnsembleError, match=r"top-7 needs 7 distinct finished runs, only 5 available: .*run0.*run4"):
        ensembles.select_top_k(members, 7)


def test_members_with_identical_predictions_count_once(members, tmp_path):
    best = ensembles.rank_runs(members)["run"][0]
    alias = fake_run(tmp_path, "alias", best.labels("val"), best.labels("test"), best.probs("val"), best.probs("test"),
                     loss="kld")  # the same model under another name (kld = cce for one-hot targets)
    flags = ensembles.rank_runs(members + [alias]).set_index("key")["alias_of"]
    assert sorted([flags[best.key], flags["alias"]]) == sorted(["", best.label if flags["alias"] else "kld"])
    top = ensembles.select_top_k(members + [alias], 3)
    assert len({r.key for r in top} & {best.key, "alias"}) == 1  # the pair fills one place, not two
    assert len(top) == 3 and len({r.label for r in top}) == 3
    with pytest.raises(EnsembleError, match=r"aliases counted once: kld = "):
        ensembles.select_top_k(members + [alias], 6)


def test_members_on_different_data_or_class_orders_are_refused(members, tmp_path):
    r = members[0]
    y, p = r.labels("val"), r.probs("val")
    other_data = fake_run(tmp_path, "other_data", y, r.labels("test"), p, r.probs("test"), data={"name": "kermany"})
    with pytest.raises(EnsembleError, match=r"different data: .*phantom.*run0.*kermany.*other_data"):
        ensembles.check_members([r, other_data])
    swapped = fake_run(tmp_path, "swapped", y, r.labels("test"), p, r.probs("test"), classes=CLASSES[::-1])
    with pytest.raises(EnsembleError, match=r"different class orders: .*run0.*swapped"):
        ensembles.fit_runs("average", [r, swapped])
    shuffled = fake_run(tmp_path, "shuffled", y, r.labels("test"), p, r.probs("test"),
                        test_ids=[f"t{i}" for i in range(89, -1, -1)])
    with pytest.raises(EnsembleError, match=r"tested on different images.*shuffled differ from .*run0"):
        ensembles.select_top_k([r, shuffled], 2)


def test_missing_validation_predictions_name_the_run(members, tmp_path):
    r = members[0]
    no_val = fake_run(tmp_path, "no_val", r.labels("val"), r.labels("test"), r.probs("val"), r.probs("test"),
                      drop=("val_probs",))
    with pytest.raises(EnsembleError, match=r"no_val cannot be an ensemble member: .*lacks val_probs"):
        ensembles.fit_runs("average", [r, no_val])
    empty = fake_run(tmp_path, "empty_val", np.zeros(0, int), r.labels("test"), np.zeros((0, 3)), r.probs("test"),
                     val_ids=[])
    with pytest.raises(EnsembleError, match=r"without validation predictions.*empty_val"):
        ensembles.check_members([r, empty])


# ----------------------------------------------------------------------------- trained: stacking and model level
@register_source("ens_toy") if "ens_toy" not in SOURCES else (lambda f: f)
def _toy(n: int = 240, image_size: int = 64, seed: int = 0) -> DataBundle:
    """A tiny learnable phantom: a bright vertical band in the left, middle or right third = the class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    img = torch.randint(0, 90, (n, image_size, image_size), generator=g, dtype=torch.uint8)
    w = image_size // 3
    for c in range(3):
        band = img[y == c, image_size // 4: 3 * image_size // 4, c * w:(c + 1) * w]
        img[y == c, image_size // 4: 3 * image_size // 4, c * w:(c + 1) * w] = band + 60
    cut = {"train": (0, n // 2), "val": (n // 2, 3 * n // 4), "test": (3 * n // 4, n)}
    splits = {s: Split(img[a:b].clone(), y[a:b].clone(), [f"{s}{i}" for i in range(a, b)]) for s, (a, b) in cut.items()}
    return DataBundle(CLASSES, splits, source="toy phantom (tests)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two small_cnn members (cce, focal) trained for 3 epochs on the toy phantom, in lockstep."""
    root = tmp_path_factory.mktemp("ens_trained")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("LOSSBENCH_DATA_DIR", "LOSSBENCH_RUNS_DIR", "LOSSBENCH_FIGURES_DIR"):
            mp.setenv(var, str(root / var.lower()))
        base = dict(data={"name": "ens_toy", "n": 180}, arch="small_cnn", image_size=32, batch_size=30,
                    max_epochs=3, patience=3, optimizer="adamw", lr=3e-3, device="cpu")
        configs = [training.TrainConfig(**base, loss=loss) for loss in ("cce", "focal")]
        dirs = training.train_many(configs, progress=False)
        yield root, [runs.Run(d) for d in dirs]


def test_stacking_on_trained_members_beats_chance(trained):
    _, members = trained
    ens = ensembles.fit_runs("stacking", members)
    p = ensembles.predict_runs(ens, members, "test")
    y = members[0].labels("test")
    assert metrics.METRICS.get("accuracy")(y, p) > 0.6  # chance: 1/3
    assert metrics.METRICS.get("mcc")(y, p) > 0.4


def test_model_level_ensemble_is_a_run_that_beats_chance_with_frozen_members(trained):
    from support import models

    root, members = trained  # the fixture points LOSSBENCH_RUNS_DIR at root / "lossbench_runs_dir"
    cfg2 = ensembles.model_level_config(members[:2])
    assert cfg2.arch_params == {"members": sorted(r.key for r in members[:2])}  # keys, not paths
    assert cfg2.key() == ensembles.model_level_config(members[1::-1]).key()  # a member set has one key
    other = root / "lossbench_runs_dir" / "another_member"
    shutil.copytree(members[1].path, other, dirs_exist_ok=True)
    assert cfg2.key() != ensembles.model_level_config([members[0], runs.Run(other)]).key()  # changes with members
    run = ensembles.train_model_level(members, max_epochs=2)
    assert ensembles.is_model_level(run) and run.path.parent == root / "lossbench_runs_dir"
    y, p = run.labels("test"), run.probs("test")
    assert metrics.METRICS.get("accuracy")(y, p) > 0.6 and metrics.METRICS.get("mcc")(y, p) > 0.4
    # frozen members: the stored weights are the members' own, and train() keeps them in eval mode
    net = models.build("model_level", 3, head="merge", **run.config["config"]["arch_params"])
    net.load_state_dict(artifacts.load_state(run.path / "best.pt"))
    first = min(members, key=lambda r: r.key)  # members are stored in sorted-key order
    original = artifacts.load_state(first.path / "best.pt")
    assert all(torch.equal(original[k], v) for k, v in net.trunk.body[0].state_dict().items())
    x, seen = torch.rand(2, 1, 32, 32), []
    hook = net.trunk.register_forward_hook(lambda mod, inputs, out: seen.append((inputs[0], out)))
    net.eval()(x)
    hook.remove()
    solo = first.model()  # standardises x with its own train stats
    assert torch.equal(seen[0][0], x) and torch.allclose(seen[0][1][:, :512], solo.feature_map(x), atol=1e-5)
    net.train()
    assert net.training and not any(m.training for m in net.trunk.body.modules())
    trainable = {n for n, q in net.named_parameters() if q.requires_grad}
    assert trainable == {"dcl.weight", "dcl.bias", "fc.weight", "fc.bias"}
    assert net.trunk.out_channels == 2 * 512


def test_model_level_refuses_members_of_different_image_size(trained, tmp_path):
    root, members = trained
    odd = tmp_path / "odd"
    shutil.copytree(members[1].path, odd)
    info = artifacts.read_json(odd / "config.json")
    info["config"]["image_size"] = 48
    artifacts.write_json(odd / "config.json", info)
    with pytest.raises(EnsembleError, match=r"must share image_size.*odd.*48"):
        ensembles.model_level_config([members[0], runs.Run(odd)])


def test_stacking_heldout_score_is_nested_cross_validation():
    """``heldout_log_loss`` = sklearn's own nested CV: cross_val_predict over a LogisticRegressionCV, so no
    outer fold is scored by a model whose C search saw it; C is LogisticRegressionCV's on all the data."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from support.ensembles.stacking import _plain_l2  # only silences sklearn >= 1.8's FutureWarnings

    rng = np.random.default_rng(5)
    y = np.arange(90) % 3
    P = [noisy_probs(y, 0.8, rng), noisy_probs(y, 0.4, rng)]
    ens = ensembles.fit("stacking", P, y, cv=3, seed=0)
    X = np.log(np.clip(np.stack(P), 1e-12, 1)).transpose(1, 0, 2).reshape(len(y), -1)
    search = LogisticRegressionCV(Cs=list(np.logspace(-3, 3, 13)), cv=StratifiedKFold(3, shuffle=True, random_state=0),
                                  scoring="neg_log_loss", max_iter=5000, **_plain_l2())
    outer = StratifiedKFold(3, shuffle=True, random_state=1)
    nested = cross_val_predict(search, X, y, cv=outer, method="predict_proba")
    assert ens.info["heldout_log_loss"] == pytest.approx(log_loss(y, nested), rel=1e-6)
    assert ens.info["C"] == pytest.approx(np.ravel(search.fit(X, y).C_)[0])
    assert "cv_log_loss" not in ens.info  # the selection-biased score is not reported


def test_clip_k_caps_k_at_the_distinct_runs(members, tmp_path):
    best = members[-1]
    alias = fake_run(tmp_path, "alias", best.labels("val"), best.labels("test"), best.probs("val"), best.probs("test"),
                     loss="kld")
    res = ensembles.build_ensembles(members + [alias], ks=(3, 6), methods=["average"], model_level=False, clip_k=True)
    names = {r.name for r in res}
    assert "average top-5" in names and "average top-6" not in names  # 6 runs, 5 distinct
