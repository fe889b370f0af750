"""Cost per photo of building the decode-once cache and of reading from it.

Measures, on the real dev set (1500x1000, when present) and on synthetic 6000x4000 JPEGs:
* build: decode + resize + write, per photo, one process, with reduced-size JPEG decoding (draft)
  and, for comparison, with full decoding followed by the same resize;
* read: memory-mapped load of an entry plus a copy of one 384x384 crop (what a training step does),
  and of the whole working-size image.

    python benchmarks/cache.py [--out benchmarks/results/cache.json] [--long-side 768] [--n-large 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from droneseg.classes import ClassTable
from droneseg.data import cache as cache_mod
from droneseg.data.cache import build_cache
from droneseg.data.layout import find_layout
from droneseg.data.synthetic import write_synthetic

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "semantic-drone-dev"


def _time_build(samples, table, long_side: int, draft: bool) -> list[float]:
    """Seconds per photo, single process, into a fresh cache folder."""
    original = JpegImageFile.draft
    if not draft:
        JpegImageFile.draft = lambda self, mode, size: None  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = []
            for s in samples:
                t0 = time.perf_counter()
                build_cache([s], table, long_side, Path(tmp), workers=1, progress=False)
                out.append(time.perf_counter() - t0)
            return out
    finally:
        JpegImageFile.draft = original


def _time_read(samples, table, long_side: int, crop: int, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        entries = build_cache(samples, table, long_side, Path(tmp), workers=2, progress=False)
        rng = np.random.default_rng(0)
        crop_s, full_s = [], []
        for _ in range(repeats):
            for e in entries:
                t0 = time.perf_counter()
                img, mask = e.load()
                y = int(rng.integers(0, max(img.shape[0] - crop, 0) + 1))
                x = int(rng.integers(0, max(img.shape[1] - crop, 0) + 1))
                np.array(img[y : y + crop, x : x + crop]), np.array(mask[y : y + crop, x : x + crop])
                crop_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                img, mask = e.load()
                np.array(img), np.array(mask)
                full_s.append(time.perf_counter() - t0)
        return {"crop_read_ms": 1e3 * statistics.median(crop_s), "full_read_ms": 1e3 * statistics.median(full_s)}


def _summary(seconds: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(seconds), "mean_s": statistics.fmean(seconds), "photos": len(seconds)}


def bench(samples, table, long_side: int, crop: int, label: str) -> dict:
    w, h = Image.open(samples[0].image).size
    print(f"[{label}] {len(samples)} photos of {w}x{h} -> long side {long_side}", flush=True)
    result = {
        "photo_size": [w, h],
        "long_side": long_side,
        "build_draft": _summary(_time_build(samples, table, long_side, draft=True)),
        "build_full_decode": _summary(_time_build(samples, table, long_side, draft=False)),
        "read": _time_read(samples, table, long_side, crop, repeats=5),
    }
    print(json.dumps(result, indent=1), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cache.json")
    ap.add_argument("--long-side", type=int, default=768)
    ap.add_argument("--crop", type=int, default=384)
    ap.add_argument("--n-dev", type=int, default=30, help="dev photos to time")
    ap.add_argument("--n-large", type=int, default=3, help="synthetic 6000x4000 photos to time")
    args = ap.parse_args()
    report = {"machine": platform.processor() or platform.machine(), "cache_version": cache_mod.CACHE_VERSION, "sets": {}}
    if (DEV / "original_images").is_dir():
        layout = find_layout(DEV)
        report["sets"]["dev_1500x1000"] = bench(layout.samples[: args.n_dev], layout.table, args.long_side, args.crop, "dev")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = write_synthetic(Path(tmp) / "large", n=args.n_large, size=(6000, 4000), seed=1)
        print(f"synthesised {args.n_large} photos of 6000x4000 in {time.perf_counter() - t0:.1f} s", flush=True)
        layout = find_layout(root)
        report["sets"]["synthetic_6000x4000"] = bench(layout.samples, ClassTable.builtin(), args.long_side, args.crop, "synthetic")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
