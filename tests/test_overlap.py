"""Overlap between the cross-validation pool and the evaluation splits, found before training.

Planted in the test split of a synthetic set: a byte-identical copy of a training image, a
re-encoded (other JPEG quality) and resized copy of another, and a distinct image filed under
a training patient's id. The copies are reported and handled by `--on-overlap` (warn, error,
drop); the same-patient image is reported and never acted on; no other image is flagged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
from conftest import TINY_COUNTS, train
from PIL import Image

from pneumo.data.cache import decode_dataset
from pneumo.data.dataset import scan
from pneumo.data.overlap import check_overlap, phash
from pneumo.data.splits import SplitSpec, build_splits
from pneumo.data.synthetic import generate
from pneumo.utils.errors import PneumoError

SIZE = 128  # the hash is calibrated from 128 px (pneumo.data.overlap.RELIABLE_SIZE)
EXACT = "test/PNEUMONIA/planted_exact.jpeg"
REENCODED = "test/NORMAL/planted_reencoded.jpeg"
COPIES = {EXACT, REENCODED}


def _train_file(root: Path, cls: str, nth: int) -> str:
    return sorted(p.relative_to(root).as_posix() for p in (root / "train" / cls).glob("*.jpeg"))[nth]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A synthetic set with the copies planted in test/; returns it and planted file -> its source."""
    root = tmp_path_factory.mktemp("overlap") / "chest_xray"
    generate(root, counts=TINY_COUNTS, seed=5)
    exact_src, reencoded_src = _train_file(root, "PNEUMONIA", 0), _train_file(root, "NORMAL", 0)
    shutil.copyfile(root / exact_src, root / EXACT)
    img = Image.open(root / reencoded_src)
    small = img.resize((round(img.width * 0.7), round(img.height * 0.7)), Image.Resampling.LANCZOS)
    small.save(root / REENCODED, quality=60)
    # A distinct image under the id of a training patient: another patient's test image, renamed.
    patient = Path(_train_file(root, "NORMAL", 1)).stem.rsplit("-", 1)[0]  # IM-0123 of IM-0123-0001
    other = sorted((root / "test" / "NORMAL").glob("IM-*.jpeg"))[0]
    same_patient = f"test/NORMAL/{patient}-0099.jpeg"
    other.rename(root / same_patient)
    return root, {EXACT: exact_src, REENCODED: reencoded_src, same_patient: _train_file(root, "NORMAL", 1)}


def _splits(root: Path, cache_dir: Path | None):
    layout = scan(root)
    decoded = decode_dataset(root, list(layout.all_files().files), SIZE, cache_dir=cache_dir, workers=0)
    return decoded, build_splits(layout, decoded, SplitSpec(folds=3, seed=0))


@pytest.fixture()
def splits(planted, tmp_path_factory):
    return _splits(planted[0], tmp_path_factory.getbasetemp() / "overlap-cache")


def _kinds(record: dict) -> dict[tuple[str, str], str]:
    return {(p["file"], p["pool_file"]): p["kind"] for p in record["pairs"]}


def test_phash_is_the_textbook_dct_hash():
    # imagehash.phash(hash_size=16) written out with scipy: 2 x 2 box mean to 64 px, 2-D DCT-II,
    # the 16 x 16 lowest frequencies, each above their median.
    rng = np.random.default_rng(0)
    images = np.stack([np.kron(rng.integers(0, 256, (16, 16)), np.ones((8, 8))) for _ in range(6)]).astype(np.uint8)
    for img, got in zip(images, phash(images)):
        low = scipy.fft.dctn(img.reshape(64, 2, 64, 2).mean(axis=(1, 3)), type=2)[:16, :16].ravel()
        np.testing.assert_array_equal(got, np.packbits(low > np.median(low)))


def test_byte_identical_copy_is_found(planted, splits):
    source = planted[1]
    record = check_overlap(*splits, "warn")
    assert _kinds(record)[(EXACT, source[EXACT])] == "identical"


def test_reencoded_resized_copy_is_found_as_near(planted, splits):
    root, source = planted
    record = check_overlap(*splits, "warn")
    assert _kinds(record)[(REENCODED, source[REENCODED])] == "near"
    assert Image.open(root / REENCODED).size != Image.open(root / source[REENCODED]).size


def test_distinct_images_are_not_flagged_as_copies(planted, splits):
    record = check_overlap(*splits, "warn")
    assert {p["file"] for p in record["pairs"] if p["kind"] != "same_patient"} == COPIES
    assert record["counts"]["test"]["copies"] == {"images": 2, "pairs": 2}


def test_same_patient_id_is_reported_but_not_a_copy(planted, splits):
    source = planted[1]
    same_patient = next(f for f in source if f not in COPIES)
    record = check_overlap(*splits, "drop")
    assert _kinds(record)[(same_patient, source[same_patient])] == "same_patient"
    decoded, s = splits
    assert same_patient in {decoded.files[i] for i in s.evals["test"]}


def test_error_policy_names_every_copy_and_its_pool_image(planted, splits):
    source = planted[1]
    with pytest.raises(PneumoError, match="--on-overlap") as err:
        check_overlap(*splits, "error")
    for copy in COPIES:
        assert f"{copy} {'==' if copy == EXACT else '~'} {source[copy]}" in str(err.value)


def test_drop_policy_removes_copies_from_evaluation_and_records_them(splits):
    decoded, s = splits
    before = {decoded.files[i] for i in s.evals["test"]}
    record = check_overlap(decoded, s, "drop")
    assert {decoded.files[i] for i in s.evals["test"]} == before - COPIES
    assert record["dropped"] == {"test": sorted(COPIES)}


def test_warn_policy_keeps_evaluation_and_warns_naming_a_copy(splits):
    decoded, s = splits
    before = s.evals["test"].copy()
    warnings: list[str] = []
    record = check_overlap(decoded, s, "warn", warn=warnings.append)
    np.testing.assert_array_equal(s.evals["test"], before)
    assert record["dropped"] == {}
    assert len(warnings) == 1 and EXACT in warnings[0] and "overlap.json" in warnings[0]


def test_no_cache_finds_the_same_overlap(planted, splits):
    assert check_overlap(*_splits(planted[0], None), "warn") == check_overlap(*splits, "warn")


def test_train_on_overlap_error_stops_before_training(planted, tmp_path, cache_dir):
    out = tmp_path / "run"
    proc = train(planted[0], out, cache_dir, "--on-overlap", "error", "--image-size", str(SIZE), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: 2 evaluation image(s) are copies" in proc.stderr and EXACT in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_train_on_overlap_drop_records_and_leaves_copies_unevaluated(planted, tmp_path, cache_dir):
    out = tmp_path / "run"
    train(planted[0], out, cache_dir, "--on-overlap", "drop", "--image-size", str(SIZE), "--folds", "2", "--epochs=1")
    overlap = json.loads((out / "overlap.json").read_text())
    assert overlap["dropped"] == {"test": sorted(COPIES)} and overlap["policy"] == "drop"
    assert json.loads((out / "results.json").read_text())["overlap"] == overlap
    evaluated = (out / "predictions_test.csv").read_text()
    assert len(evaluated.splitlines()) == 1 + sum(TINY_COUNTS["test"]) and not any(c in evaluated for c in COPIES)
