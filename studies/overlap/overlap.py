"""The near-duplicate threshold, measured: how far copies of real X-rays land, and how close distinct ones come.

    .venv/bin/python studies/overlap/overlap.py --data-dir ../shared/data/chest_xray --image-size 128   # ~1 min

Through pneumo's own path (scan, decode cache, build_splits, overlap.phash / check_overlap):

- cost      seconds to hash every decoded image, and the whole pool/evaluation check;
- copies    `--copies` images' files re-encoded (JPEG quality 20..95, PNG), resized (0.5..2 x),
            re-contrasted and gamma-shifted, then decoded like any file: their hash distance to
            the original, per transform;
- distinct  every pair of the data set's images: the closest pairs whose pixels differ
            (Pearson correlation of the letterboxed pixels < 0.98; re-encodes of one image sit
            at 0.999+), and the pairs that are copies of each other already;
- overlap   the pool/evaluation counts check_overlap finds (byte-identical, near, same patient id).

Both 64-bit (hash_size 8, the common pHash) and 256-bit (pneumo's) hashes are measured.
Results are printed and written to `--json` (default studies/overlap/results.json); this study's
README tells what they mean for pneumo's threshold.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pneumo.data.cache import decode_dataset, default_cache_dir
from pneumo.data.dataset import scan
from pneumo.data.images import decode
from pneumo.data.overlap import HASH_SIZE, NEAR_DISTANCE, check_overlap, hamming, phash
from pneumo.data.splits import SplitSpec, build_splits

DISTINCT_CORRELATION = 0.98


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def transforms(path: Path) -> dict[str, bytes]:
    """The file's image as a user's pipeline might have re-saved it."""
    img = Image.open(path).convert("L")
    w, h = img.size
    arr = np.asarray(img, np.float32)
    out = {f"jpeg q{q}": _jpeg(img, q) for q in (20, 50, 75, 95)}
    for s in (0.5, 0.75, 1.5, 2.0):
        out[f"resize x{s} q85"] = _jpeg(img.resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS), 85)
    out["resize x0.6 bicubic q40"] = _jpeg(img.resize((round(w * 0.6), round(h * 0.6)), Image.Resampling.BICUBIC), 40)
    out["contrast 1.1 +5 q85"] = _jpeg(Image.fromarray(np.clip((arr - 128) * 1.1 + 133, 0, 255).astype(np.uint8)), 85)
    out["gamma 0.8 q90"] = _jpeg(Image.fromarray((255 * (arr / 255) ** 0.8).astype(np.uint8)), 90)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out["png"] = buf.getvalue()
    return out


def all_pairs(hashes: np.ndarray, below: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) pairs with i < j and hash distance <= below, and their distances."""
    found, dists = [], []
    for start in range(0, len(hashes), 256):
        d = hamming(hashes[start : start + 256], hashes)
        i, j = np.nonzero(d <= below)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
        dists.append(d[i[keep] - start, j[keep]])
    return np.concatenate(found), np.concatenate(dists)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data/chest_xray")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--copies", type=int, default=60, help="images whose files are re-saved as copies")
    p.add_argument("--json", default=str(Path(__file__).with_name("results.json")), help="where the results go")
    args = p.parse_args()
    layout = scan(args.data_dir)
    files = list(layout.all_files().files)
    decoded = decode_dataset(layout.root, files, args.image_size, cache_dir=default_cache_dir(), workers=2)
    pixels = decoded.pixels
    result: dict = {"data_dir": str(layout.root), "images": len(files), "image_size": args.image_size}

    started = time.perf_counter()
    phash(pixels)
    result["seconds_to_hash_all"] = round(time.perf_counter() - started, 3)
    splits = build_splits(layout, decoded, SplitSpec(folds=5, seed=42))
    started = time.perf_counter()
    record = check_overlap(decoded, splits, "warn")
    result["seconds_overlap_check"] = round(time.perf_counter() - started, 3)
    result["overlap_counts"] = record["counts"]
    result["overlap_same_patient_ids"] = len({p["patient"] for p in record["pairs"] if p["kind"] == "same_patient"})

    flat = pixels.reshape(len(files), -1).astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-6)
    rng = np.random.default_rng(0)
    sample = rng.choice(len(files), min(args.copies, len(files)), replace=False)
    copies, owner, kinds = [], [], []
    for i in sample:
        for kind, data in transforms(layout.root / files[i]).items():
            copies.append(decode(data, args.image_size))
            owner.append(i)
            kinds.append(kind)
    copies_arr, owner_arr, kinds_arr = np.stack(copies), np.asarray(owner), np.asarray(kinds)
    result["hashes"] = {}
    for hash_size in (8, HASH_SIZE):
        bits = hash_size * hash_size
        hashes = phash(pixels, hash_size)
        copy_hashes, originals = phash(copies_arr, hash_size).view(np.uint64), hashes[owner_arr].view(np.uint64)
        copy_d = np.bitwise_count(copy_hashes ^ originals).sum(axis=1, dtype=np.int64)
        # The pairs closest in hash (within 3/16 of the bits), split by pixel correlation.
        below = bits * 3 // 16
        pairs, dists = all_pairs(hashes, below)
        corr = np.concatenate(
            [np.einsum("ij,ij->i", flat[c[:, 0]], flat[c[:, 1]]) for c in np.array_split(pairs, len(pairs) // 4096 + 1)]
        )
        distinct, same = dists[corr < DISTINCT_CORRELATION], dists[corr >= DISTINCT_CORRELATION]
        result["hashes"][f"{bits}-bit"] = {
            "copies_max_distance": {k: int(copy_d[kinds_arr == k].max()) for k in dict.fromkeys(kinds)},
            "copies_distance_histogram": np.bincount(copy_d).tolist(),
            "distinct_pairs_min_distance": int(distinct.min()) if len(distinct) else None,
            "distinct_pairs_at_most": {str(d): int((distinct <= d).sum()) for d in range(0, below + 1, bits // 32)},
            "copy_pairs_in_data": len(same),
            "copy_pairs_in_data_max_distance": int(same.max()) if len(same) else None,
        }
    result["near_distance"] = NEAR_DISTANCE
    print(json.dumps(result, indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
