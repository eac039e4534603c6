"""Turn a data directory into decoded, checked images: the built-in synthetic set when none is
given, every file decoded once through the cache, and the unusable ones named."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pneumo.data.cache import DecodedImages, decode_dataset, default_cache_dir, describe
from pneumo.data.dataset import Layout, label_conflicts
from pneumo.data.images import Preprocess
from pneumo.utils import console
from pneumo.utils.errors import PneumoError
from pneumo.utils.processes import available_cpus


@dataclass(frozen=True)
class DecodeSpec:
    """How images are decoded: the square size, the per-image preprocessing, the decode cache
    (`cache_dir`, default the user's; none with `no_cache`) and decode processes (-1: every CPU)."""

    image_size: int
    pre: Preprocess = field(default_factory=Preprocess)
    cache_dir: str | None = None
    no_cache: bool = False
    workers: int = -1

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> DecodeSpec:
        """From a run's config (`--image-size`, `--equalize`, `--cache-dir`, ...)."""
        keys = ("cache_dir", "no_cache", "workers")
        return cls(
            int(values["image_size"]), Preprocess.from_dict(values), **{k: values[k] for k in keys if k in values}
        )

    def to_config(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            **asdict(self.pre),
            "cache_dir": self.cache_dir,
            "no_cache": self.no_cache,
            "workers": self.workers,
        }

    def cache_path(self) -> Path | None:
        """Where the decode cache lives, or None without one."""
        return None if self.no_cache else Path(self.cache_dir or default_cache_dir()).expanduser()


def resolve_data_dir(data_dir: str | None) -> tuple[Path, bool]:
    """The user's --data-dir, or the built-in synthetic set (generated once, cached)."""
    if data_dir:
        return Path(data_dir).expanduser().resolve(), False
    from pneumo.data.synthetic import default_dataset

    return default_dataset(default_cache_dir()), True


def decode_images(layout: Layout, spec: DecodeSpec) -> DecodedImages:
    """Decode every image of the layout once (through the cache unless `spec.no_cache`), with progress."""
    files = list(layout.all_files().files)
    with console.progress() as bar:
        task = bar.add_task("decoding images", total=len(files))
        decoded = decode_dataset(
            layout.root,
            files,
            spec.image_size,
            cache_dir=spec.cache_path(),
            workers=spec.workers if spec.workers >= 0 else available_cpus(),
            pre=spec.pre,
            progress=lambda n: bar.advance(task, n),
        )
    console.log(describe(decoded))
    return decoded


def unusable_images(layout: Layout, decoded: DecodedImages, policy: str) -> dict[str, str]:
    """Every file that cannot be used and why; with policy 'error' that stops the run here.

    Byte-identical copies filed under different classes (an ambiguous label) are unusable
    too: they are marked in `decoded.errors`, so the folds and evaluation leave them out.
    """
    index = decoded.index_of()
    readable = {f: decoded.sha1[i] for f, i in index.items() if i not in decoded.errors}
    for f, why in label_conflicts(layout, readable).items():
        decoded.errors[index[f]] = why
    bad = {**layout.not_images, **decoded.bad_files()}
    if bad and policy == "error":
        lines = "\n".join(f"  {layout.root / f}: {why}" for f, why in sorted(bad.items()))
        raise PneumoError(
            f"{len(bad)} unusable file(s) in {layout.root} (fix or remove them, or pass --on-bad-image skip):\n{lines}"
        )
    for f, why in sorted(bad.items()):
        console.warn(f"skipping {f}: {why}")
    return bad
