"""The smoke pipeline end to end on a user's own data, in each real layout (issue 21).

Five tiny learnable fixtures (tests/layouts.py, written here, nothing downloaded): Kermany (3 classes from
the file names) with a Montgomery-style lung-mask folder for the crop (``--lung-masks``), a
PneumoniaMNIST ``.npz`` (2 classes), an image folder with 4 classes and a CSV with given splits. Each
runs ``python -m support.pipeline --profile smoke --data ...`` (``./run_all.sh``'s command), two
pipelines at a time with one notebook each, restricted (``--only``) to the notebooks whose behaviour
depends on the data source; 00, 03 and 08 never read it and 02 reads it only with lung masks, and the
phantom smoke run (test_notebooks.py) covers them.
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import layouts  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA_NOTEBOOKS = "01,04,05,06,07,09"

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def _cases(tmp: Path):
    """name -> (--data spec, extra arguments, expected class count, text the tables' captions name)."""
    kermany = layouts.kermany(tmp / "kermany")
    masks = layouts.montgomery(tmp / "montgomery")
    npz = layouts.pneumoniamnist(tmp / "pmnist" / "pneumoniamnist.npz")
    folder = layouts.imagefolder(tmp / "folder")
    table = layouts.csv_layout(tmp / "csvdata")
    return {
        "kermany": (f"kermany:{kermany}", ["--lung-masks", f"lungmasks:{masks}", "--only", "02," + DATA_NOTEBOOKS],
                    3, f"Kermany pediatric CXR (local: {kermany}"),
        "pneumoniamnist": (f"pneumoniamnist:{npz}", ["--only", DATA_NOTEBOOKS], 2, f"PneumoniaMNIST (local: {npz}"),
        "imagefolder": (f"imagefolder:{folder}", ["--only", DATA_NOTEBOOKS], 4, str(folder)),
        "csv": (f"csv:{table}", ["--only", DATA_NOTEBOOKS], 3, str(table)),
    }


def _run(root: Path, spec: str, extra):
    env = dict(os.environ, LOSSBENCH_DATA_DIR=str(root / "data"), LOSSBENCH_RUNS_DIR=str(root / "runs"),
               LOSSBENCH_FIGURES_DIR=str(root / "figures"), MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "support.pipeline", "--profile", "smoke", "--data", spec,
                           "--jobs", "1", *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def layout_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layouts")
    cases = _cases(tmp)
    with ThreadPoolExecutor(2) as pool:  # two one-kernel pipelines at a time on 2 cores
        procs = dict(zip(cases, pool.map(lambda n: _run(tmp / f"run_{n}", *cases[n][:2]), cases)))
    return {n: (tmp / f"run_{n}", procs[n], cases[n]) for n in cases}


@pytest.mark.parametrize("name", ["kermany", "pneumoniamnist", "imagefolder", "csv"])
def test_pipeline_on_your_data(layout_runs, name):
    root, proc, (spec, extra, n_classes, source) = layout_runs[name]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    executed = sorted((root / "runs" / "notebooks").glob("*.ipynb"))
    wanted = extra[extra.index("--only") + 1].split(",")
    assert sorted({p.name[:2] for p in executed}) == sorted(wanted)
    for path in executed:  # every notebook succeeded, on this source
        cells = json.loads(path.read_text())["cells"]
        errors = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{name}/{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    report = root / "runs" / "report"
    for table in ("05_losses_smoke", "06_ensembles_smoke", "07_localization_smoke"):  # captions name the films
        assert source in (report / f"{table}.md").read_text(), table
    # 2, 3 or 4 classes: every run's predictions and confusion matrix have that many
    metrics = [json.loads(p.read_text()) for p in (root / "runs").glob("*/metrics.json")]
    classes = {len(m["classes"]) for m in metrics if "classes" in m}
    assert classes == {n_classes}
    losses = pd.read_csv(report / "05_losses_smoke.csv")
    assert losses["mcc_mean"].between(-1, 1).all() and len(losses) == 3
    assert (root / "figures" / "05_confusions_smoke.png").exists()
    # 07: no lesion masks -> CAM grid and ROAD, and one sentence saying what was skipped (notebook and report)
    loc = pd.read_csv(report / "07_localization_smoke.csv")
    assert loc["road"].notna().any() and ("pointing" not in loc or loc["pointing"].isna().all())
    assert (root / "figures" / "07_cam_grid_smoke.png").exists() and (root / "figures" / "07_road_smoke.png").exists()
    sentence = "has no lesion or lung masks, so the mask-based measures"
    assert sentence in (report / "07_localization_smoke.md").read_text()
    assert sentence in (report / "09_report_smoke.md").read_text()
    # the summary's last block: what ran on what
    block = proc.stdout[proc.stdout.index("What ran on what:"):]
    assert f"04 training, one run per loss and seed: your films ({spec.split(':')[0]}:" in block
    assert "07 localization: your films" in block and "shortcut experiment skipped" in block


def test_lung_masks_flag_crops_your_films(layout_runs):
    """--lung-masks lungmasks:<Montgomery-style folder>: the U-Nets learn those masks and 05 crops the films."""
    root, proc, (spec, *_) = layout_runs["kermany"]
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = root / "runs" / "report"
    assert "lung masks from montgomery" in (report / "02_segmentation_smoke.md").read_text()
    assert "Kermany pediatric CXR" in (report / "02_crop_summary_smoke.md").read_text()
    crop = pd.read_csv(report / "05_lung_crop_smoke.csv")
    assert sorted(crop["loss"]) == ["cce", "cce · lung crop"]
    block = proc.stdout[proc.stdout.index("What ran on what:"):]
    assert "02 lung U-Nets: trained on your lung masks (lungmasks:" in block
    assert "lung-crop comparison: your films (kermany:" in block


def test_without_lung_masks_the_summary_says_the_crop_was_skipped(layout_runs):
    root, proc, _ = layout_runs["csv"]
    block = proc.stdout[proc.stdout.index("What ran on what:"):]
    assert "lung-crop comparison skipped (no lung masks for your films: pass --lung-masks" in block
    assert not (root / "runs" / "report" / "05_lung_crop_smoke.csv").exists()
