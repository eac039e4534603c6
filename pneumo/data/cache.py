"""Decode every image once: a memory-mapped uint8 pixel cache plus per-file hashes and stats.

The cache lives in `CACHE_DIR/pneumo-<key>/` where the key hashes the file list (relative
paths, sizes, mtimes), the image size and the decoder version. It is built by one process
into a temporary folder and renamed into place when complete; other processes wait on a
lock and then map the finished file read-only, so a cache is built once per node and
shared by every run, fold and process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pneumo.data import images
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import atomic_write_json, file_lock, read_json

_CHUNK = 32


def default_cache_dir() -> Path:
    """$PNEUMO_CACHE, else $XDG_CACHE_HOME/pneumo, else ~/.cache/pneumo."""
    if os.environ.get("PNEUMO_CACHE"):
        return Path(os.environ["PNEUMO_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "pneumo"


@dataclass
class DecodedImages:
    """Every file of a data root decoded once.

    `pixels` is an (N, size, size) uint8 array (memory-mapped) or None when decoding is
    left to the loader (`--no-cache`); `errors` maps an index to why that file is unusable.
    """

    root: Path
    files: list[str]
    size: int
    preprocess: images.Preprocess
    sha1: list[str]
    mean: np.ndarray
    sq_mean: np.ndarray
    errors: dict[int, str]
    pixels: np.ndarray | None
    cache_path: Path | None = None

    def index_of(self) -> dict[str, int]:
        return {f: i for i, f in enumerate(self.files)}

    def bad_files(self) -> dict[str, str]:
        return {self.files[i]: why for i, why in sorted(self.errors.items())}

    def read(self, indices: np.ndarray) -> np.ndarray:
        """The (len(indices), size, size) uint8 pixels of `indices`: from the cache, else decoded now."""
        if self.pixels is not None:
            return self.pixels[indices]
        out = np.zeros((len(indices), self.size, self.size), np.uint8)
        for row, i in enumerate(indices):
            out[row] = self._decode(i)
        return out

    def _decode(self, i: int) -> np.ndarray:
        arr, _, err = decode_file(self.root / self.files[i], self.size, self.preprocess)
        if arr is None:
            raise PneumoError(f"{self.root / self.files[i]}: became unreadable during the run ({err})")
        return arr


def cache_key(root: Path, files: Sequence[str], size: int, pre: images.Preprocess = images.Preprocess()) -> str:
    """Hash of what determines the cached pixels: the file list with sizes, mtimes and modes, size, equalisation.

    The mode is there so that fixing a file's permissions (which leaves its mtime alone)
    retries a file cached as unreadable.
    """
    h = hashlib.sha256(f"pneumo-cache v{images.DECODER_VERSION} size={size}{pre.key()}\n".encode())
    for rel in files:
        try:
            st = os.stat(root / rel)
            h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_mode:o}\n".encode())
        except OSError as exc:
            h.update(f"{rel}\terror {exc.errno}\n".encode())
    return h.hexdigest()[:20]


def decode_file(
    path: Path, size: int, pre: images.Preprocess = images.Preprocess()
) -> tuple[np.ndarray | None, str, str | None]:
    """Read and decode one file: (pixels or None, sha1 of its bytes, error reason or None)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, "", images.describe_error(exc)
    sha1 = hashlib.sha1(data).hexdigest()
    if not data:
        return None, sha1, "empty file (0 bytes)"
    try:
        return images.decode(data, size, pre), sha1, None
    except Exception as exc:  # any decoder failure marks the file bad, with its reason
        return None, sha1, images.describe_error(exc)


def _decode_chunk(
    root: str, files: list[str], start: int, size: int, pre: images.Preprocess, pixels_path: str | None, total: int
) -> list:
    """Worker: decode files[start:start+len(files)], writing pixels straight into the memmap."""
    out = np.memmap(pixels_path, np.uint8, "r+", shape=(total, size, size)) if pixels_path else None
    rows = []
    for offset, rel in enumerate(files):
        arr, sha1, err = decode_file(Path(root) / rel, size, pre)
        if arr is None:
            rows.append((sha1, 0.0, 0.0, err))
            continue
        if out is not None:
            out[start + offset] = arr
        flat = arr.astype(np.float64)
        rows.append((sha1, float(flat.mean()), float((flat * flat).mean()), None))
    if out is not None:
        out.flush()
    return rows


def _decode_all(
    root: Path,
    files: list[str],
    size: int,
    pre: images.Preprocess,
    pixels_path: Path | None,
    workers: int,
    progress: Callable[[int], None],
) -> list:
    chunks = [(s, files[s : s + _CHUNK]) for s in range(0, len(files), _CHUNK)]
    path = str(pixels_path) if pixels_path else None
    args = [(str(root), part, s, size, pre, path, len(files)) for s, part in chunks]
    rows: list = []
    if workers <= 1 or len(chunks) <= 1:
        for a in args:
            rows.extend(_decode_chunk(*a))
            progress(len(a[1]))
        return rows
    # fork: workers need only numpy and Pillow, and must not re-import the training script.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
        for a, part in zip(args, pool.map(_decode_chunk, *zip(*args))):
            rows.extend(part)
            progress(len(a[1]))
    return rows


def _from_rows(
    root: Path, files: list[str], size: int, pre: images.Preprocess, rows: list, pixels: np.ndarray | None
) -> DecodedImages:
    return DecodedImages(
        root=root,
        files=list(files),
        size=size,
        preprocess=pre,
        sha1=[r[0] for r in rows],
        mean=np.asarray([r[1] for r in rows], dtype=np.float64),
        sq_mean=np.asarray([r[2] for r in rows], dtype=np.float64),
        errors={i: r[3] for i, r in enumerate(rows) if r[3] is not None},
        pixels=pixels,
    )


def _load(path: Path, root: Path) -> DecodedImages:
    index = read_json(path / "index.json")
    n, size = len(index["files"]), index["size"]
    pixels = (
        np.memmap(path / "pixels.u8", np.uint8, "r", shape=(n, size, size))
        if n
        else np.zeros((0, size, size), np.uint8)
    )
    rows = list(zip(index["sha1"], index["mean"], index["sq_mean"], index["errors"]))
    decoded = _from_rows(root, index["files"], size, images.Preprocess.from_dict(index), rows, pixels)
    decoded.cache_path = path
    return decoded


def _build(
    final: Path,
    root: Path,
    files: list[str],
    size: int,
    pre: images.Preprocess,
    workers: int,
    progress: Callable[[int], None],
) -> None:
    # Called under the key's lock: any temporary build of this key is left over from a killed one.
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        pixels_path = tmp / "pixels.u8"
        with open(pixels_path, "wb") as f:
            f.truncate(len(files) * size * size)
        rows = _decode_all(root, files, size, pre, pixels_path, workers, progress)
        with open(pixels_path, "rb+") as f:
            os.fsync(f.fileno())
        index = {
            "version": images.DECODER_VERSION,
            "size": size,
            **asdict(pre),
            "files": files,
            "sha1": [r[0] for r in rows],
            "mean": [r[1] for r in rows],
            "sq_mean": [r[2] for r in rows],
            "errors": [r[3] for r in rows],
        }
        atomic_write_json(tmp / "index.json", index)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def decode_dataset(
    root: Path,
    files: Sequence[str],
    size: int,
    *,
    cache_dir: Path | None,
    workers: int,
    pre: images.Preprocess = images.Preprocess(),
    progress: Callable[[int], None] = lambda n: None,
) -> DecodedImages:
    """Decode `files` (relative to `root`) once, through the cache unless `cache_dir` is None.

    Without a cache the pass still reads every file (for hashes, statistics and the list of
    unreadable files) but keeps no pixels; the loader then decodes on demand.
    """
    files = list(files)
    if cache_dir is None:
        rows = _decode_all(root, files, size, pre, None, workers, progress)
        return _from_rows(root, files, size, pre, rows, None)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PneumoError(
            f"--cache-dir {cache_dir}: cannot create it ({exc.strerror}); pass another or --no-cache"
        ) from exc
    final = cache_dir / f"pneumo-{cache_key(root, files, size, pre)}"
    with file_lock(cache_dir / f"{final.name}.lock"):
        if not (final / "index.json").exists():
            _build(final, root, files, size, pre, workers, progress)
        else:
            progress(len(files))
    return _load(final, root)


def describe(decoded: DecodedImages) -> str:
    """One line about where the pixels come from and what they cost in memory."""
    if decoded.pixels is None:
        return f"{len(decoded.files)} images decoded on demand (--no-cache)"
    mb = decoded.pixels.nbytes / 2**20
    return f"{len(decoded.files)} images cached at {decoded.cache_path} ({mb:.1f} MiB uint8)"


def norm_stats(decoded: DecodedImages, indices: np.ndarray) -> tuple[float, float]:
    """Pixel mean and standard deviation (0..255 units) over the letterboxed images `indices`."""
    mean = float(decoded.mean[indices].mean())
    var = float(decoded.sq_mean[indices].mean()) - mean * mean
    return mean, max(var, 1e-6) ** 0.5
