"""Decoding: any mode and size to a grayscale letterbox of the training size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pneumo.data.images import decode


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_letterbox_keeps_aspect_ratio_and_pads_black():
    img = Image.new("L", (400, 200), 200)
    out = decode(_encode(img, "PNG"), 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert (out[:16] == 0).all() and (out[-16:] == 0).all()
    assert (out[17:47] == 200).all()


@pytest.mark.parametrize(
    ("mode", "value", "fmt", "expected"),
    [
        ("L", 100, "JPEG", 100),
        ("RGB", (100, 100, 100), "JPEG", 100),
        ("RGBA", (100, 100, 100, 255), "PNG", 100),
        ("CMYK", (0, 0, 0, 155), "JPEG", 100),
        ("I;16", 100 * 257, "PNG", 100),
        ("P", 100, "PNG", None),
    ],
)
def test_every_mode_becomes_8_bit_gray(mode, value, fmt, expected):
    img = Image.new(mode, (50, 50), value)
    out = decode(_encode(img, fmt), 32)
    assert out.shape == (32, 32)
    if expected is not None:
        assert abs(int(np.median(out)) - expected) <= 3


def test_tiny_image_is_upscaled():
    out = decode(_encode(Image.new("L", (10, 10), 77), "PNG"), 64)
    assert (out == 77).all()


def test_large_jpeg_decodes_to_the_same_geometry():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (1800, 1500), dtype=np.uint8))
    out = decode(_encode(img, "JPEG"), 128)
    assert out.shape == (128, 128)
    assert out[:, :5].max() == 0 and out[:, -5:].max() == 0  # portrait: padded left and right
