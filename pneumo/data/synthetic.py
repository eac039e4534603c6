"""A small procedural chest-X-ray-like data set in the Kermany layout, for CPU-only runs.

Images mimic the coarse look of frontal chest radiographs (body, lungs, ribs, clavicles,
spine, heart); PNEUMONIA images add patchy opacities inside the lungs. File names follow
the real data's patient-id conventions, including two byte-identical duplicate groups in
train, so patient grouping and duplicate detection downstream get exercised too.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pneumo.utils.fsutil import file_lock

SYNTHETIC_VERSION: int = 2  # bump when the images change

SPLITS = ("train", "val", "test")
DEFAULT_COUNTS: dict[str, tuple[int, int]] = {"train": (100, 300), "val": (4, 4), "test": (40, 60)}

JPEG_QUALITY = 90
MIN_SIDE, MAX_SIDE = 180, 320
MULTI_IMAGE_PATIENT_RATE = 0.25
NORMAL2_RATE = 0.3
BACTERIA_RATE = 0.65
MAX_NORMAL_PATIENTS = 9999  # NORMAL patient ids have four digits (IM-0115)

Array = np.ndarray


@dataclass(frozen=True)
class _ImageSpec:
    """One file to write: its path relative to the root, its class and its render seed."""

    path: str
    pneumonia: bool
    seed: int


@dataclass(frozen=True)
class _Lung:
    """A lung field as a soft ellipse in anatomy coordinates, narrower at the apex."""

    cx: float
    cy: float
    rx: float
    ry: float


# ----------------------------------------------------------------------------- planning


def _new_seed(rng: np.random.Generator) -> int:
    """A fresh 63-bit render seed (collisions are practically impossible)."""
    return int(rng.integers(2**63))


def _patients(n: int, rng: np.random.Generator) -> list[list[int]]:
    """Render seeds grouped per patient, n in all; about 25% of patients have 2-3 images."""
    patients: list[list[int]] = []
    left = n
    while left > 0:
        size = int(rng.integers(2, 4)) if rng.random() < MULTI_IMAGE_PATIENT_RATE else 1
        size = min(size, left)
        patients.append([_new_seed(rng) for _ in range(size)])
        left -= size
    return patients


def _train_patients(n: int, rng: np.random.Generator, same_patient: bool) -> list[list[int]]:
    """Like `_patients` plus one duplicate pair (when n >= 2), still n images in all.

    same_patient: the copy is the same patient's next image (as person1481_bacteria_3866/3867);
    otherwise it is filed as another, single-image patient.
    """
    if n < 2:
        return _patients(n, rng)
    if same_patient:
        patients = _patients(n - 2, rng)
        seed = _new_seed(rng)
        duplicated = [seed, seed]
    else:
        patients = _patients(n - 1, rng)
        duplicated = [patients[int(rng.integers(len(patients)))][0]]
    patients.insert(int(rng.integers(len(patients) + 1)), duplicated)
    return patients


def _class_patients(
    counts: dict[str, tuple[int, int]], pneumonia: bool, rng: np.random.Generator
) -> dict[str, list[list[int]]]:
    """Per split (in SPLITS order), the render seeds of each patient of one class."""
    by_split = {}
    for split in (s for s in SPLITS if s in counts):
        n = counts[split][int(pneumonia)]
        by_split[split] = _train_patients(n, rng, pneumonia) if split == "train" else _patients(n, rng)
    return by_split


def _plan_normal(by_split: dict[str, list[list[int]]], rng: np.random.Generator) -> list[_ImageSpec]:
    """NORMAL file names: IM-0115-0001.jpeg or NORMAL2-IM-0123-0001.jpeg, one id per patient."""
    total = sum(len(p) for p in by_split.values())
    if total > MAX_NORMAL_PATIENTS:
        raise ValueError(f"at most {MAX_NORMAL_PATIENTS} NORMAL patients fit four-digit ids, got {total}")
    numbers = iter(rng.choice(np.arange(1, MAX_NORMAL_PATIENTS + 1), size=total, replace=False))
    specs = []
    for split, patients in by_split.items():
        for seeds in patients:
            prefix = "NORMAL2-" if rng.random() < NORMAL2_RATE else ""
            key = f"{prefix}IM-{int(next(numbers)):04d}"
            specs += [_ImageSpec(f"{split}/NORMAL/{key}-{i:04d}.jpeg", False, s) for i, s in enumerate(seeds, 1)]
    return specs


def _plan_pneumonia(by_split: dict[str, list[list[int]]], rng: np.random.Generator) -> list[_ImageSpec]:
    """PNEUMONIA file names: person123_bacteria_456.jpeg, 456 being a running image counter."""
    total = sum(len(p) for p in by_split.values())
    numbers = iter(rng.choice(np.arange(1, max(2000, 2 * total) + 1), size=total, replace=False))
    counter = int(rng.integers(1, 50))
    specs = []
    for split, patients in by_split.items():
        for seeds in patients:
            person = int(next(numbers))
            kind = "bacteria" if rng.random() < BACTERIA_RATE else "virus"
            for s in seeds:
                specs.append(_ImageSpec(f"{split}/PNEUMONIA/person{person}_{kind}_{counter}.jpeg", True, s))
                counter += 1
    return specs


def _plan(counts: dict[str, tuple[int, int]], seed: int) -> list[_ImageSpec]:
    """Every file of the data set; patients never repeat within or across splits."""
    rng = np.random.default_rng(seed)
    normal = _class_patients(counts, False, rng)
    pneumonia = _class_patients(counts, True, rng)
    return _plan_normal(normal, rng) + _plan_pneumonia(pneumonia, rng)


# ---------------------------------------------------------------------------- rendering


def _soft_step(x: Array, edge: float) -> Array:
    """About 1 where x < 0 and 0 where x > 0, with a tanh ramp `edge` wide."""
    return 0.5 - 0.5 * np.tanh(x / edge)


def _soft_ellipse(u: Array, v: Array, cx: Array | float, cy: float, rx: Array | float, ry: float, edge: float) -> Array:
    """About 1 inside the ellipse, 0 outside, with a soft edge `edge` (in radius units) wide."""
    return _soft_step(np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2) - 1.0, edge)


def _soft_box(u: Array, v: Array, cy: float, rx: float, ry: float, edge: float) -> Array:
    """A soft superellipse (power 4): a rectangle with well-rounded corners, like a torso."""
    q = ((u / rx) ** 2) ** 2 + (((v - cy) / ry) ** 2) ** 2
    return _soft_step(np.sqrt(np.sqrt(q)) - 1.0, edge)


def _smooth_noise(h: int, w: int, cells: int, rng: np.random.Generator) -> Array:
    """A smooth random field on an (h, w) grid, values roughly in [0, 1], ~`cells` blobs across."""
    grid = rng.random((cells, cells), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC))


def _grid(w: int, h: int, rng: np.random.Generator) -> tuple[Array, Array]:
    """Anatomy coordinates (u right, v down; body about -1..1) under a small random rotation/shift."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x = (x + 0.5) / w * 2.0 - 1.0
    y = (y + 0.5) / h * 2.0 - 1.0
    angle = np.deg2rad(rng.uniform(-5.0, 5.0))
    dx, dy = (float(d) for d in rng.uniform(-0.06, 0.06, size=2))
    sx, sy = (float(d) for d in rng.uniform(0.88, 1.05, size=2))
    c, s = float(np.cos(angle)), float(np.sin(angle))
    # Python-float scalars keep the arrays float32 (numpy scalars would promote to float64).
    u = (c * (x - dx) + s * (y - dy)) / sx
    v = (-s * (x - dx) + c * (y - dy)) / sy
    return u, v


def _lungs(rng: np.random.Generator) -> tuple[_Lung, _Lung]:
    """The image-left (patient's right, a bit larger) and image-right lung fields."""
    gap = rng.uniform(0.38, 0.44)
    cy = rng.uniform(-0.12, -0.02)
    right = _Lung(-gap + rng.uniform(-0.02, 0.02), cy, rng.uniform(0.27, 0.31), rng.uniform(0.6, 0.68))
    left = _Lung(gap + rng.uniform(-0.02, 0.02), cy + 0.03, rng.uniform(0.25, 0.29), rng.uniform(0.56, 0.64))
    return right, left


def _lung_mask(u: Array, v: Array, lung: _Lung) -> Array:
    """Soft lung field: narrow apex, wide base leaning outwards (the costophrenic angle)."""
    t = np.clip((v - lung.cy) / lung.ry, -1.0, 1.0)
    cx = lung.cx + np.sign(lung.cx) * 0.06 * t
    return _soft_ellipse(u, v, cx, lung.cy, lung.rx * (0.8 + 0.22 * t), lung.ry, 0.08)


def _ribs(u: Array, v: Array, rng: np.random.Generator) -> Array:
    """Bright bands: posterior ribs arching from the spine down laterally, and the clavicles."""
    a = np.abs(u)
    spacing = rng.uniform(0.12, 0.14)
    t = v - (-0.3 * a + rng.uniform(0.8, 1.1) * a**2) - rng.uniform(0.0, spacing)
    t = t + 0.2 * np.clip(t + 0.8, 0.0, None) ** 2  # lower ribs lie further apart
    bands = np.exp(3.0 * (np.cos((2.0 * np.pi / spacing) * t) - 1.0))  # periodic soft peaks
    cage = _soft_ellipse(u, v, 0.0, -0.1, 0.86, 0.74, 0.06) * (1.0 - _soft_step(a - 0.09, 0.03))
    clavicle = np.exp(-(((v - (-0.64 - 0.18 * a)) / 0.04) ** 2)) * _soft_step(np.abs(a - 0.38) - 0.3, 0.05)
    return bands * cage + clavicle


def _spine(u: Array, v: Array, rng: np.random.Generator) -> Array:
    """Vertical spine with faint vertebral banding."""
    width = rng.uniform(0.055, 0.07)
    vertebrae = 0.8 + 0.2 * np.cos(2.0 * np.pi * v / rng.uniform(0.1, 0.13))
    return np.exp(-(((u / width) ** 2) ** 2)) * vertebrae


def _anatomy(u: Array, v: Array, lungs: tuple[_Lung, _Lung], rng: np.random.Generator) -> tuple[Array, Array]:
    """Noise-free intensities in about [0, 1] (dark background, bright body, dark lungs) and the lung mask."""
    h, w = u.shape
    torso = _soft_box(u, v, rng.uniform(0.2, 0.28), rng.uniform(0.9, 1.0), 1.05, 0.05)
    neck = _soft_ellipse(u, v, 0.0, -1.2, rng.uniform(0.26, 0.32), 0.55, 0.08)
    trapezius = 0.8 * _soft_ellipse(u, v, 0.0, -0.95, rng.uniform(0.6, 0.7), 0.22, 0.25)
    body = np.maximum.reduce([torso, neck, trapezius])
    heart = _soft_ellipse(u, v, rng.uniform(0.08, 0.15), rng.uniform(0.3, 0.38), rng.uniform(0.27, 0.33), 0.24, 0.1)
    mediastinum = np.exp(-(((u / 0.15) ** 2) ** 2)) * _soft_step(v - 0.25, 0.1)
    centre = np.maximum(heart, mediastinum)
    lung = np.maximum(_lung_mask(u, v, lungs[0]), _lung_mask(u, v, lungs[1])) * (1.0 - 0.9 * centre)
    hila = np.exp(-(((np.abs(u) - 0.2) / 0.09) ** 2) - (v / 0.2) ** 2)
    markings = _smooth_noise(h, w, int(rng.integers(12, 18)), rng)
    abdomen = 1.0 - _soft_step(v - rng.uniform(0.45, 0.55), 0.1)
    img = 0.04 + body * (0.5 + 0.06 * np.abs(u) + 0.06 * abdomen)
    img -= lung * (0.38 - 0.07 * markings - 0.1 * hila)
    img += 0.11 * _ribs(u, v, rng) * (0.35 + 0.65 * lung) * body
    img += 0.1 * _spine(u, v, rng) * body + 0.08 * centre * body
    return img, lung


def _opacities(u: Array, v: Array, lungs: tuple[_Lung, _Lung], rng: np.random.Generator) -> Array:
    """2-4 patchy consolidations in the lung fields, clearly denser than the lung around them even
    at 64 px, of varying size and strength (to be masked by the lungs)."""
    h, w = u.shape
    out = np.zeros_like(u)
    for _ in range(int(rng.integers(2, 5))):
        lung = lungs[int(rng.integers(2))]
        px = lung.cx + rng.uniform(-0.45, 0.45) * lung.rx
        py = lung.cy + rng.uniform(-0.4, 0.7) * lung.ry  # mostly the lower lobes
        blob = np.zeros_like(u)
        for _ in range(int(rng.integers(2, 6))):
            ox, oy = (float(d) for d in rng.normal(0.0, 0.07, size=2))
            sigma = rng.uniform(0.06, 0.14)
            blob += rng.uniform(0.6, 1.0) * np.exp(-((u - px - ox) ** 2 + (v - py - oy) ** 2) / (2 * sigma**2))
        mottle = _smooth_noise(h, w, int(rng.integers(12, 22)), rng)
        out += rng.uniform(0.16, 0.34) * np.clip(blob * (0.45 + 1.0 * mottle), 0.0, 1.0)
    return out


def _benign_texture(u: Array, v: Array, rng: np.random.Generator) -> Array:
    """Faint, broad brightening (soft-tissue overlap, prominent markings); not a disease sign."""
    h, w = u.shape
    side = float(rng.choice([-1.0, 1.0]))
    shadow = _soft_ellipse(u, v, side * rng.uniform(0.35, 0.6), rng.uniform(0.3, 0.6), 0.35, 0.3, 0.25)
    return rng.uniform(0.02, 0.07) * (shadow + _smooth_noise(h, w, int(rng.integers(5, 9)), rng))


def _finish(img: Array, rng: np.random.Generator) -> Image.Image:
    """Gamma/contrast/brightness jitter and sensor noise; an 8-bit grayscale image."""
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    img = img * rng.uniform(0.8, 1.15) + rng.uniform(-0.06, 0.08)
    img = img + rng.normal(0.0, rng.uniform(0.01, 0.035), size=img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _render(seed: int, pneumonia: bool) -> Image.Image:
    """One synthetic radiograph; the same (seed, pneumonia) always gives the same pixels."""
    rng = np.random.default_rng(seed)
    w, h = (int(n) for n in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    u, v = _grid(w, h, rng)
    lungs = _lungs(rng)
    img, lung = _anatomy(u, v, lungs, rng)
    if rng.random() < 0.35:
        img += _benign_texture(u, v, rng)
    if pneumonia:
        img += _opacities(u, v, lungs, rng) * lung
    return _finish(img, rng)


def _jpeg_bytes(image: Image.Image) -> bytes:
    """The image as a JPEG at fixed quality, with no EXIF or timestamps (so bytes are reproducible)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _check_counts(counts: dict[str, tuple[int, int]]) -> None:
    """Raise ValueError unless counts maps known splits to two non-negative integers."""
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown splits {unknown}; expected some of {list(SPLITS)}")
    for split, pair in counts.items():
        if len(pair) != 2 or any(int(n) != n or n < 0 for n in pair):
            raise ValueError(f"counts[{split!r}] must be (n_normal, n_pneumonia) >= 0, got {pair!r}")


def generate(
    root: Path, *, counts: dict[str, tuple[int, int]] | None = None, seed: int = 0, negative_control: bool = False
) -> None:
    """Write root/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (counts[split] = (n_normal, n_pneumonia)).

    The same counts and seed give byte-identical files. Files already in root are left alone.
    `negative_control` draws each image's pathology at random, independent of its class
    folder (as often as PNEUMONIA is filed overall): labels carry no signal, so a sound
    pipeline must not learn them.
    """
    counts = DEFAULT_COUNTS if counts is None else counts
    _check_counts(counts)
    root = Path(root)
    for split in counts:
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
    plan = _plan(counts, seed)
    if negative_control:
        shuffled = np.random.default_rng([seed, 1]).permutation([spec.pneumonia for spec in plan])
        plan = [_ImageSpec(spec.path, bool(p), spec.seed) for spec, p in zip(plan, shuffled)]
    repeated = {s for s, n in Counter(spec.seed for spec in plan).items() if n > 1}
    copies: dict[int, bytes] = {}  # a duplicate group shares one render seed: render it once
    for spec in plan:
        data = copies.get(spec.seed) or _jpeg_bytes(_render(spec.seed, spec.pneumonia))
        if spec.seed in repeated:
            copies[spec.seed] = data
        (root / spec.path).write_bytes(data)


def default_dataset(cache_root: Path) -> Path:
    """The built-in data set under cache_root, generated on first use; returns its chest_xray dir.

    Concurrent processes wait on a lock; the set is built in a temporary directory and
    renamed into place when complete, so nobody ever sees a half-written copy.
    """
    home = Path(cache_root) / f"synthetic-v{SYNTHETIC_VERSION}"
    final = home / "chest_xray"
    if final.is_dir():
        return final
    with file_lock(home / ".lock"):
        if not final.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=home))
            try:
                generate(tmp / "chest_xray")
                (tmp / "chest_xray").rename(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final
