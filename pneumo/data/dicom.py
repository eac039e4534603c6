"""DICOM files in (pydicom): the stored pixels as the radiograph is meant to be seen, in 8 bits.

A DICOM Part 10 file (the 128-byte preamble, then "DICM") is read with pydicom, its modality
LUT (rescale slope and intercept) and its first VOI LUT or window applied, the result
stretched to 0..255 between its own lowest and highest value (8-16 bits stored alike), and a
MONOCHROME1 image (white = low values) inverted, so that bone is bright as in a JPEG X-ray.
Compressed transfer syntaxes decode through pydicom's optional plugins where installed.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from pneumo.utils.errors import PneumoError

SUFFIXES = frozenset({".dcm", ".dicom"})
DECODERS = "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle (or python-gdcm)"


class DicomError(PneumoError):
    """A DICOM file pneumo cannot turn into an image (the message says why and what to do)."""


def is_dicom(data: bytes) -> bool:
    """Whether `data` is a DICOM Part 10 file."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def dicom_to_gray(data: bytes) -> Image.Image:
    """The 8-bit grayscale image of a DICOM file's pixel data; DicomError if there is none."""
    pydicom = _pydicom()
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        raise DicomError("a DICOM file without pixel data (not an image: a report, a structured or empty object)")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"photometric interpretation {photometric or 'missing'!r}: X-rays are MONOCHROME1 or 2")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomError(f"{ds.NumberOfFrames} frames: one radiograph per file is expected")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        if syntax is not None and syntax.is_compressed:
            raise DicomError(
                f"compressed transfer syntax {syntax.name} and no pydicom decoder for it installed: "
                f"pip install {DECODERS}"
            ) from exc
        raise
    values = np.asarray(apply_voi_lut(apply_modality_lut(pixels, ds), ds), dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a DICOM file from its header alone; None if `path` is not DICOM."""
    with path.open("rb") as f:
        if not is_dicom(f.read(132)):
            return None
    ds = _pydicom().dcmread(path, stop_before_pixels=True)
    return int(ds.Columns), int(ds.Rows)


def _pydicom() -> ModuleType:
    """pydicom, or a DicomError naming the extra that installs it."""
    try:
        import pydicom
    except ImportError:
        raise DicomError("reading DICOM needs pydicom: pip install 'pneumo[dicom]'") from None
    return pydicom
