"""Fold claims: one lock per fold in the run directory, held by the launch that trains the fold.

The lock is an flock on foldK/claim.lock, which the kernel (or the NFS lock manager) releases
when its holder dies, so a claim never outlives a killed job. A launch trains only the folds it
could claim; a fold held by an earlier instance of the same SLURM job (a requeue racing the old
job) is waited for rather than skipped. The file also names the holder, for messages.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pneumo.training.preempt import slurm_job_to_requeue
from pneumo.utils import console
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import read_json
from pneumo.utils.run_files import CLAIM, RESULT, fold_dir


def identity() -> dict[str, Any]:
    return {"host": platform.node(), "pid": os.getpid(), "job": slurm_job_to_requeue(), "since": time.time()}


def describe(holder: dict[str, Any]) -> str:
    job = f"SLURM job {holder['job']}, " if holder.get("job") else ""
    return f"{job}host {holder.get('host', '?')}, pid {holder.get('pid', '?')}"


class FoldClaims:
    """The claims this process holds in `run_dir`, released when it exits (or on `release`)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.held: dict[int, IO[str]] = {}

    def _lock(self, fold: int) -> tuple[IO[str], dict[str, Any] | None]:
        """Open the fold's lock file and try to lock it: (file, None) if locked, else (file, holder)."""
        path = fold_dir(self.run_dir, fold) / CLAIM
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open as long as the claim
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                holder = json.loads(f.read() or "{}")
            except json.JSONDecodeError:  # the holder is writing it right now
                holder = {}
            return f, holder
        except OSError as exc:
            f.close()
            raise PneumoError(
                f"{path}: cannot lock it ({exc.strerror}): fold claims need a filesystem with working file "
                "locks (NFS with its lock manager, Lustre mounted with -o flock); see README: Running at scale"
            ) from exc
        return f, None

    def claim(self, fold: int) -> dict[str, Any] | None:
        """Claim `fold`: None when this process now holds it, else who does."""
        if fold in self.held:
            return None
        f, holder = self._lock(fold)
        if holder is not None:
            f.close()
            return holder
        f.seek(0)
        f.truncate()
        f.write(json.dumps(identity()))
        f.flush()
        self.held[fold] = f
        return None

    def held_elsewhere(self, fold: int) -> dict[str, Any] | None:
        """Who else holds `fold` right now (None: nobody, or this process)."""
        if fold in self.held:
            return None
        f, holder = self._lock(fold)
        f.close()  # closing drops the lock just taken, if any
        return holder

    def release(self, fold: int) -> None:
        f = self.held.pop(fold, None)
        if f is not None:
            f.close()

    def claim_pending(self, folds: list[int], should_stop: Callable[[], bool], poll_s: float = 1.0) -> list[int] | None:
        """Claim every fold of `folds` that is unfinished and unclaimed; the ones claimed, in order.

        A fold held by an earlier instance of this same SLURM job is waited for; None if asked to
        stop while waiting.
        """
        pending = []
        for fold in folds:
            out = fold_dir(self.run_dir, fold)
            holder, announced = self.claim(fold), False
            while holder is not None and holder.get("job") and holder["job"] == slurm_job_to_requeue():
                if not announced:
                    console.log(f"fold {fold}: waiting for the previous instance of this job ({describe(holder)})")
                    announced = True
                if should_stop():
                    return None
                time.sleep(poll_s)
                holder = self.claim(fold)
            if (out / RESULT).exists():  # read after claiming: a fold finished meanwhile is not trained again
                self.release(fold)
                status = read_json(out / RESULT)["status"]
                hint = "" if status == "done" else f" (delete {out} to train it again)"
                console.log(f"fold {fold}: already {status}, skipping{hint}")
            elif holder is not None:
                console.log(f"fold {fold}: claimed by another launch ({describe(holder)}), which trains it")
            else:
                pending.append(fold)
        return pending

    def check_not_abandoned(self, folds: list[int]) -> None:
        """Raise if a fold of another launch lost its claim without a result (that launch died or stopped)."""
        for fold in folds:
            out = fold_dir(self.run_dir, fold)
            if fold not in self.held and self.held_elsewhere(fold) is None and not (out / RESULT).exists():
                raise PneumoError(
                    f"fold {fold} was left unfinished by the launch that claimed it; "
                    "run the same command again to resume it"
                )
