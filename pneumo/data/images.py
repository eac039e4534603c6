"""Decode one image file into the training geometry: grayscale, aspect kept, padded square."""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps

from pneumo.data import dicom

# Bump when decoding changes the pixels: it is part of the decode cache key.
DECODER_VERSION = 1

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
EQUALIZE = ("none", "hist", "clahe")
CLAHE_CLIP, CLAHE_TILES = 2.0, (8, 8)


@dataclass(frozen=True)
class Preprocess:
    """Per-image preprocessing at decode time (cached, and applied alike to every split).

    `jpeg_quality` (1-100, 0: off) re-encodes each image as a JPEG of that quality at its
    own resolution first, so that images stored at different qualities carry the same
    compression; `crop` keeps the central fraction of its width and height (markers, text
    and devices sit at the borders); `equalize` then normalises its intensities (see
    `equalize`).
    """

    equalize: str = "none"
    jpeg_quality: int = 0
    crop: float = 1.0

    def key(self) -> str:
        """What the decode cache key adds for this preprocessing ("" for none, as before it existed)."""
        parts = [f"{k}={v}" for k, v in asdict(self).items() if v != getattr(Preprocess(), k)]
        return "".join(f" {p}" for p in parts)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocess:
        """From a run's config or a checkpoint's metadata (keys it lacks keep their defaults)."""
        return cls(**{k: values[k] for k in asdict(cls()) if values.get(k) is not None})


def to_gray(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, RGB, RGBA, CMYK, P, 16-bit) to 8-bit grayscale.

    16-bit images are scaled from the full 0..65535 range, so relative contrast is kept.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA").convert("RGB")
    return img.convert("L")


def equalize(gray: Image.Image, method: str) -> Image.Image:
    """Per-image intensity normalisation: none, global histogram equalisation, or CLAHE.

    CLAHE is kornia's (clip limit 2.0 on 8x8 tiles, the usual radiography setting).
    """
    if method == "hist":
        return ImageOps.equalize(gray)
    if method == "clahe":
        import torch
        from kornia.enhance import equalize_clahe

        x = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)[None, None]
        out = equalize_clahe(x, clip_limit=CLAHE_CLIP, grid_size=CLAHE_TILES)[0, 0].numpy()
        return Image.fromarray(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8), mode="L")
    return gray


def recompress(gray: Image.Image, quality: int) -> Image.Image:
    """The image after a round trip through a JPEG of `quality` (Pillow's libjpeg, 4:4:4)."""
    buf = io.BytesIO()
    gray.save(buf, "JPEG", quality=quality)
    with Image.open(buf) as img:
        return img.convert("L")


def centre_crop(gray: Image.Image, fraction: float) -> Image.Image:
    """The central `fraction` of the image's width and height (1: the whole image)."""
    if fraction >= 1.0:
        return gray
    w, h = gray.size
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    left, top = (w - cw) // 2, (h - ch) // 2
    return gray.crop((left, top, left + cw, top + ch))


def letterbox(gray: Image.Image, size: int, method: str = "none") -> np.ndarray:
    """Resize keeping the aspect ratio so the long side is `size`, equalise, centre on a black square."""
    w, h = gray.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(equalize(gray.resize((nw, nh), Image.Resampling.BILINEAR), method), dtype=np.uint8)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def decode(data: bytes, size: int, pre: Preprocess = Preprocess()) -> np.ndarray:
    """Decode image (JPEG, PNG, DICOM) bytes to a (size, size) uint8 letterbox, preprocessed by
    `pre`; raise on unreadable input.

    Pillow's decompression-bomb warning is an error here: an image beyond its pixel limit
    is refused rather than decoded.
    """
    gray = dicom.dicom_to_gray(data) if dicom.is_dicom(data) else _pillow_gray(data, size, pre)
    if pre.jpeg_quality:
        gray = recompress(gray, pre.jpeg_quality)
    return letterbox(centre_crop(gray, pre.crop), size, pre.equalize)


def _pillow_gray(data: bytes, size: int, pre: Preprocess) -> Image.Image:
    """A JPEG or PNG (any format Pillow reads) as 8-bit grayscale, upright as its EXIF says."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale (still >= size), the
            # single largest saving when X-rays are 1000-2500 px.
            if not pre.jpeg_quality:  # a recompression happens at the stored resolution
                img.draft("L", (round(size / pre.crop), round(size / pre.crop)))
            img.load()
            return to_gray(ImageOps.exif_transpose(img))


def describe_error(exc: BaseException) -> str:
    """A short human reason for a read or decode failure of one file."""
    if isinstance(exc, dicom.DicomError):
        return str(exc)
    if isinstance(exc, PermissionError):
        return "permission denied (cannot read the file; fix its permissions)"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"decompression bomb refused, too many pixels to decode safely ({exc})"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a readable image (unknown format, empty or corrupt file)"
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"cannot read the file ({exc.strerror or text})"
    # Pillow reports damaged image data as OSError without errno, SyntaxError or ValueError.
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        return f"truncated or corrupt image data ({text})"
    return f"cannot decode ({type(exc).__name__}: {text})"
