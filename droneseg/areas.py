"""Class areas: one table for photos and orthomosaics (``class_areas.csv``, and ``.json`` for orthomosaics).

Contract
--------
Per target class: ``class_id`` (the value written in the masks or class raster), ``class``, ``pixels`` (written
pixels of it), ``share`` (of the valid area: of the square metres where the ground scale is known, else of the
pixels) and, with a ground scale, ``area_m2``. Pixels outside the valid area (nodata, transparent) count nowhere.
A photo's rows start with ``photo``; an orthomosaic's table has one file per orthomosaic. Files are atomic.

>>> t = AreaTable(["a", "b"], [0, 1]); t.add_counts(np.array([3, 1]), pixel_area=0.25)
>>> [(r["class"], r["area_m2"], r["share"]) for r in t.rows()]
[('a', '0.7500', '0.750000'), ('b', '0.2500', '0.250000')]
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from droneseg.files import atomic_write_json, atomic_write_text


@dataclass
class AreaTable:
    """Per-class pixels and (with a ground scale) square metres of one segmented input."""

    names: list[str]  # target classes
    values: list[int]  # written value of each target
    method: str | None = None  # how m² per pixel was measured (orthomosaics: see geo.raster.PixelArea)
    pixels: np.ndarray = field(init=False)  # (K,) int64
    m2: np.ndarray | None = field(init=False)  # (K,) float64; None until an area is added

    def __post_init__(self) -> None:
        self.pixels = np.zeros(len(self.names), np.int64)
        self.m2 = None

    def add_counts(self, counts: np.ndarray, pixel_area: float | None = None) -> None:
        """``counts``: (K,) written pixels per class; ``pixel_area``: m² one of them covers (None: unknown)."""
        self.pixels += np.asarray(counts, np.int64)
        if pixel_area is not None:
            self.m2 = (self.m2 if self.m2 is not None else np.zeros(len(self.names))) + counts * float(pixel_area)

    def add(self, labels: np.ndarray, valid: np.ndarray, pixel_area: np.ndarray | float) -> None:
        """``labels`` (h, w) uint8 targets, ``valid`` (h, w) bool, ``pixel_area`` m² per pixel (scalar or (h, w))."""
        k = len(self.names)
        picked = labels[valid]
        counts = np.bincount(picked, minlength=k)[:k]
        if np.isscalar(pixel_area):
            self.add_counts(counts, float(pixel_area))
            return
        self.pixels += counts
        self.m2 = (self.m2 if self.m2 is not None else np.zeros(k)) + \
            np.bincount(picked, weights=pixel_area[valid], minlength=k)[:k]

    def rows(self, **first: str) -> list[dict[str, str]]:
        """One row per class, with the columns ``first`` (e.g. ``photo=...``) in front."""
        basis = self.m2 if self.m2 is not None else self.pixels
        total = float(basis.sum())
        rows = []
        for i, (v, n, p) in enumerate(zip(self.values, self.names, self.pixels.tolist())):
            row = {**first, "class_id": str(v), "class": n, "pixels": str(p),
                   "share": f"{basis[i] / total:.6f}" if total else "0"}
            if self.m2 is not None:
                row["area_m2"] = f"{self.m2[i]:.4f}"
            rows.append(row)
        return rows

    def write_json(self, path: Path, meta: dict) -> None:
        """The table with ``meta`` and totals as JSON (numbers as numbers)."""
        numbers = [{**r, "class_id": int(r["class_id"]), "pixels": int(r["pixels"]), "share": float(r["share"]),
                    **({"area_m2": float(r["area_m2"])} if "area_m2" in r else {})} for r in self.rows()]
        atomic_write_json(path, {**meta, "area_method": self.method, "valid_pixels": int(self.pixels.sum()),
                                 "valid_area_m2": round(float(self.m2.sum()), 4) if self.m2 is not None else None,
                                 "classes": numbers})


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    """Rows of :meth:`AreaTable.rows` (of one or many inputs) as one CSV, columns from the first row."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, list(rows[0]) if rows else ["class_id", "class", "pixels", "share"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
