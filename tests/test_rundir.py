"""The one run-folder life cycle (support.rundir) and the loops that use it.

Each defect the segmentation loop's own copy had is tested on it: a kill between the publish steps
resumes instead of retraining, and a killed force run's staging folder is found and removed.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from support import artifacts, paths, rundir
from support import segmentation as seg
from support.rundir import RunFolder


def _killed_at(monkeypatch, name: str):
    """Make the atomic write of ``name`` raise, as a kill at that moment would stop the process."""
    real = artifacts.atomic_write

    def write(path, fn):
        if Path(path).name == name:
            raise KeyboardInterrupt(f"killed while writing {name}")
        return real(path, fn)

    monkeypatch.setattr(artifacts, "atomic_write", write)
    return lambda: monkeypatch.setattr(artifacts, "atomic_write", real)


def _progressed(folder: RunFolder, epochs: int = 2) -> None:
    folder.write_config({"what": "test"})
    folder.save_progress({"next_epoch": epochs}, [{"epoch": e, "train_loss": 1.0 / (e + 1)} for e in range(epochs)])


# ----------------------------------------------------------------------------- the mechanism
def test_a_kill_before_metrics_json_keeps_the_resume_state(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "run")
    with folder.lock():
        assert folder.claim()
        _progressed(folder)
        back = _killed_at(monkeypatch, "metrics.json")
        with pytest.raises(KeyboardInterrupt):
            folder.publish({"done": True})
    back()
    assert not rundir.is_finished(folder.final) and (folder.final / "last.pt").exists()
    again = RunFolder(tmp_path / "run")
    with again.lock():
        assert again.claim()  # not finished: claimed again, and it resumes
        assert again.resume_state("cpu") == {"next_epoch": 2}
        again.publish({"done": True})
    assert rundir.is_finished(folder.final) and not (folder.final / "last.pt").exists()
    assert sorted(p.name for p in folder.final.iterdir()) == [".lock", "config.json", "log.csv", "metrics.json"]


def test_a_killed_force_run_leaves_nothing_the_next_one_keeps(tmp_path, monkeypatch):
    final = tmp_path / "run"
    with RunFolder(final).lock():
        RunFolder(final).claim()
        RunFolder(final).publish({"version": 1})
    # A force run killed half-way leaves its staging folder (a fixed name, no process id) ...
    first = RunFolder(final, force=True)
    with first.lock():
        assert first.claim()
        _progressed(first)
        (first.path / ".best.pt.123.tmp").write_bytes(b"half")
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == [".staging-run", "run"]
    # ... which the next force run finds, removes and does not resume from.
    second = RunFolder(final, force=True)
    with second.lock():
        assert second.claim()
        assert list(second.path.iterdir()) == [] and second.resume_state("cpu") is None
        second.publish({"version": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging, no .old- folder
    assert artifacts.read_json(final / "metrics.json") == {"version": 2}


def test_stale_tmp_files_are_removed_and_a_run_finished_meanwhile_is_not_claimed(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.final.mkdir()
    (folder.final / ".last.pt.999.tmp").write_bytes(b"half")
    with folder.lock():
        assert folder.claim()
        assert not list(folder.final.glob(".*.tmp"))
        folder.publish({"done": True})
    with folder.lock():  # the re-check after taking the lock: finished by the process we waited for
        assert not RunFolder(tmp_path / "run").claim()
        assert RunFolder(tmp_path / "run", force=True).claim()  # force always retrains


def test_a_held_run_folder_is_refused_with_a_clear_message(tmp_path):
    with rundir.run_lock(tmp_path / "r"):
        with pytest.raises(rundir.RunLocked, match="being written by another process; wait for it or stop it"):
            with rundir.run_lock(tmp_path / "r", wait=False):
                pass


def test_training_imports_without_fcntl(tmp_path):
    """No fcntl (as on Windows): the training and segmentation loops and the pipeline still import."""
    code = ("import sys, warnings; sys.modules['fcntl'] = None; warnings.simplefilter('ignore'); "
            "import support.training, support.segmentation.train, support.pipeline; print('imported')")
    out = subprocess.run([sys.executable, "-c", code], cwd=paths.PROJECT_ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr
    assert "fcntl" not in (paths.PROJECT_ROOT / "support" / "rundir.py").read_text()


# ----------------------------------------------------------------------------- the segmentation loop
@pytest.fixture(scope="module")
def seg_dirs(tmp_path_factory, shared_data_dir):
    """The session's data cache; every run folder of these tests goes to an explicit ``runs_dir`` below this."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LOSSBENCH_DATA_DIR", str(shared_data_dir))
    yield tmp_path_factory.mktemp("rundir_seg")
    mp.undo()


@pytest.fixture(scope="module")
def seg_config(seg_dirs):
    return seg.SegConfig.from_profile("smoke", loss="seg_bce", max_epochs=2)


@pytest.fixture(scope="module")
def seg_whole(seg_dirs, seg_config):
    return seg.train_seg(seg_config, runs_dir=seg_dirs / "whole", progress=False)


def test_segmentation_killed_between_publish_steps_resumes_instead_of_retraining(seg_dirs, seg_config, seg_whole,
                                                                                monkeypatch):
    back = _killed_at(monkeypatch, "metrics.json")
    with pytest.raises(KeyboardInterrupt):
        seg.train_seg(seg_config, runs_dir=seg_dirs / "cut", progress=False)
    back()
    cut = seg_dirs / "cut" / seg_whole.name
    assert (cut / "last.pt").exists() and not (cut / "metrics.json").exists()  # the old order lost last.pt here
    trained = []
    d = seg.train_seg(seg_config, runs_dir=seg_dirs / "cut", progress=False,
                      on_epoch_end=lambda st, epoch: trained.append(epoch))
    assert trained == []  # both epochs were saved: nothing trained again
    assert not (d / "last.pt").exists()
    for f in ("val_pred", "test_pred"):
        np.testing.assert_array_equal(np.load(d / "masks.npz")[f], np.load(seg_whole / "masks.npz")[f])
    pd.testing.assert_frame_equal(pd.read_csv(d / "log.csv").drop(columns="seconds"),
                                  pd.read_csv(seg_whole / "log.csv").drop(columns="seconds"))


def test_segmentation_force_run_removes_a_killed_force_runs_staging_folder(seg_dirs, seg_config, seg_whole):
    staging = seg_whole.parent / f".staging-{seg_whole.name}"
    staging.mkdir()
    (staging / "last.pt").write_bytes(b"a killed force run's resume state: never resumed")
    (staging / ".log.csv.42.tmp").write_bytes(b"half")
    trained = []
    d = seg.train_seg(seg_config, runs_dir=seg_whole.parent, force=True, progress=False,
                      on_epoch_end=lambda st, epoch: trained.append(epoch))
    assert d == seg_whole and trained == [0, 1]  # retrained from scratch
    assert [p.name for p in seg_whole.parent.iterdir() if p.name.startswith(".")] == []
    assert sorted(p.name for p in d.iterdir()) == [".lock", "best.pt", "config.json", "log.csv", "masks.npz",
                                                    "metrics.json"]
