"""Every notebook, executed end to end by the real pipeline in the smoke profile.

One session-scoped pipeline run (``python -m support.pipeline --profile
smoke``) in temporary data/runs/figures folders; each test then checks what
one notebook produced. This is the same code path as ``./run_all.sh``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    env = dict(os.environ, LOSSBENCH_DATA_DIR=str(root / "data"), LOSSBENCH_RUNS_DIR=str(root / "runs"),
               LOSSBENCH_FIGURES_DIR=str(root / "figures"), MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "support.pipeline", "--profile", "smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    return root, proc


def test_pipeline_succeeds_and_summarises(smoke_pipeline):
    root, proc = smoke_pipeline
    assert "run_all summary" in proc.stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_console_is_one_line_per_notebook_and_kernel_output_goes_to_logs(smoke_pipeline):
    """Issue 20: no kernel warnings, papermill parse complaints or progress bars on a normal run."""
    root, proc = smoke_pipeline
    head = proc.stdout[:proc.stdout.index("run_all summary")]
    lines = [line for line in head.splitlines() if line.strip() and not line.startswith("=")]
    done = [line for line in lines if line.startswith("[run_all] ") and ": ok (" in line]
    assert len(lines) == len(done) + 2, lines  # + the settings line and "data ready"
    for noise in ("without encryption", "KeyboardInterrupt", "Unable to parse", "unknown parameter", "it/s]"):
        assert noise not in proc.stdout + proc.stderr, noise
    logs = sorted((root / "runs" / "notebooks" / "logs").glob("*.log"))
    kernels = [line for line in done if "__train__" not in line]  # a training stage starts no kernel
    assert len(logs) == len(kernels) and "Kernel logs:" in proc.stdout


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executed_without_error(smoke_pipeline, nb):
    root, _ = smoke_pipeline
    executed = sorted((root / "runs" / "notebooks").glob(nb.stem + "*.ipynb"))
    assert executed, f"{nb.name} was not executed"
    for path in executed:
        cells = json.loads(path.read_text())["cells"]
        errors = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
        injected = [c for c in cells if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
        assert injected and 'profile = "smoke"' in "".join(injected[0]["source"])


def test_figures_are_written_and_name_their_source(smoke_pipeline):
    root, _ = smoke_pipeline
    figures = sorted((root / "figures").rglob("*.png"))
    assert len(figures) >= 5, [f.name for f in figures]
    assert all(f.stat().st_size > 5000 for f in figures)


def test_compare_table_lists_every_smoke_loss(smoke_pipeline):
    from support import profiles

    root, _ = smoke_pipeline
    table = (root / "runs" / "report" / "05_losses_smoke.csv").read_text()
    for loss in profiles.get("smoke")["losses"]:
        assert loss in table
    import pandas as pd

    report = root / "runs" / "report"
    confirm = pd.read_csv(report / "05_confirmatory_smoke.csv")  # the profile's family, with floor and MDE
    family = profiles.get("smoke")["confirmatory"]["pairs"]
    assert [tuple(p) for p in confirm[["model_a", "model_b"]].to_numpy()] == [tuple(p) for p in family]
    assert (confirm["p_floor_holm"] <= 0.05 / len(confirm)).all() and confirm["mde"].notna().all()
    cal = pd.read_csv(report / "05_calibration_smoke.csv")  # six measures, raw and after temperature scaling
    assert set(cal["measure"]) == {"ece", "adaptive_ece", "classwise_ece", "mce", "log_loss", "brier"}
    assert set(cal["scaling"]) == {"none", "temperature"}
    assert (root / "figures" / "05_confirmatory_smoke.png").exists()


def test_nodule_study_table_and_figures(smoke_pipeline):
    from support import profiles
    from support.nodules import variant_label

    root, _ = smoke_pipeline
    table = (root / "runs" / "report" / "08_nodules_smoke.csv").read_text()
    for variant in profiles.get("smoke")["nodules"]["variants"]:
        assert variant_label(variant) in table
    for name in ("08_accuracy_vs_rho_smoke", "08_probes_smoke", "08_counterfactuals_smoke", "08_embeddings_smoke"):
        assert (root / "figures" / f"{name}.png").exists(), name


def test_segmentation_table_and_the_lung_crop_comparison(smoke_pipeline):
    import pandas as pd

    from support.segmentation import SEG_LOSSES

    root, _ = smoke_pipeline
    report = root / "runs" / "report"
    seg = pd.read_csv(report / "02_segmentation_smoke.csv")          # notebook 02: one row per loss + the AND
    assert sorted(seg.loc[seg["kind"] == "single", "model"]) == sorted(SEG_LOSSES)
    assert (seg["kind"] == "ensemble").sum() == 1
    assert seg[["dice_lo", "dice_hi", "iou_lo", "iou_hi"]].notna().all().all()
    crop = pd.read_csv(report / "05_lung_crop_smoke.csv")            # notebook 05: CCE with and without the crop
    assert sorted(crop["loss"]) == ["cce", "cce · lung crop"]
    names = {f.name for f in (root / "figures").glob("02_*.png")}
    assert {"02_crop_examples_smoke.png", "02_seg_overlays_smoke.png", "02_seg_worst_smoke.png"} <= names
