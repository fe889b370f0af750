"""Reading photos and masks, and writing files atomically.

Contract
--------
* ``read_image`` -> (H, W, 3) uint8 RGB, whatever the file holds (grey, RGBA, palette, 16-bit).
* ``read_mask`` -> (H, W) uint8 source indices, from an index PNG or an RGB colour PNG.
* Every writer goes through a temporary file in the target folder and ``os.replace``, so a crash
  never leaves a half-written file under the final name.

>>> working_size((6000, 4000), 1500)
(1500, 1000)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from droneseg.classes import ClassTable, DataError

Image.MAX_IMAGE_PIXELS = 300_000_000  # 6000x4000 photos are normal here; keep a bound for bombs
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently grey

_UMASK = os.umask(0)
os.umask(_UMASK)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MaskKind = Literal["index", "rgb"]
ImageFilter = Literal["area", "bilinear"]
RESIZE_FILTERS: dict[str, Image.Resampling] = {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR}
"""How photos are brought to the working scale (masks: nearest only, see :func:`read_mask`)."""
_ORIENTATION = 0x0112  # EXIF tag


def working_size(size: tuple[int, int], long_side: int | None) -> tuple[int, int]:
    """(W, H) scaled so the long side is ``long_side`` (never up-scaled; None keeps the size)."""
    w, h = size
    if long_side is None or long_side >= max(w, h):
        return w, h
    s = long_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def open_image(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() or 1.0
        im = Image.fromarray((arr * (255.0 / (65535.0 if top > 255 else 255.0))).clip(0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def read_image(
    path: Path,
    size: tuple[int, int] | None = None,
    exif: bool = False,
    resample: Image.Resampling = Image.Resampling.BOX,
) -> np.ndarray:
    """Decode a photo to (H, W, 3) uint8, optionally resized to ``size`` = (W, H).

    JPEGs are decoded at a reduced DCT scale when ``size`` allows (``draft``), which is 3-4x faster
    for 6000x4000 photos. ``exif=True`` applies the EXIF orientation (user photos in ``predict``;
    dataset photos are read as stored, like their masks); ``size`` is then the displayed size.
    """
    im = open_image(path)
    try:
        if size is not None and im.format == "JPEG":
            turned = exif and im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)  # stored sideways
            im.draft("RGB", (size[1], size[0]) if turned else size)
        if exif:
            im = ImageOps.exif_transpose(im)
        im = _to_rgb(im)
        if size is not None and im.size != tuple(size):
            im = im.resize(size, resample)
        return np.asarray(im)
    except OSError as exc:
        raise DataError(f"{path}: cannot decode ({exc})") from None


def photo_size(path: Path, exif: bool = False) -> tuple[int, int]:
    """(W, H) from the header only; with ``exif`` as displayed (a photo stored sideways swaps them)."""
    with open_image(path) as im:
        w, h = im.size
        turned = exif and im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
    return (h, w) if turned else (w, h)


def read_working_image(path: Path, long_side: int | None, image_filter: ImageFilter = "area",
                       exif: bool = False) -> np.ndarray:
    """The photo at the working scale a model was trained at: (h, w, 3) uint8 with long side ``long_side``.

    The one decoder of working-size photos: the training cache and ``predict`` both call it, so a model sees the
    same pixels in training, evaluation and prediction (reduced-size JPEG decoding, then ``image_filter``).
    """
    if image_filter not in RESIZE_FILTERS:
        raise KeyError(f"unknown image filter {image_filter!r}; choose from {sorted(RESIZE_FILTERS)}")
    size = working_size(photo_size(path, exif), long_side)
    return read_image(path, size=size, exif=exif, resample=RESIZE_FILTERS[image_filter])


def read_mask(path: Path, kind: MaskKind, table: ClassTable, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a mask to (H, W) uint8 source indices, resized with nearest neighbour only.

    Nearest before the palette lookup gives exactly the same result as after it, at a fraction of the cost.
    """
    im = open_image(path)
    try:
        if kind == "index":
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"{path}: index mask must be single-channel, got mode {im.mode}")
            if size is not None and im.size != tuple(size):
                im = im.resize(size, Image.Resampling.NEAREST)
            arr = np.asarray(im)
            if arr.size and int(arr.max()) >= len(table):
                bad = arr >= len(table)
                raise DataError(
                    f"{path}: index {int(arr.max())} is outside the {len(table)}-class table "
                    f"({int(bad.sum())} pixels)"
                )
            return arr.astype(np.uint8, copy=False)
        im = im.convert("RGB")
        if size is not None and im.size != tuple(size):
            im = im.resize(size, Image.Resampling.NEAREST)
        return table.rgb_to_index(np.asarray(im), path)
    except OSError as exc:
        raise DataError(f"{path}: cannot decode ({exc})") from None


@contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` (same folder, so same filesystem); on success it is flushed to disk and
    replaces ``path`` in one step, and the folder entry is flushed too. Until then ``path`` keeps its old content;
    on an error (or a kill) the temporary file is all that is lost."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should read like any other file
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save(path: Path, save: Callable[[IO], None]) -> None:
    """Write through ``save(fileobj)``: np.save, PIL's Image.save(fh, format=…), torch.save…"""
    with atomic_open(path, "wb") as fh:
        save(fh)


def save_png(path: Path, array: np.ndarray) -> None:
    atomic_save(path, lambda fh: Image.fromarray(array).save(fh, format="PNG"))
