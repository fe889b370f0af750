"""CVAT's "Segmentation mask 1.1" export (a zip or its unpacked folder) -> :class:`Imported`.

The export (CVAT's documentation, "Segmentation mask"; written by Datumaro's VOC segmentation writer):
``labelmap.txt`` (lines ``label:r,g,b:parts:actions``; ``background`` is the colour of pixels no shape covers),
``SegmentationClass/<photo stem>.png`` (each pixel the colour of its label, overlaps already decided by z-order),
``SegmentationObject/`` (instances: not read), ``ImageSets/Segmentation/<subset>.txt`` (the photos of each subset).
Colours map exactly through the label map: an unknown colour is a problem, never snapped to a nearest colour.
``background`` pixels become ``unlabeled`` (ignored in training and scoring).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from droneseg.errors import DataError
from droneseg.labelling.dataset import Imported, PhotoFinder, split_of

BACKGROUND = "background"


class _Export:
    """The files of an export, zipped or not: relative POSIX names -> bytes."""

    def __init__(self, source: Path) -> None:
        self.source = Path(source)
        if self.source.is_dir():
            self._zip = None
            self.names = sorted(p.relative_to(self.source).as_posix() for p in self.source.rglob("*") if p.is_file())
        elif zipfile.is_zipfile(self.source):
            self._zip = zipfile.ZipFile(self.source)
            self.names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        elif self.source.exists():
            raise DataError(f"{self.source}: not a zip file or a folder (CVAT's Segmentation mask 1.1 export)")
        else:
            raise DataError(f"{self.source}: no such file or folder")
        # an export zipped with its folder: names under one top folder
        tops = {n.split("/", 1)[0] for n in self.names}
        self.prefix = f"{tops.pop()}/" if len(tops) == 1 and all("/" in n for n in self.names) else ""

    def where(self, name: str) -> str:
        return f"{self.source}/{self.prefix}{name}" if self._zip is None else f"{self.source}:{self.prefix}{name}"

    def has(self, name: str) -> bool:
        return self.prefix + name in self.names

    def under(self, folder: str) -> list[str]:
        start = self.prefix + folder.rstrip("/") + "/"
        return [n[len(self.prefix):] for n in self.names if n.startswith(start)]

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(self.prefix + name)
        return (self.source / (self.prefix + name)).read_bytes()


def read_labelmap(text: str, where: str) -> list[tuple[str, tuple[int, int, int]]]:
    """``labelmap.txt`` -> [(label, (r, g, b))] in file order; raises DataError naming the line of a bad entry."""
    out: list[tuple[str, tuple[int, int, int]]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(":")
        name, colour = parts[0].strip(), parts[1].strip() if len(parts) > 1 else ""
        try:
            rgb = tuple(int(v) for v in colour.split(","))
        except ValueError:
            rgb = ()
        if not name or len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise DataError(f"{where}:{n}: expected 'label:r,g,b:parts:actions', got {line.strip()!r}")
        if any(name == m for m, _ in out):
            raise DataError(f"{where}:{n}: label {name!r} listed twice")
        out.append((name, rgb))  # type: ignore[arg-type]
    if not out:
        raise DataError(f"{where}: no labels")
    return out


def read_cvat(source: Path, images: Path) -> Imported:
    """Read a CVAT Segmentation mask 1.1 export; photos from ``images`` (or the export's ``JPEGImages/``).

    Problems collected (one line each, naming the file): a colour not in the label map (with its pixel count), a
    mask of another size than its photo, a photo the export lists without a mask, a mask whose photo is missing, a
    mask with no labelled pixel. Raises DataError for an export that is not one (no ``labelmap.txt``)."""
    export = _Export(source)
    if not export.has("labelmap.txt"):
        raise DataError(f"{source}: no labelmap.txt; not a CVAT 'Segmentation mask 1.1' export")
    labelmap = read_labelmap(export.read("labelmap.txt").decode("utf-8-sig"), export.where("labelmap.txt"))
    seen: dict[tuple[int, int, int], str] = {}
    for n, c in labelmap:  # one colour, two labels: which one a pixel is cannot be told
        if c in seen:
            raise DataError(f"{export.where('labelmap.txt')}: labels {seen[c]!r} and {n!r} share the colour {c}")
        seen[c] = n
    classes = [(n, c) for n, c in labelmap if n.lower() != BACKGROUND]
    imported = Imported("CVAT Segmentation mask 1.1", Path(source), classes=list(classes))
    number = {c: imported.class_number(n) for n, c in classes}  # colour -> class number
    number.update({c: 0 for n, c in labelmap if n.lower() == BACKGROUND})
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in number], np.int64)
    values = np.array(list(number.values()), np.uint8)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]

    subsets: dict[str, str] = {}  # photo id -> subset
    listed_in: dict[str, str] = {}  # photo id -> the subset file listing it
    for name in export.under("ImageSets/Segmentation"):
        subset = PurePosixPath(name).stem
        for line in export.read(name).decode("utf-8-sig").splitlines():
            if line.strip():
                subsets[line.strip()] = subset
                listed_in[line.strip()] = name
    masks = {PurePosixPath(n).relative_to("SegmentationClass").with_suffix("").as_posix(): n
             for n in export.under("SegmentationClass") if n.lower().endswith(".png")}
    for n in export.under("SegmentationClass"):
        if not n.lower().endswith(".png"):
            imported.problems.append(f"{export.where(n)}: not a PNG; masks must be lossless (a JPEG's colours are "
                                     "not the label map's): export again from CVAT")
    if not masks:
        raise DataError(f"{source}: no masks under SegmentationClass/ (export with 'Segmentation mask 1.1')")
    for photo_id in sorted(set(subsets) - set(masks)):
        imported.problems.append(f"{export.where(listed_in[photo_id])}: photo {photo_id!r} is listed but has no "
                                 "mask in SegmentationClass/ (not annotated, or left out of the export)")
    finder = PhotoFinder(images) if images is not None else None
    bundled = {PurePosixPath(n).stem: n for n in export.under("JPEGImages")}
    for photo_id, name in sorted(masks.items()):
        where = export.where(name)
        if finder is not None:
            photo = finder.find(photo_id)
        elif PurePosixPath(photo_id).name in bundled:
            raise DataError(f"{source}: photos inside the export are not read in place; unpack it and give "
                            "--images <the export>/JPEGImages")
        else:
            raise DataError(f"{source}: give --images, the folder of the photos the task was labelled on")
        if isinstance(photo, str):
            imported.problems.append(f"{where}: {photo}")
            continue
        try:
            rgb = np.asarray(Image.open(io.BytesIO(export.read(name))).convert("RGB"))
        except (OSError, SyntaxError) as exc:
            imported.problems.append(f"{where}: cannot decode ({exc})")
            continue
        packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        at = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
        known = keys[at] == packed
        if not known.all():
            bad, counts = np.unique(packed[~known], return_counts=True)
            worst = int(bad[np.argmax(counts)])
            more = f" (and {len(bad) - 1} more unknown colours)" if len(bad) > 1 else ""
            imported.problems.append(f"{where}: colour {(worst >> 16, (worst >> 8) & 255, worst & 255)} in "
                                     f"{int(counts.max())} px is not in labelmap.txt{more}")
            continue
        imported.add(photo, values[at], where, f"only {BACKGROUND}", split_of(subsets.get(photo_id, "")))
    return imported
