"""Orthomosaics: georeferenced rasters in, georeferenced classes, polygons and areas out (the ``geo`` extra).

Contract
--------
* :func:`is_ortho` tells, without the extra, whether ``predict`` should treat an input as an orthomosaic: a TIFF
  carrying GeoTIFF tags (or a BigTIFF, which no photo is), or a raster format only GDAL reads (``.vrt``, ``.jp2``,
  ``.img``). Everything else stays a photo.
* :func:`require` raises a :class:`~droneseg.errors.UserError` naming the extra (``pip install 'droneseg[geo]'``)
  when rasterio, pyogrio or shapely is missing; photo users never import them.
* The work itself: :mod:`droneseg.geo.raster` (reading windows at the model's ground sampling distance),
  :mod:`droneseg.geo.outputs` (Cloud-Optimized GeoTIFF, polygons, class areas, preview) and
  :mod:`droneseg.geo.ortho` (the block loop that joins them to :class:`~droneseg.tiler.Tiler`).
"""

from __future__ import annotations

from pathlib import Path

from droneseg import extras
from droneseg.images import BIGTIFF, tiff_directory

GDAL_SUFFIXES = (".vrt", ".jp2", ".img")
"""Raster formats that are never photos: such an input goes to the orthomosaic path."""
GEOTIFF_TAGS = (33550, 33922, 34264, 34735)  # ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory
EXTRA_HINT = "pip install 'droneseg[geo]'"


WORLD_FILES = {".tif": (".tfw", ".tifw"), ".tiff": (".tfw", ".tiffw"), ".jpg": (".jgw", ".jpgw"),
               ".jpeg": (".jgw", ".jpegw"), ".png": (".pgw", ".pngw")}
"""World files GDAL reads beside an image (``.wld`` too), by the image's suffix."""


def georeferenced_by_sidecar(path: Path) -> bool:
    """Whether a file beside ``path`` georeferences it for GDAL: a world file (``ortho.tfw``, ``.wld``…) or an
    ``ortho.tif.aux.xml`` holding a geotransform or a CRS."""
    path = Path(path)
    for suffix in (*WORLD_FILES.get(path.suffix.lower(), ()), ".wld"):  # a few stat calls, no folder listing
        if any(path.with_name(f"{path.stem}{s}").is_file() for s in (suffix, suffix.upper())):
            return True
    aux = path.with_name(path.name + ".aux.xml")
    if aux.is_file():
        try:
            text = aux.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        return "<GeoTransform>" in text or "<SRS" in text
    return False


def is_ortho(path: Path) -> bool:
    """Whether ``path`` is an orthomosaic input: whatever GDAL reads as georeferenced. A GeoTIFF (tags read from the
    first directory, no decoding), a BigTIFF, a GDAL-only format, or an image with a world file or an ``.aux.xml``
    georeference beside it. A file that cannot be read as a TIFF is not one (the photo reader says why)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in GDAL_SUFFIXES:
        return True
    if suffix in WORLD_FILES and georeferenced_by_sidecar(path):
        return True
    if suffix not in (".tif", ".tiff"):
        return False
    ifd = tiff_directory(path)
    if ifd == BIGTIFF:  # over 4 GB: never a camera's photo
        return True
    return ifd is not None and any(tag in ifd for tag in GEOTIFF_TAGS)


def require() -> None:
    """Raise UserError naming the ``geo`` extra when a package it brings is missing."""
    extras.require("geo", "rasterio", "pyogrio", "shapely", what="orthomosaics")
