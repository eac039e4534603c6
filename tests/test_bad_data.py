"""Bad input data: every kind has one defined outcome, and none is dropped silently.

Readable-but-odd images (16-bit, RGBA, CMYK, palette, tiny, PNG bytes named .jpeg) are
converted and used. Unreadable files (empty, truncated, not an image, decompression bomb,
no read permission, a broken link) and non-image files in class folders are unusable:
`--on-bad-image error` (the default) stops before training and names each with its reason;
`--on-bad-image skip` trains without them and records them in `skipped_images.json`. Hidden
and system files (.DS_Store, Thumbs.db, __MACOSX) are not data: listed in `Layout.ignored`.
Layout mistakes (no data dir, missing, empty or extra class folders) are a one-line error.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import train
from PIL import Image

from pneumo.data.cache import decode_dataset, decode_file
from pneumo.data.dataset import check_folds, expand_image_paths, label_conflicts, scan
from pneumo.data.folds import make_folds
from pneumo.data.images import decode
from pneumo.data.synthetic import generate
from pneumo.utils.errors import PneumoError

SIZE = 32
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------- the corpus


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _jpeg(seed: int = 0, side: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    return _encode(Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)), "JPEG")


def _bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose header claims width x height 1-bit pixels (beyond Pillow's limit) in a few bytes.

    Its pixel data is a stub: a decoder that went past the header would fail differently.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# What each unreadable kind of file is reported as (a substring of its reason).
UNREADABLE = {
    "empty": (b"", "empty file (0 bytes)"),
    "truncated_jpeg": (_jpeg(1)[:300], "truncated or corrupt image data"),
    "text_named_jpeg": (b"patient notes, not pixels\n", "not a readable image"),
    "bomb": (_bomb_png(), "decompression bomb refused"),
}

# Readable-but-odd images and the exact gray value they decode to (before letterboxing).
ODD = {
    "sixteen_bit_png": (_encode(Image.new("I;16", (SIZE, SIZE), 30_000), "PNG"), round(30_000 / 257)),
    "rgba_png": (_encode(Image.new("RGBA", (SIZE, SIZE), (90, 90, 90, 255)), "PNG"), 90),
    "cmyk_jpeg": (_encode(Image.new("CMYK", (SIZE, SIZE), (0, 0, 0, 155)), "JPEG", quality=100), 100),
    "palette_png": (_encode(Image.new("RGB", (SIZE, SIZE), (70, 70, 70)).quantize(4), "PNG"), 70),
    "gray_alpha_png": (_encode(Image.new("LA", (SIZE, SIZE), (40, 255)), "PNG"), 40),
    "one_bit_png": (_encode(Image.new("1", (SIZE, SIZE), 1), "PNG"), 255),
    "tiny_10x10": (_encode(Image.new("L", (10, 10), 77), "PNG"), 77),
    "png_named_jpeg": (_encode(Image.new("L", (SIZE, SIZE), 33), "PNG"), 33),
}


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _layout(root: Path, tree: dict[str, dict[str, int]]) -> Path:
    """root/SPLIT/CLASS/imgK.jpeg, distinct images, n per class (0: an empty folder)."""
    for split, classes in tree.items():
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _write(root / split / name / f"img{i}.jpeg", _jpeg(zlib.crc32(f"{split}/{name}/{i}".encode()), 24))
    return root


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("kind", list(ODD))
def test_readable_odd_image_decodes_to_its_exact_gray_value(kind):
    data, gray = ODD[kind]
    out = decode(data, SIZE)
    assert out.shape == (SIZE, SIZE) and out.dtype == np.uint8
    assert (out == gray).all(), np.unique(out)


def test_sixteen_bit_png_maps_each_value_to_value_over_257():
    values = np.linspace(0, 65_535, SIZE * SIZE).round().astype(np.uint16).reshape(SIZE, SIZE)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = decode(_encode(img, "PNG"), SIZE)
    np.testing.assert_array_equal(out, np.rint(values / 257).astype(np.uint8))
    assert out.min() == 0 and out.max() == 255


def test_rgb_decodes_with_itu_r_601_luma():
    out = decode(_encode(Image.new("RGB", (SIZE, SIZE), (200, 100, 50)), "PNG"), SIZE)
    assert (out == round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)).all()


def test_wide_tiny_image_is_letterboxed_into_the_centre_band():
    out = decode(_encode(Image.new("L", (10, 5), 77), "PNG"), SIZE)
    assert (out[8:24] == 77).all()
    assert (out[:8] == 0).all() and (out[24:] == 0).all()


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_unreadable_file_is_reported_with_its_reason(tmp_path, kind):
    data, reason = UNREADABLE[kind]
    arr, _, err = decode_file(_write(tmp_path / f"{kind}.png", data), SIZE)
    assert arr is None
    assert reason in err


def test_image_beyond_the_pixel_limit_is_refused_not_decoded(tmp_path, monkeypatch):
    # Between Pillow's limit and twice it Pillow only warns; such a file is refused all the same.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    path = _write(tmp_path / "big.png", _encode(Image.new("L", (40, 40), 9), "PNG"))
    arr, _, err = decode_file(path, SIZE)
    assert arr is None and "decompression bomb refused" in err


def _deny_reading(monkeypatch, denied: Path) -> None:
    """Simulate a file without read permission (chmod cannot stop root, who may run the tests)."""
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


def test_file_without_read_permission_is_reported(tmp_path, monkeypatch):
    path = _write(tmp_path / "locked.jpeg", _jpeg())
    _deny_reading(monkeypatch, path)
    arr, _, err = decode_file(path, SIZE)
    assert arr is None and "permission denied" in err


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their mode; the simulated test covers it")
def test_file_with_mode_000_is_reported(tmp_path):
    path = _write(tmp_path / "locked.jpeg", _jpeg())
    path.chmod(0)
    try:
        arr, _, err = decode_file(path, SIZE)
    finally:
        path.chmod(0o644)
    assert arr is None and "permission denied" in err


def test_broken_link_is_reported_as_unreadable(tmp_path):
    link = tmp_path / "gone.jpeg"
    link.symlink_to(tmp_path / "deleted.jpeg")
    arr, _, err = decode_file(link, SIZE)
    assert arr is None and "cannot read the file (No such file or directory)" in err


def test_decode_pass_lists_every_bad_file_and_keeps_the_rest(tmp_path):
    files = {f"{k}.jpeg": data for k, (data, _) in {**UNREADABLE, **ODD}.items()}
    for name, data in files.items():
        _write(tmp_path / "d" / name, data)
    decoded = decode_dataset(tmp_path / "d", sorted(files), SIZE, cache_dir=tmp_path / "cache", workers=0)
    bad = decoded.bad_files()
    assert sorted(bad) == sorted(f"{k}.jpeg" for k in UNREADABLE)
    for kind, (_, reason) in UNREADABLE.items():
        assert reason in bad[f"{kind}.jpeg"]
    index = decoded.index_of()
    for kind, (_, gray) in ODD.items():
        assert (decoded.pixels[index[f"{kind}.jpeg"]] == gray).all()


def test_fixing_permissions_retries_a_file_cached_as_unreadable(tmp_path, monkeypatch):
    path = _write(tmp_path / "d" / "locked.jpeg", _encode(Image.new("L", (SIZE, SIZE), 50), "PNG"))
    path.chmod(0o200)
    _deny_reading(monkeypatch, path)
    first = decode_dataset(tmp_path / "d", ["locked.jpeg"], SIZE, cache_dir=tmp_path / "cache", workers=0)
    assert "permission denied" in first.bad_files()["locked.jpeg"]
    monkeypatch.undo()
    path.chmod(0o644)  # the fix changes the file's mode, not its mtime
    again = decode_dataset(tmp_path / "d", ["locked.jpeg"], SIZE, cache_dir=tmp_path / "cache", workers=0)
    assert again.bad_files() == {} and (again.pixels[0] == 50).all()


# ----------------------------------------------------------------------------- the layout


def test_missing_data_dir_is_an_error_naming_it(tmp_path):
    with pytest.raises(PneumoError, match=r"--data-dir .*nope does not exist"):
        scan(tmp_path / "nope")


def test_data_dir_that_is_a_file_is_an_error(tmp_path):
    with pytest.raises(PneumoError, match="is not a directory"):
        scan(_write(tmp_path / "data.zip", b"PK"))


def test_empty_data_dir_is_an_error_describing_the_layout(tmp_path):
    with pytest.raises(PneumoError, match=r"has no train/ folder; expected ROOT/\{train,val,test\}"):
        scan(tmp_path)


def test_data_dir_one_level_too_high_suggests_the_nested_folder(tmp_path):
    _layout(tmp_path / "chest_xray", {"train": {"NORMAL": 1, "PNEUMONIA": 1}})
    with pytest.raises(PneumoError, match=r"did you mean --data-dir .*chest_xray\?"):
        scan(tmp_path)


def test_single_class_is_an_error(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 2}})
    with pytest.raises(PneumoError, match=r"exactly two class folders .*found \['NORMAL'\]"):
        scan(tmp_path)


def test_three_classes_are_an_error(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 1, "BACTERIA": 1, "VIRUS": 1}})
    with pytest.raises(PneumoError, match="exactly two class folders"):
        scan(tmp_path)


def test_class_folder_missing_from_a_split_is_an_error_naming_it(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 1, "PNEUMONIA": 1}, "test": {"PNEUMONIA": 1}})
    with pytest.raises(PneumoError, match=r"test: expected class folders .*missing \['NORMAL'\]"):
        scan(tmp_path)


def test_unexpected_class_folder_in_a_split_is_an_error_naming_it(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 1, "PNEUMONIA": 1}, "val": {"NORMAL": 1, "PNEUMONIA": 1, "COVID": 1}})
    with pytest.raises(PneumoError, match=r"val: .*unexpected \['COVID'\]"):
        scan(tmp_path)


def test_empty_training_class_is_an_error_naming_it(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 0, "PNEUMONIA": 2}})
    with pytest.raises(PneumoError, match=r"class folder\(s\) \['NORMAL'\] hold no"):
        scan(tmp_path)


def test_training_class_of_only_non_images_counts_as_empty(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 0, "PNEUMONIA": 2}})
    _write(tmp_path / "train" / "NORMAL" / "scan.tif", b"II*\x00")
    with pytest.raises(PneumoError, match=r"\['NORMAL'\] hold no \.dcm/\.dicom/\.jpeg/\.jpg/\.png images"):
        scan(tmp_path)


def test_empty_class_in_the_test_split_is_allowed(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 2, "PNEUMONIA": 2}, "test": {"NORMAL": 0, "PNEUMONIA": 3}})
    layout = scan(tmp_path)
    assert layout.splits["test"].class_counts() == [0, 3]
    assert layout.eval_splits(keep_val_apart=False) == ["test"]


def test_non_image_file_in_a_class_folder_is_listed_as_unusable(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 2, "PNEUMONIA": 2}})
    _write(tmp_path / "train" / "NORMAL" / "notes.txt", b"hello")
    _write(tmp_path / "train" / "PNEUMONIA" / "scan.tif", b"II*\x00")
    layout = scan(tmp_path)
    assert set(layout.not_images) == {"train/NORMAL/notes.txt", "train/PNEUMONIA/scan.tif"}
    assert "not an image file (suffix '.txt'" in layout.not_images["train/NORMAL/notes.txt"]
    assert not any(f.endswith((".txt", ".tif")) for f in layout.all_files().files)


def test_hidden_and_system_files_are_ignored_and_listed(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 2, "PNEUMONIA": 2}})
    junk = [
        "train/NORMAL/.DS_Store",
        "train/NORMAL/._img0.jpeg",
        "train/PNEUMONIA/.ipynb_checkpoints/img0-checkpoint.jpeg",
        "train/PNEUMONIA/Thumbs.db",
        "train/__MACOSX/NORMAL/._img1.jpeg",
    ]
    for rel in junk:
        _write(tmp_path / rel, b"\0\5\26\7")
    layout = scan(tmp_path)
    assert layout.classes == ("NORMAL", "PNEUMONIA")
    assert set(layout.ignored) == set(junk[:4]) | {"train/__MACOSX"}
    assert layout.not_images == {} and len(layout.all_files()) == 4
    assert "ignored 5 file(s)" in layout.ignored_note()


def test_file_beside_the_class_folders_is_ignored_and_listed(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 2, "PNEUMONIA": 2}})
    _write(tmp_path / "train" / "labels.csv", b"file,label\n")
    layout = scan(tmp_path)
    assert layout.ignored == {"train/labels.csv": "not inside a class folder"}


def test_same_file_name_in_both_classes_gives_two_labelled_samples(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 1, "PNEUMONIA": 1}})
    _write(tmp_path / "train" / "NORMAL" / "a.jpeg", _jpeg(1))
    _write(tmp_path / "train" / "PNEUMONIA" / "a.jpeg", _jpeg(2))
    train_set = scan(tmp_path).splits["train"]
    labels = dict(zip(train_set.files, train_set.labels.tolist()))
    assert labels["train/NORMAL/a.jpeg"] == 0 and labels["train/PNEUMONIA/a.jpeg"] == 1


def test_images_in_subfolders_are_listed_in_path_order(tmp_path):
    for rel in ["b.jpeg", "a/z.jpeg", "a.jpeg", "A.png", "a/b/c.jpg"]:
        _write(tmp_path / "train" / "NORMAL" / rel, _jpeg())
    _write(tmp_path / "train" / "PNEUMONIA" / "x.jpeg", _jpeg())
    files = scan(tmp_path).splits["train"].files
    normal = tmp_path / "train" / "NORMAL"
    expected = [p.relative_to(tmp_path).as_posix() for p in sorted(normal.rglob("*")) if p.is_file()]
    assert list(files[:5]) == expected


def test_folder_that_cannot_be_listed_is_an_error_naming_it(tmp_path, monkeypatch):
    _layout(tmp_path, {"train": {"NORMAL": 2, "PNEUMONIA": 2}})
    locked = tmp_path / "train" / "PNEUMONIA"
    real = os.scandir

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PneumoError, match=r"train/PNEUMONIA: cannot list this folder \(Permission denied\)"):
        scan(tmp_path)


def test_images_folder_for_prediction_returns_the_files_it_skips(tmp_path):
    for rel in ["a.jpeg", "sub/b.png", "notes.txt", ".DS_Store", "._a.jpeg"]:
        _write(tmp_path / "in" / rel, _jpeg())
    explicit = _write(tmp_path / "report.pdf", b"%PDF")
    images, skipped = expand_image_paths([str(tmp_path / "in"), str(explicit)])
    assert images == [tmp_path / "in" / "a.jpeg", tmp_path / "in" / "sub" / "b.png", explicit]
    assert sorted(p.name for p in skipped) == [".DS_Store", "._a.jpeg", "notes.txt"]


# ----------------------------------------------------------------------------- folds and labels


def test_more_folds_than_patients_of_a_class_is_refused_from_the_file_list(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 0, "PNEUMONIA": 6}})
    for i in range(4):  # two patients, two images each
        _write(tmp_path / "train" / "NORMAL" / f"person{i // 2}_virus_{i}.jpeg", _jpeg(i))
    layout = scan(tmp_path)
    with pytest.raises(PneumoError, match="--folds 3 is more than the 2 patients of class NORMAL; lower --folds"):
        check_folds(layout, 3, keep_val_apart=False, by_patient=True)
    check_folds(layout, 3, keep_val_apart=False, by_patient=False)  # four files are enough
    check_folds(layout, 2, keep_val_apart=False, by_patient=True)


def test_byte_identical_images_in_two_classes_are_a_label_conflict(tmp_path):
    _layout(tmp_path, {"train": {"NORMAL": 2, "PNEUMONIA": 2}})
    _write(tmp_path / "train" / "NORMAL" / "same.jpeg", _jpeg(7))
    _write(tmp_path / "train" / "PNEUMONIA" / "copy.jpeg", _jpeg(7))
    _write(tmp_path / "train" / "PNEUMONIA" / "copy2.jpeg", _jpeg(8))
    _write(tmp_path / "train" / "PNEUMONIA" / "copy3.jpeg", _jpeg(8))  # same class: a duplicate, not a conflict
    layout = scan(tmp_path)
    decoded = decode_dataset(tmp_path, layout.all_files().files, SIZE, cache_dir=None, workers=0)
    conflicts = label_conflicts(layout, dict(zip(decoded.files, decoded.sha1)))
    assert set(conflicts) == {"train/NORMAL/same.jpeg", "train/PNEUMONIA/copy.jpeg"}
    assert "byte-identical to train/PNEUMONIA/copy.jpeg" in conflicts["train/NORMAL/same.jpeg"]


def test_byte_identical_images_in_two_classes_share_a_fold():
    # What folds.py does today with a label conflict: one group, so never split across folds.
    files = [f"NORMAL/n{i}.jpeg" for i in range(4)] + [f"PNEUMONIA/p{i}.jpeg" for i in range(4)]
    labels = np.array([0] * 4 + [1] * 4)
    sha1 = [f"s{i}" for i in range(8)]
    sha1[4] = sha1[0]
    fold_of, groups = make_folds(files, labels, ("NORMAL", "PNEUMONIA"), sha1, n_folds=2, seed=0)
    assert groups[0] == groups[4] and fold_of[0] == fold_of[4]


# ----------------------------------------------------------------------------- train.py end to end


# Where the end-to-end data set puts each unreadable kind: both classes, train and test.
PLACES = {"empty": "train/NORMAL", "truncated_jpeg": "test/NORMAL", "text_named_jpeg": "train/PNEUMONIA"}


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> tuple[Path, dict[str, str], list[str]]:
    """A small data set with one of every unusable kind (file -> reason) and every odd kind (files)."""
    root = tmp_path_factory.mktemp("bad") / "chest_xray"
    generate(root, counts={"train": (6, 6), "test": (2, 2)}, seed=5)
    unusable = {}
    for kind, (data, reason) in UNREADABLE.items():
        suffix = ".png" if kind == "bomb" else ".jpeg"
        rel = f"{PLACES.get(kind, 'train/PNEUMONIA')}/{kind}{suffix}"
        _write(root / rel, data)
        unusable[rel] = reason
    _write(root / "train" / "PNEUMONIA" / "notes.txt", b"to do: relabel")
    unusable["train/PNEUMONIA/notes.txt"] = "not an image file (suffix '.txt'"
    (root / "train" / "NORMAL" / "broken_link.jpeg").symlink_to(root / "deleted.jpeg")
    unusable["train/NORMAL/broken_link.jpeg"] = "cannot read the file"
    odd = []
    for i, (kind, (data, _)) in enumerate(ODD.items()):
        suffix = ".jpeg" if kind.endswith("jpeg") else ".png"
        odd.append(f"train/{('NORMAL', 'PNEUMONIA')[i % 2]}/{kind}{suffix}")
        _write(root / odd[-1], data)
    for cls, seed in (("NORMAL", 11), ("PNEUMONIA", 12)):  # the same name, different pictures
        odd.append(f"train/{cls}/same_name.jpeg")
        _write(root / odd[-1], _jpeg(seed))
    _write(root / "train" / "NORMAL" / ".DS_Store", b"\0\0\0\1Bud1")
    return root, unusable, odd


def test_train_stops_before_training_naming_every_unusable_file(bad_data, tmp_path):
    root, unusable, odd = bad_data
    out = tmp_path / "run"
    proc = train(root, out, tmp_path / "cache", "--folds", "2", check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: {len(unusable)} unusable file(s)") and "--on-bad-image skip" in proc.stderr
    lines = proc.stderr.splitlines()
    for rel, reason in unusable.items():
        assert any(str(root / rel) in line and reason in line for line in lines), rel
    assert not any(f in proc.stderr for f in [*odd, ".DS_Store"])
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_train_with_skip_uses_odd_images_and_records_the_skipped_ones(bad_data, tmp_path):
    root, unusable, odd = bad_data
    out = tmp_path / "run"
    proc = train(root, out, tmp_path / "cache", "--folds", "2", "--epochs", "1", "--on-bad-image", "skip")
    skipped = json.loads((out / "skipped_images.json").read_text())
    assert set(skipped) == set(unusable)
    assert all(reason in skipped[rel] for rel, reason in unusable.items())
    assert all(f"skipping {rel}: " in proc.stdout for rel in unusable)
    folds = json.loads((out / "folds.json").read_text())["files"]
    assert set(odd) <= set(folds) and not set(unusable) & set(folds)
    assert json.loads((out / "run_info.json").read_text())["skipped_images"] == len(unusable)
    # It finished on the usable images: every pool image but the skipped ones has an out-of-fold score.
    with open(out / "oof.csv", newline="") as f:
        scored = [r["file"] for r in csv.DictReader(f)]
    assert sorted(scored) == sorted(folds)
    assert json.loads((out / "results.json").read_text())["oof"]["n"] == len(folds)
