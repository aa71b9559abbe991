"""The nodule study: two-stage training through the engine, probes, counterfactuals, tables, bad input."""
import numpy as np
import pandas as pd
import pytest
import torch

from support import artifacts, models, nodules, runs, training
from support.data import nodules as nd
from support.nodules import writeup
from support.nodules import study as st

# label = size (large = malignant): learnable from a few hundred 48² patches in a few epochs
TINY = {"name": "nodules", "preset": "test_size_only", "n_train": 256, "n_val": 64, "n_test": 96, "image_size": 48}


def tiny_config(**kw):
    base = dict(data=TINY, arch="small_cnn", arch_params={"width": 8}, head="linear", image_size=48, batch_size=64,
                max_epochs=4, patience=4, optimizer="adam", lr=3e-3, lr_schedule="constant", monitor="val_accuracy",
                device="cpu")
    base.update(kw)
    return training.TrainConfig(**base)


# ----------------------------------------------------------------------------- training modes
@pytest.mark.slow
def test_two_stage_training_beats_chance_and_writes_a_plain_classifier(isolated_dirs):
    cfg = tiny_config(loss="supcon", mode="two_stage")
    d = training.train_one(cfg, progress=False)
    run = runs.Run(d).check()
    assert (d / "projection.pt").exists() and not (d / "last.pt").exists()
    m = run.metrics
    assert m["mode"] == "two_stage" and m["linear_stage"]["train_accuracy"] > 0.8
    assert m["test"]["accuracy"] > 0.75  # chance 0.5 (balanced classes)
    assert m["knn"]["test_accuracy"] > 0.75 and m["knn"]["k"] == training.KNN_K
    # best.pt is a plain classifier: rebuilt from the run folder it reproduces the stored predictions
    net = st.load_model(d)
    test = nd.build(**{k: v for k, v in TINY.items() if k != "name"}).splits["test"]
    bf16 = run.config["precision"] == "bf16"  # stored predictions were computed in the run's precision
    probs = training.predict_probs(net, test.images, amp=bf16).numpy()
    np.testing.assert_allclose(probs, run.probs("test"), atol=1e-5)


def test_linear_stage_folds_the_logistic_regression_into_the_layer():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    h = rng.normal(3.0, 2.0, (200, 8))
    y = (h[:, 0] + 0.5 * rng.normal(size=200) > 3).astype(int)
    net = models.build("small_cnn", 2, head="linear", width=2)  # feature width 16 -> use a matching fc
    net.fc = torch.nn.Linear(8, 2)
    info = training.fit_linear_head(net, h, y)
    scaler = StandardScaler().fit(h)
    ref = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(h), y).predict_proba(scaler.transform(h))
    ours = torch.softmax(net.fc(torch.tensor(h, dtype=torch.float32)), 1).detach().numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert info["train_accuracy"] == pytest.approx(float((ref.argmax(1) == y).mean()))


def test_modes_keep_old_run_keys_and_reject_mismatched_losses():
    plain = tiny_config()
    assert "mode" not in plain.experiment() and "metric_weight" not in plain.experiment()
    assert tiny_config(loss="triplet", mode="two_stage").key() != tiny_config(loss="triplet", mode="joint").key()
    with pytest.raises(ValueError, match="unknown mode 'three_stage'"):
        tiny_config(mode="three_stage")
    with pytest.raises(ValueError, match="mode='two_stage' needs an embedding loss, got 'cce'"):
        tiny_config(mode="two_stage")
    with pytest.raises(ValueError, match="mode='end_to_end' needs a classification loss, got 'contrastive'"):
        tiny_config(loss="contrastive")
    with pytest.raises(ValueError, match="metric_weight=-1"):
        tiny_config(loss="triplet", mode="joint", metric_weight=-1)


def test_joint_mode_loss_is_ce_plus_weighted_metric():
    cfg = tiny_config(loss="contrastive", mode="joint", metric_weight=0.25)
    m = training._Member(cfg, None, torch.device("cpu"), 2, None)
    x, y = torch.rand(8, 1, 48, 48), torch.tensor([0, 1] * 4)
    logits, z = m.outputs(x)
    expected = torch.nn.functional.cross_entropy(logits, y) + 0.25 * m.loss_fn(z, y)
    assert torch.allclose(m.compute_loss((logits, z), y), expected)
    assert torch.allclose(z.norm(dim=1), torch.ones(8), atol=1e-5)  # projection output is L2-normalised


# ----------------------------------------------------------------------------- probes
def _planted(n: int, seed: int):
    """Meta rows with random factors, and features in which only size (column 0) and x (column 1) are planted."""
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame({"size": rng.choice(["small", "large"], n), "margin": rng.choice(["smooth", "spiculated"], n),
                         "density": rng.choice(["solid", "ground_glass"], n), "x": rng.uniform(19, 28, n),
                         "y": rng.uniform(19, 28, n), "background": rng.uniform(0.12, 0.18, n),
                         "n_vessels": rng.integers(0, 4, n)})
    feats = rng.normal(size=(n, 12))
    feats[:, 0] += 2.5 * (meta["size"] == "large")
    feats[:, 1] = (meta["x"] - 23.5) / 2 + 0.2 * rng.normal(size=n)
    return feats, meta


def test_probe_recovers_a_planted_factor_and_only_that():
    fit, eval_ = _planted(600, 0), _planted(400, 1)
    scores = nodules.probe_scores(*fit, *eval_)
    assert scores["size"] > 0.85 and scores["x"] > 0.85
    for factor in ("margin", "density", "y", "background", "n_vessels"):
        assert abs(scores[factor] - 0.5) < 0.1, (factor, scores[factor])  # nothing planted: chance
    with pytest.raises(ValueError, match="unknown factor 'colour'"):
        nodules.probe_scores(*fit, *eval_, factors=("colour",))


def test_counterfactual_sensitivity_sees_the_factor_a_model_uses():
    class SizeReader(torch.nn.Module):  # P(malignant) rises with the bright area: a pure size detector
        def forward(self, x):
            area = (x > 0.6).float().mean((1, 2, 3)) * 40
            return torch.stack([torch.zeros_like(area), area - 4], 1)

    rows = nd.sample_factors(nd.resolve_spec("train", image_size=48), preset="train", split="val", n=24, seed=0,
                             image_size=48)
    changes = {f: v for f, v in nodules.probes.default_changes(image_size=48).items() if f in ("size", "n_vessels")}
    res = nodules.counterfactual_sensitivity(SizeReader(), nodules.probes.counterfactual_images(rows, changes), 48)
    assert res["size"]["abs"] > 0.2 and res["size"]["signed"] > 0.2
    assert res["n_vessels"]["abs"] < 0.5 * res["size"]["abs"]


# ----------------------------------------------------------------------------- tables and text
def _preds():
    y = np.array([0] * 50 + [1] * 50)
    perfect = np.where(y == 1, 0.9, 0.1)
    flipped = perfect.copy()
    flipped[:10] = 0.9  # 10 benign called malignant: specificity 0.8
    return pd.DataFrame([{"label": "a", "seed": s, "preset": "test_iid", "y": y, "probs": perfect} for s in (0, 1)]
                        + [{"label": "b", "seed": s, "preset": "test_iid", "y": y, "probs": flipped} for s in (0, 1)])


def test_metrics_table_values_and_intervals():
    t = nodules.metrics_table(_preds(), n_boot=200).set_index("loss")
    assert t.loc["a", "accuracy_mean"] == 1.0 and t.loc["a", "accuracy_sd"] == 0.0
    assert t.loc["b", "specificity_mean"] == pytest.approx(0.8) and t.loc["b", "sensitivity_mean"] == 1.0
    assert t.loc["b", "accuracy_mean"] == pytest.approx(0.9) and t.loc["b", "rho"] == 0.95
    assert t.loc["b", "accuracy_lo"] < 0.9 < t.loc["b", "accuracy_hi"]
    assert t.loc["b", "auroc_mean"] == pytest.approx(1 - 10 * 50 / 2500 / 2)  # 10 ties of 50 x 50 pairs count half


def test_reliance_shares_sum_to_one_at_rho_zero():
    spec = nd.resolve_spec("test_conflict", image_size=48)
    meta = nd.sample_factors(spec, preset="test_conflict", split="test", n=40, seed=0, image_size=48)
    split = type("S", (), {"meta": meta})()
    size_follower = (meta["size"] == "large").to_numpy(float)
    preds = pd.DataFrame([{"label": "size-reader", "seed": 0, "preset": "test_conflict", "y": meta["label"].to_numpy(),
                           "probs": size_follower}])
    r = nodules.reliance(preds, {"test_conflict": split}).iloc[0]
    assert r["follows_size"] == 1.0 and r["follows_margin"] == 0.0


def test_conclusion_is_written_from_the_numbers():
    rows = []
    for loss, conflict in (("cce", 0.61), ("triplet", 0.83)):
        for preset, acc in (("test_iid", 0.99), ("test_conflict", conflict)):
            rows.append({"loss": loss, "preset": preset, "n_seeds": 3, "accuracy_mean": acc, "accuracy_sd": 0.01,
                         "accuracy_lo": acc - 0.02, "accuracy_hi": acc + 0.02})
    text = writeup.conclusion(pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame(columns=["loss", "factor",
                            "balanced_accuracy"]), pd.DataFrame())
    assert "best **triplet** 0.830" in text and "do not overlap" in text and "difference 0.220" in text
    assert "triplet generalised best" in text
    no_probes = pd.DataFrame(columns=["loss", "factor", "balanced_accuracy"])
    rows[3].update(accuracy_mean=0.50, accuracy_lo=0.48, accuracy_hi=0.52)  # triplet now worse: the text follows
    text = writeup.conclusion(pd.DataFrame(rows), pd.DataFrame(), no_probes, pd.DataFrame())
    assert "best **cce** 0.610" in text and "cce generalised best" in text
    rows[3].update(accuracy_mean=0.60, accuracy_lo=0.58, accuracy_hi=0.62)  # within cce's CI
    text = writeup.conclusion(pd.DataFrame(rows), pd.DataFrame(), no_probes, pd.DataFrame())
    assert "no loss generalised measurably better" in text and "the CIs overlap" in text


def test_study_settings_and_bad_overrides(isolated_dirs):
    s = nodules.Study("smoke")
    labels = [e.label for e in s.entries]
    assert labels == ["cce", "contrastive", "triplet", "supcon"]
    assert {e.config.mode for e in s.entries} == {"end_to_end", "two_stage"}
    assert nodules.variant_label({"loss": "triplet", "mode": "joint", "metric_weight": 0.1}) == "cce+0.1*triplet"
    with pytest.raises(ValueError, match="unknown nodule study setting 'epochs'"):
        nodules.Study("smoke", overrides={"epochs": 3})
    with pytest.raises(ValueError, match="unknown embedding method 'pca'"):
        nodules.embeddings(s, method="pca")
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        nodules.Study("fast")
