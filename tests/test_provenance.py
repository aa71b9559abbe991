"""Issue 21 without running a pipeline: the 'what ran on what' block, --lung-masks, 07 on films without masks."""
import numpy as np
import pandas as pd
import pytest
import torch

from support import localization as loc, pipeline
from support.data.containers import DataBundle, Split
from support.provenance import what_ran_on_what


def _block(**kw):
    return {line.split()[0]: line for line in what_ran_on_what("smoke", **kw)}


def test_what_ran_on_what_per_source():
    phantom = _block(data="phantom")
    assert set(phantom) == {f"{i:02d}" for i in range(1, 11)}
    assert "noisy train/val labels" in phantom["10"]
    assert "generated phantom" in phantom["04"] and "all measures" in phantom["07"]
    assert "generated nodules" in phantom["08"]
    films = _block(data="kermany:/d/chest_xray", missing_masks="lesion, lung")
    assert "your films (kermany: /d/chest_xray)" in films["04"]
    assert "trained and shown on the generated phantom" in films["02"] and "no --lung-masks" in films["02"]
    assert "lung-crop comparison skipped" in films["05"] and "--lung-masks lungmasks:" in films["05"]
    assert "no lesion or lung masks" in films["07"] and "ROAD" in films["07"]
    assert "shortcut experiment skipped" in films["07"]
    assert "loss regimes: skipped" in films["10"]
    cropped = _block(data="kermany:/d", lung_masks="lungmasks:/m", missing_masks="lesion, lung")
    assert "trained on your lung masks (lungmasks: /m)" in cropped["02"]
    assert "cropped by U-Nets from your lung masks (lungmasks: /m)" in cropped["05"]
    assert set(_block(data="phantom", studies={"04", "07"})) == {"04", "07"}


def test_lung_masks_flag_goes_to_02_and_05_only(tmp_path):
    jobs = pipeline.plan("smoke", "phantom", False, only=["01", "02", "05"], lung_masks="lungmasks:/m")
    seg = {j.notebook.name[:2]: j.parameters.get("seg_data") for j in jobs}
    assert seg == {"01": None, "02": "lungmasks:/m", "05": "lungmasks:/m"}
    assert all("seg_data" not in j.parameters for j in pipeline.plan("smoke", "phantom", False, only=["02"]))
    args = pipeline.parse_args(["--profile", "smoke", "--lung-masks", f"lungmasks:{tmp_path / 'absent'}"])
    with pytest.raises(SystemExit, match="existing local mask folder"):
        pipeline.check_args(args)
    with pytest.raises(SystemExit, match="--lung-masks nosuchsource:/x"):
        pipeline.check_args(pipeline.parse_args(["--lung-masks", "nosuchsource:/x"]))


def _bundle(lesions: bool):
    n, s = 6, 16
    split = Split(images=torch.zeros(n, s, s, dtype=torch.uint8), labels=torch.tensor([0, 0, 0, 1, 1, 2]),
                  ids=[str(i) for i in range(n)],
                  lesion_masks=torch.ones(n, s, s, dtype=torch.bool) if lesions else None)
    return DataBundle(classes=("a", "b", "c"), splits={k: split for k in ("train", "val", "test")}, source="my films")


def test_07_on_films_without_masks_shows_road_and_says_what_it_skipped():
    note = loc.skipped_note(_bundle(lesions=False))
    assert note.startswith("my films has no lesion or lung masks") and "ROAD" in note
    assert loc.skipped_note(_bundle(lesions=True)).startswith("my films has no lung masks")
    long = pd.DataFrame({"entry": ["cce", "focal"], "kind": "single", "method": "gradcam", "metric": "road",
                         "value": [0.2, 0.3], "sd": np.nan, "boot_lo": [0.1, 0.2], "boot_hi": [0.3, 0.4],
                         "n_images": 2, "n_seeds": 1})
    assert loc.shown_metrics(long) == (["road"], None)
    assert list(loc.display_table(long)["entry"]) == ["focal", "cce"]  # ordered by ROAD without a pointing game
    numeric = loc.numeric_table(long)
    assert "pointing" not in numeric and numeric["road"].tolist() == [0.2, 0.3]
    assert "**focal** 0.300" in loc.conclusions(long)
    lesion = long.assign(metric="lesion_pointing")
    assert loc.shown_metrics(pd.concat([long, lesion])) == (["lesion_pointing"], None)


def test_class_interleaved_shows_every_class_first():
    from support.localization.evaluate import class_interleaved

    y = np.array([0] * 5 + [1] * 3 + [2] * 2)
    rows = class_interleaved(y, 8)
    assert list(y[rows][:6]) == [0, 1, 2, 0, 1, 2] and len(set(rows.tolist())) == 8


def test_quiet_load_draws_no_progress_bar(tmp_path, monkeypatch, capfd):
    """The pipeline loads the user's films with verbose=False: no decoding bar on its console."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import layouts
    from support.data import load

    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(tmp_path / "data"))
    root = layouts.imagefolder(tmp_path / "f", k=2, per_class=10)
    capfd.readouterr()
    load("imagefolder", root=str(root), image_size=32, cache=False, verbose=False)
    assert "img" not in capfd.readouterr().err
    load("imagefolder", root=str(root), image_size=32, cache=False)
    assert "decoding" in capfd.readouterr().err
