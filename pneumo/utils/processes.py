"""This process: its CPU share and threads, the launcher that started it, its Accelerator (device,
autocast, process group)."""

from __future__ import annotations

import ctypes
import os
from datetime import timedelta

import torch

from pneumo.utils.errors import PneumoError


def local_world_size() -> int:
    """Processes launched on this node (torchrun / accelerate set LOCAL_WORLD_SIZE)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset, cgroups via affinity, SLURM binding)."""
    return len(os.sched_getaffinity(0))


def cpu_share() -> int:
    """This process's fair share of the node's CPUs."""
    return max(1, available_cpus() // local_world_size())


def set_threads(requested: int) -> int:
    """Set torch's intra-op threads: `requested`, or this process's CPU share when 0."""
    threads = requested or cpu_share()
    torch.set_num_threads(threads)
    return threads


# glibc's mallopt(3) parameters and environment variables (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def retain_freed_memory() -> bool:
    """Make glibc keep the memory a training step frees for the next step (whether it did).

    A CPU step allocates and frees its activations every time; by default glibc returns much of
    that memory to the kernel (mmap'd blocks, trimming the heap's top), and the next step page-faults
    it back in: time, and step-to-step jitter that a data-parallel group waits for at every step.
    Allocations up to 32 MiB (glibc's most) then come from the heap, which keeps up to 1 GiB free
    (the PyTorch CPU tuning guides' advice, as jemalloc/tcmalloc would). Left alone where the user
    set MALLOC_* or the C library has no mallopt.
    """
    if os.name != "posix" or any(name in os.environ for name in _MALLOC_ENV):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def make_accelerator(mixed_precision: str | None):
    """An Accelerator used for process setup, device and autocast only.

    Nothing is passed through `prepare()`: that would wrap each fold's model in DDP
    (all-reducing gradients across folds), shard each fold's data across processes and
    step the LR scheduler once per process. Folds own their model, data and schedule.
    """
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # Processes meet only once after data preparation; allow a long cache build elsewhere.
    timeout = timedelta(hours=6)
    handler = InitProcessGroupKwargs(timeout=timeout)
    if gpus_shared():
        # NCCL refuses two ranks on one GPU ("Duplicate GPU detected"): processes sharing GPUs
        # meet over gloo; Accelerate then places process i on GPU i mod (GPUs) by itself.
        torch.distributed.init_process_group("gloo", timeout=timeout)
    # Without a GPU, torchrun-launched processes (`accelerate launch --multi_gpu`) only form a
    # gloo process group when Accelerate is told to use the CPU.
    cpu = not torch.cuda.is_available()
    try:
        accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu, kwargs_handlers=[handler])
    except ValueError as exc:
        raise PneumoError(f"--mixed-precision {mixed_precision}: {exc}") from exc
    if accelerator.num_processes == 1 and single_process_cpu_launch():
        from pneumo.utils import console

        console.warn(
            "`accelerate launch --cpu --num_processes N` starts ONE process unless mpirun is configured "
            "(accelerate issue #2741): this process trains every fold in turn. For N CPU processes use "
            "`accelerate launch --multi_gpu --num_processes N train.py ...` (see README)."
        )
    on_cpu = accelerator.device.type == "cpu"
    if accelerator.is_main_process and on_cpu and accelerator.mixed_precision == "bf16" and not cpu_has_native_bf16():
        from pneumo.utils import console

        console.warn(
            "bf16 autocast on a CPU without AVX-512 BF16 or AMX (this one) is emulated and about 10x slower "
            "than float32 (README: Performance); pass --mixed-precision no here"
        )
    return accelerator


def gpus_shared() -> bool:
    """Whether this node launched more processes than it has GPUs (several processes per GPU)."""
    launched = "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return launched and torch.cuda.is_available() and local_world_size() > torch.cuda.device_count()


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX), as autocast needs to be fast."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def single_process_cpu_launch() -> bool:
    """True when `accelerate launch --cpu --num_processes N>1` ran its single-process launcher."""
    env = os.environ
    return env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in env and "WORLD_SIZE" not in env
