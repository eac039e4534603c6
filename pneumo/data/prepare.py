"""Turn a data directory into decoded, checked images: the built-in synthetic set when none is
given, every file decoded once through the cache, and the unusable ones named."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from pneumo.data.cache import DecodedImages, decode_dataset, default_cache_dir, describe
from pneumo.data.dataset import Layout, label_conflicts
from pneumo.data.images import Preprocess
from pneumo.utils import console
from pneumo.utils.errors import PneumoError


def resolve_data_dir(data_dir: str | None) -> tuple[Path, bool]:
    """The user's --data-dir, or the built-in synthetic set (generated once, cached)."""
    if data_dir:
        return Path(data_dir).expanduser().resolve(), False
    from pneumo.data.synthetic import default_dataset

    return default_dataset(default_cache_dir()), True


def decode_images(layout: Layout, args: Namespace, workers: int) -> DecodedImages:
    """Decode every image of the layout once (through the cache unless --no-cache), with progress."""
    files = list(layout.all_files().files)
    cache_dir = None if args.no_cache else Path(args.cache_dir or default_cache_dir()).expanduser()
    with console.progress() as bar:
        task = bar.add_task("decoding images", total=len(files))
        decoded = decode_dataset(
            layout.root,
            files,
            args.image_size,
            cache_dir=cache_dir,
            workers=workers,
            pre=Preprocess.from_dict(vars(args)),
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
