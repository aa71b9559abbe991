#!/usr/bin/env bash
# lossbench-cxr: the two commands of the README.
#   ./run_all.sh          bootstrap .venv, run every notebook on the built-in phantom data
#   ./run_all.sh --test   bootstrap .venv, run the test suite (unit tests + notebooks in the smoke profile)
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'USAGE'
Usage: ./run_all.sh [--test] [options]

  (no option)          bootstrap .venv if needed, generate the default data, execute every
                       notebook in order with papermill (copies in runs/notebooks/), write
                       figures to figures/ and tables to runs/report/
  --test [PYTEST ARGS] bootstrap, then run the test suite (pytest; extra args go to pytest)
  --profile NAME       quick (default, CPU-sized, ~15 min on 2 cores) | full (paper protocol, GPU) | smoke
  --data SOURCE        phantom (default) | kermany:/path/to/chest_xray | pneumoniamnist:/path/file.npz
                       | imagefolder:/path | csv:/path/file.csv
  --lung-masks SOURCE  lung masks the U-Nets learn from (e.g. lungmasks:/data/Montgomery); notebooks
                       02 and 05 then lung-crop the films of --data, as the paper does
  --only NN[,NN]       run only these notebooks, e.g. --only 01,04,05
  --losses A,B         losses for notebook 04 (default: the profile's 12 losses)
  --seeds 0,1          seeds for notebook 04 (default: the profile's)
  --force              ignore caches and finished runs; recompute everything
  --fail-fast          stop at the first failing notebook (default: run all, summarise, exit 1)
  --jobs N             notebooks executed at once, each kernel with cores/N threads (default: 2
                       on >= 2 cores, else 1); a notebook waits for those it reads from
  --wait               queue behind another running ./run_all.sh instead of exiting
  --dry-run            print the notebook plan and exit
  --timeout SECONDS    a notebook cell running longer fails its notebook (default: the profile's
                       execution_timeout: smoke 600, quick 1800, full 21600; 0 = no limit)
  --ray ADDRESS        train notebook 04's runs on a Ray cluster first (e.g. auto, or
                       head-node:6379); the notebooks then read the finished run folders
  -h, --help           this text

Environment: PYTHON (interpreter used to create .venv, default python3),
LOSSBENCH_RUNS_DIR, LOSSBENCH_DATA_DIR, LOSSBENCH_FIGURES_DIR (move the output folders),
LOSSBENCH_ROOT (the project folder holding all three; default: this checkout).
USAGE
}

mode=run
args=()
for a in "$@"; do
  case "$a" in
    -h|--help) usage; exit 0 ;;
    --test) mode=test ;;
    *) args+=("$a") ;;
  esac
done

PY=${PYTHON:-python3}
bootstrap() {
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "run_all.sh: $PY is missing or older than Python 3.10; install Python >= 3.10 or set PYTHON=/path/to/python3" >&2
    exit 2
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "[bootstrap] creating .venv with $("$PY" --version)"
    "$PY" -m venv .venv
  fi
  # Re-install only when the dependency list changed (fast when already done).
  want=$(cat pyproject.toml | sha256sum | cut -c1-16)
  have=$(cat .venv/.lossbench-installed 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    echo "[bootstrap] installing lossbench-cxr and its dependencies into .venv (first time: a few minutes)"
    # pip's own output (index and build warnings) goes to a log; it is shown in full only when pip fails.
    log=.venv/pip-install.log
    .venv/bin/python -m pip install --upgrade pip >"$log" 2>&1 || true
    if ! .venv/bin/python -m pip install -e ".[test,cluster]" >>"$log" 2>&1; then
      cat "$log" >&2
      echo "[bootstrap] pip install failed (full log above, also in $log)" >&2
      exit 1
    fi
    echo "[bootstrap] installed ($log)"
    echo "$want" > .venv/.lossbench-installed
  fi
}

bootstrap
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
if [ "$mode" = test ]; then
  # The browser test drives Debian's chromium (Playwright's own browser download is not used):
  # install it when missing and we are root; otherwise that one test is skipped with a message.
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[bootstrap] installing chromium for the browser test (apt-get, at most 5 min)"
    { timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq \
        --no-install-recommends chromium; } >/dev/null 2>&1 \
      || echo "[bootstrap] chromium could not be installed; the browser test will be skipped"
  fi
  exec .venv/bin/python -m pytest "${args[@]+"${args[@]}"}"
else
  exec .venv/bin/python -m support.pipeline "${args[@]+"${args[@]}"}"
fi
