"""DICOM in: pixels as displayed (modality LUT, VOI window, MONOCHROME1 inverted), bad files as one reason."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, train_args
from PIL import Image

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid  # noqa: E402

from pneumo.data import dicom  # noqa: E402
from pneumo.data.cache import decode_file  # noqa: E402
from pneumo.data.dataset import expand_image_paths, scan  # noqa: E402
from pneumo.data.images import decode  # noqa: E402


def write_dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2", **tags) -> Path:
    """A DICOM Part 10 file of `pixels` (uint8 or uint16), written by pydicom; no pixel data if None."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID = "P1"
    if pixels is not None:
        bits = 8 if pixels.dtype == np.uint8 else 16
        ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def gradient(dtype: type = np.uint8, top: int = 255) -> np.ndarray:
    """A 32x32 image with distinct values from 0 to `top`."""
    return np.linspace(0, top, 32 * 32).round().astype(dtype).reshape(32, 32)


def test_monochrome2_8_bit_decodes_like_the_same_pixels_as_png(tmp_path):
    pixels = gradient()
    Image.fromarray(pixels, mode="L").save(tmp_path / "a.png")
    write_dicom(tmp_path / "a.dcm", pixels)
    from_dicom = decode((tmp_path / "a.dcm").read_bytes(), 32)
    np.testing.assert_array_equal(from_dicom, decode((tmp_path / "a.png").read_bytes(), 32))
    np.testing.assert_array_equal(from_dicom, pixels)


def test_monochrome1_16_bit_with_rescale_is_inverted_and_stretched(tmp_path):
    stored = gradient(np.uint16, 4095)
    write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-1024)
    got = decode((tmp_path / "m1.dcm").read_bytes(), 32)
    hu = stored.astype(float) * 2 - 1024  # by hand: modality LUT, stretch, invert (white = low)
    expected = np.rint(255 - (hu - hu.min()) / (hu.max() - hu.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0] == 255 and got[-1, -1] == 0


def test_window_clips_outside_values(tmp_path):
    stored = gradient(np.uint16, 4095)
    write_dicom(tmp_path / "w.dcm", stored, WindowCenter=2048, WindowWidth=1024)
    got = decode((tmp_path / "w.dcm").read_bytes(), 32).astype(int)
    x = stored.astype(float)  # the standard's linear window, by hand
    y = np.clip(((x - (2048 - 0.5)) / (1024 - 1) + 0.5), 0, 1)
    expected = np.rint((y - y.min()) / (y.max() - y.min()) * 255).astype(int)
    assert np.abs(got - expected).max() <= 1
    assert (got[stored <= 1536] == 0).all() and (got[stored >= 2560] == 255).all()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: write_dicom(p, None), "without pixel data"),
        (lambda p: p.write_bytes(write_dicom(p, gradient(np.uint16, 4095)).read_bytes()[:-700]), "truncated"),
    ],
    ids=["no-pixel-data", "truncated"],
)
def test_bad_dicom_is_one_reason_not_a_crash(tmp_path, make, reason):
    path = tmp_path / "bad.dcm"
    make(path)
    pixels, sha1, error = decode_file(path, 32)
    assert pixels is None and sha1 and reason in error


def test_compressed_without_a_decoder_names_the_packages(tmp_path):
    path = write_dicom(tmp_path / "ls.dcm", gradient())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xf7" + bytes(64)])
    ds.save_as(path, enforce_file_format=True)
    if pydicom.pixels.decoders.JPEGLSLosslessDecoder.is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    with pytest.raises(dicom.DicomError, match=r"JPEG-LS Lossless.*pip install pylibjpeg"):
        decode(path.read_bytes(), 32)


def test_without_pydicom_the_error_names_the_extra(tmp_path, monkeypatch):
    data = write_dicom(tmp_path / "a.dcm", gradient()).read_bytes()
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(dicom.DicomError, match=r"pip install 'pneumo\[dicom\]'"):
        decode(data, 32)
    assert not dicom.is_dicom(io.BytesIO(b"\xff\xd8" + bytes(200)).getvalue())


def test_folders_list_dicom_files(tmp_path):
    write_dicom(tmp_path / "a.dcm", gradient())
    write_dicom(tmp_path / "b.DICOM", gradient())
    (tmp_path / "notes.txt").write_text("x")
    found, skipped = expand_image_paths([str(tmp_path)])
    assert [p.name for p in found] == ["a.dcm", "b.DICOM"] and [p.name for p in skipped] == ["notes.txt"]


def test_evaluate_predicts_dicom_as_its_png_twin(run_two, tiny_data, tmp_path):
    """The same pixels as DICOM (16-bit, MONOCHROME1, rescaled) and as PNG get the same prediction."""
    out, _ = run_two
    dcm, png = tmp_path / "dcm", tmp_path / "png"
    dcm.mkdir(), png.mkdir()
    for i, src in enumerate(sorted((tiny_data / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]):
        gray = np.asarray(Image.open(src).convert("L"), dtype=np.uint8).copy()
        gray.flat[0], gray.flat[-1] = 0, 255  # the full range, so the DICOM's stretch is the identity
        Image.fromarray(gray, mode="L").save(png / f"{i}.png")
        stored = ((255 - gray.astype(np.uint16)) * 16 + 1000).astype(np.uint16)  # inverted, 12 bits
        write_dicom(dcm / f"{i}.dcm", stored, "MONOCHROME1", RescaleSlope=0.5, RescaleIntercept=-7)
    for name in ("dcm", "png"):
        run_cli(["evaluate.py", str(out), "--images", str(tmp_path / name), "--out", str(tmp_path / f"{name}.csv")])
    rows = {n: list(csv.DictReader((tmp_path / f"{n}.csv").open())) for n in ("dcm", "png")}
    assert len(rows["dcm"]) == 3
    for a, b in zip(rows["dcm"], rows["png"]):
        assert float(a["prob_PNEUMONIA"]) == pytest.approx(float(b["prob_PNEUMONIA"]), abs=1e-6)
        assert a["pred"] == b["pred"]


def test_a_dicom_dataset_trains_and_evaluates(tiny_data, tmp_path):
    """Training folders and the test split as DICOM only (every file converted): the run reads them all."""
    root = tmp_path / "chest_xray"
    for src in sorted(tiny_data.rglob("*.jpeg")):
        dst = (root / src.relative_to(tiny_data)).with_suffix(".dcm")
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_dicom(dst, np.asarray(Image.open(src).convert("L"), dtype=np.uint8).copy())
    out = tmp_path / "run"
    run_cli(train_args(root, out, tmp_path / "cache", "--train-folds", "0", "--epochs", "1"))
    layout = scan(root)
    assert {len(s) for s in layout.splits.values()} and not layout.not_images
    with (out / "predictions_test.csv").open() as f:
        files = [row["file"] for row in csv.DictReader(f)]
    assert sorted(files) == sorted(layout.splits["test"].files) and all(f.endswith(".dcm") for f in files)
