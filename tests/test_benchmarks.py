"""Issue 6 on the CPU: the training step reads nothing back from the device, the fast path (channels_last)
gives the plain path's numbers, deferred loss checks still catch bad inputs, and both benchmark scripts
run end to end at tiny sizes. (train_many == sequential train_one: tests/test_training.py.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from support import losses, runs, training
from support.data import load
from support.losses import _checks

ROOT = Path(__file__).resolve().parents[1]
TINY = {"name": "phantom", "n": 240, "image_size": 64}
#: aten ops that make the host wait for a CUDA device (a value or a data-dependent shape comes back).
SYNC_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
            "aten._unique2.default", "aten.unique_dim.default", "aten.repeat_interleave.Tensor"}


class SyncCounter(TorchDispatchMode):
    """Counts the ops that would synchronise with a CUDA device (here on the CPU, where they are free).

    ``F.one_hot`` is not counted: it checks the label range with ``.item()`` on the CPU only and relies
    on a device assert on CUDA (aten/src/ATen/native/Onehot.cpp), so it does not sync there.
    """

    def __init__(self):
        super().__init__()
        self.calls, self.paused = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in SYNC_OPS and not self.paused:
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture(autouse=True)
def one_hot_as_on_cuda(monkeypatch):
    real = torch.nn.functional.one_hot

    def one_hot(tensor, num_classes=-1):
        counters = [m for m in torch.utils._python_dispatch._get_current_dispatch_mode_stack()
                    if isinstance(m, SyncCounter)]
        for c in counters:
            c.paused += 1
        try:
            return real(tensor, num_classes)
        finally:
            for c in counters:
                c.paused -= 1

    monkeypatch.setattr(torch.nn.functional, "one_hot", one_hot)


def tiny(**kw):
    base = dict(data=TINY, arch="small_cnn", arch_params={"width": 4}, dcl_channels=16, image_size=32,
                batch_size=16, max_epochs=2, patience=2, optimizer="sgd", lr=1e-2, device="cpu")
    return training.TrainConfig(**{**base, **kw})


@pytest.fixture
def tiny_data(isolated_dirs):
    return load(**TINY, verbose=False)


# ----------------------------------------------------------------------------- no host sync in the step
@pytest.mark.parametrize("family", ["classification", "segmentation", "embedding"])
def test_losses_read_nothing_back_under_deferred_checks(family):
    torch.manual_seed(0)
    if family == "classification":
        inputs = (torch.randn(8, 3, requires_grad=True), torch.randint(0, 3, (8,)))
    elif family == "segmentation":
        inputs = (torch.randn(2, 1, 8, 8, requires_grad=True), torch.rand(2, 1, 8, 8) > 0.5)
    else:
        inputs = (torch.randn(8, 4, requires_grad=True), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    synced = {}
    for name in losses.names(family):
        checks = _checks.DeferredChecks()
        with SyncCounter() as counter, _checks.deferred(checks):
            losses.build(name)(*inputs).backward()
        if counter.calls:
            synced[name] = sorted(set(counter.calls))
        checks.raise_if_bad()  # finite inputs in range: nothing to raise
    assert synced == {}, f"losses that read values back inside the step: {synced}"


def test_deferred_checks_raise_the_same_errors_once_read():
    cce = losses.build("cal_cce")
    good, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    checks = _checks.DeferredChecks()
    with _checks.deferred(checks):
        cce(good, target)
        cce(torch.tensor([[0.0, float("nan"), 1.0]] * 4), target)  # no exception inside the step
        cce(good, target)
        with pytest.raises(ValueError, match="shape"):  # shapes are host metadata: still checked at once
            cce(good[:, :1], target)
    with pytest.raises(_checks.NonFiniteError, match="cal_cce: logits held NaN or inf"):
        checks.raise_if_bad()
    checks.raise_if_bad()  # read once, then forgotten
    with _checks.deferred(checks):  # the check itself: the loss would then fail in gather (CPU) or assert (CUDA)
        _checks.classification("cce", good, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\]"):
        checks.raise_if_bad()
    with pytest.raises(_checks.NonFiniteError):  # outside deferred(): immediate, as before
        cce(torch.full((4, 3), float("inf")), target)


@pytest.mark.slow
def test_training_step_has_no_host_sync_and_fast_path_matches_plain(isolated_dirs, tiny_data, monkeypatch):
    """Device reads per run do not grow with the number of steps (they happen once per epoch), and
    channels_last (the fast path) trains to the same numbers as contiguous tensors (the plain path)."""
    counts, run = {}, {}
    for batch in (16, 32):
        with SyncCounter() as counter:
            run[batch] = training.train_one(tiny(batch_size=batch, augment=True, loss="cal_focal"), data=tiny_data,
                                            progress=False, runs_dir=isolated_dirs / f"fast{batch}")
        counts[batch] = len(counter.calls)
    assert counts[16] == counts[32] > 0, f"reads back from the device per run: {counts} (must not grow with steps)"

    # the layouts compared in fp32 (amp=False): bf16 rounding would differ between their kernels
    fast = training.train_one(tiny(augment=True, loss="cal_focal", amp=False), data=tiny_data, progress=False,
                              runs_dir=isolated_dirs / "fast")
    monkeypatch.setattr(training.batches, "CHANNELS_LAST", False)
    plain = training.train_one(tiny(augment=True, loss="cal_focal", amp=False), data=tiny_data, progress=False,
                               runs_dir=isolated_dirs / "plain")
    fast_log, plain_log = runs.Run(fast).log, runs.Run(plain).log
    np.testing.assert_allclose(fast_log["train_loss"], plain_log["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(fast_log["val_nll"], plain_log["val_nll"], rtol=1e-3)
    np.testing.assert_allclose(runs.Run(fast).probs("test"), runs.Run(plain).probs("test"), atol=1e-4)
    assert not np.allclose(runs.Run(run[16]).probs("test"), runs.Run(run[32]).probs("test"), atol=1e-4)


# ----------------------------------------------------------------------------- the scripts
@pytest.mark.slow
def test_throughput_benchmark_runs_end_to_end_on_cpu(isolated_dirs):
    out, readme = isolated_dirs / "results", isolated_dirs / "README.md"
    readme.write_text("# Benchmarks\n\nkept text\n")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--device", "cpu", "--sizes", "32",
           "--archs", "small_cnn", "--images", "32", "--batch-size", "16", "--epochs", "2", "--losses", "2",
           "--workers", "1", "--threads", "1", "--note", "test", "--out", str(out), "--readme", str(readme)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("train_throughput_*.json")
    rec = json.loads(path.read_text())
    assert rec["env"]["device"] == "cpu" and rec["env"]["torch"] == torch.__version__
    for key in ("device_name", "date", "torchvision", "load_average_at_start", "note"):
        assert rec["env"][key] not in (None, ""), key
    by_case = {r["case"]: r for r in rec["results"]}
    assert set(by_case) == {"peer", "engine", "ceiling", "many", "sequential"}
    for case, r in by_case.items():
        assert r["error"] is None, (case, r["error"])
        assert r["images_per_second"] > 0 and r["peak_gpu_memory_gib"] is None, case
    assert by_case["peer"]["images_per_epoch"] == 32 and by_case["many"]["losses"] == ["cce", "cce_entropy_reg"]
    (ratio,) = rec["ratios"]
    assert ratio["engine_over_ceiling"] == pytest.approx(
        by_case["engine"]["images_per_second"] / by_case["ceiling"]["images_per_second"], rel=1e-2)
    text = readme.read_text()
    assert "kept text" in text and "| small_cnn | 32² |" in text and path.name in text


@pytest.mark.slow
def test_paper_protocol_runs_shrunk_on_cpu(isolated_dirs, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import paper_protocol

    out, readme = isolated_dirs / "results", isolated_dirs / "README.md"
    code = paper_protocol.main(["--device", "cpu", "--n", "240", "--image-size", "32", "--arch", "small_cnn",
                                "--max-epochs", "1", "--losses", "2", "--out", str(out), "--readme", str(readme)])
    assert code == 0
    (path,) = out.glob("paper_protocol_*.json")
    rec = json.loads(path.read_text())
    assert rec["settings"]["shrunk"] and rec["settings"]["changed"]["losses"] == 2
    assert rec["settings"]["losses"] == ["cce", "cce_entropy_reg"] and rec["settings"]["head"] == "paper"
    assert [r["epochs_run"] for r in rec["runs"]] == [1, 1]
    assert rec["timing"]["total_seconds"] >= rec["timing"]["train_seconds"] > 0
    assert rec["target_met"] is None  # never claimed for a shrunk or CPU run
    assert "shrunk: n=240" in readme.read_text()
    assert not list(Path(os.environ["LOSSBENCH_RUNS_DIR"]).iterdir())  # the project's runs/ stays untouched


def test_pipeline_timing_reads_each_notebooks_start_and_duration(tmp_path):
    """benchmarks/pipeline_timing.py: the timeline comes from papermill's metadata, relative to the first start."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import pipeline_timing

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for name, start, took in [("05_compare_losses", "2026-01-01T10:01:40+00:00", 30.0),
                              ("01_data_exploration", "2026-01-01T10:00:00+00:00", 12.5),
                              ("04_train_one_loss__cce__seed0", "2026-01-01T10:00:10+00:00", 9.0)]:
        (nbs / f"{name}.ipynb").write_text(json.dumps({"metadata": {"papermill": {"start_time": start,
                                                                                   "duration": took}}}))
    (nbs / "broken_run.ipynb").write_text(json.dumps({"metadata": {"papermill": {"duration": None}}}))
    rows = pipeline_timing.timeline(tmp_path)
    assert [(r["notebook"], r["start_s"], r["seconds"]) for r in rows] == [
        ("01_data_exploration", 0.0, 12.5), ("04_train_one_loss__cce__seed0", 10.0, 9.0), ("05_compare_losses", 100.0, 30.0)]
    with pytest.raises(SystemExit, match="no executed notebook"):
        pipeline_timing.timeline(tmp_path / "elsewhere")
