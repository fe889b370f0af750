"""Reading photos and masks (writing files: :mod:`droneseg.files`).

Contract
--------
* ``read_image`` -> (H, W, 3) uint8 RGB as displayed (EXIF orientation applied, for every command), whatever the
  file holds (grey, RGBA, palette, CMYK, 16-bit); :func:`read_alpha` the validity mask of a photo with alpha.
* ``read_mask`` -> (H, W) uint8 source indices, from an index PNG, an RGB colour PNG or a palette PNG (by the
  colours it shows when they are class colours).
* A file that is none of these is refused with a DataError that names it and says what it is (mode, bands,
  sample type, or an empty file).

>>> working_size((6000, 4000), 1500)
(1500, 1000)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from droneseg.classes import IGNORE_INDEX as IGNORE
from droneseg.classes import ClassTable, DataError

Image.MAX_IMAGE_PIXELS = 300_000_000  # 6000x4000 photos are normal here; keep a bound for bombs
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently grey

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
        raise DataError(f"{path}: {_unreadable(path)}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from None


def _unreadable(path: Path) -> str:
    """Why Pillow could not identify ``path``: an empty file, a TIFF layout it cannot hold (bands, sample type),
    or simply not an image."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        size = -1
    if size == 0:
        return "empty file (0 bytes)"
    tiff = _tiff_layout(path)
    if tiff:
        return (f"a TIFF of {tiff}, which droneseg does not read: photos are 8- or 16-bit grey, RGB or RGBA "
                f"(1, 3 or 4 bands); masks are 8-bit single-band or RGB")
    return f"not a readable image ({size} bytes; accepted: {', '.join(IMAGE_SUFFIXES)})"


BIGTIFF = "BigTIFF"


def tiff_directory(path: Path):
    """The first image directory of a TIFF (a Pillow ``ImageFileDirectory_v2``, tag -> value), read without
    decoding; :data:`BIGTIFF` for a BigTIFF (whose header Pillow's directory reader does not parse); None when the
    file is no TIFF or cannot be read."""
    from PIL import TiffImagePlugin

    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head[:4] in (b"II+\x00", b"MM\x00+"):
                return BIGTIFF
            if head[:4] not in (b"II*\x00", b"MM\x00*"):
                return None
            ifd = TiffImagePlugin.ImageFileDirectory_v2(head)
            fh.seek(ifd.next)
            ifd.load(fh)
    except (OSError, ValueError, SyntaxError, KeyError):
        return None
    return ifd


def _tiff_layout(path: Path) -> str | None:
    """'5 bands of 16-bit unsigned integers' from a TIFF's first directory, read without decoding; None if not a
    TIFF. (Pillow refuses to open layouts it has no mode for, such as 5-band 16-bit multispectral frames.)"""
    ifd = tiff_directory(path)
    if ifd is None or ifd == BIGTIFF:
        return None
    bands = int(ifd.get(277, 1))  # SamplesPerPixel
    bits = ifd.get(258, (1,))  # BitsPerSample
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    kind = {1: "unsigned integers", 2: "signed integers", 3: "floats"}.get(int(_first(ifd.get(339, 1))), "samples")
    return f"{bands} band{'s' if bands != 1 else ''} of {bits}-bit {kind}"


def _first(v):
    return v[0] if isinstance(v, tuple) else v


PHOTO_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
               "I;16", "I;16L", "I;16B", "I;16N", "I")
"""Pillow modes a photo may have: bilevel, grey (8/16-bit), palette, RGB(A), CMYK, YCbCr, LAB, HSV."""


def _to_rgb(im: Image.Image, path: Path | str = "<image>") -> Image.Image:
    """Any accepted photo mode -> RGB, by what it shows: 16-bit grey scaled from 0..65535 (never a guess from the
    image's own maximum), transparent areas composited on black (see :func:`read_alpha` for the validity mask)."""
    if im.mode not in PHOTO_MODES:
        raise DataError(f"{path}: photo of mode {im.mode} ({_MODE_WORDS.get(im.mode, 'unknown layout')}) is not "
                        "one droneseg reads; accepted: 8- or 16-bit grey, palette, RGB, RGBA, CMYK, YCbCr")
    if im.mode.startswith("I"):
        arr = np.asarray(im)
        if im.mode == "I" and arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise DataError(f"{path}: 32-bit integer photo with values {int(arr.min())}..{int(arr.max())}; "
                            "accepted: 8- or 16-bit")
        im = Image.fromarray(((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


_MODE_WORDS = {"F": "32-bit float", "I;16S": "16-bit signed", "I;32": "32-bit", "La": "grey with premultiplied alpha",
               "RGBa": "premultiplied RGBA"}


def read_image(
    path: Path,
    size: tuple[int, int] | None = None,
    resample: Image.Resampling = Image.Resampling.BOX,
) -> np.ndarray:
    """Decode a photo to (H, W, 3) uint8 as displayed, optionally resized to ``size`` = (W, H).

    One rule for every command: the EXIF orientation is applied (the view labelling tools show and masks are drawn
    on); ``size`` is the displayed size. JPEGs are decoded at a reduced DCT scale when ``size`` allows (``draft``),
    3-4x faster for 6000x4000 photos. Raises DataError naming the file for an unreadable or unaccepted photo.
    """
    im = open_image(path)
    try:
        if size is not None and im.format == "JPEG":
            turned = im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)  # stored sideways
            im.draft("RGB", (size[1], size[0]) if turned else size)
        im = _to_rgb(ImageOps.exif_transpose(im), path)
        if size is not None and im.size != tuple(size):
            im = im.resize(size, resample)
        return np.asarray(im)
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode ({exc})") from None


def read_alpha(path: Path, size: tuple[int, int] | None = None) -> np.ndarray | None:
    """(H, W) bool: True where the photo is valid (alpha > 0), as displayed and resized (nearest) to ``size``;
    None when the photo has no alpha (every pixel valid). Transparent pixels are nodata: no class, no area."""
    with open_image(path) as im:
        if not (im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)):
            return None
        try:
            alpha = ImageOps.exif_transpose(im).convert("RGBA").getchannel("A")
        except (OSError, SyntaxError) as exc:
            raise DataError(f"{path}: cannot decode ({exc})") from None
    if size is not None and alpha.size != tuple(size):
        alpha = alpha.resize(size, Image.Resampling.NEAREST)
    valid = np.asarray(alpha) > 0
    return None if valid.all() else valid


ORIENTATIONS = {1: "as stored", 2: "mirrored", 3: "turned 180°", 4: "flipped", 5: "mirrored and turned 90°",
                6: "turned 90° clockwise", 7: "mirrored and turned 90°", 8: "turned 90° anticlockwise"}
"""EXIF orientation tag -> what a viewer does to the stored pixels to display them."""


@dataclass(frozen=True)
class PhotoView:
    """A photo's header: its (W, H) as stored and as displayed, and the EXIF orientation that relates them."""

    stored: tuple[int, int]
    displayed: tuple[int, int]
    orientation: int


def photo_view(path: Path) -> PhotoView:
    """From the header only (no pixels decoded)."""
    with open_image(path) as im:
        w, h = im.size
        orientation = int(im.getexif().get(_ORIENTATION, 1) or 1)
    return PhotoView((w, h), (h, w) if orientation in (5, 6, 7, 8) else (w, h), orientation)


def photo_size(path: Path) -> tuple[int, int]:
    """(W, H) as displayed, from the header only (a photo stored sideways, EXIF orientation 5-8, swaps them)."""
    return photo_view(path).displayed


def mask_size_problem(mask: Path, mask_size: tuple[int, int], photo: Path, view: PhotoView) -> str | None:
    """None when a mask of ``mask_size`` (W, H) fits the photo as displayed, else the one-line problem: a mask drawn
    on the stored view of a photo with an EXIF turn is named as such (droneseg reads every photo as displayed)."""
    if mask_size == view.displayed:
        return None
    (mw, mh), (w, h) = mask_size, view.displayed
    if mask_size == view.stored:
        return (f"{mask}: drawn on {photo.name} as stored ({mw}x{mh}), but the photo carries EXIF orientation "
                f"{view.orientation} ({ORIENTATIONS.get(view.orientation, '?')}) and droneseg reads photos as "
                f"displayed ({w}x{h}): turn the mask to the displayed view, or remove the tag from the photo")
    shown = f" as displayed (EXIF orientation {view.orientation})" if view.orientation != 1 else ""
    return f"{mask}: mask is {mw}x{mh} but image {photo.name} is {w}x{h}{shown}"


def read_working_image(path: Path, long_side: int | None, image_filter: ImageFilter = "area") -> np.ndarray:
    """The photo at the working scale a model was trained at: (h, w, 3) uint8 with long side ``long_side``.

    The one decoder of working-size photos: the training cache and ``predict`` both call it, so a model sees the
    same pixels in training, evaluation and prediction (displayed view, reduced-size JPEG decoding, then
    ``image_filter``).
    """
    if image_filter not in RESIZE_FILTERS:
        raise DataError(f"unknown image filter {image_filter!r}; choose from {sorted(RESIZE_FILTERS)}")
    size = working_size(photo_size(path), long_side)
    return read_image(path, size=size, resample=RESIZE_FILTERS[image_filter])


INDEX_MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")


def read_mask(path: Path, kind: MaskKind, table: ClassTable, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a mask to (H, W) uint8 source indices, resized with nearest neighbour only.

    Decoded by what it shows: a colour mask (any mode) by its colours; a palette ('P') PNG by the colours of its
    palette when they are all colours of the class table, whatever folder it is in (a colour mask saved with a
    palette); otherwise an index mask by its values. Nearest before the lookup gives exactly the same result as
    after it, at a fraction of the cost. Raises DataError naming the file: foreign colours, indices outside the
    table, modes that hold neither.
    """
    im = open_image(path)
    try:
        if size is not None and im.size != tuple(size):
            im = im.resize(size, Image.Resampling.NEAREST)
        if im.mode == "P":
            by_colour = _palette_to_index(im, table)
            if by_colour is not None:
                return by_colour
        if kind == "index" and im.mode in INDEX_MASK_MODES:
            arr = np.asarray(im)
            if arr.size and int(arr.max()) >= len(table):
                bad = arr >= len(table)
                raise DataError(
                    f"{path}: index {int(arr.max())} is outside the {len(table)}-class table "
                    f"({int(bad.sum())} pixels)"
                )
            return arr.astype(np.uint8, copy=False)
        if kind == "index":
            raise DataError(f"{path}: index mask must be single-channel (8- or 16-bit grey or palette), "
                            f"got mode {im.mode}")
        if im.mode not in ("RGB", "RGBA", "RGBX", "P", "L", "CMYK"):
            raise DataError(f"{path}: colour mask of mode {im.mode}; accepted: RGB, RGBA or palette PNG")
        return table.rgb_to_index(np.asarray(im.convert("RGB")), path)
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode ({exc})") from None


def _palette_to_index(im: Image.Image, table: ClassTable) -> np.ndarray | None:
    """(H, W) source indices of a palette image whose used palette entries are all class colours; else None."""
    arr = np.asarray(im)
    palette = np.asarray(im.getpalette("RGB") or [], np.uint8).reshape(-1, 3)
    used = np.unique(arr)
    if not len(used) or used.max() >= len(palette):
        return None
    classes = table.rgb_to_index(palette[used][None], "<palette>", strict=False)[0]
    if (classes == IGNORE).any():
        return None
    lut = np.zeros(256, np.uint8)
    lut[used] = classes
    return lut[arr]
