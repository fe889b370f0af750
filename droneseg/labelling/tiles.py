"""Orthomosaic tiles to label in any tool, and their labels back onto the map.

Contract
--------
* :func:`cut_tiles`: an orthomosaic -> ``<stem>_r<row>_c<col>.png`` tiles of ``size`` x ``size`` pixels at its own
  resolution (8-bit RGB through the orthomosaic reader of ``predict``: bit depth scaled, colour bands chosen), each
  with a world file (``.pgw``) and, for all, ``tiles.json`` (the source, its CRS as WKT, each tile's geotransform).
  Only whole tiles whose every pixel holds data are cut: none over the collar or the raster's ragged edge, so a
  labeller never paints nodata.
* :func:`tiles_to_survey`: an imported dataset whose photos are such tiles -> a survey beside it (step 12):
  ``labels.gpkg`` (the masks polygonised on each tile's geotransform, in the orthomosaic's CRS, field ``class``),
  ``extent.gpkg`` (the labelled tiles' footprints: where the labelling is complete), ``classes.csv`` and
  ``survey.yaml`` (the orthomosaic as its raster). Pixels no label covers stay unlabelled (never background).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from droneseg.errors import DataError
from droneseg.files import atomic_save, atomic_write_text

SIDECAR = "tiles.json"


def cut_tiles(path: Path, out: Path, size: int = 1024, nodata: float | str | None = None) -> dict:
    """Cut ``path`` into tiles in ``out`` (new, or empty); -> {"tiles": n, "skipped": n over the collar or edge,
    "sidecar": path}. Raises DataError naming the file."""
    import rasterio
    from PIL import Image
    from rasterio.windows import Window

    from droneseg.geo.raster import open_ortho

    if size < 32:
        raise DataError(f"--size {size}: tiles need at least 32 pixels a side")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: not empty; tiles are cut into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(path).stem
    tiles: dict[str, dict] = {}
    with rasterio.Env(GDAL_CACHEMAX=64), open_ortho(path, nodata) as ortho:
        if ortho.ds.crs is None:
            raise DataError(f"{path}: no CRS; tiles without a georeference cannot come back onto the map")
        t = ortho.ds.transform
        for row in range(ortho.height // size):
            for col in range(ortho.width // size):
                win = Window(col * size, row * size, size, size)
                if not ortho.valid(win).all():
                    continue
                rgb, _ = ortho.read_working(win, (size, size))
                name = f"{stem}_r{row:03d}_c{col:03d}.png"
                atomic_save(out / name, lambda fh, a=rgb: Image.fromarray(a).save(fh, format="PNG"))
                tt = t * rasterio.Affine.translation(col * size, row * size)
                # a world file: pixel sizes and rotations, then the centre of the upper-left pixel
                atomic_write_text((out / name).with_suffix(".pgw"), "".join(f"{v!r}\n" for v in (
                    tt.a, tt.d, tt.b, tt.e, tt.c + tt.a / 2 + tt.b / 2, tt.f + tt.d / 2 + tt.e / 2)))
                tiles[name] = {"row_off": row * size, "col_off": col * size, "transform": list(tt)[:6]}
        cells = -(-ortho.height // size) * -(-ortho.width // size)  # the ragged edge's partial tiles too
        skipped = cells - len(tiles)
        crs = ortho.ds.crs.to_wkt()
    if not tiles:
        raise DataError(f"{path}: no whole {size}-px tile holds data everywhere; try a smaller --size")
    atomic_write_text(out / SIDECAR, json.dumps({"source": str(Path(path).resolve()), "crs": crs, "size": size,
                                                 "tiles": tiles}, indent=1) + "\n")
    return {"tiles": len(tiles), "skipped": skipped, "sidecar": out / SIDECAR}


def read_sidecar(folder: Path) -> dict | None:
    """The ``tiles.json`` of a folder of tiles, or None."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable tile sidecar ({exc})") from None


def tiles_to_survey(dataset: Path, sidecar: dict) -> Path:
    """Write a survey (see the contract) into ``dataset``, an imported dataset of tiles; -> its ``survey.yaml``."""
    import pyogrio.raw
    import rasterio
    import shapely
    import yaml
    from rasterio.features import shapes

    from droneseg.classes import ClassTable
    from droneseg.data.layout import find_layout
    from droneseg.images import read_mask

    layout = find_layout(dataset)
    table = layout.table
    geoms, names, footprints = [], [], []
    for s in layout.samples:
        tile = sidecar["tiles"].get(s.image.name)
        if tile is None:
            raise DataError(f"{s.image}: not a tile of {sidecar['source']} (not in its {SIDECAR})")
        transform = rasterio.Affine(*tile["transform"])
        mask = read_mask(s.mask, s.mask_kind, table)
        for geom, value in shapes(mask, mask=mask > 0, transform=transform, connectivity=4):
            geoms.append(shapely.geometry.shape(geom))
            names.append(table.names[int(value)])
        h, w = mask.shape
        footprints.append(shapely.box(*_bounds(transform, w, h)))
    if not geoms:
        raise DataError(f"{dataset}: no labelled pixel to turn into polygons")
    crs = sidecar["crs"]
    pyogrio.raw.write(dataset / "labels.gpkg", geometry=shapely.to_wkb(np.array(geoms, dtype=object)),
                      field_data=[np.array(names, dtype=object)], fields=["class"], layer="labels", driver="GPKG",
                      geometry_type="Polygon", crs=crs)
    pyogrio.raw.write(dataset / "extent.gpkg", geometry=shapely.to_wkb(np.array(footprints, dtype=object)),
                      field_data=[], fields=[], layer="extent", driver="GPKG", geometry_type="Polygon", crs=crs)
    real = ClassTable(tuple(n for n in table.names if n != "unlabeled"),
                      np.array([c for n, c in zip(table.names, table.colors) if n != "unlabeled"], np.uint8))
    atomic_write_text(dataset / "classes.csv", "name,r,g,b\n" + "".join(
        f"{n},{r},{g},{b}\n" for n, (r, g, b) in zip(real.names, real.colors.tolist())))
    survey = dataset / "survey.yaml"
    atomic_write_text(survey, yaml.safe_dump({"rasters": [sidecar["source"]], "labels": "labels.gpkg",
                                              "class_field": "class", "classes": "classes.csv",
                                              "extent": "extent.gpkg"}, sort_keys=False))
    return survey


def _bounds(transform, w: int, h: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a north-up w x h window."""
    xs = [transform.c, transform.c + w * transform.a]
    ys = [transform.f, transform.f + h * transform.e]
    return min(xs), min(ys), max(xs), max(ys)
