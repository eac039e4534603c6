"""The data audit: per-image statistics, shortcut and shift warnings, and its entry points."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, train
from PIL import Image, ImageFilter

from pneumo.data.audit import audit, file_statistics, jpeg_quality, pixel_statistics
from pneumo.data.cache import decode_dataset


@pytest.mark.parametrize("quality", [50, 75, 90, 95])
def test_jpeg_quality_is_recovered_from_the_quantisation_table(quality):
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(buf, "JPEG", quality=quality)
    with Image.open(buf) as img:
        assert jpeg_quality(img.quantization[0]) == pytest.approx(quality, abs=1.5)


def test_file_statistics_read_size_aspect_and_bits_per_pixel(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((50, 200), np.uint8)).save(path)
    stats = file_statistics(path)
    assert (stats["width"], stats["height"], stats["aspect"]) == (200, 50, 4.0)
    assert stats["bits_per_pixel"] == pytest.approx(8 * path.stat().st_size / 10_000)
    assert np.isnan(stats["jpeg_quality"])


def test_sharpness_is_the_mean_absolute_laplacian_over_the_image_content(tmp_path):
    board = (np.indices((16, 16)).sum(0) % 2 * 254 + 1).astype(np.uint8)  # 1/255 checkerboard, no zeros
    flat = np.full((16, 16), 200, np.uint8)
    for name, arr in (("board.png", board), ("flat.png", flat)):
        Image.fromarray(arr).save(tmp_path / name)
    decoded = decode_dataset(tmp_path, ["board.png", "flat.png"], 16, cache_dir=None, workers=0)
    decoded.pixels = np.stack([board, flat])
    stats = pixel_statistics(decoded, np.array([0, 1]))
    # every inner pixel differs from each of its 4 neighbours by 254/255: |4x - sum| = 4 * 254/255
    assert stats["sharpness"][0] == pytest.approx(4 * 254 / 255, rel=1e-5)
    assert stats["sharpness"][1] == pytest.approx(0, abs=1e-6) and stats["contrast"][1] == pytest.approx(0, abs=1e-6)
    assert stats["brightness"][1] == pytest.approx(200 / 255)


def _textures(root: Path, split: str, cls: str, n: int, blur: float, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        img = Image.fromarray(rng.integers(60, 200, (48, 48), dtype=np.uint8))
        if blur:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        path = root / split / cls / f"{cls}-{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        files.append(path.relative_to(root).as_posix())
    return files


def test_a_planted_sharpness_shortcut_and_a_shifted_test_split_are_flagged(tmp_path):
    files = _textures(tmp_path, "train", "NORMAL", 20, 0, 1) + _textures(tmp_path, "train", "PNEUMONIA", 20, 1.5, 2)
    files += _textures(tmp_path, "test", "NORMAL", 10, 1.5, 3) + _textures(tmp_path, "test", "PNEUMONIA", 10, 1.5, 4)
    decoded = decode_dataset(tmp_path, files, 48, cache_dir=tmp_path / "cache", workers=0)
    labels = np.array([0] * 20 + [1] * 20 + [0] * 10 + [1] * 10)
    report = audit(decoded, labels, ("NORMAL", "PNEUMONIA"), 1, np.arange(40), {"test": np.arange(40, 60)})
    sharp = report["statistics"]["sharpness"]
    assert sharp["label_auc"]["pool"] == 0.0  # every sharp image is NORMAL
    assert sharp["shift_auc"]["test"]["NORMAL"] == 0.0  # test NORMAL is blurred, pool NORMAL is not
    assert sharp["shift_auc"]["test"]["PNEUMONIA"] == pytest.approx(0.5, abs=0.25)
    text = "\n".join(report["warnings"])
    assert "sharpness alone separates the classes" in text and "higher in NORMAL" in text
    assert "sharpness of NORMAL images is lower in test" in text
    assert "brightness alone" not in text  # unplanted statistics stay quiet
    assert report["statistics"]["width"]["label_auc"]["pool"] is None  # constant: undefined, not 0.5


def test_train_audit_writes_the_audit_and_trains_nothing(tiny_data, cache_dir, tmp_path):
    proc = train(tiny_data, tmp_path / "run", cache_dir, "--audit")
    report = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert set(report["statistics"]["sharpness"]["distribution"]) == {"pool", "test"}
    assert not list((tmp_path / "run").glob("fold[0-9]"))
    assert "Data audit" in proc.stdout


def test_the_audit_module_runs_as_a_command(tiny_data, cache_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "pneumo.audit_cli",
        str(tiny_data),
        "--image-size",
        "32",
        "--cache-dir",
        str(cache_dir),
    ]
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "a.json")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "a.json").read_text())["classes"] == ["NORMAL", "PNEUMONIA"]


def _framed(root: Path, split: str, cls: str, n: int, band: bool, seed: int) -> list[str]:
    """Noise images; with `band`, the bottom quarter is brighter (like a diaphragm sitting lower in the frame)."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        arr = rng.integers(60, 160, (48, 48)).astype(np.uint8)
        if band:
            arr[36:] += 60
        path = root / split / cls / f"{cls}-{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
        files.append(path.relative_to(root).as_posix())
    return files


def test_a_planted_layout_shift_of_one_class_is_flagged_for_that_class_only(tmp_path):
    files = _framed(tmp_path, "train", "NORMAL", 30, False, 1) + _framed(tmp_path, "train", "PNEUMONIA", 30, False, 2)
    files += _framed(tmp_path, "test", "NORMAL", 15, True, 3) + _framed(tmp_path, "test", "PNEUMONIA", 15, False, 4)
    decoded = decode_dataset(tmp_path, files, 48, cache_dir=tmp_path / "cache", workers=0)
    labels = np.array([0] * 30 + [1] * 30 + [0] * 15 + [1] * 15)
    report = audit(decoded, labels, ("NORMAL", "PNEUMONIA"), 1, np.arange(60), {"test": np.arange(60, 90)})
    shift = report["layout"]["shift_auc"]["test"]
    assert shift["NORMAL"] > 0.95  # the band gives test NORMALs away
    assert shift["PNEUMONIA"] < 0.7  # same noise process in both splits
    layout_warnings = [w for w in report["warnings"] if "pixel layout" in w]
    assert len(layout_warnings) == 1
    assert "of NORMAL images differs between test and the training pool" in layout_warnings[0]
