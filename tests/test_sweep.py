"""support.sweep: grids expand into train_one configs; local and Ray backends train the same runs.

The Ray tests start ONE local Ray instance for the module (2 CPUs, no dashboard,
no network) and are skipped, with the reason in pytest's summary, when Ray is
not installed (CI installs it: run_all.sh installs the [cluster] extra).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from support import artifacts, paths, profiles, sweep, training
from support.data import data_config

TINY_GRID = sweep.TINY_GRID  # the smoke profile's CPU-sized model, 2 epochs, cce/focal x seeds 0/1
CONTRACT_FILES = ("config.json", "metrics.json", "log.csv", "predictions.npz", "best.pt")


# ----------------------------------------------------------------------------- grids (fast)
def test_expand_is_the_product_in_grid_order():
    configs = sweep.expand(TINY_GRID)
    assert [(c.loss, c.seed) for c in configs] == [("cce", 0), ("cce", 1), ("focal", 0), ("focal", 1)]
    assert len({c.key() for c in configs}) == 4
    smoke = profiles.get("smoke")["train"]
    for c in configs:  # base overrides the profile; the rest comes from the profile
        assert (c.max_epochs, c.image_size, c.device, c.data["n"]) == (2, 32, "cpu", 240)
        assert (c.optimizer, c.lr, c.batch_size) == (smoke["optimizer"], smoke["lr"], smoke["batch_size"])


def test_a_profile_alone_is_its_loss_x_seed_grid():
    p = profiles.get("quick")
    configs = sweep.expand({"profile": "quick"})
    assert len(configs) == len(p["losses"]) * len(p["seeds"])
    assert {(c.loss, c.seed) for c in configs} == {(l, s) for l in p["losses"] for s in p["seeds"]}
    fixed = sweep.expand({"profile": "quick", "base": {"seed": 7}, "grid": {"loss": ["cce"]}})
    assert [(c.loss, c.seed) for c in fixed] == [("cce", 7)]


def test_grid_over_data_specs_and_files(tmp_path):
    grid = {"profile": "smoke", "grid": {"loss": "cce", "seed": 0, "data": ["phantom", {"name": "phantom", "n": 300}]}}
    a, b = sweep.expand(grid)
    assert a.data == data_config("smoke", "phantom") and b.data["n"] == 300
    assert b.data["image_size"] == profiles.get("smoke")["data"]["image_size"]  # merged over the profile's data
    (tmp_path / "g.yaml").write_text("profile: smoke\ngrid:\n  loss: [cce, focal]\n  seed: 0\n")
    (tmp_path / "g.json").write_text(json.dumps({"profile": "smoke", "grid": {"loss": ["cce", "focal"], "seed": 0}}))
    keys = [[c.key() for c in sweep.expand(tmp_path / f)] for f in ("g.yaml", "g.json")]
    assert keys[0] == keys[1] and len(keys[0]) == 2


@pytest.mark.parametrize("grid, match", [
    ({"grd": {}}, r"unknown grid key\(s\) 'grd' \(did you mean 'grid'\?\)"),
    ({"grid": {"los": ["cce"]}}, r"'los' \(did you mean 'loss'\?\)"),
    ({"base": {"epochs": 3}}, r"unknown TrainConfig field\(s\) in 'base' 'epochs'"),
    ({"base": {"seed": 0}, "grid": {"seed": [1]}}, r"\['seed'\] set in both"),
    ({"grid": {"loss": []}}, r"axis \['loss'\] has no values"),
    ({"profile": "fast"}, r"unknown profile 'fast'"),
    ({"grid": {"loss": ["nope"]}}, r"nope"),
    ({"data": 3}, r"must be a spec such as 'phantom'"),
    ({"data": "phantom", "base": {"data": "phantom"}}, r"data set both at the top of the grid and in 'base'"),
], ids=["key", "field", "base-field", "both", "empty", "profile", "loss", "data", "data-twice"])
def test_bad_grids_name_the_value(grid, match):
    with pytest.raises(ValueError, match=match):
        sweep.expand(grid)


def test_bad_grid_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [loss: cce\n")
    with pytest.raises(ValueError, match=r"bad\.yaml is not valid YAML"):
        sweep.expand(bad)
    (tmp_path / "list.yaml").write_text("- cce\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        sweep.expand(tmp_path / "list.yaml")
    with pytest.raises(FileNotFoundError, match="missing.yaml does not exist"):
        sweep.expand(tmp_path / "missing.yaml")
    with pytest.raises(SystemExit, match=r"bad\.yaml"):
        sweep.main([str(bad)])


def test_unknown_backend_and_missing_ray(isolated_dirs, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown backend 'slurm'; valid: local, ray"):
        sweep.run(TINY_GRID, backend="slurm")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[cluster\]'"):
        sweep.run(TINY_GRID, backend="ray", progress=False)


def test_notebook_04_trains_the_configs_the_sweep_trains(monkeypatch):
    """Run notebook 04's code cell with train_one replaced by a recorder: same run keys as notebook_configs."""
    nb = json.loads((paths.PROJECT_ROOT / "notebooks" / "04_train_one_loss.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    params = "".join(code[0]["source"])
    cell = "".join(next(c for c in code[1:] if "train_one" in "".join(c["source"]))["source"])
    seen = []

    class Stop(Exception):
        pass

    def record(config, **kw):
        seen.append(config.key())
        raise Stop

    monkeypatch.setattr(training, "train_one", record)
    for loss in ("cce", "cal_focal"):
        for seed in (0, 1):
            ns = {}
            exec(params, ns)
            ns.update(profile="quick", loss=loss, seed=seed)
            with pytest.raises(Stop):
                exec(cell, ns)
    expected = [c.key() for c in sweep.notebook_configs("quick", "phantom", ["cce", "cal_focal"], [0, 1])]
    assert sorted(seen) == sorted(expected)


def test_pipeline_dry_run_shows_the_ray_sweep(capsys):
    from support import pipeline

    assert pipeline.main(["--profile", "smoke", "--only", "04", "--ray", "auto", "--dry-run"]) == 0
    out = capsys.readouterr().out
    n = len(profiles.get("smoke")["losses"]) * len(profiles.get("smoke")["seeds"])
    assert f"{n} runs of 04" in out and "ray" in out.lower()


# ----------------------------------------------------------------------------- training (slow)
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One data cache for the module; LOSSBENCH_* point there (set before Ray starts, so workers see them)."""
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in (("LOSSBENCH_DATA_DIR", "data"), ("LOSSBENCH_RUNS_DIR", "runs"),
                         ("LOSSBENCH_FIGURES_DIR", "figures")):
            (root / sub).mkdir()
            mp.setenv(var, str(root / sub))
        yield root


@pytest.fixture(scope="module")
def local_runs(folders):
    # One torch thread per run, as in a Ray task (num_cpus=1): CPU numbers depend on the thread count.
    return sweep.run(TINY_GRID, "local", runs_dir=folders / "local", num_cpus=1, progress=False)


def _metrics(run_dir):
    m = artifacts.read_json(Path(run_dir) / "metrics.json")
    return {split: {k: m[split][k] for k in ("accuracy", "mcc", "auroc_macro", "log_loss")}
            for split in ("val", "test")}


def _assert_same_results(a_dir, b_dir):
    a, b = _metrics(a_dir), _metrics(b_dir)
    for split in a:
        for k in a[split]:
            assert a[split][k] == pytest.approx(b[split][k], abs=1e-6), (a_dir.name, split, k)
    pa, pb = np.load(a_dir / "predictions.npz"), np.load(b_dir / "predictions.npz")
    np.testing.assert_allclose(pa["test_probs"], pb["test_probs"], atol=1e-4)


@pytest.mark.slow
def test_local_backend_trains_once_and_skips_finished(local_runs, folders):
    assert len(local_runs.trained) == 4 and not local_runs.skipped
    for d in local_runs.run_dirs:
        assert all((d / f).is_file() for f in CONTRACT_FILES)
    again = sweep.run(TINY_GRID, "local", runs_dir=folders / "local", progress=False)
    assert again.trained == [] and sorted(again.skipped) == sorted(local_runs.trained)


@pytest.mark.slow
def test_local_process_pool_matches_sequential(local_runs, folders):
    configs = sweep.expand(TINY_GRID)[:2]
    pool = sweep.run(configs, "local", runs_dir=folders / "pool", workers=2, num_cpus=1, progress=False)
    assert len(pool.trained) == 2
    for a, b in zip(pool.run_dirs, local_runs.run_dirs[:2]):
        assert a.name == b.name
        _assert_same_results(a, b)


@pytest.mark.slow
def test_packed_run_unpacks_atomically(local_runs, tmp_path):
    src = local_runs.run_dirs[0]
    dest = sweep.unpack_run(sweep.pack_run(src), tmp_path / src.name)
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in src.iterdir() if not p.name.startswith("."))
    assert (dest / "best.pt").read_bytes() == (src / "best.pt").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [src.name]  # no staging folder left behind


def test_unpack_run_uses_tarfiles_data_filter(tmp_path):
    """A packed run whose member asks for setuid and world-write lands without them (filter="data")."""
    import io
    import stat
    import tarfile

    if not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no extraction filters (< 3.10.12 / 3.11.4)")
    buf, body = io.BytesIO(), b'{"ok": 1}'
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("metrics.json")
        info.size, info.mode = len(body), 0o6777
        tar.addfile(info, io.BytesIO(body))
    dest = sweep.unpack_run(buf.getvalue(), tmp_path / "run")
    mode = (dest / "metrics.json").stat().st_mode
    assert (dest / "metrics.json").read_bytes() == body
    assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH), oct(mode)


# ----------------------------------------------------------------------------- Ray (slow)
@pytest.fixture(scope="module")
def ray_local(folders):
    ray = pytest.importorskip("ray", reason="Ray is not installed: the ray-backend tests are skipped "
                                            "(pip install -e '.[cluster]'; CI installs it)")
    options = dict(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="lossbench-tests")
    try:
        ray.init(**options)
    except Exception:  # noqa: BLE001 - a start-up deadline missed on a busy machine: one more try
        ray.shutdown()
        ray.init(**options)
    yield ray
    ray.shutdown()


def _kill_first_attempt(victim: str, attempts: str):
    """A worker hook (pickled by value: defined in a function) that kills the worker of ``victim`` once."""

    def hook(config):
        import os as _os
        from pathlib import Path as _Path

        if config.loss != victim or config.seed != 0:
            return
        log = _Path(attempts)
        first = not log.exists()
        with open(log, "a") as fh:
            fh.write(f"{_os.getpid()}\n")
        if first:
            _os._exit(1)  # the worker process dies: a system failure that Ray retries

    return hook


@pytest.fixture(scope="module")
def ray_runs(ray_local, folders):
    attempts = folders / "attempts.txt"
    result = sweep.run(TINY_GRID, "ray", runs_dir=folders / "ray", max_retries=2, progress=False,
                       worker_hook=_kill_first_attempt("focal", str(attempts)))
    return result, attempts


@pytest.mark.slow
def test_ray_grid_completes_with_the_local_metrics(ray_runs, local_runs):
    result, _ = ray_runs
    assert len(result.trained) == 4 and not result.skipped
    for r, l in zip(result.run_dirs, local_runs.run_dirs):
        assert r.name == l.name and all((r / f).is_file() for f in CONTRACT_FILES)
        _assert_same_results(r, l)


@pytest.mark.slow
def test_ray_retries_a_killed_worker(ray_runs):
    result, attempts = ray_runs
    pids = attempts.read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1]  # killed once, retried in a new worker process
    victim = next(c for c in sweep.expand(TINY_GRID) if (c.loss, c.seed) == ("focal", 0))
    assert victim.key() in result.trained
    assert training.is_finished(training.run_dir_for(victim, result.run_dirs[0].parent))


@pytest.mark.slow
def test_ray_rerun_trains_nothing(ray_runs, folders):
    result, _ = ray_runs
    stamps = {d: (d / "metrics.json").stat().st_mtime_ns for d in result.run_dirs}
    calls = folders / "rerun_calls.txt"
    again = sweep.run(TINY_GRID, "ray", runs_dir=folders / "ray", progress=False,
                      worker_hook=_kill_first_attempt("cce", str(calls)))
    assert again.trained == [] and sorted(again.skipped) == sorted(result.trained)
    assert not calls.exists()  # no task ran
    assert {d: (d / "metrics.json").stat().st_mtime_ns for d in result.run_dirs} == stamps


@pytest.mark.slow
def test_ray_without_shared_fs_returns_the_run_folder(ray_local, local_runs, folders):
    config = sweep.expand(TINY_GRID)[0]
    result = sweep.run([config], "ray", runs_dir=folders / "noshare", shared_fs=False, progress=False)
    d = result.run_dirs[0]
    assert result.trained == [config.key()] and all((d / f).is_file() for f in CONTRACT_FILES)
    assert not (d / ".lock").exists()
    _assert_same_results(d, local_runs.run_dirs[0])
