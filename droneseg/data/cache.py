"""Decode each photo once, at the working size, into arrays that later reads memory-map.

Contract
--------
* One entry per sample: ``<id>-<key>.img.npy`` (H, W, 3) uint8 and ``<id>-<key>.mask.npy`` (H, W)
  uint8 source indices, at the working size (long side ``long_side``, aspect kept, never up-scaled).
* Images are resized with area (BOX) or bilinear filtering, masks with nearest only: bilinear would
  invent colours and indices that belong to no class.
* ``key`` hashes the source files' identity (absolute path, byte size, mtime) and every setting that
  changes the arrays, so a changed photo, mask or working size rebuilds, and nothing else does.
* Files are written atomically; several processes (DDP ranks) building the same entry is harmless.

>>> s = Sample("a", Path("/x.jpg"), None, "index")
>>> cache_key(s, ClassTable.builtin(), 512, "area") != cache_key(s, ClassTable.builtin(), 768, "area")
True
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from droneseg.classes import ClassTable, DataError
from droneseg.data.layout import Sample, image_size
from droneseg.files import atomic_save
from droneseg.images import ImageFilter, mask_size_problem, photo_view, read_mask, read_working_image

CACHE_VERSION = 2  # 2: photos as displayed (EXIF orientation applied), palette masks by colour


def default_cache_dir() -> Path:
    """``$DRONESEG_CACHE``, else ``~/.cache/droneseg`` (dataset folders may be read-only)."""
    env = os.environ.get("DRONESEG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "droneseg"


@dataclass(frozen=True)
class CacheEntry:
    id: str
    image: Path
    mask: Path | None

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Memory-mapped (H, W, 3) image and (H, W) mask (read-only views; copy before writing)."""
        img = np.load(self.image, mmap_mode="r")
        return img, (np.load(self.mask, mmap_mode="r") if self.mask else None)


def _identity(path: Path | None) -> list:
    if path is None:
        return [None]
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cache_key(sample: Sample, table: ClassTable, long_side: int | None, image_filter: ImageFilter) -> str:
    try:
        ident = _identity(sample.image) + _identity(sample.mask)
    except FileNotFoundError:
        ident = [str(sample.image), str(sample.mask)]
    parts = [CACHE_VERSION, ident, sample.mask_kind, long_side, image_filter]
    if sample.mask_kind == "rgb":
        parts.append(table.colors.tolist())
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]


def _entry_paths(sample: Sample, key: str, cache_dir: Path) -> CacheEntry:
    stem = f"{sample.id}-{key}"
    mask = cache_dir / f"{stem}.mask.npy" if sample.mask else None
    return CacheEntry(sample.id, cache_dir / f"{stem}.img.npy", mask)


def _build_one(args: tuple[Sample, ClassTable, int | None, ImageFilter, CacheEntry]) -> None:
    sample, table, long_side, image_filter, entry = args
    image = read_working_image(sample.image, long_side, image_filter)
    size = (image.shape[1], image.shape[0])
    mask = None
    if sample.mask is not None:
        problem = mask_size_problem(sample.mask, image_size(sample.mask), sample.image, photo_view(sample.image))
        if problem:
            raise DataError(f"{problem}; run droneseg check-data")
        mask = read_mask(sample.mask, sample.mask_kind, table, size=size)
    # mask first: an entry counts as built when its image file exists
    if mask is not None:
        atomic_save(entry.mask, lambda fh: np.save(fh, mask))
    atomic_save(entry.image, lambda fh: np.save(fh, image))


def build_cache(
    samples: list[Sample],
    table: ClassTable,
    long_side: int | None,
    cache_dir: Path | None = None,
    image_filter: ImageFilter = "area",
    workers: int = 2,
    progress: bool = True,
) -> list[CacheEntry]:
    """Entries for ``samples`` (in order), decoding only those not cached yet, in parallel."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    entries = [_entry_paths(s, cache_key(s, table, long_side, image_filter), cache_dir) for s in samples]
    todo = [
        (s, table, long_side, image_filter, e)
        for s, e in zip(samples, entries)
        if not (e.image.exists() and (e.mask is None or e.mask.exists()))
    ]
    if todo:
        bar = tqdm(total=len(todo), desc=f"cache {long_side or 'native'}px", unit="img", disable=not progress)
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_build_one, todo, chunksize=1):
                    bar.update()
        else:
            for job in todo:
                _build_one(job)
                bar.update()
        bar.close()
    return entries
