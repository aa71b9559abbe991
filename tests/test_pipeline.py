"""support.pipeline without the study notebooks: failure summaries, the cell timeout, the kernels' environment."""
from __future__ import annotations

import os

import nbformat
import pytest

from support import pipeline, profiles


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_failure_summary_comes_from_papermills_fields(tmp_path):
    from papermill.exceptions import PapermillExecutionError

    exc = PapermillExecutionError(cell_index=4, exec_count=3, source="load('x')", ename="ValueError",
                                  evalue="unknown data source 'x'\nsecond line", traceback=["..."])
    assert pipeline.describe_failure(exc, tmp_path / "absent.ipynb", 60) == \
        "cell 4 (In [3]): ValueError: unknown data source 'x'"


def test_every_profile_has_a_cell_timeout():
    assert all(profiles.get(n)["execution_timeout"] > 0 for n in profiles.names())
    assert pipeline.parse_args(["--timeout", "5"]).timeout == 5.0


def test_kernel_env_leaves_this_process_alone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = dict(os.environ)
    env = pipeline.kernel_env(3, wait_for_runs=True)
    assert dict(os.environ) == before
    assert env["OMP_NUM_THREADS"] == "3" and env["LOSSBENCH_WAIT_FOR_RUNS"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(pipeline.paths.PROJECT_ROOT)


def test_a_hung_cell_times_out_with_the_env_given_and_a_quiet_console(tmp_path, capfd):
    """One real kernel: the env reaches it, the parent's os.environ is untouched, a cell that never ends
    fails its notebook after `timeout` seconds (named by index), and the kernel's output is in the log."""
    nb = tmp_path / "01_hangs.ipynb"
    _notebook(nb, "import os; print('mark', os.environ['LOSSBENCH_TEST_MARK'], os.environ['OMP_NUM_THREADS'])",
                  "import threading; threading.Event().wait()  # never returns")
    job = pipeline.Job(nb, tmp_path / "out" / nb.name, {"profile": "smoke"})
    # the variables the pipeline used to set in its own environment (a library imported on the way may
    # set its own, e.g. older debugpy's PYDEVD_USE_FRAME_EVAL, so the whole dict is not compared)
    watched = ("PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "LOSSBENCH_WAIT_FOR_RUNS", "LOSSBENCH_TEST_MARK")
    before = {k: os.environ.get(k) for k in watched}
    env = {**pipeline.kernel_env(1, wait_for_runs=True), "LOSSBENCH_TEST_MARK": "from-the-pipeline"}
    pipeline.execute(job, env=env, timeout=3)
    assert {k: os.environ.get(k) for k in watched} == before
    assert job.error == "cell 3: timed out after 3 s (the profile's execution_timeout; raise it with --timeout)"
    assert job.seconds < 60
    executed = nbformat.read(job.output, 4)
    assert "mark from-the-pipeline 1" in executed.cells[2].outputs[0]["text"]  # cells: injected, params, 2 code
    assert job.log == tmp_path / "out" / "logs" / "01_hangs.log" and job.log.exists()
    console = capfd.readouterr()
    assert "without encryption" not in console.out + console.err and "KeyboardInterrupt" not in console.err


def test_each_notebook_gets_only_the_parameters_it_declares():
    """papermill warns 'Passed unknown parameter' for the others (style rule 19)."""
    jobs = pipeline.plan("smoke", "phantom", False, only=["00", "03", "04"], losses=["cce"], seeds=[0])
    for job in jobs:
        if job.train:  # notebook 04's training stage runs no notebook: it gets the losses it trains
            assert job.parameters["profile"] == "smoke"
            assert job.parameters["losses"] == ["cce"] and job.parameters["seed"] == 0
            continue
        assert set(job.parameters) <= pipeline.declared(job.notebook)
    by_number = {j.notebook.name[:2]: j.parameters for j in jobs if not j.train}
    assert by_number["00"] == {"profile": "smoke"}  # 00 and 03 read no data and train nothing: no data, no force
    assert set(by_number["03"]) == {"profile"}
    per_loss = [j for j in pipeline.plan("smoke", "phantom", False, only=["04"], losses=["cce"], seeds=[0])
                if not j.train]
    assert set(per_loss[0].parameters) == {"profile", "data", "force", "loss", "seed"}


def test_every_seed_has_a_training_stage_and_notebook_04_runs_once_per_loss():
    jobs = pipeline.plan("quick", "phantom", False, only=["04"], losses=["cce", "focal"], seeds=[3, 1, 2])
    stages = [j for j in jobs if j.train]
    assert [j.parameters["seed"] for j in stages] == [3, 1, 2] and all(j.parameters["losses"] == ["cce", "focal"] for j in stages)
    shown = [j for j in jobs if not j.train]
    assert [(j.parameters["loss"], j.parameters["seed"]) for j in shown] == [("cce", 3), ("focal", 3)]
    deps = pipeline.dependencies(jobs)
    assert all(deps[jobs.index(j)] == {jobs.index(stages[0])} for j in shown)  # each waits for its seed's stage


def _torch_threads(_):
    import torch

    return torch.get_num_threads()


def test_pool_workers_run_the_kernels_thread_count():
    """A worker that imported torch before taking OMP_NUM_THREADS ran 2 threads per job on 2 cores (the two
    training stages then oversubscribed the machine and trained 3.5x slower)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from support import kernels

    env = kernels.kernel_env(1, wait_for_runs=True)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=pipeline._init_worker,
                             initargs=(env,)) as pool:
        assert pool.submit(_torch_threads, 0).result() == 1
