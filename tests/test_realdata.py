"""Real-data sources on tiny trees built here: kermany, pneumoniamnist, imagefolder, csv.

Every fixture is written to ``tmp_path``; ``LOSSBENCH_DATA_DIR`` points the cache there.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from support.data import load
from support.data import folders as folders_module
from support.data.images import ImageDecodeError, SkippedImagesWarning, fit_square, read_gray
from support.data.kermany import KermanyCountWarning

SIZE = 32
# tiny fixtures never match the published Kermany counts; the test that cares records the warning itself
pytestmark = pytest.mark.filterwarnings("ignore::support.data.kermany.KermanyCountWarning")


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(tmp_path / "lossbench_data"))


def _jpeg(path, seed=0, size=(36, 28)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def _garbage(path, data=b"this is not an image at all"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _png16(path):
    """Square 12-bit film in a 16-bit PNG: top half 4095, bottom-left 2048, bottom-right 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((SIZE, SIZE), np.uint16)
    a[: SIZE // 2] = 4095
    a[SIZE // 2:, : SIZE // 2] = 2048
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I")


def _rgba(path):
    """Grey (200) RGBA: left half fully transparent, right half opaque."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((SIZE, SIZE, 4), 200, np.uint8)
    a[:, : SIZE // 2, 3] = 0
    a[:, SIZE // 2:, 3] = 255
    Image.fromarray(a, "RGBA").save(path)


def _exif_pattern():
    """Asymmetric 40x20 (w x h) pattern: a bright 10x10 block in the top-left corner."""
    raw = np.zeros((20, 40), np.uint8)
    raw[:10, :10] = 255
    return raw


def _exif_jpeg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: rotate 90 degrees clockwise to display
    Image.fromarray(_exif_pattern()).save(path, quality=95, exif=exif.tobytes())


def _palette(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("P", (SIZE, SIZE), 0)
    img.putpalette([255, 0, 0] + [0, 0, 0] * 255)  # index 0 = pure red
    img.save(path)


@pytest.fixture
def kaggle(tmp_path):
    """Kaggle-style copy: root/chest_xray/chest_xray/{train,val,test}, __MACOSX, odd files."""
    root = tmp_path / "kaggle"
    data = root / "chest_xray" / "chest_xray"
    for i in range(1, 19):
        _jpeg(data / f"train/NORMAL/IM-{i:04d}.jpeg", i)
    for i in (1, 2):
        _jpeg(data / f"val/NORMAL/NORMAL2-IM-{i:04d}.jpeg", 100 + i)
    for i in range(1, 11):
        _jpeg(data / f"train/PNEUMONIA/person{i}_bacteria_{i}.jpeg", 200 + i)
        _jpeg(data / f"train/PNEUMONIA/person{i + 10}_virus_{i + 10}.jpeg", 300 + i)
    _jpeg(data / "val/PNEUMONIA/person99_bacteria_99.jpeg", 400)
    _jpeg(data / "val/PNEUMONIA/person21_virus_21.jpeg", 401)
    _garbage(data / "train/PNEUMONIA/person9_virus_corrupt.jpeg")
    good = (data / "train/NORMAL/IM-0001.jpeg").read_bytes()
    _garbage(data / "train/PNEUMONIA/person8_virus_truncated.jpeg", good[: len(good) // 2])
    _jpeg(data / "train/PNEUMONIA/person30_unknown.jpeg", 500)  # neither bacteria nor virus
    _garbage(data / "train/PNEUMONIA/.DS_Store")
    _garbage(data / "train/NORMAL/._IM-0003.jpeg")  # AppleDouble twin
    _garbage(root / "__MACOSX/chest_xray/chest_xray/train/NORMAL/._IM-0001.jpeg")
    for i in (1, 2):
        _jpeg(data / f"test/NORMAL/IM-T{i}.jpeg", 600 + i)
    _png16(data / "test/NORMAL/IM-16bit.png")
    _exif_jpeg(data / "test/NORMAL/IM-exif.jpeg")
    _rgba(data / "test/PNEUMONIA/person200_bacteria_1.png")
    _jpeg(data / "test/PNEUMONIA/person201_virus_1.jpeg", 700)
    _palette(data / "test/PNEUMONIA/person202_virus_2.png")
    return root


@pytest.fixture
def mendeley(tmp_path):
    """Mendeley v2 style: root/chest_xray/{train,test}/{NORMAL,PNEUMONIA}."""
    root = tmp_path / "mendeley"
    for split, n in (("train", 10), ("test", 2)):
        for i in range(n):
            _jpeg(root / f"chest_xray/{split}/NORMAL/IM-{i:04d}.jpeg", i)
            _jpeg(root / f"chest_xray/{split}/PNEUMONIA/person{i}_bacteria_{i}.jpeg", 50 + i)
            _jpeg(root / f"chest_xray/{split}/PNEUMONIA/person{i}_virus_{i}.jpeg", 90 + i)
    return root


def _load_recorded(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = load(*args, **kwargs)
    return bundle, caught


def _by_id(split, suffix):
    return split.images[[i for i, x in enumerate(split.ids) if x.endswith(suffix)][0]].numpy()


# ----------------------------------------------------------------------------- kermany
def test_kermany_kaggle_layout_labels_first10_and_warnings(kaggle, capsys):
    bundle, caught = _load_recorded("kermany", root=str(kaggle), image_size=SIZE)
    assert bundle.classes == ("normal", "bacterial", "viral")
    # normal: 18 train + 2 Kaggle val = 20 -> int(0.1*20) = 2 to val; bacterial 11 -> 1; viral 10 -> 1
    # (12 virus names minus corrupt and truncated; the val pick is made on names: 12 -> 1).
    assert bundle.counts()[list(bundle.classes)].to_numpy().tolist() == [[18, 10, 10], [2, 1, 1], [4, 1, 2]]
    # first10 = the first names of each class in plain string order: 'person10_' < 'person1_' ('0' < '_').
    assert sorted(bundle.splits["val"].ids) == [
        "chest_xray/chest_xray/train/NORMAL/IM-0001.jpeg",
        "chest_xray/chest_xray/train/NORMAL/IM-0002.jpeg",
        "chest_xray/chest_xray/train/PNEUMONIA/person10_bacteria_10.jpeg",
        "chest_xray/chest_xray/train/PNEUMONIA/person11_virus_11.jpeg",
    ]
    train_ids = bundle.splits["train"].ids
    assert "chest_xray/chest_xray/val/NORMAL/NORMAL2-IM-0001.jpeg" in train_ids  # Kaggle val/ merged
    assert not any("__MACOSX" in i or "/._" in i or "DS_Store" in i for s in bundle.splits.values() for i in s.ids)
    assert bundle.splits["train"].images.shape[1:] == (SIZE, SIZE)
    assert bundle.source == f"Kermany pediatric CXR (local: {kaggle})"
    skipped = [w for w in caught if issubclass(w.category, SkippedImagesWarning)]
    assert len(skipped) == 1  # one warning lists every skipped file, hidden files are not in it
    message = str(skipped[0].message)
    assert "person9_virus_corrupt" in message and "person8_virus_truncated" in message
    assert "person30_unknown" in message and "DS_Store" not in message and "._IM" not in message
    assert len([w for w in caught if issubclass(w.category, KermanyCountWarning)]) == 1
    printed = capsys.readouterr().out
    assert "Kaggle val/ (4 images) merged into train" in printed and "bacterial" in printed
    # pixel conversions, through the loader (test split keeps file names in the ids)
    test = bundle.splits["test"]
    png16 = _by_id(test, "IM-16bit.png")
    assert png16[: SIZE // 2].min() >= 254                                    # 4095 of 12 bits -> 255
    assert abs(int(png16[SIZE // 2:, : SIZE // 2].mean()) - 128) <= 1         # 2048 -> 127.5: scaled, not clipped
    assert png16[SIZE // 2:, SIZE // 2:].max() == 0
    rgba = _by_id(test, "person200_bacteria_1.png")
    assert rgba[:, : SIZE // 2].max() == 0 and abs(int(rgba[:, SIZE // 2:].mean()) - 200) <= 1  # on black
    assert abs(int(_by_id(test, "person202_virus_2.png").mean()) - 76) <= 1  # red -> luma 0.299*255


def test_kermany_strict_raises_on_corrupt_file(kaggle):
    with pytest.raises(ImageDecodeError, match=r"(?s)3 file\(s\).*person9_virus_corrupt.*strict=False"):
        load("kermany", root=str(kaggle), image_size=SIZE, strict=True)


def test_kermany_mendeley_layout_and_stratified_val(mendeley):
    b1 = load("kermany", root=str(mendeley), image_size=SIZE, val_split="stratified", val_fraction=0.2,
              cache=False, group_patients=False)
    counts = b1.counts()[list(b1.classes)].to_numpy().tolist()
    assert counts == [[8, 8, 8], [2, 2, 2], [2, 2, 2]]  # 30 * 0.2 = 6 val, 2 per class
    assert all(i.startswith("chest_xray/train/") for i in b1.splits["val"].ids)
    b2 = load("kermany", root=str(mendeley), image_size=SIZE, val_split="stratified", val_fraction=0.2,
              cache=False, group_patients=False)
    assert b1.splits["val"].ids == b2.splits["val"].ids  # seeded
    # Here each child has a bacterial and a viral film: by default a child is never on both sides.
    from support.data.halves import patient_groups

    grouped = load("kermany", root=str(mendeley), image_size=SIZE, val_split="stratified", val_fraction=0.2, cache=False)
    people = [{g for g in patient_groups(grouped.splits[s].ids) if g.startswith("person")} for s in ("train", "val")]
    assert not people[0] & people[1] and len(grouped.splits["val"]) > len(b1.splits["val"])


def test_exif_rotation_applied(tmp_path):
    path = tmp_path / "rotated.jpeg"
    _exif_jpeg(path)
    got = read_gray(path, 40).astype(int)
    upright = fit_square(Image.fromarray(np.rot90(_exif_pattern(), k=-1).copy()), 40).astype(int)
    unrotated = fit_square(Image.fromarray(_exif_pattern()), 40).astype(int)
    assert np.abs(got - upright).mean() < 6     # JPEG noise only
    assert np.abs(got - unrotated).mean() > 20  # the block moved to the top right


def test_cache_hit_and_invalidation(mendeley, monkeypatch):
    start = time.perf_counter()
    first = load("kermany", root=str(mendeley), image_size=SIZE)
    t_first = time.perf_counter() - start

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again: the cache was not used")

    with monkeypatch.context() as m:
        m.setattr(folders_module, "decode_many", no_decoding)
        start = time.perf_counter()
        second = load("kermany", root=str(mendeley), image_size=SIZE)
        t_second = time.perf_counter() - start
    assert t_second < t_first
    for s in ("train", "val", "test"):
        assert torch.equal(first.splits[s].images, second.splits[s].images)
        assert torch.equal(first.splits[s].labels, second.splits[s].labels)
        assert first.splits[s].ids == second.splits[s].ids
    _jpeg(mendeley / "chest_xray/test/NORMAL/IM-new.jpeg", 999)  # a changed folder invalidates the cache
    third = load("kermany", root=str(mendeley), image_size=SIZE)
    assert len(third.splits["test"]) == len(first.splits["test"]) + 1


# ----------------------------------------------------------------------------- pneumoniamnist
def _npz(path, rgb=False, drop=None):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    arrays.pop(drop, None)
    np.savez(path, **arrays)
    return arrays


def test_pneumoniamnist_any_size_keep_and_resize(tmp_path):
    arrays = _npz(tmp_path / "p.npz")
    kept = load("pneumoniamnist", path=str(tmp_path / "p.npz"))
    assert kept.classes == ("normal", "pneumonia")
    assert [len(kept.splits[s]) for s in ("train", "val", "test")] == [6, 2, 3]  # no official-count assert
    assert np.array_equal(kept.splits["test"].images.numpy(), arrays["test_images"])
    assert kept.splits["train"].labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert kept.splits["val"].ids == ["val/0", "val/1"]
    resized = load("pneumoniamnist", path=str(tmp_path / "p.npz"), image_size=16)
    assert resized.splits["train"].images.shape == (6, 16, 16)
    _npz(tmp_path / "rgb.npz", rgb=True)
    assert load("pneumoniamnist", path=str(tmp_path / "rgb.npz")).splits["val"].images.shape == (2, 28, 28)


# ----------------------------------------------------------------------------- imagefolder and csv
def test_imagefolder_one_level_stratified(tmp_path):
    for c in ("cat_b", "cat_a"):
        for i in range(10):
            _jpeg(tmp_path / "flat" / c / f"{i}.jpg", i)
    _garbage(tmp_path / "flat/cat_a/.DS_Store")
    b = load("imagefolder", root=str(tmp_path / "flat"), image_size=SIZE, val_fraction=0.2, test_fraction=0.2)
    assert b.classes == ("cat_a", "cat_b")
    # test = ceil(0.2*20) = 4; val = 0.2/(1-0.2) of the 16 left = 4; stratified: half per class
    assert b.counts()[["cat_a", "cat_b"]].to_numpy().tolist() == [[6, 6], [2, 2], [2, 2]]
    assert all(i.split("/")[0] in ("cat_a", "cat_b") for i in b.splits["train"].ids)


def test_imagefolder_split_layout(tmp_path):
    for split, n in (("train", 10), ("test", 3)):
        for c in ("no", "yes"):
            for i in range(n):
                _jpeg(tmp_path / "tree" / split / c / f"{i}.png", i)
    b = load("imagefolder", root=str(tmp_path / "tree"), image_size=SIZE)
    assert b.counts()[["no", "yes"]].to_numpy().tolist() == [[9, 9], [1, 1], [3, 3]]  # val carved from train
    assert b.splits["test"].ids[0] == "test/no/0.png"


def test_imagefolder_class_order_is_torchvisions(tmp_path):
    """Integer-named class folders: the same indices as torchvision's ImageFolder ("10" < "2" < "9")."""
    from torchvision.datasets import ImageFolder

    for c in ("9", "10", "2"):
        for i in range(10):
            _jpeg(tmp_path / "ints" / c / f"{i}.png", i)
    b = load("imagefolder", root=str(tmp_path / "ints"), image_size=SIZE, cache=False)
    assert list(b.classes) == ImageFolder(str(tmp_path / "ints")).classes == ["10", "2", "9"]
    for split in b.splits.values():  # every id's label is its folder's torchvision index
        assert [b.classes[y] for y in split.labels.tolist()] == [i.split("/")[0] for i in split.ids]
    b = load("imagefolder", root=str(tmp_path / "ints"), image_size=SIZE, cache=False, classes="2,9,10")
    assert b.classes == ("2", "9", "10")
    with pytest.raises(ValueError, match=r"classes='2,9' must list each class found exactly once; found 10, 2, 9"):
        load("imagefolder", root=str(tmp_path / "ints"), image_size=SIZE, cache=False, classes="2,9")


def test_verbose_false_silences_builders(tmp_path, capsys):
    for c in ("a", "b"):
        for i in range(10):
            _jpeg(tmp_path / "f" / c / f"{i}.png", i)
    load("imagefolder", root=str(tmp_path / "f"), image_size=SIZE, cache=False, verbose=False)
    assert capsys.readouterr().out == ""
    load("imagefolder", root=str(tmp_path / "f"), image_size=SIZE, cache=False)
    out = capsys.readouterr().out
    assert "[data] image folder (local:" in out and "[data] built" in out  # the lossbench.data logger


def test_csv_with_and_without_split_column(tmp_path):
    for i in range(8):
        _jpeg(tmp_path / "imgs" / f"{i}.jpg", i)
    rows = [f"imgs/{i}.jpg,{'10' if i % 2 else '2'},{'test' if i >= 6 else 'train'}" for i in range(8)]
    (tmp_path / "with_split.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    b = load("csv", path=str(tmp_path / "with_split.csv"), image_size=SIZE, val_fraction=0.3)
    assert b.classes == ("10", "2")  # string order, as torchvision sorts class folders
    assert b.counts()["total"].tolist() == [4, 2, 2]  # test given; val = ceil(0.3*6) = 2 carved from train
    assert b.splits["test"].ids == ["imgs/6.jpg", "imgs/7.jpg"]
    rows = [f"{tmp_path / 'imgs' / f'{i}.jpg'},{'sick' if i % 2 else 'well'}" for i in range(8)]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/plain.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    b = load("csv", path=str(tmp_path / "sub/plain.csv"), image_size=SIZE, val_fraction=0.25,
             test_fraction=0.25)
    assert b.classes == ("sick", "well") and b.counts()["total"].tolist() == [4, 2, 2]
    assert b.splits["train"].ids[0].startswith("../imgs/")  # relative to the CSV's folder


# ----------------------------------------------------------------------------- bad input
def _bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    _jpeg(tmp_path / "oneempty/a/0.jpg")
    _jpeg(tmp_path / "oneempty/a/1.jpg", 1)
    _garbage(tmp_path / "oneempty/b/.DS_Store")
    _garbage(tmp_path / "noimages/a/readme.txt")
    _garbage(tmp_path / "notkermany/readme.txt")
    _npz(tmp_path / "nokey.npz", drop="test_labels")
    (tmp_path / "nolabel.csv").write_text("path,class\nx.jpg,a\n")
    (tmp_path / "missingfiles.csv").write_text("path,label\nnope1.jpg,a\nnope2.jpg,b\n")
    _jpeg(tmp_path / "k/chest_xray/train/NORMAL/IM-1.jpeg")


BAD = {
    "missing root": (("kermany", {"root": "{tmp}/nope"}), FileNotFoundError, r"nope does not exist.*download"),
    "empty root": (("imagefolder", {"root": "{tmp}/empty"}), ValueError, r"empty is empty; pass the folder"),
    "empty class folder": (("imagefolder", {"root": "{tmp}/oneempty"}), ValueError,
                           r"class folder .*oneempty/b holds no images.*add images or remove"),
    "no images in class": (("imagefolder", {"root": "{tmp}/noimages"}), ValueError, r"noimages/a holds no images"),
    "no kermany layout": (("kermany", {"root": "{tmp}/notkermany"}), FileNotFoundError,
                          r"notkermany .*holds train/ and test/.*pass root="),
    "kermany without test": (("kermany", {"root": "{tmp}/k"}), FileNotFoundError, r"k .*holds train/ and test/"),
    "missing npz key": (("pneumoniamnist", {"path": "{tmp}/nokey.npz"}), ValueError,
                        r"nokey.npz lacks key\(s\) \['test_labels'\].*np.savez"),
    "missing npz": (("pneumoniamnist", {"path": "{tmp}/absent.npz"}), FileNotFoundError, r"absent.npz.*zenodo"),
    "csv missing column": (("csv", {"path": "{tmp}/nolabel.csv"}), ValueError,
                           r"nolabel.csv lacks column\(s\) \['label'\].*header row 'path,label"),
    "csv no images found": (("csv", {"path": "{tmp}/missingfiles.csv", "val_fraction": 0.0, "test_fraction": 0.0}),
                            ValueError, r"no readable images under .*missingfiles.csv"),
    "wrong type": (("kermany", {"root": "{tmp}/k", "image_size": "256"}), TypeError,
                   r"image_size='256' has type str, expected int"),
    "bad val_split": (("kermany", {"root": "{tmp}/k", "val_split": "first_10"}), ValueError,
                      r"val_split='first_10' is unknown; use one of first10, stratified"),
    "bad image_size": (("imagefolder", {"root": "{tmp}/oneempty", "image_size": 0}), ValueError,
                       r"image_size=0: must be a positive"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_path_and_fix(tmp_path, case):
    _bad_inputs(tmp_path)
    (name, params), error, pattern = BAD[case]
    params = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in params.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImagesWarning)
        with pytest.raises(error, match=pattern):
            load(name, **params)


def test_lossbench_logger_tags_levels_and_hands_over_to_the_root_logger(capsys, caplog):
    from support import logs

    log = logs.get("data")
    log.info("plain")
    log.warning("odd")
    assert capsys.readouterr().out == "[data] plain\n[data] WARNING: odd\n"
    logs.propagate()
    try:
        with caplog.at_level("INFO", logger="lossbench"):
            log.info("to your handlers")
        assert capsys.readouterr().out == "" and "to your handlers" in caplog.text
    finally:
        logs.propagate(False)


def test_kermany_keeps_a_patients_films_on_one_side(tmp_path):
    """Two films per child: the paper's name-ordered carve-out can split a child between train and val;
    group_patients (the default) moves the child's other films to val, and the val halves keep them together."""
    from support.data.halves import patient_groups

    root = tmp_path / "two_films"
    for split, n in (("train", 20), ("test", 2)):
        for i in range(n):
            _jpeg(root / f"chest_xray/{split}/NORMAL/IM-{i:04d}.jpeg", i)
            for film in (0, 1):
                _jpeg(root / f"chest_xray/{split}/PNEUMONIA/person{i}_bacteria_{2 * i + film}.jpeg", 50 + 2 * i + film)
            _jpeg(root / f"chest_xray/{split}/PNEUMONIA/person{i + 100}_virus_{i}.jpeg", 200 + i)

    def people(split):
        return {g for g in patient_groups(split.ids) if g.startswith("person")}

    # 40 bacterial films, 7.5 % -> the first 3 names: both films of person0, one of person10
    plain, _ = _load_recorded("kermany", root=str(root), image_size=SIZE, val_fraction=0.075, group_patients=False)
    assert people(plain.splits["train"]) & people(plain.splits["val"]) == {"person10"}
    grouped, _ = _load_recorded("kermany", root=str(root), image_size=SIZE, val_fraction=0.075)
    assert not people(grouped.splits["train"]) & people(grouped.splits["val"])
    assert len(grouped.splits["val"]) == len(plain.splits["val"]) + 1  # person10's second film joined val
    half, groups = grouped.val_half(), patient_groups(grouped.splits["val"].ids)
    assert all(len(set(half[groups == g])) == 1 for g in set(groups))
