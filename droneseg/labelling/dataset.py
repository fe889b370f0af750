"""What every importer produces, and the one writer of an imported dataset.

Contract
--------
* An importer reads a labelling tool's export into :class:`Imported`: the classes in the tool's order (name and
  colour, or None where the tool has none), and per photo its file and a mask of class numbers (uint8 (H, W):
  0 = unlabelled, k = the k-th class, from 1), or the problems found. It never writes.
* :func:`write_dataset` writes droneseg's Kaggle layout: ``original_images/`` (the photos, hard-linked where the
  file system allows, else copied), ``label_images_semantic/`` (8-bit grey index PNGs), ``class_dict_seg.csv``
  (row 0 ``unlabeled``, ignored by every scheme, then the classes) and ``splits/`` when the export has subsets.
  Into a temporary folder beside ``out``, renamed into place at the end: an interrupted import leaves no half
  dataset, and an existing ``out`` is never overwritten.
"""

from __future__ import annotations

import colorsys
import csv
import io
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from droneseg.errors import DataError
from droneseg.files import atomic_write_text, save_png
from droneseg.images import IMAGE_SUFFIXES, photo_size

UNLABELED = "unlabeled"
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
"""A tool's subset names -> droneseg's splits (case-insensitive); other subsets (CVAT's ``default``) are no split."""


@dataclass
class Photo:
    """One labelled photo: its file, its mask of class numbers (0 unlabelled), and its split if the export has one."""

    image: Path
    mask: np.ndarray  # uint8 (H, W)
    split: str | None = None


@dataclass
class Imported:
    """A labelling tool's export as read: classes (name, (r, g, b) or None) in the tool's order, photos, problems."""

    tool: str
    source: Path
    classes: list[tuple[str, tuple[int, int, int] | None]] = field(default_factory=list)
    photos: list[Photo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line each: "FILE: the problem"
    notes: list[str] = field(default_factory=list)  # what was decided, for the summary (not problems)

    def add(self, photo: Path, mask: np.ndarray, where: Path | str, empty: str, split: str | None = None) -> None:
        """Keep ``photo`` with ``mask``, or record the problem: a mask of another size than the photo, or one with
        no labelled pixel (``empty`` says what it holds instead)."""
        problem = check_size(photo, mask, where)
        if problem is None and not mask.any():
            problem = f"{where}: no labelled pixel ({empty})"
        if problem:
            self.problems.append(problem)
        else:
            self.photos.append(Photo(photo, mask, split))

    def class_number(self, name: str) -> int:
        """The mask value of class ``name`` (1 = the first class)."""
        return [n for n, _ in self.classes].index(name) + 1


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct, saturated colours for classes that come without one (golden-angle hues, two brightnesses)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95 if i % 2 == 0 else 0.7)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


class PhotoFinder:
    """Photos of ``--images`` by file name, by stem, and by the name a labelling tool's upload gave them."""

    def __init__(self, folder: Path) -> None:
        if not Path(folder).is_dir():
            raise DataError(f"{folder}: --images is not a folder")
        self.folder = Path(folder)
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for p in sorted(self.folder.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                self.by_name.setdefault(p.name, []).append(p)
                self.by_stem.setdefault(p.stem, []).append(p)

    def _one(self, found: list[Path], what: str) -> Path | str:
        if len(found) == 1:
            return found[0]
        if len(found) > 1:  # DJI_0001.JPG in two flight folders: never guess which was labelled
            return (f"{len(found)} photos {what} in {self.folder} "
                    f"({', '.join(str(p.relative_to(self.folder)) for p in found[:3])}); keep one per --images")
        return f"no photo {what} in {self.folder}"

    def find(self, name: str) -> Path | str:
        """The photo named ``name`` (a path: its relative path under ``--images`` first, then its file name; a name
        without a photo suffix matches a photo of that stem); else the problem (none, or several)."""
        name = name.replace("\\", "/")
        relative = self.folder / name.lstrip("/")
        if relative.is_file() and relative.suffix.lower() in IMAGE_SUFFIXES:
            return relative
        base = Path(name).name
        if base in self.by_name:
            return self._one(self.by_name[base], f"named {base!r}")
        if Path(base).suffix.lower() in IMAGE_SUFFIXES:
            return self._one(self.by_stem.get(Path(base).stem, []), f"named {base!r} (or of its stem)")
        return self.find_stem(base)

    def find_stem(self, stem: str) -> Path | str:
        """The photo whose file stem is ``stem`` exactly (an id with dots in it, ``2023.05.12_0001``, included)."""
        return self._one(self.by_stem.get(stem, []), f"of stem {stem!r}")


def check_size(photo: Path, mask: np.ndarray, source: Path | str) -> str | None:
    """The problem when a mask's size is not its photo's, else None."""
    w, h = photo_size(photo)
    if mask.shape != (h, w):
        return f"{source}: mask of {mask.shape[1]}x{mask.shape[0]} px, its photo {photo.name} is {w}x{h}"
    return None


def split_of(subset: str) -> str | None:
    """A tool's subset name as a droneseg split, or None."""
    return SPLIT_NAMES.get(subset.strip().lower())


def write_dataset(imported: Imported, out: Path, then: Callable[[Path], None] | None = None) -> dict:
    """Write ``imported`` into ``out`` (which must not exist) in droneseg's Kaggle layout; -> the summary (photos,
    classes, pixels per class, unlabelled share, splits). ``then(folder)`` adds files to the dataset before it is
    moved into place (the survey of imported tiles). Raises DataError listing the problems (nothing written) when
    the export has any, or when ``out`` exists."""
    out = Path(out)
    if imported.problems:
        raise ImportFailed(imported)
    if not imported.photos:
        raise DataError(f"{imported.source}: no labelled photo in this {imported.tool} export")
    if out.exists():
        raise DataError(f"{out}: already exists; imports never overwrite (give a new --out)")
    stems = [p.image.stem for p in imported.photos]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise DataError(f"{imported.source}: {len(twice)} photos share a file stem (e.g. {twice[0]!r}); the dataset "
                        "pairs photos and masks by stem")
    clash = [n for n, _ in imported.classes if n.strip().lower() == UNLABELED]
    if clash:
        raise DataError(f"{imported.source}: a class named {clash[0]!r}; droneseg keeps that name for pixels nobody "
                        "labelled (ignored): rename it in the tool, or leave those pixels unlabelled")
    colours = palette(len(imported.classes))
    spare = iter(palette(len(imported.classes) + 64)[len(imported.classes):])
    table: list[tuple[str, tuple[int, int, int]]] = []
    for name, colour in [(UNLABELED, (0, 0, 0))] + [(n, c if c is not None else colours[i])
                                                    for i, (n, c) in enumerate(imported.classes)]:
        while colour in {c for _, c in table}:  # a tool's colour equal to black or to another class's
            colour = next(spare)
        table.append((name, colour))
    tmp = out.with_name(f".{out.name}.importing-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "original_images").mkdir(parents=True)
    (tmp / "label_images_semantic").mkdir()
    counts = np.zeros(len(table), np.int64)
    splits: dict[str, list[str]] = {}
    try:
        for p in imported.photos:
            target = tmp / "original_images" / p.image.name
            try:
                os.link(p.image, target)
            except OSError:  # another file system, or links refused: a copy
                shutil.copy2(p.image, target)
            save_png(tmp / "label_images_semantic" / f"{p.image.stem}.png", p.mask.astype(np.uint8, copy=False))
            counts += np.bincount(p.mask.ravel(), minlength=len(table))[:len(table)]
            if p.split:
                splits.setdefault(p.split, []).append(p.image.stem)
        rows = io.StringIO()
        csv.writer(rows, lineterminator="\n").writerows([("name", "r", "g", "b"), *((n, *c) for n, c in table)])
        atomic_write_text(tmp / "class_dict_seg.csv", rows.getvalue())  # a name with a comma is quoted
        if then is not None:
            then(tmp)
        if splits:
            (tmp / "splits").mkdir()
            for name, ids in splits.items():
                atomic_write_text(tmp / "splits" / f"{name}.txt", "".join(f"{i}\n" for i in sorted(ids)))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = int(counts.sum())
    return {"photos": len(imported.photos), "classes": [n for n, _ in table[1:]],
            "pixels": {n: int(c) for (n, _), c in zip(table, counts)},
            "unlabeled_share": float(counts[0] / total) if total else 0.0,
            "splits": {k: len(v) for k, v in sorted(splits.items())}}


class ImportFailed(DataError):
    """An export with problems: every one of them (``imported.problems``), and the one-line summary as the message."""

    def __init__(self, imported: Imported) -> None:
        self.problems = list(imported.problems)
        first = self.problems[0]
        more = f" (and {len(self.problems) - 1} more, listed above)" if len(self.problems) > 1 else ""
        super().__init__(f"{imported.source}: {len(self.problems)} problems in this {imported.tool} export, nothing "
                         f"written; the first: {first}{more}")


LABELME_SPECIAL = ("__ignore__", "_background_")
"""labelme2voc's labels.txt rows that are no class: pixels to ignore, pixels no polygon covers."""


def read_classes(path: Path) -> list[tuple[str, tuple[int, int, int] | None]]:
    """``--classes``: a class table CSV (``name,r,g,b``) or a text file of names, one a line (labelme2voc's
    ``labels.txt``: ``__ignore__`` and ``_background_`` skipped) -> [(name, colour or None)] in file order."""
    from droneseg.classes import ClassTable

    path = Path(path)
    if path.suffix.lower() == ".csv":
        table = ClassTable.from_csv(path)
        return [(n, tuple(int(v) for v in c)) for n, c in zip(table.names, table.colors)
                if n != UNLABELED]  # type: ignore[misc]
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except OSError as exc:
        raise DataError(f"{path}: cannot read the class list ({exc.strerror or exc})") from None
    names = [n for n in names if n not in LABELME_SPECIAL and n != UNLABELED]
    if not names:
        raise DataError(f"{path}: no class names")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: a class name is listed twice")
    return [(n, None) for n in names]
