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


def survey_paths(path: Path) -> dict[str, Path]:
    """The files :func:`write_synthetic_survey` writes beside the orthomosaic ``path``."""
    stem = Path(path).stem
    return {"labels": Path(path).with_name(f"{stem}_labels.gpkg"), "extent": Path(path).with_name(f"{stem}_extent.gpkg"),
            "classes": Path(path).with_name(f"{stem}_classes.csv"), "survey": Path(path).with_name(f"{stem}_survey.yaml")}


def write_synthetic_survey(path: Path, block_px: int | None = None) -> dict[str, Path]:
    """The labels of the synthetic orthomosaic ``path`` (written before, with its ``_labels.tif``) as a survey: the
    true classes as polygons with their names (``<stem>_labels.gpkg``, field ``class``), the valid area as the extent
    (``<stem>_extent.gpkg``), the class table (``<stem>_classes.csv``) and ``<stem>_survey.yaml`` naming them, with blocks of ``block_px`` pixels (default:
    a third of the scene's short side, at most 2048). -> the paths written."""
    import pyogrio.raw
    import shapely
    import yaml

    from droneseg.files import atomic_write_text
    from droneseg.geo.outputs import _polygons

    out = survey_paths(path)
    with rasterio.open(labels_path(path)) as ds:
        names = dict(enumerate(TABLE.names))
        geoms, values = [], []
        for geom, value in _polygons(ds, names, 255):
            geoms.append(shapely.geometry.shape(geom))
            values.append(TABLE.names[value])
        # the footprint on a nearest sample of at most 2048 px: an extent need not follow every pixel
        f = min(1.0, 2048 / max(ds.width, ds.height))
        shape = (max(1, round(ds.height * f)), max(1, round(ds.width * f)))
        valid = (ds.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.nearest) != 255).astype(np.uint8)
        from rasterio.features import shapes

        scaled = ds.transform @ Affine.scale(ds.width / shape[1], ds.height / shape[0])
        footprint = [shapely.geometry.shape(g) for g, v in shapes(valid, mask=valid == 1, transform=scaled) if v]
        crs, short = ds.crs.to_wkt(), min(ds.width, ds.height)
    from droneseg.geo.raster import open_ortho

    with open_ortho(path) as o:  # metres per pixel on the ground, whatever the CRS's unit
        gsd = max(o.gsd)
    for target, gs, fields, data in ((out["labels"], geoms, ["class"], [np.array(values, dtype=object)]),
                                     (out["extent"], [shapely.union_all(footprint)], ["name"],
                                      [np.array(["flight"], dtype=object)])):
        with atomic_path(target, ".gpkg") as tmp:
            tmp.unlink()  # GDAL creates the file itself
            pyogrio.raw.write(tmp, geometry=shapely.to_wkb(np.array(gs, dtype=object)), field_data=data,
                              fields=fields, layer=target.stem, driver="GPKG", geometry_type="Unknown", crs=crs)
    rows = "".join(f"{n},{r},{g},{b}\n" for n, (r, g, b) in zip(TABLE.names, TABLE.colors.tolist()))
    atomic_write_text(out["classes"], "name,r,g,b\n" + rows)  # the dataset's 24 classes: its schemes apply
    block = block_px or min(2048, short // 3)
    description = {"rasters": [Path(path).name], "labels": out["labels"].name, "class_field": "class",
                   "classes": out["classes"].name, "extent": out["extent"].name, "block": round(block * gsd, 6)}
    atomic_write_text(out["survey"], "# a synthetic survey: droneseg train -c demo --data " + out["survey"].name
                      + "\n" + yaml.safe_dump(description, sort_keys=False))
    return out
