"""The training engine: one loop for every loss, caching, resume, determinism, failures."""
import contextlib
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from support import artifacts, losses, models, rundir, runs, training
from support.data import load

TINY = {"name": "phantom", "n": 240, "image_size": 64}


def tiny_config(**kw):
    base = dict(data=TINY, arch="small_cnn", image_size=32, batch_size=32, max_epochs=3, patience=3,
                optimizer="adamw", lr=3e-3, device="cpu")
    base.update(kw)
    return training.TrainConfig(**base)


@pytest.fixture
def tiny_data(isolated_dirs):
    return load(**TINY, verbose=False)


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("arch", [a for a in models.names() if a != "model_level"])  # needs member runs
def test_every_arch_has_dcl_and_right_shapes(arch):
    net = models.build(arch, 3)
    x = torch.zeros(2, 1, 64, 64)
    assert net(x).shape == (2, 3)
    assert isinstance(net.dcl, torch.nn.Conv2d) and net.dcl.out_channels == 512
    assert net.feature_map(x).shape[-1] == 4  # stride 16
    assert models.build(arch, 2, head="linear")(x).shape == (2, 2)


def test_model_weights_roundtrip_and_foreign_file(tmp_path):
    a = models.build("small_cnn", 3)
    artifacts.save_state(tmp_path / "w.pt", a.state_dict())
    b = models.build("small_cnn", 3, weights=tmp_path / "w.pt")
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    with pytest.raises(artifacts.ArtifactError, match="does not match architecture"):
        models.build("nodule_cnn", 3, weights=tmp_path / "w.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(artifacts.ArtifactError, match="bad.pt"):
        models.build("small_cnn", 3, weights=tmp_path / "bad.pt")


def test_torchvision_backbone_weights_load_into_trunk(tmp_path):
    import torchvision

    rgb = torchvision.models.resnet18(weights=None)
    artifacts.save_state(tmp_path / "r18.pt", rgb.state_dict())
    net = models.build("resnet18", 3, weights=tmp_path / "r18.pt")
    assert torch.allclose(net.trunk.body[0].weight, rgb.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(net.trunk.body[4][0].conv1.weight, rgb.layer1[0].conv1.weight)


# ----------------------------------------------------------------------------- config
def test_bad_configs_fail_before_training():
    with pytest.raises(ValueError, match="unknown architecture 'resnet19'"):
        tiny_config(arch="resnet19")
    with pytest.raises(ValueError, match="nope"):
        tiny_config(loss="nope")
    with pytest.raises(ValueError, match="too small"):
        tiny_config(image_size=16)
    with pytest.raises(TypeError, match="batch_size"):
        tiny_config(batch_size="32")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_requested_without_gpu(tiny_data):
    with pytest.raises(training.TrainingError, match="no CUDA GPU"):
        training.train_one(tiny_config(device="cuda"), data=tiny_data, progress=False)


def test_run_key_ignores_execution_settings_and_resolves_defaults():
    a = tiny_config()
    assert a.key() == tiny_config(device="auto", compile=True).key()
    assert a.key() != tiny_config(seed=1).key()
    assert tiny_config(data={**TINY, "seed": 0}).key() == a.key()  # default filled in


# ----------------------------------------------------------------------------- training
@pytest.mark.slow
def test_short_run_beats_chance_and_writes_the_run_folder(isolated_dirs):
    cfg = tiny_config(max_epochs=12, patience=12, image_size=64, arch_params={"width": 8}, dcl_channels=128,
                      data={**TINY, "n": 600, "difficulty": 0.5})  # easier lesions, CPU-sized model
    d = training.train_one(cfg, progress=False)
    for f in ("config.json", "metrics.json", "log.csv", "predictions.npz", "best.pt"):
        assert (d / f).exists(), f
    assert not (d / "last.pt").exists()
    run = runs.Run(d).check()
    assert run.metrics["test"]["accuracy"] > 0.55  # chance is ~0.38 for the majority class (easier lesions: difficulty 0.5)
    assert run.probs("test").shape == (len(run.labels("test")), 3)
    np.testing.assert_allclose(run.probs("val").sum(1), 1, atol=1e-5)
    state = artifacts.load_state(d / "best.pt")
    models.build("small_cnn", 3, dcl_channels=128, width=8).load_state_dict(state)
    # amp=True (the default) means bf16 exactly where the CPU computes it natively; the choice is recorded
    assert run.config["precision"] == ("bf16" if training.native_bf16(torch.device("cpu")) else "fp32")


@pytest.mark.slow
def test_determinism_same_seed_same_metrics(isolated_dirs, tiny_data):
    a = training.train_one(tiny_config(), data=tiny_data, progress=False, runs_dir=isolated_dirs / "a")
    b = training.train_one(tiny_config(), data=tiny_data, progress=False, runs_dir=isolated_dirs / "b")
    np.testing.assert_array_equal(runs.Run(a).probs("test"), runs.Run(b).probs("test"))
    c = training.train_one(tiny_config(seed=1), data=tiny_data, progress=False, runs_dir=isolated_dirs / "c")
    assert not np.array_equal(runs.Run(a).probs("test"), runs.Run(c).probs("test"))


@pytest.mark.slow
def test_finished_run_is_skipped(isolated_dirs, tiny_data):
    d = training.train_one(tiny_config(), data=tiny_data, progress=False)
    before = (d / "metrics.json").stat().st_mtime_ns
    retrain = lambda m, epoch: pytest.fail("retrained a finished run")  # noqa: E731
    assert training.train_one(tiny_config(), data=tiny_data, progress=False, on_epoch_end=retrain) == d
    assert (d / "metrics.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_resume_after_interrupt_equals_uninterrupted(isolated_dirs, tiny_data):
    full = training.train_one(tiny_config(), data=tiny_data, progress=False, runs_dir=isolated_dirs / "full")
    # Interrupt after epoch 1 (saved): the hook raises, as a kill would stop the process there.
    def stop_after_first(m, epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        training.train_one(tiny_config(), data=tiny_data, progress=False, runs_dir=isolated_dirs / "cut",
                           on_epoch_end=stop_after_first)
    cut = isolated_dirs / "cut" / tiny_config().key()
    assert (cut / "last.pt").exists() and not (cut / "metrics.json").exists()
    assert runs.find_runs(isolated_dirs / "cut") == []  # unfinished is never a result
    trained, published = [], []
    resumed = training.train_one(tiny_config(), data=tiny_data, progress=False, runs_dir=isolated_dirs / "cut",
                                 on_epoch_end=lambda m, epoch: trained.append(epoch),
                                 on_finish=lambda m: published.append(training.is_finished(m.folder.final)))
    assert trained == [2]  # epochs 0 and 1 were not trained again
    assert published == [True]  # on_finish: once, after the folder was published
    np.testing.assert_array_equal(runs.Run(full).probs("test"), runs.Run(resumed).probs("test"))
    assert list(runs.Run(resumed).log["epoch"]) == [0, 1, 2]


@pytest.mark.slow
def test_train_many_equals_sequential_train_one(isolated_dirs, tiny_data):
    # unfused lockstep, fp32: bit-for-bit the separate runs (the fused path: test_fused_runs_equal_separate_runs)
    cfgs = [tiny_config(loss=l, fuse=False, amp=False) for l in ("cce", "focal", "cal_cce")]
    many = training.train_many(cfgs, data=tiny_data, progress=False, runs_dir=isolated_dirs / "many")
    for cfg, d in zip(cfgs, many):
        one = training.train_one(cfg, data=tiny_data, progress=False, runs_dir=isolated_dirs / "one")
        np.testing.assert_allclose(runs.Run(d).probs("test"), runs.Run(one).probs("test"), atol=1e-6)
        assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in one.iterdir())


def _members(k=3, arch="small_cnn", **kw):
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        m = models.build(arch, 3, dcl_channels=32, **kw)
        m.set_input_stats(0.4, 0.2)
        out.append(m.to(memory_format=torch.channels_last))
    return out


def test_fused_forward_and_gradients_equal_the_separate_models():
    from support import fused

    members = _members(width=4)
    net = fused.FusedClassifier(members).to(memory_format=torch.channels_last)
    x = torch.rand(8, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    logits = net(x)  # [K, B, classes]
    total = 0
    for i, m in enumerate(members):
        out = m(x)  # train mode: once, so the BatchNorm running statistics move as the fused ones do
        torch.testing.assert_close(logits[i], out, atol=1e-6, rtol=1e-5)
        torch.nn.functional.cross_entropy(out, y * (i % 2)).backward()  # a different loss per member
        total = total + torch.nn.functional.cross_entropy(logits[i], y * (i % 2))
    total.backward()  # the sum: member i's gradients come from its own loss only
    for fused_t, *member_ts in zip(net.fused_tensors(), *net.member_tensors):
        for j, t in enumerate(member_ts):
            part = fused_t.chunk(3)[j] if fused_t.ndim else fused_t
            torch.testing.assert_close(part, t)  # the join: every tensor is the members' concatenation
            if t.grad is not None:  # float summation order differs between grouped and plain kernels
                torch.testing.assert_close(fused_t.grad.chunk(3)[j], t.grad, atol=1e-6, rtol=1e-4)
    images = torch.randint(0, 256, (10, 32, 32), dtype=torch.uint8)  # eval: the fused predictions
    for p, m in zip(training.predict_many(members, images), members):
        torch.testing.assert_close(p, training.predict_probs(m, images), atol=1e-6, rtol=1e-5)
    with pytest.raises(fused.NotFusable, match="BasicBlock"):  # residual blocks are stepped alone
        fused.FusedClassifier([models.build("resnet18", 2), models.build("resnet18", 2)])


@pytest.mark.slow
def test_fused_runs_equal_separate_runs(isolated_dirs, tiny_data):
    """fp32: a fused group (3 losses, one stops early) = the same runs unfused, up to float summation order.

    Tolerance: 1e-3 on every logged training loss and validation NLL and on the test probabilities. The
    gradients agree to ~1e-6 relative (test above), but Adam divides by sqrt(v): for a parameter whose
    gradient is ~0 that rounding decides the sign of a full lr-sized step, so runs drift apart slowly.
    """
    kw = dict(amp=False, arch_params={"width": 8}, dcl_channels=128, weight_decay=1e-2, lr_schedule="constant")
    cfgs = [tiny_config(loss="cce", **kw), tiny_config(loss="focal", max_epochs=2, **kw),
            tiny_config(loss="hinge", **kw)]
    together = training.train_many(cfgs, data=tiny_data, progress=False, runs_dir=isolated_dirs / "fused")
    alone = training.train_many([dataclasses.replace(c, fuse=False) for c in cfgs], data=tiny_data,
                                progress=False, runs_dir=isolated_dirs / "alone")
    for a, b in zip(together, alone):
        ra, rb = runs.Run(a), runs.Run(b)
        assert (ra.config["config"]["fuse"], rb.config["config"]["fuse"], ra.config["precision"]) == (True, False, "fp32")
        assert len(ra.log) == len(rb.log) == ra.config["config"]["max_epochs"]  # per member: 3, 2, 3 epochs
        # every epoch of every member ran fused (epoch 2: cce and hinge, without the stopped focal run)
        assert (ra.metrics["fused_epochs"], rb.metrics["fused_epochs"]) == (len(ra.log), 0)
        for col in ("train_loss", "val_nll"):
            np.testing.assert_allclose(ra.log[col], rb.log[col], atol=1e-3)
        np.testing.assert_allclose(ra.probs("test"), rb.probs("test"), atol=1e-3)
        assert ra.metrics["best_epoch"] == rb.metrics["best_epoch"]


@pytest.mark.slow
def test_nan_loss_stops_that_run_only_and_keeps_finished_results(isolated_dirs, tiny_data):
    good = training.train_one(tiny_config(), data=tiny_data, progress=False)
    good_metrics = (good / "metrics.json").read_bytes()
    bad = tiny_config(lr=1e30, loss="focal", optimizer="sgd", lr_schedule="constant")
    with pytest.raises(training.TrainingError, match="training loss became"):
        training.train_many([bad, tiny_config(loss="hinge")], data=tiny_data, progress=False)
    assert (training.run_dir_for(tiny_config(loss="hinge")) / "metrics.json").exists()  # the other went on
    assert not (training.run_dir_for(bad) / "metrics.json").exists()
    # A failing forced re-run never overwrites a finished result.
    with pytest.raises(training.TrainingError):
        training.train_many([tiny_config(lr=1e30, optimizer="sgd", lr_schedule="constant")], data=tiny_data,
                            progress=False, force=True)
    assert (good / "metrics.json").read_bytes() == good_metrics


@pytest.mark.slow
def test_force_replaces_a_finished_run_atomically(isolated_dirs, tiny_data):
    d = training.train_one(tiny_config(), data=tiny_data, progress=False)
    (d / "metrics.json").write_text("{broken")
    assert runs.find_runs() == [] and runs.find_runs.problems  # reported, not mixed in
    d2 = training.train_one(tiny_config(), data=tiny_data, progress=False, force=True)
    assert d2 == d and runs.Run(d).check().metrics["loss"] == "cce"
    assert not any(p.name.startswith((".staging", ".old")) for p in d.parent.iterdir())


def test_run_lock_blocks_a_second_writer(tmp_path):
    with training.run_lock(tmp_path / "r"):
        with pytest.raises(training.RunLocked, match="another process"):
            with training.run_lock(tmp_path / "r"):
                pass


def test_balanced_class_weights_match_the_paper():
    # Paper train subset: 2285 bacterial, 1215 normal, 1211 viral -> {0.687, 1.292, 1.297} (class order N, B, V).
    y = torch.tensor([0] * 1215 + [1] * 2285 + [2] * 1211)
    w = training.balanced_class_weights(y, 3)
    np.testing.assert_allclose(w.numpy(), [1.2924554, 0.6872356, 1.2967245], rtol=1e-6)


def test_augment_is_reproducible_and_small():
    x = torch.rand(4, 1, 32, 32)
    a = training.augment_batch(x, torch.Generator().manual_seed(0))
    b = training.augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    assert (a - x).abs().mean() < 0.3


@pytest.mark.slow
def test_warm_up_epochs_do_not_count_towards_early_stopping(isolated_dirs, tiny_data, monkeypatch):
    # Validation never improves after epoch 0: patience 1 stops at epoch 1, unless 3 warm-up epochs come first.
    monkeypatch.setattr(training.member, "val_scores", lambda *a: {"val_accuracy": 0.5, "val_mcc": 0.0, "val_nll": 1.0})
    epochs = {}
    for warm in (0, 3):
        d = training.train_one(tiny_config(max_epochs=8, patience=1, start_from_epoch=warm), data=tiny_data,
                               progress=False)
        epochs[warm] = len(runs.Run(d).log)
    assert epochs == {0: 2, 3: 4}
    with pytest.raises(ValueError, match="start_from_epoch=-1 must be >= 0"):
        tiny_config(start_from_epoch=-1)


@pytest.mark.slow
def test_find_runs_matches_the_data_exactly(isolated_dirs, tiny_data):
    plain = training.train_one(tiny_config(max_epochs=1), data=tiny_data, progress=False)
    other = training.train_one(tiny_config(max_epochs=1, data={**TINY, "marker_bias": 0.5}), progress=False)
    assert [r.path for r in runs.find_runs(data=TINY)] == [plain]  # defaults resolved; marker_bias run excluded
    assert [r.path for r in runs.find_runs(data={**TINY, "marker_bias": 0.5})] == [other]
    assert len(runs.find_runs(data={"n": 240})) == 2  # a partial filter (no name) is a subset match


def test_a_new_data_source_version_gives_a_new_run_key(monkeypatch):
    """A changed generator (its version bumped) must not reuse runs trained on its old output."""
    from support.data import core

    cfg = training.TrainConfig(data={"name": "phantom", "n": 240}, loss="cce")
    before = cfg.key()
    core._import_sources()
    monkeypatch.setitem(core._SOURCE_INFO, "phantom", {**core._SOURCE_INFO["phantom"], "version": 99})
    assert cfg.experiment()["data_version"] == 99
    assert cfg.key() != before


def test_cosine_schedule_decays_every_epoch_to_a_hundredth(isolated_dirs, tiny_data):
    """lr_schedule="cosine": epoch e trains at lr/100 + (lr - lr/100)(1 + cos(pi e / max_epochs)) / 2."""
    d = training.train_one(tiny_config(max_epochs=4, patience=4, lr_schedule="cosine", start_from_epoch=2),
                           data=tiny_data, progress=False)
    lr, low = 3e-3, 3e-5
    want = [low + (lr - low) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    np.testing.assert_allclose(runs.Run(d).log["lr"].to_numpy(), want, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown lr_schedule 'cos'.*plateau, cosine, constant"):
        tiny_config(lr_schedule="cos")


def test_a_second_writer_waits_then_reuses_the_finished_run(isolated_dirs, tiny_data, monkeypatch, capsys):
    """LOSSBENCH_WAIT_FOR_RUNS=1 (./run_all.sh --jobs N): the second writer blocks on the run lock, and once
    the first one has finished the run it reads that run instead of training it again."""
    import threading

    import filelock
    import time

    cfg = tiny_config(max_epochs=1)
    d = training.run_dir_for(cfg, None)
    d.mkdir(parents=True)
    holder = filelock.FileLock(d / ".lock", preserve_lock_file=True)
    holder.acquire()  # "another process" (a second FileLock of the same file waits for this one)
    monkeypatch.setenv(training.WAIT_ENV, "1")
    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault(
        "dir", training.train_one(cfg, data=tiny_data, progress=False)))
    waiter.start()
    seen, deadline = "", time.monotonic() + 60
    while "waiting for it" not in seen and time.monotonic() < deadline:  # the waiter reached the lock
        seen += capsys.readouterr().out
        time.sleep(0.02)
    assert "being trained by another process; waiting for it" in seen and waiter.is_alive()
    # The "other process" finishes the run (its own lock is the one held above), then releases the lock.
    with monkeypatch.context() as m:
        m.setattr(rundir, "run_lock", lambda run_dir, wait=None: contextlib.nullcontext())
        training.train_one(cfg, data=tiny_data, progress=False)
    finished = (d / "metrics.json").stat().st_mtime_ns
    holder.release()
    waiter.join(timeout=120)
    assert result["dir"] == d and (d / "metrics.json").stat().st_mtime_ns == finished  # read, not retrained


def test_paired_init_shares_weights_across_losses_and_independent_does_not():
    def first_weights(config):
        torch.manual_seed(training.init_seed(config))
        model = models.build(config.arch, 3, in_chans=1, head=config.head, dcl_channels=config.dcl_channels,
                             **config.arch_params)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    cce, focal = tiny_config(loss="cce"), tiny_config(loss="focal")
    assert torch.equal(first_weights(cce), first_weights(focal))  # a paired design: one start per seed
    ind_cce, ind_focal = tiny_config(loss="cce", init="independent"), tiny_config(loss="focal", init="independent")
    assert not torch.equal(first_weights(ind_cce), first_weights(ind_focal))
    assert torch.equal(first_weights(ind_cce), first_weights(tiny_config(loss="cce", init="independent")))
    assert "init" not in cce.experiment() and ind_cce.key() != cce.key()  # old keys stay valid
    with pytest.raises(ValueError, match="unknown init 'random'"):
        tiny_config(init="random")
