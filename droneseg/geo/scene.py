"""Synthetic georeferenced orthomosaics with exact labels, for tests, benchmarks and trying the workflow.

Contract
--------
* :func:`write_synthetic_ortho` writes ``path`` (RGBA GeoTIFF, tiled, DEFLATE; the alpha band marks the valid
  area, an ellipse leaving a transparent collar as a stitched flight does) and ``<stem>_labels.tif`` (uint8
  source indices of :meth:`ClassTable.builtin` with their colour table, nodata 255 outside the valid area), in ``crs`` with a north-up
  geotransform of ``gsd`` metres per pixel whose top-left corner is ``origin``.
* The ground is drawn by :func:`droneseg.data.synthetic.render_scene` at ``render_gsd`` in square sections of
  ``section`` rendered pixels (each its own scene, seeded by ``(seed, row, column)``), then brought to ``gsd`` by nearest
  resampling: copies at several GSDs with one ``render_gsd`` show the same ground. ``flat`` paints each class in
  its palette colour (for tests whose classifier is a colour lookup).
* Memory is bounded by one row of sections, whatever the size. Returns the known area (m²) of each source class
  inside the valid area.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import CRSError
from rasterio.windows import Window

from droneseg.classes import ClassTable
from droneseg.data.synthetic import render_scene
from droneseg.errors import DataError
from droneseg.files import atomic_path

TABLE = ClassTable.builtin()


def labels_path(path: Path) -> Path:
    return Path(path).with_name(f"{Path(path).stem}_labels.tif")


def write_synthetic_ortho(path: Path, size: tuple[int, int], gsd: float = 0.05, crs: str = "EPSG:32633",
                          origin: tuple[float, float] = (500_000.0, 5_200_000.0), seed: int = 0,
                          render_gsd: float | None = None, section: int = 2048, flat: bool = False,
                          collar: bool = True) -> dict[str, float]:
    """Write a synthetic orthomosaic and its labels (see the module contract); -> {class name: m²}."""
    width, height = size
    if min(width, height) < 16:
        raise DataError(f"size {width}x{height} is below the minimum 16x16")
    if not gsd > 0:
        raise DataError(f"gsd must be a positive number of metres per pixel, got {gsd}")
    render_gsd = render_gsd or gsd
    try:
        crs_obj = CRS.from_user_input(crs)
    except CRSError as exc:
        raise DataError(f"--crs {crs!r}: not a CRS GDAL knows ({exc})") from None
    transform = Affine.translation(*origin) @ Affine.scale(gsd, -gsd)  # north up, top-left corner at origin
    common = dict(driver="GTiff", width=width, height=height, crs=crs_obj, transform=transform, tiled=True,
                  blockxsize=256, blockysize=256, compress="deflate", bigtiff="if_safer")
    counts = np.zeros(256, np.int64)
    path = Path(path)
    with atomic_path(path, ".tif") as tmp, atomic_path(labels_path(path), ".tif") as tmp_labels, \
            rasterio.open(tmp, "w", count=4, dtype="uint8", photometric="RGB", **common) as dst, \
            rasterio.open(tmp_labels, "w", count=1, dtype="uint8", nodata=255, **common) as lab:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
        lab.write_colormap(1, {i: (*map(int, c), 255) for i, c in enumerate(TABLE.colors)})  # opens as a class map
        ratio = render_gsd / gsd  # output pixels per rendered pixel
        edges = lambda n: sorted({min(n, round(r * ratio)) for r in range(0, round(n / ratio) + section, section)})  # noqa: E731
        ys, xs = edges(height), edges(width)
        for j, (y, y_end) in enumerate(zip(ys, ys[1:])):
            for i, (x, x_end) in enumerate(zip(xs, xs[1:])):
                w, h = x_end - x, y_end - y
                rw, rh = (max(16, round(v / ratio)) for v in (w, h))
                image, mask = render_scene(rw, rh, np.random.default_rng([seed, j, i]), gsd=render_gsd)
                if (rw, rh) != (w, h):
                    mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
                    image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.NEAREST))
                if flat:
                    image = TABLE.index_to_rgb(mask)
                valid = _footprint(x, y, w, h, width, height) if collar else np.ones((h, w), bool)
                alpha = np.where(valid, 255, 0).astype(np.uint8)
                rgb = np.where(valid[..., None], image, 0).astype(np.uint8)
                win = Window(x, y, w, h)
                dst.write(np.concatenate([rgb, alpha[..., None]], -1).transpose(2, 0, 1), window=win)
                lab.write(np.where(valid, mask, 255).astype(np.uint8)[None], window=win)
                counts += np.bincount(mask[valid], minlength=256)
    return {name: float(counts[i]) * gsd * gsd for i, name in enumerate(TABLE.names) if counts[i]}


def _footprint(x: int, y: int, w: int, h: int, width: int, height: int) -> np.ndarray:
    """(h, w) bool: inside the ellipse that fills 94% x 90% of the scene (the flight's valid area)."""
    yy, xx = np.ogrid[y : y + h, x : x + w]  # broadcast: no (h, w) float grids
    yy, xx = yy + 0.5, xx + 0.5
    return ((xx - width / 2) / (0.47 * width)) ** 2 + ((yy - height / 2) / (0.45 * height)) ** 2 <= 1.0
