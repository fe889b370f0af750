"""Decode each photo once, at the working size, into arrays that later reads memory-map.

Contract
--------
* One entry per sample: ``<id>-<key>.img.npy`` (H, W, 3) uint8 and ``<id>-<key>.mask.npy`` (H, W)
  uint8 source indices, at the working size (long side ``long_side``, aspect kept, never up-scaled); a survey's
  block at its working GSD (:func:`droneseg.geo.survey.render_block`; ``long_side`` does not apply).
* Images are resized with area (BOX) or bilinear filtering, masks with nearest only: bilinear would
  invent colours and indices that belong to no class.
* ``key`` hashes the source files' identity (absolute path, byte size, mtime) and every setting that
  changes the arrays, so a changed photo, mask or working size rebuilds, and nothing else does.
* Files are written atomically; several processes (DDP ranks) building the same entry is harmless.
* A cache is derived data, never trusted over its source: an entry whose files are cut, empty, of another dtype
  or shape (a killed run, a full disk, a copy gone wrong) is rebuilt with a line on stderr saying so, and
  temporaries a killed writer left behind (older than :data:`STALE_TEMP_S`) are removed.

>>> s = Sample("a", Path("/x.jpg"), None, "index")
>>> cache_key(s, ClassTable.builtin(), 512, "area") != cache_key(s, ClassTable.builtin(), 768, "area")
True
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from droneseg.classes import ClassTable, DataError
from droneseg.data.layout import Sample, image_size
from droneseg.files import atomic_save, file_identity
from droneseg.images import ImageFilter, mask_size_problem, photo_view, read_mask, read_working_image

CACHE_VERSION = 2  # 2: photos as displayed (EXIF orientation applied), palette masks by colour
STALE_TEMP_S = 3600
"""A temporary file older than this is a killed writer's leftover (a live write takes seconds), and is removed."""


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


def cache_key(sample: Sample, table: ClassTable, long_side: int | None, image_filter: ImageFilter) -> str:
    if sample.block is not None:  # a survey's block: its key covers its files, grid, labels and split buffer
        return hashlib.sha1(json.dumps([CACHE_VERSION, sample.block.key, table.colors.tolist()]).encode()
                            ).hexdigest()[:16]
    try:
        ident = file_identity(sample.image) + file_identity(sample.mask)
    except FileNotFoundError:
        ident = [str(sample.image), str(sample.mask)]
    parts = [CACHE_VERSION, ident, sample.mask_kind, long_side, image_filter]
    if sample.mask_kind == "rgb":
        parts.append(table.colors.tolist())
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]


def npy_problem(path: Path, ndim: int) -> str | None:
    """Why the ``.npy`` file at ``path`` is not a whole uint8 array of ``ndim`` dimensions (3: last axis 3), or
    None when it is. Reads the header only: the file's size must be the header's plus every pixel's byte."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
            expected = fh.tell() + int(np.prod(shape)) * dtype.itemsize
            size = os.fstat(fh.fileno()).st_size
    except (OSError, ValueError) as exc:  # a missing, empty or cut header
        return f"unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if dtype != np.uint8 or len(shape) != ndim or (ndim == 3 and shape[2] != 3):
        return f"holds a {dtype} array of shape {shape}"
    if size != expected:
        return f"is {size} bytes, its header says {expected}"
    return None


def entry_problem(entry: CacheEntry) -> str | None:
    """Why a built-looking entry cannot be used (see the module contract), or None."""
    problem = npy_problem(entry.image, 3)
    if problem:
        return f"{entry.image.name} {problem}"
    if entry.mask is not None:
        problem = npy_problem(entry.mask, 2)
        if problem:
            return f"{entry.mask.name} {problem}"
        image_shape = np.load(entry.image, mmap_mode="r").shape[:2]
        mask_shape = np.load(entry.mask, mmap_mode="r").shape
        if image_shape != mask_shape:
            return f"{entry.mask.name} is {mask_shape}, its image {image_shape}"
    return None


def _remove_stale_temporaries(cache_dir: Path) -> None:
    """Temporaries of :func:`droneseg.files.atomic_path` (``.<name>.<random>.tmp``) a killed writer left."""
    now = time.time()
    for tmp in cache_dir.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
        except FileNotFoundError:  # another process removed or renamed it
            pass


def _needs_build(entry: CacheEntry) -> bool:
    """Whether an entry must be (re)built: missing, or damaged (said on stderr)."""
    if not entry.image.exists() or (entry.mask is not None and not entry.mask.exists()):
        return True
    problem = entry_problem(entry)
    if problem:
        tqdm.write(f"warning: cache entry of {entry.id} is damaged ({problem}); rebuilding it", file=sys.stderr)
        return True
    return False


def _entry_paths(sample: Sample, key: str, cache_dir: Path) -> CacheEntry:
    stem = f"{sample.id}-{key}"
    mask = cache_dir / f"{stem}.mask.npy" if sample.mask else None
    return CacheEntry(sample.id, cache_dir / f"{stem}.img.npy", mask)


def _build_one(args: tuple[Sample, ClassTable, int | None, ImageFilter, CacheEntry]) -> None:
    sample, table, long_side, image_filter, entry = args
    if sample.block is not None:  # a survey's block, at its working GSD already
        from droneseg.geo.survey import render_block

        image, mask = render_block(sample.block)
        atomic_save(entry.mask, lambda fh: np.save(fh, mask))
        atomic_save(entry.image, lambda fh: np.save(fh, image))
        return
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
    """Entries for ``samples`` (in order), decoding only those not cached yet or damaged, in parallel."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(cache_dir)
    entries = [_entry_paths(s, cache_key(s, table, long_side, image_filter), cache_dir) for s in samples]
    todo = [(s, table, long_side, image_filter, e) for s, e in zip(samples, entries) if _needs_build(e)]
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
