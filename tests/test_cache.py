"""The decode cache: keyed on what determines the pixels, built once, equal to a direct decode."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from pneumo.data import cache
from pneumo.data.cache import cache_key, decode_dataset
from pneumo.data.images import decode
from pneumo.data.loader import PixelDataset
from pneumo.data.synthetic import generate

SIZE = 48


@pytest.fixture
def data(tmp_path) -> tuple[Path, list[str]]:
    """Eight small synthetic X-rays of varied shapes (a fresh copy per test: tests change them)."""
    root = tmp_path / "chest_xray"
    generate(root, counts={"train": (4, 4)}, seed=7)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpeg"))
    return root, files


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """The cache directories built from now on (cache._build wrapped to record each call)."""
    built: list[str] = []
    real = cache._build

    def counting(final, *args, **kwargs):
        built.append(final.name)
        return real(final, *args, **kwargs)

    monkeypatch.setattr(cache, "_build", counting)
    return built


def _decode(root: Path, files: list[str], cache_dir: Path | None, size: int = SIZE):
    return decode_dataset(root, files, size, cache_dir=cache_dir, workers=1)


def _digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels)).hexdigest()


def test_same_files_reuse_the_cache_without_rebuilding(data, tmp_path, builds):
    root, files = data
    first = _decode(root, files, tmp_path / "cache")
    index_mtime = (first.cache_path / "index.json").stat().st_mtime_ns
    second = _decode(root, files, tmp_path / "cache")
    assert len(builds) == 1
    assert second.cache_path == first.cache_path
    assert (second.cache_path / "index.json").stat().st_mtime_ns == index_mtime
    assert np.array_equal(second.pixels, first.pixels)


def _touch(root: Path, files: list[str]) -> list[str]:
    st = (root / files[0]).stat()
    os.utime(root / files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    return files


def _rewrite_content(root: Path, files: list[str]) -> list[str]:
    (root / files[0]).write_bytes((root / files[1]).read_bytes())  # other pixels, maybe even the same length
    return _touch(root, files)


def _add_file(root: Path, files: list[str]) -> list[str]:
    extra = "train/NORMAL/IM-9999-0001.jpeg"
    (root / extra).write_bytes((root / files[0]).read_bytes())
    return sorted([*files, extra])


def _remove_file(root: Path, files: list[str]) -> list[str]:
    (root / files[-1]).unlink()
    return files[:-1]


@pytest.mark.parametrize("change", [_rewrite_content, _touch, _add_file, _remove_file])
def test_changed_files_get_a_new_key_and_a_rebuild(data, tmp_path, builds, change):
    root, files = data
    before = _decode(root, files, tmp_path / "cache")
    old_key = cache_key(root, files, SIZE)
    new_files = change(root, files)
    assert cache_key(root, new_files, SIZE) != old_key
    after = _decode(root, new_files, tmp_path / "cache")
    assert len(builds) == 2
    assert after.cache_path != before.cache_path
    for i, rel in enumerate(new_files):
        assert np.array_equal(after.pixels[i], decode((root / rel).read_bytes(), SIZE))


def test_another_image_size_is_another_cache(data, tmp_path, builds):
    root, files = data
    small = _decode(root, files, tmp_path / "cache", size=32)
    large = _decode(root, files, tmp_path / "cache", size=64)
    assert cache_key(root, files, 32) != cache_key(root, files, 64)
    assert len(builds) == 2 and small.cache_path != large.cache_path
    assert small.pixels.shape == (len(files), 32, 32) and large.pixels.shape == (len(files), 64, 64)


def test_cached_pixels_equal_a_direct_decode_of_each_file(data, tmp_path):
    root, files = data
    decoded = _decode(root, files, tmp_path / "cache")
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (len(files), SIZE, SIZE)
    for i, rel in enumerate(files):
        assert np.array_equal(decoded.pixels[i], decode((root / rel).read_bytes(), SIZE))


def test_cache_on_disk_is_one_byte_per_pixel(data, tmp_path):
    root, files = data
    decoded = _decode(root, files, tmp_path / "cache")
    n = len(files)
    assert (decoded.cache_path / "pixels.u8").stat().st_size == n * SIZE * SIZE
    total = sum(p.stat().st_size for p in decoded.cache_path.iterdir())
    # The index (names, hashes, statistics) adds well under a kilobyte per file.
    assert n * SIZE * SIZE < total < n * SIZE * SIZE + 1024 * (n + 1)
    assert total < n * 3 * SIZE * SIZE * 4 / 10  # an order of magnitude below float32 RGB tensors


def test_without_a_cache_the_loader_yields_identical_pixels(data, tmp_path):
    root, files = data
    cached = _decode(root, files, tmp_path / "cache")
    direct = _decode(root, files, None)
    assert direct.pixels is None and direct.cache_path is None
    assert direct.sha1 == cached.sha1 and direct.errors == cached.errors == {}
    assert np.allclose(direct.mean, cached.mean) and np.allclose(direct.sq_mean, cached.sq_mean)
    indices = list(range(len(files)))
    from_cache, idx_a = PixelDataset(cached).__getitems__(indices)
    on_demand, idx_b = PixelDataset(direct).__getitems__(indices)
    assert from_cache.shape == (len(files), 1, SIZE, SIZE)
    assert np.array_equal(from_cache.numpy(), on_demand.numpy()) and np.array_equal(idx_a, idx_b)


# Run in a fresh interpreter by each of two processes: wait for the start signal, then decode.
# The build is slowed down after the pixels are written and before they are published, so the
# second process certainly arrives while the first is still building.
_BUILDER = """
import hashlib, json, os, sys, time
from pathlib import Path
import numpy as np
from pneumo.data import cache

root, cache_dir, files, size, log, go = sys.argv[1:7]
real = cache._decode_all

def slow_decode_all(*args, **kwargs):
    rows = real(*args, **kwargs)
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {time.time()}\\n")
    time.sleep(1.5)
    return rows

cache._decode_all = slow_decode_all
while not os.path.exists(go):
    time.sleep(0.005)
decoded = cache.decode_dataset(Path(root), json.loads(files), int(size), cache_dir=Path(cache_dir), workers=1)
digest = hashlib.sha256(np.ascontiguousarray(decoded.pixels)).hexdigest()
print(json.dumps({"path": str(decoded.cache_path), "digest": digest, "done": time.time()}))
"""


def test_two_processes_building_at_once_build_once_and_read_the_finished_cache(data, tmp_path):
    root, files = data
    cache_dir, log, go = tmp_path / "cache", tmp_path / "builds.log", tmp_path / "go"
    script = tmp_path / "builder.py"
    script.write_text(_BUILDER)
    args = [sys.executable, str(script), str(root), str(cache_dir), json.dumps(files), str(SIZE), str(log), str(go)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    time.sleep(0.5)  # both interpreters up and polling
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]

    built = log.read_text().splitlines()
    assert len(built) == 1, "exactly one process decodes"
    build_done = float(built[0].split()[1])
    assert all(r["done"] > build_done for r in results), "the other one waited for the build to finish"
    assert results[0]["path"] == results[1]["path"]
    expected = np.stack([decode((root / rel).read_bytes(), SIZE) for rel in files])
    assert results[0]["digest"] == results[1]["digest"] == _digest(expected)
    entries = sorted(p.name for p in cache_dir.iterdir())
    assert [e for e in entries if not e.endswith(".lock")] == [Path(results[0]["path"]).name]


def test_a_killed_build_leaves_no_debris_after_the_next_build(data, tmp_path):
    root, files = data
    cache_dir = tmp_path / "cache"
    name = f"pneumo-{cache_key(root, files, SIZE)}"
    stale = cache_dir / f".{name}.tmp-999999"  # what a build killed by SIGKILL leaves behind
    stale.mkdir(parents=True)
    (stale / "pixels.u8").write_bytes(b"\0" * 100)
    decoded = _decode(root, files, cache_dir)
    assert decoded.cache_path == cache_dir / name and not stale.exists()
    assert not list(cache_dir.glob(".*.tmp-*"))
