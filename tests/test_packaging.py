"""Packaging and repository hygiene: dependency lists agree, notebooks are clean and parameterised."""
import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_deps():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = data["project"]
    extras = project["optional-dependencies"]
    return project["dependencies"] + extras["test"] + extras["cluster"]  # run_all.sh installs .[test,cluster]


def _env_deps():
    import yaml

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return [d for d in pip if not d.startswith("-e")]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_matches_pyproject():
    assert sorted(map(_norm, _env_deps())) == sorted(map(_norm, _pyproject_deps()))


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stripped_and_has_one_parameters_cell(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") for c in code), f"{path.name} has stored outputs; strip them"
    assert not any(c.get("execution_count") for c in code), f"{path.name} has execution counts; strip them"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} must have exactly one cell tagged 'parameters', has {len(tagged)}"
    assert "profile" in "".join(tagged[0]["source"]), f"{path.name}: the parameters cell must define `profile`"


def test_notebooks_are_numbered_uniquely():
    numbers = [p.name[:2] for p in NOTEBOOKS if p.name[:2].isdigit()]
    assert len(numbers) == len(set(numbers))


def test_run_all_help_documents_every_flag():
    out = subprocess.run([str(ROOT / "run_all.sh"), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for flag in ("--test", "--profile", "--data", "--only", "--force"):
        assert flag in out.stdout
    # ... and every flag the pipeline accepts (run_all.sh passes them through)
    from support import pipeline

    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as text:
        pipeline.parse_args(["--help"])
    flags = set(re.findall(r"(--[a-z][a-z-]+)", text.getvalue())) - {"--help"}
    assert "--jobs" in flags
    assert not [f for f in sorted(flags) if f not in out.stdout]


def test_no_import_side_effects(tmp_path, monkeypatch):
    """Importing the package creates no folder and seeds nothing."""
    monkeypatch.setenv("LOSSBENCH_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(tmp_path / "data"))
    code = "import support, support.data, support.losses, support.models, support.training, support.runs"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**__import__("os").environ})
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_output_folders_of_a_non_editable_install_follow_the_working_directory(tmp_path):
    """`pip install .` copies `support` into site-packages: runs/ data/ figures/ must then belong to the
    project the user works in (nearest pyproject.toml at or above the cwd), never to site-packages."""
    import shutil

    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "support", site / "support", ignore=shutil.ignore_patterns("__pycache__"))
    project = tmp_path / "my_study"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'my-study'\n")
    code = ("from support import paths; print(paths.runs_dir(), paths.data_dir(), paths.figures_dir(), "
            "paths.PROJECT_ROOT, sep='\\n')")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}

    def folders(cwd, **extra):
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**env, **extra}, capture_output=True,
                             text=True, timeout=60, check=True)
        return out.stdout.split()

    runs, data, figures, root = folders(project / "notebooks")
    assert [runs, data, figures, root] == [str(project / "runs"), str(project / "data"), str(project / "figures"),
                                           str(project)]
    assert not any(p.startswith(str(site)) for p in (runs, data, figures, root))
    assert folders(project, LOSSBENCH_RUNS_DIR=str(tmp_path / "elsewhere"))[0] == str(tmp_path / "elsewhere")
    assert folders(project, LOSSBENCH_ROOT=str(tmp_path / "r"))[0] == str(tmp_path / "r" / "runs")
    # ... while a checkout (this repository, on PYTHONPATH) keeps its own folders wherever the cwd is
    assert folders(tmp_path, PYTHONPATH=str(ROOT))[0] == str(ROOT / "runs")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_papermill_parses_every_parameters_line(path, caplog):
    """papermill reads the parameters cell before every run; a line it cannot parse (e.g. an '=' inside
    the comment) prints 'Unable to parse line ...' on the pipeline's console."""
    from papermill.inspection import _infer_parameters
    from papermill.iorw import load_notebook_node

    with caplog.at_level("WARNING", logger="papermill"):
        params = _infer_parameters(load_notebook_node(str(path)))
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("papermill")]
    assert "profile" in {p.name for p in params}


def test_license_is_spdx_and_the_files_exist():
    """A TOML-table license makes setuptools >= 77 print a deprecation wall on every install."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    import yaml

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["license"] == "MIT" and cff["cff-version"] == "1.2.0"
    assert {"10.1371/journal.pone.0261307", "10.1007/978-3-030-87444-5_6", "10.1016/j.cell.2018.02.010",
            "10.1038/s41597-022-01721-8"} <= {r.get("doi") for r in cff["references"]}


def test_readme_links_stay_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    for section in ("## Cite", "## Getting the real data"):
        assert section in readme
    targets = re.findall(r"\]\(([^)#]+)\)", readme)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert not [t for t in local if not (ROOT / t).exists()], "README links a file the repository lacks"
    assert "shared/" not in readme


@pytest.mark.parametrize("pip_fails", [False, True], ids=["pip ok", "pip fails"])
def test_bootstrap_is_quiet_unless_pip_fails(tmp_path, pip_fails):
    """run_all.sh's first install: two [bootstrap] lines; pip's warnings only in .venv/pip-install.log, and
    all of them on the console when pip fails. A stub .venv/bin/python stands in for pip (no network)."""
    import shutil
    import stat

    shutil.copy(ROOT / "run_all.sh", tmp_path / "run_all.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    stub = tmp_path / ".venv" / "bin" / "python"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/usr/bin/env bash\n"
                    'case "$*" in\n'
                    '  *"pip install --upgrade pip"*) echo "WARNING: Location file:///opt/x is ignored" ;;\n'
                    '  *"pip install -e"*) echo "SetuptoolsDeprecationWarning: project.license as a TOML table"; '
                    f'echo "ERROR: no matching distribution"; exit {int(pip_fails)} ;;\n'
                    '  *support.pipeline*) echo "pipeline ran" ;;\n'
                    "esac\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    out = subprocess.run([str(tmp_path / "run_all.sh")], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    log = (tmp_path / ".venv" / "pip-install.log").read_text()
    assert "SetuptoolsDeprecationWarning" in log and "WARNING: Location" in log
    if pip_fails:
        assert out.returncode == 1 and "pipeline ran" not in out.stdout
        assert "SetuptoolsDeprecationWarning" in out.stderr and "ERROR: no matching distribution" in out.stderr
        assert "pip install failed" in out.stderr
    else:
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["[bootstrap] installing lossbench-cxr and its dependencies into .venv "
                                           "(first time: a few minutes)",
                                           "[bootstrap] installed (.venv/pip-install.log)", "pipeline ran"]
        assert out.stderr == ""
