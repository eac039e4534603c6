"""Graceful stop on SIGTERM/SIGUSR1 (preemption, time limits) and SLURM requeue.

The handler only sets a flag: the training loop finishes its current step, writes the
fold's state and exits with EXIT_STOPPED, so the same command resumes it.
"""

from __future__ import annotations

import os
import signal
import subprocess

from pneumo.utils import console

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# SIGUSR1 is what `#SBATCH --signal=USR1@120` sends before the time limit: ask for a requeue.
# SIGTERM alone may be `scancel` (the user wants the job gone) or SLURM preemption with
# PreemptMode=REQUEUE (SLURM requeues by itself), so it saves and stops without requeueing.
REQUEUE_SIGNALS = (signal.SIGUSR1,)


class StopFlag:
    """Callable `should_stop()` set by the stop signals once installed."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)
            console.warn(f"received {self.signal.name}: finishing the current step and saving state")

    def install(self) -> StopFlag:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self


def slurm_job_to_requeue() -> str | None:
    """This job for `scontrol requeue`: ARRAYJOB_TASK inside a job array (that task alone), else SLURM_JOB_ID."""
    env = os.environ
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    # Not SLURM_JOB_ID inside an array: one task's job id is the array's own, which scontrol reads as every task.
    if array and task:
        return f"{array}_{task}"
    return env.get("SLURM_JOB_ID") or None


def requeue_if_asked(flag: StopFlag) -> None:
    """Under SLURM, after a SIGUSR1 stop, requeue this job or array task to resume by itself (global rank 0 only)."""
    job = slurm_job_to_requeue()
    if flag.signal not in REQUEUE_SIGNALS or not job or int(os.environ.get("RANK", "0")) != 0:
        return
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        failure = proc.stderr.strip() if proc.returncode else None
    except (OSError, subprocess.TimeoutExpired) as exc:
        failure = str(exc)
    if failure is None:
        console.log(f"requeued SLURM job {job}; it resumes from the saved state when it starts again")
    else:
        console.warn(f"`scontrol requeue {job}` failed ({failure}); resubmit the same command to resume")
