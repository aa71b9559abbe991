"""The bad-input table: every wrong thing a user can pass, and the message they get.

Each case names the call, the exception type, the strings that must appear in
the message (the bad value itself, or the file) and the string that carries
the fix. Cases cover the public API (data sources, losses, models, training
configs, metrics) and the command line (``python -m support.pipeline``, what
``./run_all.sh`` runs). Odd but *valid* images (16-bit, RGBA, CMYK, ...) are
in a second table at the end: they must load, not fail.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from support import artifacts, losses, metrics, models, pipeline, profiles, training
from support.data import load
from support.data.containers import DataBundle, Split
from support.data.images import ImageDecodeError
from support.losses._checks import NonFiniteError

SMALL = dict(arch="small_cnn", arch_params={"width": 8}, dcl_channels=128, image_size=32, batch_size=8,
             max_epochs=1, patience=1, optimizer="adamw", lr=3e-3, device="cpu")


@dataclass
class Case:
    call: Callable[[Path], object]  # gets a fresh tmp folder for its files
    exc: type
    names: Sequence[str]  # the bad value / file, as the message must show it
    fix: str  # the part of the message that says what to do


# ----------------------------------------------------------------------------- file builders
def png(path: Path, value: int = 128, size=(24, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(path)
    return path


def two_class_tree(root: Path, per_class: int = 6) -> Path:
    for c in ("normal", "sick"):
        for i in range(per_class):
            png(root / c / f"{c}{i}.png", value=i + (50 if c == "sick" else 0))
    return root


def tree_with(bad_name: str, make) -> Callable[[Path], object]:
    """An imagefolder of good images plus one bad file ``sick/<bad_name>``, loaded strictly."""
    def call(tmp):
        root = two_class_tree(tmp / "tree")
        make(root / "sick" / bad_name)
        return load("imagefolder", root=str(root), image_size=32, strict=True, verbose=False)
    return call


def truncated_png(path: Path) -> None:
    png(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def csv_listing(target: Callable[[Path], str]) -> Callable[[Path], object]:
    """A CSV source whose last row points at ``target(tmp)`` (after good rows of both classes)."""
    def call(tmp):
        two_class_tree(tmp / "imgs")
        rows = [f"imgs/{c}/{c}{i}.png,{c}" for c in ("normal", "sick") for i in range(6)]
        rows.append(f"{target(tmp)},sick")
        (tmp / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
        return load("csv", path=str(tmp / "list.csv"), image_size=32, strict=True, verbose=False)
    return call


def dir_named_png(tmp: Path) -> str:
    (tmp / "imgs" / "folder.png").mkdir(parents=True)
    return "imgs/folder.png"


def npz(tmp: Path, **arrays) -> str:
    path = tmp / "pneumoniamnist.npz"
    np.savez(path, **arrays)
    return str(path)


def mnist_arrays(labels=(0, 1)) -> dict:
    out = {}
    for s in ("train", "val", "test"):
        out[f"{s}_images"] = np.zeros((4, 28, 28), np.uint8)
        out[f"{s}_labels"] = np.array([[labels[i % len(labels)]] for i in range(4)])
    return out


def bundle(train_labels, val_labels=(0, 1, 2), classes=("normal", "bacterial", "viral")) -> DataBundle:
    def split(labels):
        n = len(labels)
        return Split(images=torch.full((n, 32, 32), 100, dtype=torch.uint8),
                     labels=torch.tensor(labels, dtype=torch.int64), ids=[f"x{i}" for i in range(n)])
    return DataBundle(classes=classes, source="hand-made test bundle",
                      splits={"train": split(list(train_labels)), "val": split(list(val_labels)),
                              "test": split(list(val_labels))})


def train_on(data: DataBundle, **kw) -> Callable[[Path], object]:
    def call(tmp):
        cfg = training.TrainConfig(data={"name": "phantom", "n": 60, "image_size": 32}, **{**SMALL, **kw})
        return training.train_one(cfg, runs_dir=tmp / "runs", data=data, progress=False)
    return call


def config(**kw) -> Callable[[Path], object]:
    return lambda tmp: training.TrainConfig(**{**SMALL, **kw})


def cli(*argv) -> Callable[[Path], object]:
    return lambda tmp: pipeline.main(list(argv))


# ----------------------------------------------------------------------------- the table
CASES = {
    # --- data sources: names, parameters, folders and files --------------------------------
    "source-name-typo": Case(lambda t: load("kermani"), ValueError, ["'kermani'"], "Did you mean 'kermany'"),
    "source-name-path-traversal": Case(lambda t: load("../../etc/passwd"), ValueError,
                                       ["'../../etc/passwd'", "phantom"], "Valid names: "),
    "source-unknown-parameter": Case(lambda t: load("phantom", sizee=64), TypeError, ["sizee"],
                                     "valid parameters: seed, n, image_size"),
    "source-parameter-type": Case(lambda t: load("phantom", n="240"), TypeError, ["n='240'"], "expected int"),
    "phantom-n-too-small": Case(lambda t: load("phantom", n=5, cache=False, verbose=False), ValueError,
                                ["n=5"], "use n >= 30"),
    "kermany-root-missing": Case(lambda t: load("kermany", root=str(t / "chest_xray")), FileNotFoundError,
                                 ["chest_xray"], "download the Kermany data by hand"),
    "kermany-root-is-a-file": Case(lambda t: load("kermany", root=str(png(t / "one.png"))), NotADirectoryError,
                                   ["one.png"], "pass root= the folder holding train/ and test/"),
    "kermany-wrong-layout": Case(lambda t: load("kermany", root=str(two_class_tree(t / "flat"))), FileNotFoundError,
                                 ["flat"], "holds train/ and test/, each with NORMAL/ and PNEUMONIA/"),
    "imagefolder-empty-root": Case(
        lambda t: (t / "nothing_here").mkdir() or load("imagefolder", root=str(t / "nothing_here")),
        ValueError, ["nothing_here", "is empty"], "one sub-folder per class"),
    "imagefolder-fraction-out-of-range": Case(
        lambda t: load("imagefolder", root=str(two_class_tree(t / "r")), val_fraction=1.5), ValueError,
        ["val_fraction=1.5"], "e.g. val_fraction=0.1"),
    "imagefolder-image-size-zero": Case(
        lambda t: load("imagefolder", root=str(two_class_tree(t / "r")), image_size=0), ValueError,
        ["image_size=0"], "e.g. image_size=256"),
    "pneumoniamnist-folder-not-file": Case(
        lambda t: (npz(t, **mnist_arrays()), load("pneumoniamnist", path=str(t)))[1], IsADirectoryError,
        ["pneumoniamnist.npz"], "pass the .npz file itself"),
    "pneumoniamnist-not-an-npz": Case(
        lambda t: ((t / "x.npz").write_text("hello"), load("pneumoniamnist", path=str(t / "x.npz")))[1],
        ValueError, ["x.npz"], "download pneumoniamnist.npz"),
    "pneumoniamnist-missing-keys": Case(
        lambda t: load("pneumoniamnist", path=npz(t, train_images=np.zeros((2, 28, 28), np.uint8))),
        ValueError, ["val_images"], "Re-export it with np.savez"),
    "pneumoniamnist-three-labels": Case(
        lambda t: load("pneumoniamnist", path=npz(t, **mnist_arrays(labels=(0, 1, 2)))), ValueError,
        ["label(s) [2]"], "use the 'csv' or 'imagefolder' source"),
    "csv-no-label-column": Case(
        lambda t: ((t / "l.csv").write_text("path,klass\na.png,x\n"), load("csv", path=str(t / "l.csv")))[1],
        ValueError, ["['label']", "l.csv"], "header row 'path,label'"),
    "csv-bad-split-value": Case(
        lambda t: ((t / "l.csv").write_text("path,label,split\na.png,x,training\n"),
                   load("csv", path=str(t / "l.csv")))[1],
        ValueError, ["'training'"], "use only train, val or test"),
    # --- image files of every odd kind (strict=True: one clear error naming the file) ------
    "image-empty-file": Case(tree_with("empty.png", lambda p: p.write_bytes(b"")), ImageDecodeError,
                             ["empty.png"], "Fix or delete these files, or pass strict=False"),
    "image-truncated-png": Case(tree_with("cut.png", truncated_png), ImageDecodeError, ["cut.png"],
                                "Fix or delete these files, or pass strict=False"),
    "image-text-named-jpg": Case(tree_with("notes.jpg", lambda p: p.write_text("not an image")), ImageDecodeError,
                                 ["notes.jpg"], "Fix or delete these files, or pass strict=False"),
    "image-directory-named-png": Case(csv_listing(dir_named_png), ImageDecodeError, ["folder.png"],
                                      "Fix or delete these files, or pass strict=False"),
    "image-listed-but-missing": Case(csv_listing(lambda t: "imgs/gone.png"), ImageDecodeError,
                                     ["gone.png", "file not found"], "Fix or delete these files"),
    "images-all-unreadable": Case(
        lambda t: [(t / "unreadable_tree" / c).mkdir(parents=True) or (t / "unreadable_tree" / c / "a.png")
                   .write_bytes(b"junk") for c in ("x", "y")] and load("imagefolder", root=str(t / "unreadable_tree"),
                                                                      val_fraction=0.0, test_fraction=0.0),
        ValueError, ["unreadable_tree"], "check that the files are images"),
    # --- splits ------------------------------------------------------------------------------
    "single-class-data": Case(train_on(bundle([0, 0, 0, 0], [0, 0], classes=("normal",))), training.TrainingError,
                              ["1 class ['normal']"], "add images of another class"),
    "train-split-missing-a-class": Case(train_on(bundle([0, 1, 0, 1])), training.TrainingError,
                                        ["['viral']"], "every class needs training images"),
    "empty-val-split": Case(train_on(bundle([0, 1, 2, 0], val_labels=())), training.TrainingError,
                            ["val split of hand-made test bundle is empty"], "larger val_fraction"),
    # --- NaN inputs --------------------------------------------------------------------------
    "loss-nan-logits": Case(lambda t: losses.build("cce")(torch.tensor([[math.nan, 0.0, 0.0]]), torch.tensor([0])),
                            NonFiniteError, ["1 NaN"], "check the learning rate and the data"),
    "metrics-nan-probabilities": Case(
        lambda t: metrics.classification_metrics(np.array([0, 1, 2]), np.full((3, 3), np.nan), ("a", "b", "c")),
        ValueError, ["9 NaN"], "re-train the run"),
    "config-lr-nan": Case(config(lr=math.nan), ValueError, ["nan"], "e.g. lr=1e-3"),
    # --- loss and model names and parameters -------------------------------------------------
    "loss-name-typo": Case(lambda t: losses.build("focall"), ValueError, ["'focall'"], "Did you mean 'focal'"),
    "loss-parameter-typo": Case(lambda t: losses.build("focal", gama=2.0), TypeError, ["'gama'"],
                                "Did you mean 'gamma'"),
    "loss-parameter-out-of-range": Case(lambda t: losses.build("focal", gamma=-1.0), ValueError, ["-1.0"],
                                        "pass e.g. gamma=2.0"),
    "loss-parameter-wrong-type": Case(lambda t: losses.build("focal", gamma="2"), TypeError, ["'2'"],
                                      "pass e.g. gamma=2.0"),
    "loss-target-out-of-range": Case(lambda t: losses.build("cce")(torch.zeros(2, 3), torch.tensor([0, 3])),
                                     ValueError, ["[3]"], "check the label encoding"),
    "arch-name-typo": Case(lambda t: models.build("resnet19", 3), ValueError, ["'resnet19'"],
                           "Did you mean 'resnet18'"),
    "model-weights-missing": Case(lambda t: models.build("small_cnn", 3, weights=str(t / "w.pt")),
                                  artifacts.ArtifactError, ["w.pt"], "check the path"),
    "model-weights-not-a-checkpoint": Case(
        lambda t: ((t / "w.pt").write_text("hello"), models.build("small_cnn", 3, weights=str(t / "w.pt")))[1],
        artifacts.ArtifactError, ["w.pt"], "Delete it or re-run with force=True"),
    "profile-name-typo": Case(lambda t: profiles.get("quik"), ValueError, ["'quik'"],
                              "valid profiles: smoke, quick, full"),
    # --- training configuration: types and ranges --------------------------------------------
    "config-batch-size-string": Case(config(batch_size="32"), TypeError, ["'32'"], "must be an int"),
    "config-batch-size-one": Case(config(batch_size=1), ValueError, ["batch_size=1"], "must be >= 2"),
    "config-patience-zero": Case(config(patience=0), ValueError, ["patience=0"], "use patience=max_epochs"),
    "config-momentum-above-one": Case(config(momentum=1.5), ValueError, ["momentum=1.5"], "e.g. momentum=0.9"),
    "config-optimizer-typo": Case(config(optimizer="adamm"), ValueError, ["'adamm'"], "valid: sgd, adamw, adam"),
    "config-monitor-unknown": Case(config(monitor="val_auc"), ValueError, ["'val_auc'"], "valid: val_mcc"),
    "config-head-typo": Case(config(head="papr"), ValueError, ["'papr'"], "valid heads: paper"),
    "config-image-too-small": Case(config(image_size=16), ValueError, ["image_size=16"], "use at least 32"),
    "config-data-source-typo": Case(config(data={"name": "kermani"}), ValueError, ["'kermani'"],
                                    "Did you mean 'kermany'"),
    "config-data-parameter-typo": Case(config(data={"name": "phantom", "nn": 240}), TypeError, ["nn"],
                                       "valid parameters"),
    "config-device-word-gpu": Case(config(device="gpu"), ValueError, ["'gpu'"], "use 'auto', 'cpu' or 'cuda[:N]'"),
    # --- the command line (python -m support.pipeline = ./run_all.sh) ------------------------
    "cli-only-unknown-notebook": Case(cli("--only", "01,99", "--dry-run"), SystemExit, ["99"], "available: "),
    "cli-data-typo": Case(cli("--data", "kermani:/data/chest_xray", "--dry-run"), SystemExit, ["'kermani'"],
                          "Did you mean 'kermany'"),
    "cli-data-path-missing": Case(lambda t: pipeline.main(["--data", f"kermany:{t / 'nowhere'}", "--dry-run"]),
                                  SystemExit, ["nowhere"], "pass an existing local folder or file"),
    "cli-data-path-on-phantom": Case(cli("--data", "phantom:/x", "--dry-run"), SystemExit, ["phantom", ":/x"],
                                     "use --data phantom without"),
    "cli-loss-typo": Case(cli("--losses", "cce,focall", "--dry-run"), SystemExit, ["'focall'"], "valid: cce"),
    "cli-seed-not-an-integer": Case(cli("--seeds", "0,one", "--dry-run"), SystemExit, ["'one'"],
                                    "e.g. --seeds 0,1"),
}


@pytest.mark.filterwarnings("ignore::support.data.images.SkippedImagesWarning")  # images-all-unreadable warns first
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_names_the_value_and_the_fix(case, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOSSBENCH_RUNS_DIR", str(tmp_path / "runs"))
    c = CASES[case]
    with pytest.raises(c.exc) as info:
        c.call(tmp_path)
    message = str(info.value.code if isinstance(info.value, SystemExit) else info.value)
    for name in c.names:
        assert name in message, f"the message does not name {name!r}: {message}"
    assert c.fix in message, f"the message does not say the fix ({c.fix!r}): {message}"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("metrics.json"))


def test_count_of_bad_input_cases():
    assert len(CASES) >= 25


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only machine")
def test_gpu_requested_on_a_cpu_only_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(training.TrainingError) as info:
        train_on(bundle([0, 1, 2, 0, 1, 2]), device="cuda")(tmp_path)
    assert "device='cuda'" in str(info.value) and "Use device='auto' or 'cpu'" in str(info.value)


def test_cli_profile_typo_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        pipeline.main(["--profile", "quik"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "'quik'" in err and "choose from" in err and "smoke" in err


# ----------------------------------------------------------------------------- odd but valid images
def _save(mode_maker):
    def make(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode_maker(path)
    return make


def _palette_image() -> Image.Image:
    img = Image.new("P", (30, 30), 1)
    img.putpalette([0, 0, 0, 200, 200, 200] + [0, 0, 0] * 254)  # index 1 = light grey
    return img


ODD_IMAGES = {
    "16-bit-png": ("x.png", _save(lambda p: Image.fromarray(np.full((30, 30), 3000, np.uint16)).save(p))),
    "rgba-png": ("x.png", _save(lambda p: Image.new("RGBA", (30, 30), (200, 200, 200, 128)).save(p))),
    "cmyk-jpeg": ("x.jpg", _save(lambda p: Image.new("CMYK", (30, 30), (0, 0, 0, 100)).save(p, "JPEG"))),
    "palette-gif": ("x.gif", _save(lambda p: _palette_image().save(p))),
    "one-bit-png": ("x.png", _save(lambda p: Image.new("1", (30, 30), 1).save(p))),
    "grey-alpha-png": ("x.png", _save(lambda p: Image.new("LA", (30, 30), (90, 255)).save(p))),
    "one-pixel-png": ("x.png", _save(lambda p: Image.new("L", (1, 1), 77).save(p))),
    "very-wide-png": ("x.png", _save(lambda p: Image.new("L", (400, 3), 77).save(p))),
    "upper-case-suffix": ("x.PNG", _save(lambda p: Image.new("L", (30, 30), 77).save(p, "PNG"))),
}


@pytest.mark.parametrize("kind", list(ODD_IMAGES), ids=list(ODD_IMAGES))
def test_odd_but_valid_image_loads_strictly(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(tmp_path / "data"))
    name, make = ODD_IMAGES[kind]
    root = two_class_tree(tmp_path / "tree")
    make(root / "sick" / name)
    data = load("imagefolder", root=str(root), image_size=32, strict=True, val_fraction=0.0, test_fraction=0.0,
                verbose=False)
    train = data.splits["train"]
    i = train.ids.index(f"sick/{name}")
    image = train.images[i]
    assert image.dtype == torch.uint8 and image.shape == (32, 32)
    assert int(image.max()) > 0  # decoded to something visible, not an all-black failure
