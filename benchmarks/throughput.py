"""Training throughput: pneumo's data path against the model's ceiling and the reference recipe.

    .venv/bin/python benchmarks/throughput.py --sizes 128 224          # ~10 min on 2 CPU cores
    .venv/bin/python benchmarks/throughput.py --quick                  # smoke run, about a minute

One run, one model, batch size and image set. Every measurement runs in its own fresh
process (clean peak RSS, its own thread setting), does `--warmup` untimed steps, then times
`--steps` steps. Ceiling and pneumo share one process and one model and alternate in
blocks of 5 steps, so their ratio does not carry the few-percent drift between processes
and over time that a shared machine shows.

- ceiling   the training step alone (forward under autocast, backward, AdamW step) on
            normalised 3-channel channels-last batches already in memory;
- pneumo    pneumo's own path in steady state (cache built): PixelDataset, make_loader,
            train_batches (WeightedRandomSampler), train_one_epoch with batched device
            augmentation (prepare_batch);
- baseline  the reference recipe: torchvision ImageFolder (PIL decode of the full-size
            file), per-sample resize-and-pad, Grayscale(3), RandomRotation(10),
            RandomHorizontalFlip, ToTensor, Normalize, WeightedRandomSampler, DataLoader
            with `--baseline-workers` (2: the notebook choice on a 2-core machine; the
            workers share the cores with the training step, as they would there);
- build     a cold decode-cache build (fresh cache directory; image files may sit in the
            page cache) with pneumo's default decode workers: seconds per image, bytes on disk;
- ensemble  test-time prediction of 5 models on every image through pneumo's cached eval
            path (eval_batches, make_loader, engine.predict, ensemble.mean_probs);
- 1proc     one process (all CPUs as torch threads) training 2 folds in turn, `--steps`//2
            steps each; 2proc: two processes at once (LOCAL_WORLD_SIZE=2, so pneumo's
            set_threads gives each 1 thread), each training its own fold for `--steps`//2
            steps, timed windows aligned by a barrier after warm-up. Both do the same total work;
            the ratio compares total images per second (with --device cuda, process k uses
            GPU k mod the GPU count).

Torch threads come from pneumo.utils.processes.set_threads(0), as in train.py, and on a CPU every
job keeps freed memory for reuse (retain_freed_memory, as train.py); autocast is
torch.autocast(device, bf16) for every pipeline alike. Peak memory is this process's RSS plus
the private memory (USS) of its DataLoader or decode workers, sampled with psutil (without
psutil: getrusage's peaks of the process and its largest child); the 2-process row adds
both processes' peaks (shared library pages counted twice). "other CPUs" is how many
CPUs processes outside the benchmark kept busy during a measurement: above ~0.1 the timings
are distorted (2-thread runs suffer most). Results are printed and written to `--json`
(default benchmarks/results/throughput-<device>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from pneumo.config import parse_args as train_args  # noqa: E402
from pneumo.data.augment import prepare_batch  # noqa: E402
from pneumo.data.cache import DecodedImages, decode_dataset, norm_stats  # noqa: E402
from pneumo.data.dataset import scan  # noqa: E402
from pneumo.data.loader import PixelDataset, eval_batches, make_loader, train_batches  # noqa: E402
from pneumo.evaluation.ensemble import mean_probs  # noqa: E402
from pneumo.models.factory import create_model  # noqa: E402
from pneumo.models.inference import predict  # noqa: E402
from pneumo.training.engine import EpochTotals, Trainable, train_one_epoch  # noqa: E402
from pneumo.training.recipe import TrainSpec  # noqa: E402
from pneumo.training.trainer import build_trainable  # noqa: E402
from pneumo.utils.processes import available_cpus, retain_freed_memory, set_threads  # noqa: E402

SAMPLE_IMAGES = ROOT.parent / "shared" / "data" / "chest_xray_fullres_sample"
ENSEMBLE_MODELS = 5
TARGETS = {"pneumo/ceiling": 0.9, "pneumo/baseline": 1.6, "2proc/1proc": 0.9}
BASELINE_TARGET_SIZE = 128  # the size at which pneumo/baseline is held to its target


# ----------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """One measurement, run in its own process (`--job JSON`)."""

    kind: str
    size: int
    images: str
    cache_dir: str
    model: str
    batch_size: int
    steps: int
    warmup: int
    mixed_precision: str
    device: str
    baseline_workers: int
    folds: int = 1
    rank: int = 0
    world: int = 1
    barrier: str | None = None


def job_device(job: Job) -> torch.device:
    """The job's device; fold-parallel processes take one GPU each when there are several."""
    if job.device == "cuda":
        return torch.device("cuda", job.rank % torch.cuda.device_count())
    return torch.device(job.device)


def make_autocast(device: torch.device, mixed_precision: str) -> Callable[[], AbstractContextManager]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    return partial(torch.autocast, device.type, dtype=dtype, enabled=dtype is not None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_cached(job: Job) -> tuple[DecodedImages, np.ndarray]:
    """The images' decode cache (built on first use) and their labels, as train.py sees them."""
    train = scan(job.images).splits["train"]
    decoded = decode_dataset(
        Path(job.images), list(train.files), job.size, cache_dir=Path(job.cache_dir), workers=available_cpus()
    )
    return decoded, train.labels


def make_trainable(job: Job, device: torch.device, seed: int = 0) -> Trainable:
    """The model and optimiser exactly as trainer.py builds them with the default recipe."""
    torch.manual_seed(seed)
    cfg = TrainSpec.from_config(vars(train_args(["--model", job.model])))
    # A schedule long enough that the benchmark's steps stay near its start, like a real epoch.
    t = build_trainable(cfg, device, job.mixed_precision, np.ones(2), n_steps=1000)
    t.model.train()
    return t


def train_step(t: Trainable, x: torch.Tensor, y: torch.Tensor, autocast: Callable[[], AbstractContextManager]) -> None:
    """The model's training step alone: what every pipeline here ends in."""
    with autocast():
        logits = t.forward(x)
    loss = t.criterion(logits.float(), y)
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    t.scaler.step(t.optimizer)
    t.scaler.update()


def rate(images: int, seconds: float, steps: int) -> dict:
    return {
        "images": images,
        "seconds": round(seconds, 3),
        "img_per_s": images / seconds,
        "s_per_step": seconds / steps,
    }


def wait_at_barrier(folder: str, rank: int, world: int, timeout_s: float = 900.0) -> None:
    """Block until all `world` processes reached this point (files in a shared folder)."""
    Path(folder, f"ready-{rank}").touch()
    deadline = time.monotonic() + timeout_s
    while len(list(Path(folder).glob("ready-*"))) < world:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {folder}: only some of {world} processes arrived")
        time.sleep(0.01)


# ----------------------------------------------------------------------------- measurements


def sampled_batches(
    labels: np.ndarray, batch_size: int, generator: torch.Generator, balance: str
) -> Iterator[np.ndarray]:
    """Training batches, epoch after epoch, from pneumo's own class sampler."""
    indices = np.arange(len(labels))
    while True:
        yield from train_batches(indices, labels, int(labels.max()) + 1, batch_size, generator, balance)


class PneumoSteps:
    """pneumo's training path: sampler batches -> PixelDataset + make_loader -> train_one_epoch."""

    def __init__(self, job: Job, t: Trainable, device: torch.device, seed: int = 0) -> None:
        decoded, labels = load_cached(job)
        self.t, self.device, self.autocast = t, device, make_autocast(device, job.mixed_precision)
        self.dataset = PixelDataset(decoded)
        self.norm = norm_stats(decoded, np.arange(len(labels)))
        self.labels = torch.from_numpy(labels)
        generator = torch.Generator().manual_seed(seed)
        self.batches = sampled_batches(labels, job.batch_size, generator, train_args([]).balance)
        self.aug = torch.Generator().manual_seed(100 + seed)
        self.totals = EpochTotals()

    def run(self, n: int) -> int:
        """Train `n` steps (one loader over them, as an epoch would); the images trained on."""
        part = [next(self.batches) for _ in range(n)]
        loader = make_loader(self.dataset, part, self.device, workers=0)
        train_one_epoch(self.t, loader, self.labels, self.norm, self.aug, self.totals, self.device, self.autocast)
        return sum(len(b) for b in part)


class CeilingSteps:
    """The training step alone, on batches already normalised, 3-channel and channels-last in memory."""

    def __init__(self, job: Job, t: Trainable, device: torch.device) -> None:
        decoded, labels = load_cached(job)
        self.t, self.autocast = t, make_autocast(device, job.mixed_precision)
        norm = norm_stats(decoded, np.arange(len(labels)))
        full = [b for b in eval_batches(np.arange(len(labels)), job.batch_size) if len(b) == job.batch_size]
        self.batches = [
            (
                prepare_batch(torch.from_numpy(decoded.pixels[b]).unsqueeze(1).to(device), *norm),
                torch.from_numpy(labels[b]).to(device),
            )
            for b in (full or [np.arange(len(labels))])[:4]
        ]
        self.i = 0

    def run(self, n: int) -> int:
        images = 0
        for _ in range(n):
            x, y = self.batches[self.i % len(self.batches)]
            train_step(self.t, x, y, self.autocast)
            self.i, images = self.i + 1, images + len(y)
        return images


def measure_steady(job: Job, block: int = 5) -> dict:
    """Ceiling and pneumo path on one model in one process, in alternating blocks of steps.

    Alternating blocks (swapping which goes first) show both the same machine state, so
    their ratio is free of the few-percent drift between processes and over time.
    """
    device = job_device(job)
    t = make_trainable(job, device)
    paths = {"ceiling": CeilingSteps(job, t, device), "pneumo": PneumoSteps(job, t, device)}
    for path in paths.values():
        path.run(job.warmup)
    images, seconds = dict.fromkeys(paths, 0), dict.fromkeys(paths, 0.0)
    order, done = list(paths), 0
    while done < job.steps:
        n = min(block, job.steps - done)
        for name in order:
            sync(device)
            start = time.perf_counter()
            images[name] += paths[name].run(n)
            sync(device)
            seconds[name] += time.perf_counter() - start
        order.reverse()
        done += n
    return {name: rate(images[name], seconds[name], job.steps) for name in paths} | {"block_steps": block}


def time_fold(job: Job, fold: int) -> dict:
    """pneumo's training path for one fold: warm-up steps, (barrier), then timed steps."""
    device = job_device(job)
    t = make_trainable(job, device, seed=fold)
    steps = PneumoSteps(job, t, device, seed=fold)
    steps.run(job.warmup)
    sync(device)
    if job.barrier:
        wait_at_barrier(job.barrier, job.rank, job.world)
    wall_start, start = time.time(), time.perf_counter()
    images = steps.run(job.steps)
    sync(device)
    seconds = time.perf_counter() - start
    return {**rate(images, seconds, job.steps), "wall_start": wall_start, "wall_end": wall_start + seconds}


def measure_pneumo(job: Job) -> dict:
    """pneumo's steady-state training throughput; with `folds` > 1 the folds run in turn."""
    per_fold = [time_fold(job, fold) for fold in range(job.folds)]
    images = sum(f["images"] for f in per_fold)
    seconds = sum(f["seconds"] for f in per_fold)
    out = rate(images, seconds, job.steps * job.folds)
    if job.folds > 1:
        out["folds"] = [round(f["img_per_s"], 2) for f in per_fold]
    return {**out, "wall_start": per_fold[0]["wall_start"], "wall_end": per_fold[-1]["wall_end"]}


class ResizePad:
    """PIL resize keeping the aspect ratio, centred on a black `size` square (per sample)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.pad(img, (self.size, self.size), method=Image.Resampling.BILINEAR, color=0)


def reference_transform(size: int, mean: float, std: float):
    """The reference recipe's per-sample transforms (resize first: the cheapest order for it)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            ResizePad(size),
            T.Grayscale(num_output_channels=3),
            T.RandomRotation(10),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([mean / 255] * 3, [std / 255] * 3),
        ]
    )


def measure_baseline(job: Job) -> dict:
    """The reference recipe's data pipeline feeding the same model and step."""
    from torch.utils.data import DataLoader, WeightedRandomSampler
    from torchvision.datasets import ImageFolder

    device = job_device(job)
    autocast = make_autocast(device, job.mixed_precision)
    decoded, _ = load_cached(job)  # only for the normalisation pneumo would use
    mean, std = norm_stats(decoded, np.arange(len(decoded.files)))
    dataset = ImageFolder(str(Path(job.images) / "train"), transform=reference_transform(job.size, mean, std))
    targets = np.asarray(dataset.targets)
    weights = torch.as_tensor(1.0 / np.bincount(targets)[targets], dtype=torch.float64)
    n = (job.warmup + job.steps) * job.batch_size
    sampler = WeightedRandomSampler(weights, n, replacement=True, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(
        dataset,
        batch_size=job.batch_size,
        sampler=sampler,
        num_workers=job.baseline_workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    t = make_trainable(job, device)
    # Warm the model up on in-memory batches first: slow first steps would otherwise let the
    # workers fill their prefetch queue, and the timed steps would start on that backlog.
    CeilingSteps(job, t, device).run(job.warmup)
    start, images = time.perf_counter(), 0
    for step, (x, y) in enumerate(loader):  # then `warmup` loader steps to reach steady state
        if step == job.warmup:
            sync(device)
            start, images = time.perf_counter(), 0
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        train_step(t, x, y.to(device, non_blocking=True), autocast)
        images += len(y)
    sync(device)
    return {**rate(images, time.perf_counter() - start, job.steps), "workers": job.baseline_workers}


def measure_build(job: Job) -> dict:
    """A cold decode-cache build into the (fresh) cache directory; its size on disk."""
    train = scan(job.images).splits["train"]
    workers = available_cpus()
    start = time.perf_counter()
    decoded = decode_dataset(
        Path(job.images), list(train.files), job.size, cache_dir=Path(job.cache_dir), workers=workers
    )
    seconds = time.perf_counter() - start
    assert decoded.cache_path is not None
    files = [p for p in decoded.cache_path.iterdir() if p.is_file()]
    n, s = len(decoded.files), job.size
    return {
        "images": n,
        "seconds": round(seconds, 3),
        "ms_per_image": 1000 * seconds / n,
        "img_per_s": n / seconds,
        "decode_workers": workers,
        "cache_bytes": sum(p.stat().st_size for p in files),
        "cache_disk_bytes": sum(p.stat().st_blocks * 512 for p in files),
        "pixels_bytes": (decoded.cache_path / "pixels.u8").stat().st_size,
        "formula_uint8_bytes": n * s * s,
        "formula_float32_rgb_bytes": n * 3 * s * s * 4,
    }


def measure_ensemble(job: Job) -> dict:
    """Test-time throughput of a 5-model ensemble predicting every image (cached eval path)."""
    device = job_device(job)
    autocast = make_autocast(device, job.mixed_precision)
    decoded, _ = load_cached(job)
    dataset = PixelDataset(decoded)
    norm = norm_stats(decoded, np.arange(len(decoded.files)))
    models = []
    for k in range(ENSEMBLE_MODELS):
        torch.manual_seed(k)
        models.append((create_model(job.model, init="timm").to(device, memory_format=torch.channels_last), norm))
    n = len(decoded.files)
    # Every image once per pass; enough passes for about a third of the training steps' images.
    passes = max(1, round(job.steps * job.batch_size / 3 / n))
    indices = np.tile(np.arange(n), passes)
    batches = eval_batches(indices, job.batch_size)
    for _ in range(max(1, job.warmup // 2)):
        predict(models, make_loader(dataset, batches[:1], device, workers=0), device, autocast)
    start = time.perf_counter()
    probs = mean_probs(predict(models, make_loader(dataset, batches, device, workers=0), device, autocast))
    seconds = time.perf_counter() - start
    assert probs.shape == (len(indices), 2)
    return {**rate(len(indices), seconds, len(batches)), "models": ENSEMBLE_MODELS, "passes": passes}


MEASURES: dict[str, Callable[[Job], dict]] = {
    "build": measure_build,
    "steady": measure_steady,
    "pneumo": measure_pneumo,
    "baseline": measure_baseline,
    "ensemble": measure_ensemble,
}


# ----------------------------------------------------------------------------- memory


def _children_uss() -> int:
    """Private memory (USS) of this process's children: what forked workers add beyond the parent."""
    import psutil

    total = 0
    for child in psutil.Process().children(recursive=True):
        with suppress(psutil.Error):  # a worker may exit between listing and reading
            total += child.memory_full_info().uss
    return total


@contextmanager
def peak_memory(out: dict, interval_s: float = 0.05, children_every: int = 10) -> Iterator[None]:
    """Record in `out` the peak memory in MiB: this process's RSS plus its workers' USS.

    Sampled with psutil when it is installed (RSS every `interval_s`, the slower USS read
    every `children_every` samples); without it, getrusage's peaks of this process and of
    its largest child.
    """
    try:
        import psutil

        me = psutil.Process()
    except ImportError:
        me = None
    peak, stop = [0], threading.Event()

    def sample() -> None:
        children, tick = 0, 0
        while not stop.wait(interval_s):
            if tick % children_every == 0:
                children = _children_uss()
            peak[0] = max(peak[0], me.memory_info().rss + children)
            tick += 1

    thread = threading.Thread(target=sample, daemon=True) if me else None
    if thread:
        thread.start()
    try:
        yield
    finally:
        if thread:
            stop.set()
            thread.join()
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        tree = max(peak[0], own) if me else own + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        out["peak_rss_mib"] = round(tree / 2**20, 1)
        out["peak_rss_self_mib"] = round(own / 2**20, 1)


def run_job(job: Job) -> dict:
    """Run one measurement in this process (the `--job` entry point)."""
    threads = set_threads(0)
    if job_device(job).type == "cpu":
        retain_freed_memory()  # as train.py does on a CPU, for every pipeline alike
    result: dict = {}
    with peak_memory(result):
        result.update(MEASURES[job.kind](job))
    return {**result, "threads": threads}


# ----------------------------------------------------------------------------- orchestration


def _job_command(job: Job) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--job", json.dumps(asdict(job))]


def _job_env(world: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, "LOCAL_WORLD_SIZE": str(world), "PYTHONUNBUFFERED": "1"}


def _parse(proc_out: str, err: str, job: Job, code: int) -> dict:
    for line in reversed(proc_out.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{job.kind} at {job.size} px failed (exit {code}):\n{proc_out[-3000:]}\n{err[-3000:]}")


def busy_cpu_seconds() -> float | None:
    """CPU seconds spent by every process on the machine so far (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every reaped descendant, workers included
    return usage.ru_utime + usage.ru_stime


def spawn(jobs: list[Job]) -> list[dict]:
    """Run jobs as concurrent processes (one at a time when given one); their results in order.

    Each result also gets `other_cpus`: the average number of CPUs that processes outside the
    benchmark kept busy meanwhile (anything above ~0.1 distorts the timings).
    """
    busy, ours, start = busy_cpu_seconds(), children_cpu_seconds(), time.monotonic()
    procs = [
        subprocess.Popen(
            _job_command(j), cwd=ROOT, env=_job_env(j.world), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for j in jobs
    ]
    outs = [p.communicate() for p in procs]
    wall, busy_after = time.monotonic() - start, busy_cpu_seconds()
    other = None
    if busy is not None and busy_after is not None:
        other = round(max(0.0, (busy_after - busy) - (children_cpu_seconds() - ours)) / wall, 2)
    return [{**_parse(o, e, j, p.returncode), "other_cpus": other} for j, p, (o, e) in zip(jobs, procs, outs)]


def measure_scaling(base: Job, barrier_root: Path) -> tuple[dict, dict]:
    """Fold-parallel (2 processes, 1 fold each) vs one process training both folds in turn."""
    steps = max(1, base.steps // 2)
    one = spawn([replace(base, kind="pneumo", steps=steps, folds=2)])[0]
    barrier = tempfile.mkdtemp(prefix="barrier-", dir=barrier_root)
    pair = spawn([replace(base, kind="pneumo", steps=steps, rank=r, world=2, barrier=barrier) for r in (0, 1)])
    images = sum(r["images"] for r in pair)
    wall = max(r["wall_end"] for r in pair) - min(r["wall_start"] for r in pair)
    two = {
        **rate(images, wall, steps),
        "per_process_img_per_s": [round(r["img_per_s"], 2) for r in pair],
        "peak_rss_mib": round(sum(r["peak_rss_mib"] for r in pair), 1),
        "threads": pair[0]["threads"],
        "other_cpus": pair[0]["other_cpus"],
    }
    return one, two


def measure_size(base: Job, scratch: Path, log: Callable[[str], None]) -> dict:
    """Every measurement at one image size; the first (the cold build) fills the shared cache."""
    results: dict[str, dict] = {}
    for kind in ("build", "steady", "baseline", "ensemble"):
        log(f"{base.size} px: {kind}")
        results[kind] = spawn([replace(base, kind=kind)])[0]
    steady = results.pop("steady")
    shared = {k: v for k, v in steady.items() if k not in ("ceiling", "pneumo")}
    results["ceiling"], results["pneumo"] = ({**steady[k], **shared} for k in ("ceiling", "pneumo"))
    log(f"{base.size} px: 1 process x 2 folds in turn, then 2 processes x 1 fold")
    results["1proc"], results["2proc"] = measure_scaling(base, scratch)
    return results


def ratios(by_size: dict[int, dict[str, dict]]) -> list[dict]:
    """The ratios the targets are stated in, with the target and whether it was met."""
    rows = []
    for size, r in by_size.items():
        got = {
            "pneumo/ceiling": r["pneumo"]["img_per_s"] / r["ceiling"]["img_per_s"],
            "pneumo/baseline": r["pneumo"]["img_per_s"] / r["baseline"]["img_per_s"],
            "2proc/1proc": r["2proc"]["img_per_s"] / r["1proc"]["img_per_s"],
        }
        for name, value in got.items():
            target = TARGETS[name] if name != "pneumo/baseline" or size == BASELINE_TARGET_SIZE else None
            rows.append({"size": size, "ratio": name, "value": value, "target": target, "met": _met(value, target)})
        b = r["build"]
        for name, formula in (
            ("cache/N*S^2 (uint8)", "formula_uint8_bytes"),
            ("cache/N*3*S^2*4", "formula_float32_rgb_bytes"),
        ):
            rows.append(
                {"size": size, "ratio": name, "value": b["cache_bytes"] / b[formula], "target": None, "met": None}
            )
    return rows


def _met(value: float, target: float | None) -> bool | None:
    return None if target is None else value >= target


# ----------------------------------------------------------------------------- images


def large_synthetic_images(root: Path, n_per_class: int = 60, seed: int = 0) -> Path:
    """Synthetic X-ray-like JPEGs at full resolution (long side 1500-2000 px) in ImageFolder layout."""
    from pneumo.data.synthetic import generate

    small = root / "small"
    generate(small, counts={"train": (n_per_class, n_per_class)}, seed=seed)
    rng = np.random.default_rng(seed)
    out = root / "chest_xray_large"
    for path in sorted((small / "train").rglob("*.jpeg")):
        with Image.open(path) as img:
            long_side = int(rng.integers(1500, 2001))
            scale = long_side / max(img.size)
            big = np.asarray(img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR))
        noisy = np.clip(big + rng.normal(0, 4, big.shape), 0, 255).astype(np.uint8)  # sensor-like grain
        dest = out / path.relative_to(small)
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(dest, quality=90)
    shutil.rmtree(small)
    return out


def resolve_images(arg: str | None, scratch: Path) -> tuple[Path, str]:
    if arg:
        return Path(arg).expanduser().resolve(), "given"
    if (SAMPLE_IMAGES / "train").is_dir():
        return SAMPLE_IMAGES.resolve(), "full-resolution sample of the real data"
    return large_synthetic_images(scratch), "synthetic, 1500-2000 px"


# ----------------------------------------------------------------------------- report

ROWS = [
    ("ceiling", "training step on in-memory batches"),
    ("pneumo", "pneumo path, cache built"),
    ("baseline", "reference recipe (ImageFolder + PIL)"),
    ("ensemble", "5-model ensemble prediction"),
    ("1proc", "1 process, 2 folds in turn"),
    ("2proc", "2 processes, 1 fold each"),
]


def _fmt_other(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def print_report(by_size: dict[int, dict[str, dict]], table_ratios: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    t = Table(title="Throughput (images per second)")
    for col in ("size", "measurement", "img/s", "s/step", "threads", "peak mem MiB", "other CPUs"):
        t.add_column(col, justify="left" if col == "measurement" else "right")
    for size, r in by_size.items():
        b = r["build"]
        rows = [(f"{key}: {label}", r[key], f"{r[key]['s_per_step']:.3f}") for key, label in ROWS]
        build = f"build: cold cache, {b['images']} images, {b['decode_workers']} workers"
        rows.append((build, b, f"{b['ms_per_image']:.1f} ms/img"))
        for label, m, per_step in rows:
            t.add_row(
                str(size),
                label,
                f"{m['img_per_s']:.1f}",
                per_step,
                str(m["threads"]),
                f"{m['peak_rss_mib']:.0f}",
                _fmt_other(m["other_cpus"]),
            )
    console.print(t)
    rt = Table(title="Ratios against targets")
    for col in ("size", "ratio", "value", "target", "met"):
        rt.add_column(col, justify="right")
    for row in table_ratios:
        target = "" if row["target"] is None else f">= {row['target']}"
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        rt.add_row(str(row["size"]), row["ratio"], f"{row['value']:.3f}", target, met)
    console.print(rt)
    for size, r in by_size.items():
        b = r["build"]
        console.print(
            f"{size} px cache: {b['cache_bytes']:,} bytes ({b['cache_disk_bytes']:,} allocated); "
            f"N*S^2 = {b['formula_uint8_bytes']:,}; N*3*S^2*4 = {b['formula_float32_rgb_bytes']:,}"
        )


# ----------------------------------------------------------------------------- main


def cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else the machine type."""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", help="ImageFolder-style ROOT/train/CLASS/*.jpeg (default: the full-res sample)")
    p.add_argument("--sizes", type=int, nargs="+", help="image sizes (default 128 224; --quick: 64)")
    p.add_argument("--model", default="resnet18", help="timm model name")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of every measurement")
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement (scaling: half per fold)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="bf16", help="autocast dtype")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="training device")
    p.add_argument("--baseline-workers", type=int, default=2, help="DataLoader workers of the reference recipe")
    p.add_argument("--json", help="results file (default benchmarks/results/throughput-<device>.json)")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, 4 steps, 1 warm-up (numbers mean little)")
    p.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one measurement, print its result
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 4, 1
        args.sizes = args.sizes or [64]
    args.sizes = args.sizes or [128, 224]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.job:
        print("RESULT " + json.dumps(run_job(Job(**json.loads(args.job)))), flush=True)
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="pneumo-bench-"))
    started, load_before = time.monotonic(), os.getloadavg()
    log = lambda msg: print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)
    try:
        images, source = resolve_images(args.images, scratch)
        log(f"images: {images} ({source}); load average {load_before[0]:.2f}")
        by_size: dict[int, dict[str, dict]] = {}
        for size in args.sizes:
            base = Job(
                kind="",
                size=size,
                images=str(images),
                cache_dir=str(scratch / f"cache-{size}"),
                model=args.model,
                batch_size=args.batch_size,
                steps=args.steps,
                warmup=args.warmup,
                mixed_precision=args.mixed_precision,
                device=args.device,
                baseline_workers=args.baseline_workers,
            )
            by_size[size] = measure_size(base, scratch, log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table_ratios = ratios(by_size)
    print_report(by_size, table_ratios)
    out = Path(args.json or ROOT / "benchmarks" / "results" / f"throughput-{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "meta": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "images": str(images),
            "image_source": source,
            "n_images": by_size[args.sizes[0]]["build"]["images"],
            "device": args.device,
            "cuda_name": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "cpus": available_cpus(),
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
            "other_cpus_max": max((m["other_cpus"] or 0.0) for r in by_size.values() for m in r.values()),
            "wall_seconds": round(time.monotonic() - started, 1),
            "args": {k: v for k, v in vars(args).items() if k != "job"},
        },
        "results": {str(s): r for s, r in by_size.items()},
        "ratios": table_ratios,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
