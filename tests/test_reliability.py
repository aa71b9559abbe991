"""Fault injection: kills, full disks, corrupt artifacts, concurrent pipelines, failing notebooks.

Every test here really does the bad thing (a ``kill -9`` of a training
process, an ``OSError(ENOSPC)`` in the middle of a file write, a damaged file
in a finished run folder, a second pipeline on a locked folder, a notebook
that raises half-way) and then checks what survived. No test waits on a timer:
the subprocess tests poll for a file or a line the process writes at the
moment of interest, under a generous deadline that only guards against a hang.

Complements tests/test_training.py (determinism, in-process resume, NaN,
``force``, the run lock), whose cases are not repeated here.
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from support import artifacts, models, paths, pipeline, runs, training
from support.data import load

ROOT = Path(__file__).resolve().parent.parent
TINY = {"name": "phantom", "n": 240, "image_size": 64}
DEADLINE = 300  # seconds; only a guard against a hung child, never an assertion about speed


def tiny_config(**kw) -> training.TrainConfig:
    base = dict(data=TINY, arch="small_cnn", arch_params={"width": 8}, dcl_channels=128, image_size=32,
                batch_size=32, max_epochs=2, patience=2, optimizer="adamw", lr=3e-3, device="cpu")
    base.update(kw)
    return training.TrainConfig(**base)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One phantom cache for the module, shared with the subprocesses through LOSSBENCH_DATA_DIR."""
    return tmp_path_factory.mktemp("reliability_data")


@pytest.fixture(scope="module")
def bundle(data_root):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOSSBENCH_DATA_DIR", str(data_root))
        return load(**TINY, verbose=False)


@pytest.fixture(scope="module")
def baseline(bundle, tmp_path_factory):
    """An uninterrupted run of ``tiny_config()``: what every survivor must equal."""
    root = tmp_path_factory.mktemp("baseline_runs")
    d = training.train_one(tiny_config(), runs_dir=root, data=bundle, progress=False)
    return runs.Run(d).check()


def same_result(run_dir: Path, baseline: runs.Run) -> None:
    """Same test probabilities (bit for bit on the CPU), same metrics, same epochs."""
    run = runs.Run(run_dir).check()
    np.testing.assert_array_equal(run.probs("test"), baseline.probs("test"))
    np.testing.assert_array_equal(run.probs("val"), baseline.probs("val"))
    assert run.metrics["test"] == baseline.metrics["test"]
    assert run.metrics["best_epoch"] == baseline.metrics["best_epoch"]
    assert list(run.log["epoch"]) == list(baseline.log["epoch"])


def tmp_files(folder: Path):
    return sorted(p.name for p in folder.rglob("*.tmp"))


def child_env(data_root: Path, runs_root: Path, **extra) -> dict:
    env = dict(os.environ, LOSSBENCH_DATA_DIR=str(data_root), LOSSBENCH_RUNS_DIR=str(runs_root),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
               PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env.update(extra)
    return env


def wait_for(path: Path, proc: subprocess.Popen, log: Path) -> None:
    """Poll until ``path`` exists; fail with the child's output if it exits first."""
    end = time.monotonic() + DEADLINE
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"child exited ({proc.returncode}) before {path.name}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"child never wrote {path.name}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


# ============================================================================= kill -9
# The child trains tiny_config() for real and parks itself at a chosen point so that the
# SIGKILL lands exactly there: in the middle of epoch 1 (third batch), or half-way through
# writing the epoch-1 resume checkpoint (half the bytes of last.pt already on disk).
CHILD = textwrap.dedent('''
    import io, json, os, sys, threading
    from pathlib import Path
    from support import artifacts, training
    from support.training import loop

    mode, marker, runs_dir = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    config = training.TrainConfig(**json.loads(sys.argv[4]))
    state = {"epochs_done": 0, "train_batches": 0}

    def park(note):
        marker.write_text(note)
        threading.Event().wait()  # stay here until the parent's kill -9

    real_prepare, real_write = loop.prepare_batch, artifacts.atomic_write

    def end_epoch(m, epoch):
        state["epochs_done"] += 1

    def prepare_batch(*a, **k):  # the loop's training batches (validation prepares its own)
        if mode == "mid-epoch" and state["epochs_done"] == 1:
            state["train_batches"] += 1
            if state["train_batches"] == 3:
                park("epoch 1, batch 3")
        return real_prepare(*a, **k)

    def atomic_write(path, write):
        if mode == "mid-write" and Path(path).name == "last.pt" and state["epochs_done"] == 1:
            def half(fh):
                buf = io.BytesIO()
                write(buf)
                data = buf.getvalue()
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                park("half of last.pt written")
            return real_write(path, half)
        return real_write(path, write)

    loop.prepare_batch, artifacts.atomic_write = prepare_batch, atomic_write
    training.train_one(config, runs_dir=runs_dir, progress=False, on_epoch_end=end_epoch)
    print("child finished without being killed")
''')


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mid-epoch", "mid-write"])
def test_kill_minus_9_then_resume_equals_uninterrupted(where, tmp_path, data_root, bundle, baseline, capsys):
    cfg = tiny_config()
    runs_root, marker, log = tmp_path / "runs", tmp_path / "parked", tmp_path / "child.log"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    experiment = {k: v for k, v in vars(cfg).items()}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(script), where, str(marker), str(runs_root),
                                 json.dumps(experiment)], cwd=ROOT, env=child_env(data_root, runs_root),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(marker, proc, log)
        run_dir = runs_root / cfg.key()
        # While the child is alive, a second writer of the same run folder is refused.
        with pytest.raises(training.RunLocked, match=str(run_dir)):
            training.train_one(cfg, runs_dir=runs_root, data=bundle, progress=False)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # What the kill left: epoch 0 complete, epoch 1 lost, nothing that reads as a result.
    assert not (run_dir / "metrics.json").exists()
    assert runs.find_runs(runs_root) == [] and runs.find_runs.problems == []
    resume = artifacts.load_state(run_dir / "last.pt")
    assert resume["next_epoch"] == 1
    # log.csv is written just before last.pt: in mid-write it already shows epoch 1, but the
    # resume state (last.pt) decides, and the resumed run rewrites the log from it.
    assert len(runs.Run(run_dir).log) == (1 if where == "mid-epoch" else 2)
    if where == "mid-write":
        assert len(tmp_files(run_dir)) == 1  # the half-written last.pt, under a temporary name only

    capsys.readouterr()
    resumed = training.train_one(cfg, runs_dir=runs_root, data=bundle, progress=False)
    assert "resuming cce (seed 0) at epoch 1" in capsys.readouterr().out
    same_result(resumed, baseline)
    assert tmp_files(run_dir) == [] and not (run_dir / "last.pt").exists()


# ============================================================================= full disk
def full_disk_at(monkeypatch, name: str, nth: int = 1) -> dict:
    """The ``nth`` write of a file called ``name`` puts half its bytes on disk, then hits ENOSPC."""
    real = artifacts.atomic_write
    seen = {"writes": 0, "failed": False}

    def atomic_write(path, write):
        if Path(path).name == name:
            seen["writes"] += 1
            if seen["writes"] == nth:
                def half_then_full(fh):
                    buf = io.BytesIO()
                    write(buf)
                    fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                    fh.flush()
                    seen["failed"] = True
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(path, half_then_full)
        return real(path, write)

    monkeypatch.setattr(artifacts, "atomic_write", atomic_write)
    # Space comes back; not monkeypatch.undo(), which would also undo isolated_dirs.
    seen["free_space"] = lambda: monkeypatch.setattr(artifacts, "atomic_write", real)
    return seen


# (file that fails, which write of it, epochs the resume state must hold afterwards)
FULL_DISK = {
    "last.pt-epoch1": ("last.pt", 2, 1),        # the resume checkpoint of epoch 1 (the last epoch)
    "log.csv-epoch1": ("log.csv", 2, 1),        # the epoch log of epoch 1
    "predictions.npz": ("predictions.npz", 1, 2),  # all epochs done, publishing the results
    "metrics.json": ("metrics.json", 1, 2),     # the very last write of a run
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FULL_DISK))
def test_full_disk_keeps_the_previous_checkpoint_and_never_a_half_file(case, isolated_dirs, bundle, baseline,
                                                                        monkeypatch):
    name, nth, epochs_kept = FULL_DISK[case]
    cfg = tiny_config()
    run_dir = training.run_dir_for(cfg)
    seen = full_disk_at(monkeypatch, name, nth)
    with pytest.raises(OSError) as info:
        training.train_one(cfg, data=bundle, progress=False)
    assert seen["failed"]
    err = info.value
    assert err.errno == errno.ENOSPC
    assert f"no space left while writing {run_dir / name}" in str(err)
    assert "previous version (if any) is intact" in str(err) and "Free disk space" in str(err)

    assert tmp_files(run_dir) == []  # the half-written temporary file was removed
    assert not (run_dir / "metrics.json").exists()
    assert runs.find_runs() == [] and runs.find_runs.problems == []
    state = artifacts.load_state(run_dir / "last.pt")  # the previous checkpoint is intact
    assert state["next_epoch"] == epochs_kept
    models.build("small_cnn", 3, dcl_channels=128, width=8).load_state_dict(
        artifacts.load_state(run_dir / "best.pt"))

    # Space is back: the re-run resumes (no finished epoch is trained again) and equals an uninterrupted run.
    seen["free_space"]()
    trained = []
    d = training.train_one(cfg, data=bundle, progress=False, on_epoch_end=lambda m, epoch: trained.append(epoch))
    assert trained == list(range(epochs_kept, 2))
    same_result(d, baseline)


@pytest.mark.slow
def test_full_disk_during_forced_rerun_keeps_the_finished_run(isolated_dirs, bundle, baseline, monkeypatch):
    cfg = tiny_config()
    d = training.run_dir_for(cfg)
    shutil.copytree(baseline.path, d)  # a finished run
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != ".lock"}
    disk = full_disk_at(monkeypatch, "predictions.npz")
    with pytest.raises(OSError, match="no space left"):
        training.train_one(cfg, data=bundle, progress=False, force=True)
    after = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before
    assert [r.path for r in runs.find_runs()] == [d]
    disk["free_space"]()
    training.train_one(cfg, data=bundle, progress=False, force=True)  # a later force cleans up its staging
    assert not any(p.name.startswith((".staging", ".old")) for p in d.parent.iterdir())


def test_atomic_write_enospc_names_the_path_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "table.csv"
    artifacts.write_text(target, "old,complete\n")

    def fill_disk(fh):
        fh.write(b"new,half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"no space left while writing {target}"):
        artifacts.atomic_write(target, fill_disk)
    assert target.read_text() == "old,complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


# ============================================================================= corrupt artifacts
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _Foreign:  # a pickled object of a class weights_only=True refuses to build
    pass


DAMAGE = {
    "best.pt truncated": ("best.pt", _truncate),
    "best.pt empty": ("best.pt", lambda p: p.write_bytes(b"")),
    "best.pt foreign object": ("best.pt", lambda p: torch.save(_Foreign(), p)),
    "best.pt not a state dict": ("best.pt", lambda p: torch.save({"epoch": 3, "note": "not weights"}, p)),
    "metrics.json not JSON": ("metrics.json", lambda p: p.write_text('{"loss": "cce", "test": {')),
    "metrics.json a list": ("metrics.json", lambda p: p.write_text("[1, 2, 3]")),
    "metrics.json older format": ("metrics.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "format_version": 0}))),
    "predictions.npz truncated": ("predictions.npz", _truncate),
    "log.csv empty": ("log.csv", lambda p: p.write_text("")),
    "config.json not JSON": ("config.json", lambda p: p.write_bytes(b"\x00\xff binary")),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_run_is_reported_never_tabled_and_recomputed_only_with_force(case, isolated_dirs, bundle,
                                                                              baseline, monkeypatch):
    name, damage = DAMAGE[case]
    cfg = tiny_config()
    run_dir = training.run_dir_for(cfg)
    shutil.copytree(baseline.path, run_dir)  # a finished run, as train_one would leave it
    assert [r.path for r in runs.find_runs()] == [run_dir]
    damage(run_dir / name)
    damaged = (run_dir / name).read_bytes()

    with pytest.warns(UserWarning, match=f"skipping broken run {run_dir}"):
        found = runs.find_runs()
    assert found == []
    [(where, why)] = runs.find_runs.problems
    assert where == run_dir and str(run_dir) in why
    assert name in why or "run format 0" in why
    assert runs.runs_table(found).empty

    # Without force: not retrained, not silently used, the damaged file left as it is.
    with pytest.raises(training.TrainingError) as info:
        training.train_one(cfg, data=bundle, progress=False,
                           on_epoch_end=lambda m, epoch: pytest.fail("recomputed without force"))
    assert str(run_dir) in str(info.value) and "force=True" in str(info.value)
    assert (run_dir / name).read_bytes() == damaged

    if case == "best.pt truncated":  # recomputed when asked (once: tests/test_training.py forces another case)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = training.train_one(cfg, data=bundle, progress=False, force=True)
        same_result(d, baseline)
        assert runs.find_runs() and runs.find_runs.problems == []


def test_older_format_folder_is_reported_and_does_not_block_a_new_run(isolated_dirs, baseline):
    old = paths.runs_dir() / "0ldf0rmat000"
    shutil.copytree(baseline.path, old)
    m = json.loads((old / "metrics.json").read_text())
    (old / "metrics.json").write_text(json.dumps({**m, "format_version": 0}))
    with pytest.warns(UserWarning, match="0ldf0rmat000"):
        assert runs.find_runs() == []
    [(where, why)] = runs.find_runs.problems
    assert where == old and "run format 0" in why and f"delete {old}" in why


# ============================================================================= two pipelines at once
def test_second_pipeline_exits_with_a_clear_message(isolated_dirs):
    lock = pipeline.acquire_lock(wait=False)  # this process plays the first ./run_all.sh
    try:
        proc = subprocess.run([sys.executable, "-m", "support.pipeline", "--profile", "smoke", "--only", "01"],
                              cwd=ROOT, env=child_env(isolated_dirs / "data", isolated_dirs / "runs"),
                              capture_output=True, text=True, timeout=DEADLINE)
    finally:
        lock.release()
    assert proc.returncode != 0
    runs_root = paths.runs_dir()
    assert f"another ./run_all.sh is already running on {runs_root} (pid {os.getpid()}" in proc.stderr
    assert "--wait" in proc.stderr and "LOSSBENCH_RUNS_DIR" in proc.stderr
    assert not (runs_root / "notebooks").exists()  # nothing was executed or written


def test_waiting_pipeline_queues_behind_the_first(isolated_dirs, tmp_path):
    lock = pipeline.acquire_lock(wait=False)
    out = tmp_path / "second.log"
    code = "from support import pipeline; lock = pipeline.acquire_lock(wait=True); print('second holds the lock')"
    with open(out, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                env=child_env(isolated_dirs / "data", isolated_dirs / "runs"))
    try:
        end = time.monotonic() + DEADLINE
        while "waiting" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < end, "the second pipeline never said it was waiting"
            time.sleep(0.05)
        assert proc.poll() is None and "holds the lock" not in out.read_text()  # still queued
        assert f"pid {os.getpid()}" in out.read_text()
    finally:
        lock.release()  # the first pipeline ends ...
    assert proc.wait(timeout=DEADLINE) == 0  # ... and the second goes on
    assert "second holds the lock" in out.read_text()


# ============================================================================= a notebook fails mid-way
def _notebook(path: Path, *sources: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "quick"\ndata = "phantom"\nforce = False')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


NETBLOCK = textwrap.dedent('''
    """Installed by tests/test_reliability.py: refuse every connection that leaves this machine."""
    import os
    import socket

    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
    _LOCAL = ("127.0.0.1", "::1", "localhost")

    def _check(sock, address):
        if sock.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in _LOCAL):
            return
        with open(os.environ["NETBLOCK_LOG"], "a") as log:
            log.write(f"{os.getpid()} {address!r}\\n")
        raise OSError(101, f"network blocked by the test: connect to {address!r}")

    def connect(self, address):
        _check(self, address)
        return _connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return _connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
''')


@pytest.mark.slow
@pytest.mark.notebook
def test_failing_notebook_others_continue_summary_names_it_offline(tmp_path, data_root):
    """Three notebooks (one fails half-way, one is the real 04 in the smoke profile), network blocked."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    _notebook(nbdir / "01_probe_network.ipynb",
              "import socket\ntry:\n    socket.create_connection(('203.0.113.7', 80), timeout=5)\n"
              "    raise SystemExit('the network was reachable')\nexcept OSError as exc:\n"
              "    assert 'blocked by the test' in str(exc), exc\nprint('network blocked in the kernel')")
    _notebook(nbdir / "02_fails_midway.ipynb", "print('first half done')",
              "raise RuntimeError('injected failure half-way through')", "print('second half')")
    shutil.copy(ROOT / "notebooks" / "04_train_one_loss.ipynb", nbdir)
    block = tmp_path / "netblock"
    block.mkdir()
    (block / "sitecustomize.py").write_text(NETBLOCK)
    netlog = tmp_path / "net.log"
    runs_root = tmp_path / "runs"
    env = child_env(data_root, runs_root, LOSSBENCH_FIGURES_DIR=str(tmp_path / "figures"), NETBLOCK_LOG=str(netlog))
    env["PYTHONPATH"] = os.pathsep.join([str(block), env["PYTHONPATH"]])
    code = ("import sys; from pathlib import Path; from support import pipeline; "
            "pipeline.NOTEBOOKS_DIR = Path(sys.argv[1]); sys.exit(pipeline.main(sys.argv[2:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(nbdir), "--profile", "smoke", "--losses", "cce",
                           "--seeds", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:] + proc.stderr[-3000:]
    summary = out[out.index("run_all summary"):]
    assert "2 notebook runs succeeded, 1 failed" in summary
    executed = runs_root / "notebooks" / "02_fails_midway.ipynb"
    assert "FAILED 02_fails_midway.ipynb" in summary and "injected failure half-way through" in summary
    assert f"executed copy: {executed}" in summary
    assert "01_probe_network" not in summary and "04_train_one_loss" not in summary
    # The executed copy shows how far it got.
    text = executed.read_text()
    assert "first half done" in text and "RuntimeError" in text and "second half\\n" not in text
    # The notebook after the failure ran: a finished smoke run, read back without error.
    [run] = runs.find_runs(runs_root)
    assert run.loss == "cce" and run.seed == 0
    # Nothing tried to leave the machine except the probe of notebook 01.
    attempts = netlog.read_text().splitlines()
    assert len(attempts) == 1 and "203.0.113.7" in attempts[0]


@pytest.mark.slow
@pytest.mark.notebook
def test_parallel_pipeline_keeps_dependencies_and_splits_the_cores(tmp_path, data_root):
    """--jobs 2: notebook 05 (which reads 04's runs) starts only after 04 ended; each kernel gets cores/2 threads."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    log = tmp_path / "times.jsonl"
    def record(name: str, body: str) -> str:
        return (f"import json, os, time, torch\nstart = time.time()\n{body}\n"
                f"row = dict(nb={name!r}, start=start, end=time.time(), omp=os.environ.get('OMP_NUM_THREADS'), "
                f"torch=torch.get_num_threads())\nopen({str(log)!r}, 'a').write(json.dumps(row) + '\\n')")

    _notebook(nbdir / "01_a.ipynb", record("01", "x = sum(range(10**6))"))
    _notebook(nbdir / "04_b.ipynb", record("04", "x = sum(range(10**7))"))
    _notebook(nbdir / "05_c.ipynb", record("05", "x = 1"))
    env = child_env(data_root, tmp_path / "runs", LOSSBENCH_FIGURES_DIR=str(tmp_path / "figures"))
    env.pop("OMP_NUM_THREADS", None)
    code = ("import sys; from pathlib import Path; from support import pipeline; "
            "pipeline.NOTEBOOKS_DIR = Path(sys.argv[1]); sys.exit(pipeline.main(sys.argv[2:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(nbdir), "--profile", "smoke", "--losses", "cce",
                           "--seeds", "0", "--jobs", "2"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "jobs=2" in proc.stdout and "3 notebook runs succeeded, 0 failed" in proc.stdout
    times = {r["nb"]: r for r in map(json.loads, log.read_text().splitlines())}
    assert times["05"]["start"] >= times["04"]["end"]
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert {r["omp"] for r in times.values()} == {str(threads)}
    assert {r["torch"] for r in times.values()} == {threads}


def test_dependencies_follow_what_each_notebook_reads():
    from support import pipeline

    jobs = pipeline.plan("smoke", "phantom", False)
    names = [j.output.stem for j in jobs]
    needs = pipeline.dependencies(jobs)
    by_name = {n: {names[k] for k in needs[i]} for i, n in enumerate(names)}
    stages = {j.output.stem for j in jobs if j.train}
    per_loss = {n for n in names if n.startswith("04_")}  # the training stages and the notebooks
    assert stages == {"04_train_one_loss__train__seed0"}
    assert by_name["01_data_exploration"] == set() and by_name["08_synthetic_nodules"] == set()
    assert all(by_name[n] == set() for n in stages)  # the training starts at once
    assert all(by_name[n] == stages for n in per_loss - stages)  # each notebook reads its stage's runs
    assert by_name["05_compare_losses"] == per_loss | {"02_lung_segmentation"}
    assert by_name["07_localization"] == per_loss  # 06's model-level runs: the second writer waits (run_lock)
    assert by_name["09_report"] == set(names) - {"09_report"}
