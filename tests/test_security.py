"""Security hygiene: safe loading only, no eval of strings, no path escapes, no network at run time.

The source checks read the code (``ast``), so they hold for code written
after this test: a new ``torch.load`` without ``weights_only=True`` fails here.
"""
from __future__ import annotations

import ast
import json
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from support import artifacts, models, paths, pipeline, plots, runs, tables, training
from support.data import load

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "support").rglob("*.py"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _dotted(node: ast.AST) -> str:
    """``torch.load`` for Attribute(Name('torch'), 'load'); '' when not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expression>"
    return None


def _problems(tree: ast.AST) -> list:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: imports {m}" for m in modules
                      if m.split(".")[0] in {"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle"}]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"line {node.lineno}: {name}"
        if name in {"eval", "exec", "compile", "__import__"}:
            found.append(f"{where}() of a string")
        if name.endswith("torch.load") or name == "load" and _keyword(node, "weights_only") is not None:
            if _keyword(node, "weights_only") is not True:
                found.append(f"{where} without weights_only=True")
        if name in {"np.load", "numpy.load"} and _keyword(node, "allow_pickle") not in (None, False):
            found.append(f"{where} with allow_pickle")
        if name in {"pd.read_pickle", "pandas.read_pickle", "yaml.load", "yaml.unsafe_load", "os.system",
                    "os.popen"}:
            found.append(f"{where}")
        if name.startswith("subprocess.") and _keyword(node, "shell") not in (None, False):
            found.append(f"{where} with shell=True")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_source_loads_safely_and_never_evaluates_strings(path):
    if not path.exists():
        pytest.skip(f"{path} was removed after collection")
    problems = _problems(ast.parse(path.read_text(), filename=str(path)))
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


def test_every_torch_load_in_support_passes_weights_only_true():
    calls = [(p, n) for p in (ROOT / "support").rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.Call) and _dotted(n.func).endswith("torch.load")]
    assert calls, "no torch.load found: the checker no longer sees the loader"
    for path, call in calls:
        assert _keyword(call, "weights_only") is True, f"{path}:{call.lineno}"


def test_the_checker_catches_what_it_should():
    bad = ("import pickle\nimport torch\nx = torch.load(p)\ny = torch.load(p, weights_only=False)\n"
           "eval(s)\nimport numpy as np\nnp.load(f, allow_pickle=True)\nimport subprocess\n"
           "subprocess.run(c, shell=True)\n")
    assert len(_problems(ast.parse(bad))) == 6


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_load_safely_and_never_evaluate_strings(nb):
    cells = json.loads(nb.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    assert not _problems(ast.parse(code)), nb.name


def test_jupyterlab_in_tests_binds_to_localhost_with_a_token():
    files = sorted((ROOT / "support").rglob("*.py")) + sorted((ROOT / "tests").glob("*.py"))
    launchers = [p for p in files
                 if '"jupyterlab"' in p.read_text() or "'jupyterlab'" in p.read_text()]
    for path in launchers:
        text = path.read_text()
        assert "--ip=127.0.0.1" in text and "token=" in text, path
    for path in files:
        text = path.read_text().replace(" ", "")
        for loose in ("--ip=0.0.0.0", "token=''", 'token=""', "--ip=*"):
            assert loose not in text or path.name == "test_security.py", f"{path}: {loose}"


# ----------------------------------------------------------------------------- path escapes
ESCAPES = {
    "figure-name": lambda: plots.save_figure(None, "../../outside"),
    "figure-absolute": lambda: plots.save_figure(None, "/tmp/outside"),
    "report-table-name": lambda: tables.save_table(pd.DataFrame({"a": [1]}), "../../outside", "caption"),
    "ensemble-member-ref": lambda: __import__("support.ensembles.model_level", fromlist=["x"]).resolve_member(
        "../../outside"),
    "pipeline-loss-name": lambda: pipeline.plan("smoke", "phantom", False, only=["04"], losses=["../../../x"]),
    "paths-inside-symlink": None,  # filled in by the test (needs tmp_path)
}


@pytest.mark.parametrize("case", list(ESCAPES), ids=list(ESCAPES))
def test_user_names_cannot_escape_the_project_folders(case, isolated_dirs):
    call = ESCAPES[case]
    if case == "paths-inside-symlink":
        (isolated_dirs / "runs" / "link").symlink_to(isolated_dirs.parent)
        call = lambda: paths.inside(paths.runs_dir(), "link", "x")  # noqa: E731
    with pytest.raises(ValueError, match="escapes"):
        call()
    assert sorted(p.name for p in isolated_dirs.parent.iterdir() if p.name == "outside") == []


def test_run_folders_are_hashes_inside_the_runs_folder(isolated_dirs):
    cfg = training.TrainConfig(data={"name": "phantom", "n": 60}, arch="small_cnn", image_size=32,
                               loss_params={}, device="cpu")
    d = training.run_dir_for(cfg)
    assert d.parent == paths.runs_dir() and all(c in "0123456789abcdef" for c in d.name)


# ----------------------------------------------------------------------------- no network
@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or kwargs)
        raise OSError("network blocked by the test")

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, lambda self, *a, _n=name, **k: refuse(self, *a, **k))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: refuse(None, *a))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, *a))
    return attempts


def test_data_training_and_reading_need_no_network(isolated_dirs, no_network):
    with pytest.raises(OSError, match="blocked"):  # the block is in force
        socket.create_connection(("203.0.113.7", 80))
    no_network.clear()
    data = load("phantom", n=120, image_size=64, verbose=False)
    cfg = training.TrainConfig(data={"name": "phantom", "n": 120, "image_size": 64}, arch="small_cnn",
                               arch_params={"width": 8}, dcl_channels=128, image_size=32, batch_size=32,
                               max_epochs=1, patience=1, optimizer="adamw", lr=3e-3, device="cpu")
    d = training.train_one(cfg, data=data, progress=False)
    [run] = runs.find_runs()
    assert run.path == d and np.isfinite(run.probs("test")).all()
    models.build("small_cnn", 3, dcl_channels=128, width=8, weights=d / "best.pt")
    artifacts.load_state(d / "best.pt")
    assert no_network == []
