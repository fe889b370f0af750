"""The dataset's class table and the label schemes built on it.

Contract
--------
* Source index: the value in ``label_images_semantic`` (0 unlabeled … 22 obstacle, 23 conflicting),
  uint8 arrays of shape (H, W).
* Target index (see :mod:`droneseg.schemes`): 0..K-1, and ``IGNORE_INDEX`` (255) for ignored pixels,
  the one ignore value shared by losses and metrics.
* Colours: uint8 RGB triples; an RGB mask is (H, W, 3) uint8.

Every conversion is a table lookup over whole arrays: no per-pixel Python.

>>> table = ClassTable.builtin()
>>> table.rgb_to_index(np.array([[[0, 0, 0], [128, 64, 128]]], np.uint8)).tolist()
[[0, 1]]
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from droneseg.errors import DataError  # noqa: F401  (re-exported: DataError has always been importable from here)

IGNORE_INDEX = 255
"""Target value of pixels that count for neither loss nor metrics."""

# name, r, g, b — row order is the source index (Semantic Drone Dataset, class_dict_seg.csv)
_BUILTIN_ROWS: tuple[tuple[str, int, int, int], ...] = (
    ("unlabeled", 0, 0, 0),
    ("paved-area", 128, 64, 128),
    ("dirt", 130, 76, 0),
    ("grass", 0, 102, 0),
    ("gravel", 112, 103, 87),
    ("water", 28, 42, 168),
    ("rocks", 48, 41, 30),
    ("pool", 0, 50, 89),
    ("vegetation", 107, 142, 35),
    ("roof", 70, 70, 70),
    ("wall", 102, 102, 156),
    ("window", 254, 228, 12),
    ("door", 254, 148, 12),
    ("fence", 190, 153, 153),
    ("fence-pole", 153, 153, 153),
    ("person", 255, 22, 96),
    ("dog", 102, 51, 0),
    ("car", 9, 143, 150),
    ("bicycle", 119, 11, 32),
    ("tree", 51, 51, 0),
    ("bald-tree", 190, 250, 190),
    ("ar-marker", 112, 150, 146),
    ("obstacle", 2, 135, 115),
    ("conflicting", 255, 0, 0),
)


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(…, 3) uint8 -> (…) int32 key r<<16 | g<<8 | b."""
    rgb = rgb.astype(np.int32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@dataclass(frozen=True)
class ClassTable:
    """Source classes: names and colours, indexed by source index."""

    names: tuple[str, ...]
    colors: np.ndarray = field(repr=False)  # (N, 3) uint8

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise DataError("names and colours differ in length")
        if len(set(self.names)) != len(self.names):
            raise DataError(f"duplicate class names in {self.names}")
        if len(self.names) > IGNORE_INDEX:
            raise DataError(f"at most {IGNORE_INDEX} classes, got {len(self.names)}")

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ClassTable)
            and self.names == other.names
            and np.array_equal(self.colors, other.colors)
        )

    def __hash__(self) -> int:
        return hash((self.names, self.colors.tobytes()))

    @classmethod
    def builtin(cls) -> ClassTable:
        """The Semantic Drone Dataset's 24 classes, for datasets that ship no class table."""
        return cls(
            names=tuple(r[0] for r in _BUILTIN_ROWS),
            colors=np.array([r[1:] for r in _BUILTIN_ROWS], dtype=np.uint8),
        )

    @classmethod
    def from_csv(cls, path: str | Path) -> ClassTable:
        """Read ``class_dict_seg.csv`` / ``class_dict.csv`` (header ``name, r, g, b``, spaces allowed)."""
        path = Path(path)
        try:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                rows = [[c.strip() for c in row] for row in csv.reader(fh) if any(c.strip() for c in row)]
        except OSError as exc:
            raise DataError(f"{path}: cannot read class table ({exc.strerror or exc})") from exc
        if not rows or [c.lower() for c in rows[0]] != ["name", "r", "g", "b"]:
            raise DataError(f"{path}: header must be 'name, r, g, b', got {rows[0] if rows else 'an empty file'}")
        names, colors = [], []
        for line_no, row in enumerate(rows[1:], start=2):
            if len(row) != 4:
                raise DataError(f"{path}:{line_no}: expected 4 fields 'name, r, g, b', got {len(row)}")
            try:
                rgb = [int(v) for v in row[1:]]
            except ValueError:
                raise DataError(f"{path}:{line_no}: colour {row[1:]} is not three integers") from None
            if not all(0 <= v <= 255 for v in rgb):
                raise DataError(f"{path}:{line_no}: colour {rgb} is outside 0..255")
            names.append(row[0])
            colors.append(rgb)
        if not names:
            raise DataError(f"{path}: no classes listed")
        if len(set(names)) != len(names):
            raise DataError(f"{path}: duplicate class names")
        packed = _pack_rgb(np.array(colors, dtype=np.uint8))
        if len(set(packed.tolist())) != len(packed):
            raise DataError(f"{path}: two classes share one colour")
        return cls(names=tuple(names), colors=np.array(colors, dtype=np.uint8))

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(f"unknown class {name!r}; choose from {sorted(self.names)}") from None

    @cached_property
    def _rgb_lut(self) -> np.ndarray:
        """Dense 2**24 lookup (16 MiB, built once): packed colour -> source index, 255 = unknown."""
        lut = np.full(1 << 24, IGNORE_INDEX, dtype=np.uint8)
        lut[_pack_rgb(self.colors)] = np.arange(len(self), dtype=np.uint8)
        return lut

    def rgb_to_index(self, rgb: np.ndarray, source: str | Path = "<array>", strict: bool = True) -> np.ndarray:
        """(H, W, 3) uint8 colour mask -> (H, W) uint8 source indices.

        Raises DataError naming ``source``, the first unknown colour and how many pixels have it; with
        ``strict=False`` unknown colours become IGNORE_INDEX instead.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise DataError(f"{source}: colour mask must be (H, W, 3), got shape {rgb.shape}")
        out = self._rgb_lut[_pack_rgb(rgb)]
        bad = out == IGNORE_INDEX
        if strict and bad.any():
            colors, counts = np.unique(rgb[bad], axis=0, return_counts=True)
            worst = int(np.argmax(counts))
            more = f" (and {len(colors) - 1} more unknown colours)" if len(colors) > 1 else ""
            raise DataError(
                f"{source}: unknown colour {tuple(int(c) for c in colors[worst])} "
                f"in {int(counts[worst])} pixels{more}"
            )
        return out

    def index_to_rgb(self, index: np.ndarray) -> np.ndarray:
        """(H, W) source indices -> (H, W, 3) uint8 colours; out-of-table values raise."""
        if index.size and int(index.max()) >= len(self):
            raise DataError(f"index {int(index.max())} is outside the {len(self)}-class table")
        return self.colors[index]
