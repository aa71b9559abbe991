"""Shared fixtures. Every test writes into tmp folders, never into the project's data/, runs/ or figures/."""
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def isolated_dirs(tmp_path, monkeypatch):
    """Point data/, runs/ and figures/ at a fresh tmp folder for one test."""
    for var, sub in (("LOSSBENCH_DATA_DIR", "data"), ("LOSSBENCH_RUNS_DIR", "runs"),
                     ("LOSSBENCH_FIGURES_DIR", "figures")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory):
    """One data cache for the session: generated data is reused across tests."""
    return tmp_path_factory.mktemp("data_cache")
