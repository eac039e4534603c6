"""Tests for the synthetic chest-X-ray data set generator."""

from __future__ import annotations

import hashlib
import multiprocessing
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.data.synthetic import DEFAULT_COUNTS, SYNTHETIC_VERSION, default_dataset, generate

SMALL = {"train": (8, 12), "val": (2, 3), "test": (5, 6)}
CLASSES = ("NORMAL", "PNEUMONIA")
PNEUMONIA_NAME = re.compile(r"^person\d+_(bacteria|virus)_\d+\.jpeg$")
NORMAL_NAME = re.compile(r"^(NORMAL2-)?IM-\d{4}-\d{4}\.jpeg$")


def _patient(name: str) -> str:
    """The patient key of a file name: person123 or (NORMAL2-)IM-0115."""
    if name.startswith("person"):
        return name.split("_")[0]
    return name.rsplit("-", 1)[0]


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jpeg"))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, counts=SMALL, seed=3)
    return root


def test_writes_requested_counts_per_split_and_class(small: Path) -> None:
    assert sorted(p.name for p in small.iterdir()) == ["test", "train", "val"]
    for split, expected in SMALL.items():
        assert sorted(p.name for p in (small / split).iterdir()) == list(CLASSES)
        found = tuple(len(list((small / split / cls).iterdir())) for cls in CLASSES)
        assert found == expected, split


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    counts = {"train": (3, 4), "test": (2, 2)}
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        generate(tmp_path / name, counts=counts, seed=seed)

    def contents(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in _files(root)}

    assert contents(tmp_path / "a") == contents(tmp_path / "b")
    a, c = contents(tmp_path / "a"), contents(tmp_path / "c")
    assert set(a.values()).isdisjoint(c.values())


def test_file_names_follow_the_patient_id_patterns(small: Path) -> None:
    for path in _files(small):
        pattern = PNEUMONIA_NAME if path.parent.name == "PNEUMONIA" else NORMAL_NAME
        assert pattern.match(path.name), path


def test_some_patients_have_several_numbered_images(small: Path) -> None:
    normal: dict[str, list[str]] = defaultdict(list)
    for path in _files(small):
        if path.parent.name == "NORMAL":
            normal[_patient(path.name)].append(path.name)
    several = [sorted(names) for names in normal.values() if len(names) > 1]
    assert several
    for names in several:
        key = _patient(names[0])
        assert names == [f"{key}-{i:04d}.jpeg" for i in range(1, len(names) + 1)]


def test_patients_are_disjoint_across_splits(small: Path) -> None:
    split_of: dict[str, str] = {}
    for path in _files(small):
        split = path.relative_to(small).parts[0]
        assert split_of.setdefault(_patient(path.name), split) == split, path


def test_train_holds_exactly_the_two_duplicate_groups(small: Path) -> None:
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for path in _files(small):
        by_hash[hashlib.sha256(path.read_bytes()).hexdigest()].append(path)
    groups = [paths for paths in by_hash.values() if len(paths) > 1]
    assert len(groups) == 2
    by_class = {g[0].parent.name: g for g in groups}
    assert set(by_class) == set(CLASSES)
    for group in groups:
        assert len(group) == 2
        assert {p.relative_to(small).parts[:2] for p in group} == {("train", group[0].parent.name)}
    normal_keys = {_patient(p.name) for p in by_class["NORMAL"]}
    pneumonia_keys = {_patient(p.name) for p in by_class["PNEUMONIA"]}
    assert len(normal_keys) == 2, "NORMAL copy is filed under another patient"
    assert len(pneumonia_keys) == 1, "PNEUMONIA copy is the same patient's next image"
    counters = sorted(int(p.stem.rsplit("_", 1)[1]) for p in by_class["PNEUMONIA"])
    assert counters[1] == counters[0] + 1


def test_images_are_grayscale_with_varying_sizes(small: Path) -> None:
    sizes = set()
    for path in _files(small):
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "L"
            sizes.add(image.size)
    widths, heights = {w for w, _ in sizes}, {h for _, h in sizes}
    assert all(150 <= n <= 350 for n in widths | heights)
    assert len(widths) > 3 and len(heights) > 3
    assert len({round(w / h, 1) for w, h in sizes}) > 3


def _lung_band_level(path: Path) -> float:
    """Median of the central lung band, relative to the image's 5th..95th percentile range."""
    a = np.asarray(Image.open(path), dtype=np.float32)
    h, w = a.shape
    rows = slice(int(0.3 * h), int(0.7 * h))
    band = np.concatenate([a[rows, int(0.18 * w) : int(0.4 * w)], a[rows, int(0.6 * w) : int(0.82 * w)]], axis=1)
    lo, hi = np.percentile(a, [5, 95])
    return float((np.median(band) - lo) / (hi - lo))


def test_pneumonia_lungs_are_brighter_than_normal_lungs(tmp_path: Path) -> None:
    generate(tmp_path, counts={"test": (40, 40)}, seed=11)
    levels = {cls: np.array([_lung_band_level(p) for p in _files(tmp_path / "test" / cls)]) for cls in CLASSES}
    normal, pneumonia = levels["NORMAL"], levels["PNEUMONIA"]
    assert pneumonia.mean() - normal.mean() > 0.03
    # Separable on average, but not trivially: the classes overlap.
    assert pneumonia.min() < normal.max()


def test_rejects_unknown_splits_and_negative_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown splits"):
        generate(tmp_path, counts={"training": (1, 1)})
    with pytest.raises(ValueError, match="n_normal"):
        generate(tmp_path, counts={"train": (-1, 1)})


def _build_default(cache_root: str) -> str:
    return str(default_dataset(Path(cache_root)))


def test_default_dataset_is_built_once_even_when_processes_race(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        roots = pool.map(_build_default, [str(tmp_path)] * 2)
    assert roots[0] == roots[1] == str(tmp_path / f"synthetic-v{SYNTHETIC_VERSION}" / "chest_xray")
    root = Path(roots[0])
    n_normal, n_pneumonia = DEFAULT_COUNTS["train"]
    assert len(list((root / "train" / "NORMAL").iterdir())) == n_normal
    assert len(list((root / "train" / "PNEUMONIA").iterdir())) == n_pneumonia
    leftovers = [p.name for p in root.parent.iterdir() if p.name not in ("chest_xray", ".lock")]
    assert leftovers == []
    mtime = root.stat().st_mtime_ns
    assert default_dataset(tmp_path) == root and root.stat().st_mtime_ns == mtime  # reused, not rebuilt
