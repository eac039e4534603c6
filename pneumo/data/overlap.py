"""Images and patients found both in the cross-validation pool and in an evaluation split.

Exact copies are found by the SHA-1 of the file bytes (recorded by the decode pass); near
copies (re-encoded, resized) by a 256-bit DCT perceptual hash of the decoded, letterboxed
pixels, the one `imagehash.phash(img, hash_size=16)` computes: area-downscale to 64x64, take
the 16x16 lowest DCT-II frequencies, set a bit where a coefficient is above their median.
Same-patient pairs come from `Splits.patient` (a labels CSV's patient column, else the file-name
patient id within a class, `folds.patient_key`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from pneumo.data.cache import DecodedImages
from pneumo.data.splits import Splits
from pneumo.utils.errors import PneumoError

HASH_SIZE = 16  # 16 x 16 frequencies: 256 bits; 8 (64 bits) cannot tell chest X-rays apart (studies/overlap)
HASH_BITS = HASH_SIZE * HASH_SIZE
# Measured on the real set at 128 px (studies/overlap/): re-encoded and resized copies
# of its X-rays land at distance <= 16, while no two distinct images of its 5,528 (15
# million pairs) come closer than 40. 24 sits in that gap, nearer the copies.
NEAR_DISTANCE = 24
# Below this cache size the hash's finest frequencies (15 half-cycles across the image) sit
# near the pixel grid, and a resized copy's resampling moves them: measured on synthetic
# X-rays, resized copies reach distance 32 at 64 px and look unrelated at 32 px.
RELIABLE_SIZE = 128
_CHUNK = 256  # images per hashing step: bounds the float32 working set to a few MB per 100 px
_PAIRS_PER_STEP = 1 << 20  # evaluation x pool distances at once (~40 MB of temporaries)


def _projection(size: int, hash_size: int) -> np.ndarray:
    """(hash_size, size) matrix P with P @ img @ P.T = the hash_size x hash_size lowest DCT-II
    frequencies of the image area-averaged to 4 * hash_size square (both steps are linear)."""
    side = 4 * hash_size
    edges = np.arange(side + 1) * (size / side)
    src = np.arange(size, dtype=np.float64)
    # Overlap of source pixel [n, n+1) with target bin [edges[k], edges[k+1]).
    area = np.clip(np.minimum(src + 1, edges[1:, None]) - np.maximum(src, edges[:-1, None]), 0, None)
    area /= area.sum(axis=1, keepdims=True)
    k, n = np.arange(hash_size)[:, None], np.arange(side)[None, :]
    dct = np.cos(np.pi * k * (2 * n + 1) / (2 * side))
    return (dct @ area).astype(np.float32)


def phash(pixels: np.ndarray, hash_size: int = HASH_SIZE) -> np.ndarray:
    """The hash_size**2-bit perceptual hash of each (size, size) uint8 image, as (N, hash_size**2 / 8) bytes."""
    n, size = len(pixels), pixels.shape[-1]
    proj = _projection(size, hash_size)
    out = np.empty((n, hash_size * hash_size // 8), np.uint8)
    for start in range(0, n, _CHUNK):
        block = np.asarray(pixels[start : start + _CHUNK], dtype=np.float32)
        low = (proj @ block @ proj.T).reshape(len(block), -1)
        out[start : start + len(block)] = np.packbits(low > np.median(low, axis=1, keepdims=True), axis=1)
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) bit distances between two sets of hashes from `phash`."""
    wa, wb = a.view(np.uint64), b.view(np.uint64)
    return np.bitwise_count(wa[:, None, :] ^ wb[None, :, :]).sum(axis=2, dtype=np.int64)


def _hashes(decoded: DecodedImages, indices: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [phash(decoded.read(indices[s : s + _CHUNK])) for s in range(0, len(indices), _CHUNK)]
        or [np.zeros((0, HASH_BITS // 8), np.uint8)]
    )


def find_overlap(decoded: DecodedImages, splits: Splits) -> list[dict]:
    """Every (evaluation image, pool image) pair that is byte-identical, near-identical or of one patient.

    Each pair: split, file, pool_file, kind ('identical', 'near' or 'same_patient'), their hash
    distance and the evaluation file's patient key. A byte-identical pair is only 'identical'; a
    near pair of one patient only 'near'.
    """
    pool = splits.pool
    pool_files = [splits.files[i] for i in pool]
    by_sha: dict[str, list[int]] = defaultdict(list)
    by_patient: dict[str, list[int]] = defaultdict(list)
    for j, i in enumerate(pool):
        by_sha[decoded.sha1[i]].append(j)
        by_patient[splits.patient(i)].append(j)
    pool_hash = _hashes(decoded, pool)
    step = max(1, _PAIRS_PER_STEP // max(1, len(pool)))
    pairs = []
    for split, idx in splits.evals.items():
        eval_hash = _hashes(decoded, idx)
        for start in range(0, len(idx), step):
            dist = hamming(eval_hash[start : start + step], pool_hash)
            for row, i in enumerate(idx[start : start + step]):
                file = splits.files[i]
                identical = by_sha.get(decoded.sha1[i], ())
                near = np.flatnonzero(dist[row] <= NEAR_DISTANCE).tolist()
                key = splits.patient(i)
                patient = by_patient.get(key, ())
                # Later kinds win: a copy of a patient's image is a copy, not merely the same patient.
                kinds = dict.fromkeys(patient, "same_patient") | dict.fromkeys(near, "near")
                kinds |= dict.fromkeys(identical, "identical")
                for j in sorted(kinds, key=lambda j: pool_files[j]):
                    pair = {"split": split, "file": file, "pool_file": pool_files[j], "kind": kinds[j]}
                    pairs.append({**pair, "distance": int(dist[row, j]), "patient": key})
    return pairs


def _count(pairs: list[dict], split: str, kinds: tuple[str, ...]) -> dict[str, int]:
    chosen = [p for p in pairs if p["split"] == split and p["kind"] in kinds]
    return {"images": len({p["file"] for p in chosen}), "pairs": len(chosen)}


def _listing(pairs: list[dict], show: int) -> str:
    shown = [f"{p['file']} {'==' if p['kind'] == 'identical' else '~'} {p['pool_file']}" for p in pairs[:show]]
    return ", ".join(shown) + (f" and {len(pairs) - show} more" if len(pairs) > show else "")


def _drop(splits: Splits, copies: list[dict]) -> dict[str, list[str]]:
    """Remove the evaluation files of `copies` from `splits.evals` (and a split left empty); returns them."""
    dropped = {}
    for split in list(splits.evals):
        gone = {p["file"] for p in copies if p["split"] == split}
        if gone:
            kept = np.asarray([i for i in splits.evals[split] if splits.files[i] not in gone], dtype=np.int64)
            dropped[split] = sorted(gone)
            if len(kept):
                splits.evals[split] = kept
            else:
                del splits.evals[split]
    return dropped


def check_overlap(
    decoded: DecodedImages,
    splits: Splits,
    policy: str,
    log: Callable[[str], None] = lambda m: None,
    warn: Callable[[str], None] = lambda m: None,
) -> dict:
    """Find the pool/evaluation overlap and apply `policy` to copies of pool images.

    'warn' reports them; 'error' raises PneumoError naming every one; 'drop' removes them from
    `splits.evals` (a split left empty is not evaluated). Same-patient pairs are reported
    but never acted on: a file-name id found in two splits need not be one child (README).
    Returns the record written to overlap.json and results.json.
    """
    started = time.monotonic()
    pairs = find_overlap(decoded, splits)
    seconds = time.monotonic() - started
    copies = [p for p in pairs if p["kind"] != "same_patient"]
    patients = [p for p in pairs if p["kind"] == "same_patient"]
    n_eval = sum(len(idx) for idx in splits.evals.values())
    log(
        f"overlap check: {n_eval} evaluation image(s) against {len(splits.pool)} pool image(s) "
        f"(SHA-1, {HASH_BITS}-bit perceptual hash, patient id) in {seconds:.1f}s"
    )
    if decoded.size < RELIABLE_SIZE:
        log(
            f"note: at --image-size {decoded.size} the perceptual hash misses many resized copies (reliable from "
            f"{RELIABLE_SIZE} px); byte-identical and same-size re-encoded copies are still found"
        )
    record = {
        "policy": policy,
        "hash": f"{HASH_BITS}-bit DCT perceptual hash of the letterboxed pixels (imagehash phash, hash_size=16)",
        "near_distance": NEAR_DISTANCE,
        "counts": {
            split: {
                "images": len(idx),
                "identical": _count(pairs, split, ("identical",)),
                "near": _count(pairs, split, ("near",)),
                "copies": _count(pairs, split, ("identical", "near")),
                "same_patient": _count(pairs, split, ("same_patient",)),
            }
            for split, idx in splits.evals.items()
        },
        "pairs": pairs,
        "dropped": {},
    }
    if copies:
        n = len({(p["split"], p["file"]) for p in copies})
        what = (
            f"{n} evaluation image(s) are copies of cross-validation pool images (== byte-identical, "
            f"~ perceptual-hash distance <= {NEAR_DISTANCE} of {HASH_BITS} bits): {_listing(copies, 5)} "
            "(full list in the run's overlap.json)"
        )
        if policy == "error":
            lines = "\n".join(f"  {_listing([p], 1)}" for p in copies)
            raise PneumoError(
                f"{n} evaluation image(s) are copies of cross-validation pool images; remove them from "
                f"the evaluation split (or the pool), or pass --on-overlap warn|drop:\n{lines}"
            )
        if policy == "drop":
            record["dropped"] = _drop(splits, copies)
            left = {s: len(v) for s, v in splits.evals.items()}
            warn(f"{what}; dropped from evaluation (--on-overlap drop), evaluating {left}")
        else:
            warn(f"{what}; their metrics are optimistic (--on-overlap drop leaves them out, error stops)")
    if patients:
        n = len({(p["split"], p["file"]) for p in patients})
        ids = sorted({p["patient"] for p in patients})
        more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
        log(
            f"note: {n} evaluation image(s) share a file-name patient id with pool images ({len(ids)} id(s): "
            f"{', '.join(ids[:3])}{more}); recorded in overlap.json, not acted on: an id found in two splits "
            "need not be one child (README: The real dataset)"
        )
    return record
