"""Crash-safe file writing and inter-process locks on a (possibly shared) filesystem."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pneumo.utils.errors import PneumoError

# Errors a user can act on (space, quota, file size limit, permissions, a file where a directory should be).
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it to `path`.

    Readers never see a half-written file under the final name: on any error the
    temporary file is removed and `path` keeps its previous content (or stays absent).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise PneumoError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give it a normal file's mode
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in WRITE_ERRORS:
            raise PneumoError(f"cannot write {path}: {exc.strerror}; nothing was left behind") from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class BackgroundWriter:
    """Atomic writes on one background thread, in the order given, so that their fsync waits (up to
    a second for a fold's resume state on a virtual disk) overlap the training instead of stalling it.

    `write` takes data already serialised: later changes to its source cannot reach the file. A failed
    write raises its error at the next `write`, `wait` or `close`, and the writes queued behind it are
    dropped, so a file on disk never names one that did not land (a resume state its best epoch's
    weights). At most `depth` writes are in flight; a further one first waits for the oldest.
    """

    def __init__(self, depth: int = 2) -> None:
        self.depth, self.failed = depth, False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pneumo-writer")
        self._pending: list[Future] = []

    def write(self, path: str | os.PathLike[str], data: bytes | memoryview) -> None:
        """Queue an atomic write of `data` to `path`."""
        while self._pending and (self._pending[0].done() or len(self._pending) >= self.depth):
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._write, Path(path), data))

    def _write(self, path: Path, data: bytes | memoryview) -> None:
        if self.failed:
            return
        try:
            atomic_write_bytes(path, data)
        except BaseException:
            self.failed = True
            raise

    def wait(self) -> None:
        """Return once every queued write has landed; raise the first failure."""
        while self._pending:
            self._pending.pop(0).result()

    def close(self) -> None:
        """`wait`, then stop the thread."""
        try:
            self.wait()
        finally:
            self._pending.clear()
            self._pool.shutdown()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, naming the file in the error when it is missing or corrupt."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PneumoError(f"{path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise PneumoError(f"{path} is not valid JSON ({exc}); delete it or rerun with --overwrite") from exc


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], poll_s: float = 0.2) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if needed) across processes.

    Polls instead of blocking so that signal handlers (preemption) still run while waiting.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def check_writable(directory: Path, option: str) -> None:
    """Fail fast, creating nothing, when `directory` could not be created and written to."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PneumoError(f"{option} {directory}: {existing} is a file, not a directory; choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise PneumoError(
            f"{option} {directory}: cannot write in {existing} ({exc.strerror}); choose another path"
        ) from exc
