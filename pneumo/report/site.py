"""The run's report folder: PNG figures, a self-contained report.html and a report.md.

Drawn after training from the files the run wrote (and its decoded images), section by
section (`report_sections`); also written as TensorBoard images.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumo.data.cache import DecodedImages, decode_dataset, default_cache_dir
from pneumo.data.labels import scan_data
from pneumo.data.loader import PixelDataset
from pneumo.report.run_outputs import RunOutputs, load_run
from pneumo.report.sections import SECTIONS, Block, Inputs, Pixels, Plot, Section, Table
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import atomic_write_bytes, atomic_write_text

REPORT_DIR = "report"


# ------------------------------------------------------------------------------ pixels


def pixels_from(decoded: DecodedImages) -> Pixels:
    """Letterboxed uint8 images by file name, as the model sees them before augmentation."""
    index, dataset = decoded.index_of(), PixelDataset(decoded)

    def get(files: Sequence[str]) -> list[np.ndarray | None]:
        usable = [index.get(f) if index.get(f) not in decoded.errors else None for f in files]
        return [None if i is None else dataset[i][0][0, 0].numpy() for i in usable]

    return get


def run_pixels(
    config: dict, *, cache_dir: str | None = None, no_cache: bool = False, workers: int = 0
) -> Pixels | None:
    """The run's images through its decode cache, or None (with the reason logged) if its data is gone."""
    from pneumo.utils import console

    data_dir = Path(config["data_dir"])
    try:
        layout = scan_data(data_dir, config.get("labels"))
    except PneumoError as exc:
        console.warn(f"report without images: {exc}")
        return None
    cache = (
        None
        if no_cache or config.get("no_cache")
        else Path(cache_dir or config.get("cache_dir") or default_cache_dir())
    )
    decoded = decode_dataset(
        layout.root, list(layout.all_files().files), int(config["image_size"]), cache_dir=cache, workers=workers
    )
    return pixels_from(decoded)


# --------------------------------------------------------------------------- rendering


def _png_size(png: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png[16:24])


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;
padding:0 24px 48px;color:#1d2125}
h1{margin-top:24px}h2{border-bottom:2px solid #dde;padding-bottom:4px;margin-top:40px}
.synthetic{background:#fde2e1;border:2px solid #c0392b;padding:8px 12px;font-weight:600}
figure{margin:18px 0}figure img{max-width:100%;height:auto;border:1px solid #e5e5e5}
figcaption{color:#555;font-size:13px}
table{border-collapse:collapse;margin:8px 0 18px;font-size:13px}
caption{text-align:left;font-weight:600;padding:4px 0}
td,th{border:1px solid #d8d8de;padding:3px 8px;text-align:left}.num{text-align:right}
.grid{display:flex;flex-wrap:wrap;gap:0 24px}nav ol{columns:2}
"""


def _html_cell(text: str) -> str:
    # Numbers ("0.996", "269 (243)", "7 / 10") align right, words left.
    numeric = re.fullmatch(r"[-+]?\d[\d.,]*( \(\d+\))?( / \d+)?|-", text)
    return f"<td{' class=num' if numeric else ''}>{html.escape(text)}</td>"


def _html_block(block: Block, path: str) -> str:
    if isinstance(block, Plot):
        w, h = _png_size(block.png)
        data = base64.b64encode(block.png).decode("ascii")
        alt = html.escape(block.caption, quote=True)
        return (
            f'<figure><img src="data:image/png;base64,{data}" width="{w}" height="{h}" alt="{alt}" '
            f'data-file="{html.escape(path)}"><figcaption>{html.escape(block.caption)}</figcaption></figure>'
        )
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header) if any(block.header) else ""
        body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in block.rows)
        return f"<table><caption>{html.escape(block.caption)}</caption><tr>{head}</tr>{body}</table>"
    return f"<p>{html.escape(block.text)}</p>"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block, path: str) -> str:
    if isinstance(block, Plot):
        return f"![{_md_cell(block.caption)}]({path})\n\n*{block.caption}*\n"
    if isinstance(block, Table):
        lines = [f"**{_md_cell(block.caption)}**", ""]
        lines.append("| " + " | ".join(_md_cell(h) or " " for h in block.header) + " |")
        lines.append("|" + "---|" * len(block.header))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines) + "\n"
    return block.text + "\n"


def _render(run: RunOutputs, sections: list[Section], paths: dict[int, str]) -> tuple[str, str]:
    """report.html and report.md for the sections; `paths` names each Plot's PNG file."""
    name = run.run_dir.name
    stamp = time.strftime("%Y-%m-%d %H:%M")
    warning = (
        "Trained on the BUILT-IN SYNTHETIC data set: generated images, not X-rays; the numbers mean nothing clinically."
    )
    synthetic = bool(run.results.get("synthetic"))
    toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections, 1))
    parts = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>pneumo report: {html.escape(name)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head><body>',
        f"<h1>pneumo report: {html.escape(name)}</h1><p>{html.escape(str(run.run_dir))}, generated {stamp}</p>",
        f'<p class="synthetic">{warning}</p>' if synthetic else "",
        f"<nav><ol>{toc}</ol></nav>",
    ]
    md = [f"# pneumo report: {name}", "", f"{run.run_dir}, generated {stamp}", ""]
    if synthetic:
        md += [f"**{warning}**", ""]
    for i, s in enumerate(sections, 1):
        blocks = "".join(_html_block(b, paths.get(id(b), "")) for b in s.blocks)
        parts.append(f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>')
        parts.append(f'<div class="grid">{blocks}</div>' if s.side_by_side else blocks)
        parts.append("</section>")
        md += [f"## {s.title}", "", *(_md_block(b, paths.get(id(b), "")) for b in s.blocks)]
    parts.append("</body></html>\n")
    return "".join(parts), "\n".join(md)


def _write_tensorboard(folder: Path, plots: list[tuple[str, Plot]], step: int) -> None:
    """The figures as TensorBoard images (run `report/tensorboard` beside the folds' runs)."""
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        for filename, plot in plots:
            image = np.asarray(Image.open(io.BytesIO(plot.png)).convert("RGB"))
            writer.add_image(Path(filename).stem, image, step, dataformats="HWC")


def write_report(run_dir: Path, pixels: Pixels | None) -> Path:
    """Write run_dir/report/ (PNGs, report.html, report.md, TensorBoard images); returns report.html.

    Built in a temporary folder and swapped in whole: a half-written report never stands
    under the final name.
    """
    run = load_run(run_dir)
    inputs = Inputs(run, pixels)
    sections = [s for build in SECTIONS if (s := build(inputs)) is not None]
    plots = [b for s in sections for b in s.blocks if isinstance(b, Plot)]
    names = [f"{i:02d}-{p.name}.png" for i, p in enumerate(plots, 1)]
    final = run_dir / REPORT_DIR
    tmp = run_dir / f".{REPORT_DIR}-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, plot in zip(names, plots):
            atomic_write_bytes(tmp / name, plot.png)
        page, md = _render(run, sections, {id(p): n for p, n in zip(plots, names)})
        atomic_write_text(tmp / "report.html", page)
        atomic_write_text(tmp / "report.md", md)
        _write_tensorboard(tmp / "tensorboard", list(zip(names, plots)), int(run.results["epochs"]))
        old = run_dir / f".{REPORT_DIR}-old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / "report.html"
