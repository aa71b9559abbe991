#!/usr/bin/env bash
# Check that the dependency floors in pyproject.toml are true (issue 20, item 1).
# Builds a throw-away venv with the LOWEST allowed version of every direct dependency
# (uv --resolution lowest-direct), then runs the unit tests there (no notebooks, browser or slow tests).
#   benchmarks/dependency_floors.sh [VENV_DIR] [-- extra pytest args]
# Environment: PYTHON (default python3), TORCH_SPEC / TORCHVISION_SPEC (default: the floors in
# pyproject.toml; set them when only other builds can be installed here), FIND_LINKS (space-separated
# local wheel folders, searched before PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-/tmp/lossbench-floors}
shift || true
[ "${1:-}" = "--" ] && shift
PY=${PYTHON:-python3}
rm -rf "$venv"
"$PY" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet uv
uv=("$venv/bin/python" -m uv pip install --python "$venv/bin/python" --resolution lowest-direct)
for link in ${FIND_LINKS:-}; do uv+=(--find-links "$link"); done  # space-separated folders of wheels
# One resolution: torch/torchvision pinned, every other direct dependency at its lowest allowed version
# (installing torch first would leave its newest numpy in place, which lowest-direct then keeps).
"${uv[@]}" "${TORCH_SPEC:-torch==2.2.0}" "${TORCHVISION_SPEC:-torchvision==0.17.0}" -e ".[test]"
"$venv/bin/python" -m uv pip freeze --python "$venv/bin/python" > "$venv/freeze.txt"
MPLBACKEND=Agg PYTHONPATH=$PWD "$venv/bin/python" -m pytest tests -q -p no:cacheprovider \
  -m "not notebook and not browser and not slow" "$@"
