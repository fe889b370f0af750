"""A survey as a dataset: orthomosaics and vector labels (QGIS polygons), described by one YAML file.

Contract
--------
* :class:`SurveyConfig` is the YAML (``--data survey.yaml``)::

      rasters: [flight1/odm_orthophoto.tif, "flight2/*.tif"]   # any raster GDAL reads; globs allowed
      labels: labels.gpkg          # any vector source OGR reads; ``layer:`` optional
      class_field: class           # class names, or integer ids into ``classes:``
      classes: classes.csv         # optional: name, r, g, b; else the names found, sorted
      extent: extents.gpkg         # optional: polygons where the labelling is complete
      background: null             # optional: the class of unlabelled pixels inside the extent
      split_field: split           # optional: an extent attribute holding train / val / test
      gsd: 0.05                    # optional: metres per working pixel; else the rasters' own, rounded
      block: 100                   # optional: spatial block side in metres (default 2048 working pixels)
      buffer: 25                   # optional: gap between blocks of different splits, metres (default: one
                                   #   crop or inference tile, whichever is larger; 512 px where neither is known)
      line_width: 0.5              # optional: points and lines become polygons this wide (else refused)

  Relative paths are read from the YAML file's folder.
* Labels: reprojected from the CRS the vector source declares (its WKT; never a guessed EPSG code) to each
  raster's; refused in one line when they declare none and the raster has another. Invalid geometries are
  repaired (``shapely.make_valid``, polygonal parts kept) and counted; empty and null ones are skipped and counted.
  Where polygons of different classes overlap, **the smaller polygon wins** (drawn last): a car on a road, a tree
  on a lawn. Pixels no polygon covers are ignored (255: never trained, never scored) unless ``background`` names a
  class, and then only inside the extent (without one: inside the rasters' valid area).
* Spatial blocks: each raster's working grid (its pixels at the working GSD) is cut into square blocks of
  ``block`` metres; the blocks holding labels are drawn to train/val/test by a seeded shuffle with the shares asked
  for, or get the split of the extent polygon (``split_field``) their centre lies in. A block is one sample: its
  cache entry holds its own pixels only. Of two neighbouring blocks of different splits, the training block (test
  before val) ignores its pixels within ``buffer`` of the other, so that no labelled training pixel lies within
  ``buffer`` of a scored validation or test pixel, at corners too.
* Pixels come from :func:`droneseg.geo.raster.open_ortho` (validity by alpha, mask or nodata: invalid -> ignored)
  resampled to the working grid with the image filter; labels are rasterised with ``rasterio.features.rasterize``
  on that grid, window by window (a block at a time: memory is bounded by a block, never the scene).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from droneseg.classes import IGNORE_INDEX, ClassTable
from droneseg.errors import DataError
from droneseg.files import file_identity, read_yaml_model

SPLITS = ("train", "val", "test")
DEFAULT_BLOCK_PX = 2048
DEFAULT_BUFFER_PX = 512
SURVEY_SUFFIXES = (".yaml", ".yml")
SURVEY_VERSION = 1
PALETTE = np.array([  # Glasbey-like distinct colours for classes without a table (first: grey for 'background')
    (128, 128, 128), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128)], np.uint8)


def is_survey(path: Path | str | None) -> bool:
    """Whether ``--data`` names a survey description (a YAML file) rather than a dataset folder."""
    return path is not None and Path(path).suffix.lower() in SURVEY_SUFFIXES and Path(path).is_file()


class SurveyConfig(BaseModel):
    """The survey YAML (see the module contract)."""

    model_config = ConfigDict(extra="forbid")
    rasters: list[str] = Field(min_length=1)
    labels: str
    layer: str | None = None
    class_field: str = "class"
    classes: str | None = None
    extent: str | None = None
    extent_layer: str | None = None
    background: str | None = None
    split_field: str | None = None
    gsd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    block: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    buffer: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    line_width: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @field_validator("rasters", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


@dataclass
class VectorLayer:
    """Polygons read from a vector source, in its own CRS."""

    path: Path
    layer: str
    geoms: np.ndarray  # (n,) shapely geometries (polygonal)
    values: list  # (n,) the attribute's values (class names or ids, or split names)
    fids: np.ndarray  # (n,) feature ids, for messages
    crs_wkt: str | None
    repaired: int = 0
    skipped: list[str] = field(default_factory=list)  # "feature 12: empty geometry"

    def where(self) -> str:
        return f"{self.path} (layer {self.layer})"


def read_polygons(path: Path, layer: str | None, attribute: str | None, line_width: float | None = None
                  ) -> VectorLayer:
    """The polygons of ``layer`` of ``path`` and their ``attribute``; points and lines refused in one line naming
    the layer and feature (or buffered to ``line_width`` CRS units when given). Raises DataError."""
    import pyogrio
    import pyogrio.raw
    import shapely

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        layers = [str(row[0]) for row in pyogrio.list_layers(path)]
    except Exception as exc:  # noqa: BLE001 - pyogrio/GDAL errors of an unreadable source
        raise DataError(f"{path}: cannot read as a vector source ({str(exc).splitlines()[0]})") from None
    if layer is None:
        if len(layers) != 1:
            raise DataError(f"{path}: {len(layers)} layers ({', '.join(layers[:5])}); name one with layer:")
        layer = layers[0]
    elif layer not in layers:
        raise DataError(f"{path}: no layer {layer!r} (it has {', '.join(layers[:5])})")
    try:
        meta = pyogrio.read_info(path, layer=layer)
        fields = list(meta["fields"])
        if attribute is not None and attribute not in fields:
            raise DataError(f"{path} (layer {layer}): no field {attribute!r} (fields: {', '.join(fields) or 'none'})")
        _, fids, wkb, data = pyogrio.raw.read(path, layer=layer, columns=[attribute] if attribute else [],
                                              return_fids=True)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyogrio/GDAL errors of a damaged source
        raise DataError(f"{path} (layer {layer}): cannot read its features ({str(exc).splitlines()[0]})") from None
    crs = meta.get("crs")
    crs_wkt = None
    if crs:
        from rasterio.crs import CRS

        crs_wkt = CRS.from_user_input(crs).to_wkt()
    metric = is_metric(crs_wkt)
    geoms = shapely.from_wkb(wkb)
    values = list(data[0]) if attribute else [None] * len(geoms)
    out = VectorLayer(path, layer, np.empty(0, object), [], np.empty(0, np.int64), crs_wkt)
    keep_g, keep_v, keep_f = [], [], []
    where = f"{path} (layer {layer})"
    valid = shapely.is_valid(geoms)  # one vectorised call: a polygonised layer holds 10⁵ features
    parts = shapely.get_num_geometries(geoms)
    for fid, geom, value, ok, n in zip(fids, geoms, values, valid, parts):
        if geom is None or shapely.is_empty(geom):
            out.skipped.append(f"feature {fid}: {'null' if geom is None else 'empty'} geometry")
            continue
        if attribute is not None and (value is None or (isinstance(value, float) and math.isnan(value))
                                      or (isinstance(value, str) and not value.strip())):
            out.skipped.append(f"feature {fid}: no {attribute}")
            continue
        kind = shapely.get_type_id(geom)
        if kind not in (3, 6):  # Polygon, MultiPolygon
            if kind == 7:  # a GeometryCollection: its polygonal parts
                geom = _polygonal(geom)
            elif line_width is not None:
                if not metric:
                    raise DataError(f"{where}: line_width is in metres and this layer is not in a metric CRS; "
                                    "save it in the orthomosaic's CRS, or digitise polygons")
                geom = shapely.buffer(geom, line_width / 2)
            else:
                name = shapely.geometry.base.GEOMETRY_TYPES[kind]
                raise DataError(f"{where}: feature {fid} is a {name}; labels are polygons (or give line_width: to "
                                "draw points and lines that wide)")
        if kind in (3, 6) and ok and (kind == 3 or n == 1):  # the common case: one valid polygon as it is
            keep_g.append(geom if kind == 3 else shapely.get_geometry(geom, 0))
            keep_v.append(value.strip() if isinstance(value, str) else value)
            keep_f.append(int(fid))
            continue
        if not shapely.is_valid(geom):
            geom = _polygonal(shapely.make_valid(geom))
            out.repaired += 1
        if geom is None or shapely.is_empty(geom):
            out.skipped.append(f"feature {fid}: no area left after repair")
            continue
        for part in shapely.get_parts(geom):  # parts ranked one by one: a dissolved layer's cars still win
            keep_g.append(part)
            keep_v.append(value.strip() if isinstance(value, str) else value)
            keep_f.append(int(fid))
    out.geoms = np.array(keep_g, dtype=object)
    out.values, out.fids = keep_v, np.array(keep_f, np.int64)
    return out


def _polygonal(geom):
    """The polygonal part of a geometry (a repaired polygon may come back as a collection with lines)."""
    import shapely

    if geom is None:
        return None
    if shapely.get_type_id(geom) in (3, 6):
        return geom
    parts = [g for g in shapely.get_parts(geom) if shapely.get_type_id(g) in (3, 6)]
    return shapely.union_all(parts) if parts else None


@dataclass(frozen=True)
class SurveyOptions:
    """How a survey is cut into train/val/test blocks (``data.val_fraction``…); ``assigned``: id -> split of a run
    (a resumed run, the evaluation of a run on its own survey), instead of a new draw."""

    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0
    image_filter: str = "area"
    assigned: dict[str, str] | None = None
    gsd: float | None = None  # metres per working pixel (``data.gsd``), over the survey's own
    min_buffer_px: int = 0  # the crop or tile, whichever is larger: a shorter buffer is refused
    grid: dict | None = None  # a run's {gsd, block_px, buffer_px}, to cut the blocks as it did


# -- the survey ----------------------------------------------------------------------------------------------------
@dataclass
class Survey:
    """A loaded survey: its files, class table and labels (read once)."""

    path: Path
    config: SurveyConfig
    rasters: list[Path]
    labels: VectorLayer
    table: ClassTable
    table_path: Path | None
    classes: np.ndarray  # (n,) int source index of each label polygon
    extent: VectorLayer | None
    background: int | None  # source index of unlabelled pixels inside the extent

    @property
    def root(self) -> Path:
        return self.path.parent

    def files(self) -> list[Path]:
        """Every file the survey reads (for the dataset's fingerprint and the cache keys)."""
        out = [self.path, *self.rasters, self.labels.path]
        out += [self.extent.path] if self.extent is not None else []
        out += [self.table_path] if self.table_path is not None else []
        return out


def _resolve(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def load_survey(path: Path) -> Survey:
    """Read and check a survey YAML (see the module contract); raises DataError naming the file and the key."""
    path = Path(path)
    cfg = read_yaml_model(path, SurveyConfig, "the survey")
    base = path.parent
    rasters: list[Path] = []
    for pattern in cfg.rasters:
        full = _resolve(base, pattern)
        if any(c in pattern for c in "*?["):  # wildcards in folders too (flight*/odm_orthophoto.tif), ** recursive
            where = pattern if Path(pattern).is_absolute() else glob.escape(str(base)) + "/" + pattern
            hits = sorted(Path(p) for p in glob.glob(where, recursive=True))
        else:
            hits = [full]
        hits = [h for h in hits if h.is_file()]
        if not hits:
            raise DataError(f"{path}: rasters: {pattern!r} names no file (looked for {full})")
        rasters += [h for h in hits if h not in rasters]
    labels = read_polygons(_resolve(base, cfg.labels), cfg.layer, cfg.class_field, cfg.line_width)
    if not len(labels.geoms):
        raise DataError(f"{labels.where()}: no label polygons")
    table, table_path = _class_table(cfg, base, labels)
    classes = _class_indices(labels, table, cfg.class_field, table_path)
    extent = None
    if cfg.extent is not None:
        extent = read_polygons(_resolve(base, cfg.extent), cfg.extent_layer, cfg.split_field)
        if cfg.split_field is not None:
            bad = sorted({str(v) for v in extent.values if str(v).lower() not in SPLITS})
            if bad:
                raise DataError(f"{extent.where()}: {cfg.split_field} holds {', '.join(bad[:3])}; use train, val "
                                "or test")
            extent.values = [str(v).lower() for v in extent.values]
    elif cfg.split_field is not None:
        raise DataError(f"{path}: split_field: needs an extent: layer holding it")
    background = None
    if cfg.background is not None:
        if cfg.background not in table.names:
            raise DataError(f"{path}: background: {cfg.background!r} is not a class ({', '.join(table.names)})")
        background = table.names.index(cfg.background)
    return Survey(path, cfg, rasters, labels, table, table_path, classes, extent, background)


def _class_table(cfg: SurveyConfig, base: Path, labels: VectorLayer) -> tuple[ClassTable, Path | None]:
    if cfg.classes is not None:
        table_path = _resolve(base, cfg.classes)
        return ClassTable.from_csv(table_path), table_path
    if any(not isinstance(v, str) for v in labels.values):
        raise DataError(f"{labels.where()}: {cfg.class_field} holds numbers; give classes: a CSV (name, r, g, b) "
                        "whose rows they index")
    names = sorted(set(labels.values) | ({cfg.background} if cfg.background else set()))
    colors = np.array([PALETTE[(i + 1) % len(PALETTE)] for i in range(len(names))], np.uint8)
    return ClassTable(tuple(names), colors), None


def _class_indices(labels: VectorLayer, table: ClassTable, attribute: str, table_path: Path | None) -> np.ndarray:
    """Source index of each polygon: its name's row, or its integer id; DataError naming the feature otherwise."""
    out = np.empty(len(labels.values), np.int64)
    for i, (fid, v) in enumerate(zip(labels.fids, labels.values)):
        if isinstance(v, str) and v in table.names:
            out[i] = table.names.index(v)
        elif isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer() and 0 <= int(v) < len(table):
            out[i] = int(v)
        elif isinstance(v, str) and v.isdigit() and int(v) < len(table):
            out[i] = int(v)
        else:
            where = f"the classes of {table_path}" if table_path else "the class table"
            raise DataError(f"{labels.where()}: feature {fid}: {attribute} {v!r} is not in {where} "
                            f"({', '.join(table.names[:8])}{'…' if len(table) > 8 else ''})")
    return out


# -- blocks and the split --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """One spatial block of one raster: what its cache entry is built from (picklable, for the cache's workers)."""

    raster: str  # path
    window: tuple[float, float, float, float]  # (col_off, row_off, width, height) in raster pixels
    shape: tuple[int, int]  # (h, w) working pixels
    transform: tuple[float, ...]  # working grid's affine (a, b, c, d, e, f) in the raster's CRS
    split: str
    ignore: tuple[tuple[int, int, int, int], ...]  # (row0, col0, row1, col1) working pixels: the buffer
    labels: tuple[tuple[bytes, int], ...]  # (WKB in the raster's CRS, source index), in drawing order
    extent: tuple[bytes, ...] | None  # extent polygons (WKB, raster CRS) when background is set
    background: int | None
    image_filter: str
    key: str  # digest of all of the above and the source files' identity

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the raster's CRS (north-up grids)."""
        a, b, c, d, e, f = self.transform
        h, w = self.shape
        xs, ys = (c, c + a * w + b * h), (f, f + d * w + e * h)
        return min(xs), min(ys), max(xs), max(ys)


@dataclass
class SurveyPlan:
    """The survey cut into blocks: samples by split, and the numbers check-data reports."""

    survey: Survey
    gsd: float
    block_px: int
    buffer_px: int
    blocks: dict[str, Block]  # id -> block
    notes: list[str] = field(default_factory=list)  # said by check-data (reprojected labels, geographic CRS…)

    draw: dict = field(default_factory=dict)  # val_fraction, test_fraction, seed of the split draw
    cells: list = field(default_factory=list, repr=False)  # (id, block) with its split, before buffers and keys
    ident: list = field(default_factory=list, repr=False)  # the source files' identity, for the cache keys

    def reassigned(self, assigned: dict[str, str] | None) -> SurveyPlan:
        """This plan with the blocks' splits as ``assigned`` (id -> split, a run's; blocks it does not name left
        out) or as drawn (None): buffers and cache keys made for them. No geometry is read again."""
        from dataclasses import replace

        cells = self.cells
        if assigned is not None:
            cells = [(i, replace(b, split=assigned[i])) for i, b in cells if i in assigned]
            if not cells:
                raise DataError(f"{self.survey.path}: none of the run's blocks is in this survey (another block size "
                                "or GSD?)")
        blocks = {i: _keyed(b, self.ident, self.gsd) for i, b in _with_buffers(cells, self.buffer_px).items()}
        return replace(self, blocks=blocks, cells=cells)

    def grid(self) -> dict:
        """What cuts and splits the blocks again as now (recorded in model.json)."""
        return {"gsd": self.gsd, "block_px": self.block_px, "buffer_px": self.buffer_px, **self.draw}

    def splits(self) -> dict[str, list[str]]:
        return {s: [i for i, b in self.blocks.items() if b.split == s] for s in SPLITS}


def raster_names(rasters: list[Path], base: Path) -> dict[Path, str]:
    """A block-id prefix per raster: its stem, or where stems repeat (``flight1/odm_orthophoto.tif``,
    ``flight2/odm_orthophoto.tif``) its path from the survey's folder joined by ``_``.

    >>> raster_names([Path("/s/a/o.tif"), Path("/s/b/o.tif"), Path("/s/c.tif")], Path("/s"))
    {PosixPath('/s/a/o.tif'): 'a_o', PosixPath('/s/b/o.tif'): 'b_o', PosixPath('/s/c.tif'): 'c'}
    """
    stems = [p.stem for p in rasters]
    out = {}
    for p in rasters:
        if stems.count(p.stem) == 1:
            out[p] = p.stem
        else:
            try:
                rel = p.resolve().relative_to(base.resolve())
            except ValueError:
                rel = Path(*p.resolve().parts[1:])
            out[p] = "_".join([*rel.parent.parts, p.stem])
    seen: dict[str, int] = {}
    for p, name in out.items():  # still equal (a/b_o.tif and a_b/o.tif): numbered
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            out[p] = f"{name}_{seen[name]}"
    return out


def plan_survey(survey: Survey, options=None) -> SurveyPlan:
    """Cut ``survey`` into blocks and draw their splits (see the module contract) as ``options`` (a
    :class:`~droneseg.data.layout.SurveyOptions`) say: ``assigned`` (id -> split, a run's) replaces the draw and
    blocks it does not name are left out; ``grid`` (a run's) fixes the GSD, block and buffer. Raises DataError."""
    options = options or SurveyOptions()
    grid = options.grid or {}  # a run's: its grid and its draw
    val_fraction = grid.get("val_fraction", options.val_fraction)
    test_fraction = grid.get("test_fraction", options.test_fraction)
    seed = grid.get("seed", options.seed)
    image_filter, assigned = options.image_filter, options.assigned
    import rasterio
    import shapely

    from droneseg.geo.raster import open_ortho

    cfg = survey.config
    orthos = []
    notes: list[str] = []
    for p in survey.rasters:
        with open_ortho(p) as o:
            t = o.ds.transform
            if abs(t.b) > 1e-12 * abs(t.a) or abs(t.d) > 1e-12 * abs(t.e):
                raise DataError(f"{p}: a rotated geotransform; warp it north-up first (gdalwarp)")
            orthos.append((p, o.ds.crs, t, o.width, o.height, o.gsd, o.area.warped, list(o.ds.files)))
            if o.area.warped:
                notes.append(f"{p}: {o.area.why}; its ground resolution is measured on an equal-area projection")
            if abs(o.gsd[0] - o.gsd[1]) > 0.01 * max(o.gsd):
                notes.append(f"{p}: non-square pixels ({o.gsd[0]:.4g} x {o.gsd[1]:.4g} m); the working grid is square")
    gsd = grid.get("gsd") or options.gsd or cfg.gsd or _round_gsd(max(max(o[5]) for o in orthos))
    block_px = grid.get("block_px") or (max(32, round(cfg.block / gsd)) if cfg.block else DEFAULT_BLOCK_PX)
    if "buffer_px" in grid:
        buffer_px = int(grid["buffer_px"])
    elif cfg.buffer is None:
        buffer_px = options.min_buffer_px or DEFAULT_BUFFER_PX
    else:
        buffer_px = round(cfg.buffer / gsd)
        if buffer_px < options.min_buffer_px:
            raise DataError(f"{survey.path}: buffer: {cfg.buffer:g} m is {buffer_px} working pixels at {gsd:g} m/px, "
                            f"less than one crop or tile ({options.min_buffer_px} px): validation would leak "
                            f"through it; give at least {options.min_buffer_px * gsd:.3g} m")
    cells: list[tuple[str, Block]] = []
    names = raster_names(survey.rasters, survey.root)
    outside_split = 0  # labelled blocks whose centre lies in no extent polygon of split_field: left out
    # every file GDAL reads for a raster (a VRT's sources, .msk, .aux.xml, world files) ties the cache to it
    ident = [file_identity(f) for f in survey.files()] + [file_identity(Path(f)) for o in orthos for f in o[7]
                                                           if Path(f).is_file()]
    per_crs: dict[str, tuple] = {}
    for p, crs, t, width, height, (gx, gy), _, _ in orthos:
        if survey.labels.crs_wkt is None and crs is not None:
            raise DataError(f"{survey.labels.where()}: declares no CRS and {p} is in {crs.to_string() or 'a CRS'}; "
                            "give the labels their CRS (in QGIS: Layer Properties > Source)")
        key = crs.to_wkt() if crs is not None else ""
        if key not in per_crs:  # labels, extent, search tree and drawing rank in this CRS: once per CRS, not raster
            labels = survey.labels.geoms
            if survey.labels.crs_wkt is not None and rasterio.crs.CRS.from_wkt(survey.labels.crs_wkt) != crs:
                labels = _reprojected(labels, survey.labels, crs)
                notes.append(f"{survey.labels.where()}: reprojected to {crs.to_string() or 'the CRS of ' + str(p)}")
            extent = None
            if survey.extent is not None:
                extent = survey.extent.geoms
                if survey.extent.crs_wkt is None and crs is not None:
                    raise DataError(f"{survey.extent.where()}: declares no CRS and {p} is in "
                                    f"{crs.to_string() or 'a CRS'}; give the extent its CRS (in QGIS: Layer Properties "
                                    "> Source)")
                if survey.extent.crs_wkt is not None and rasterio.crs.CRS.from_wkt(survey.extent.crs_wkt) != crs:
                    extent = _reprojected(extent, survey.extent, crs)
            order = np.argsort(-shapely.area(labels), kind="stable")  # larger first: the smaller polygon wins
            rank = np.empty(len(order), np.int64)
            rank[order] = np.arange(len(order))
            per_crs[key] = (labels, extent, shapely.STRtree(labels), rank, shapely.to_wkb(labels))
        labels, extent, tree, rank, wkb = per_crs[key]
        # the working grid: whole working pixels of gsd metres (in CRS units: the raster's own pixel times the scale)
        sx, sy = gsd / gx, gsd / gy  # raster pixels per working pixel
        wcols, wrows = max(1, math.floor(width / sx)), max(1, math.floor(height / sy))
        for r0 in range(0, wrows, block_px):
            for c0 in range(0, wcols, block_px):
                h, w = min(block_px, wrows - r0), min(block_px, wcols - c0)
                win = (c0 * sx, r0 * sy, w * sx, h * sy)
                gt = t @ rasterio.Affine.translation(win[0], win[1]) @ rasterio.Affine.scale(sx, sy)
                box = shapely.box(*_bounds(gt, h, w))
                hits = tree.query(box, predicate="intersects")
                split_of = None
                if survey.extent is not None and survey.config.split_field is not None:
                    centre = shapely.points(*(gt @ (w / 2, h / 2)))
                    inside = [i for i, g in enumerate(extent) if shapely.contains(g, centre)]
                    if not inside:
                        outside_split += bool(len(hits))
                        continue
                    split_of = survey.extent.values[inside[0]]
                if not len(hits) and not (survey.background is not None and (
                        extent is None or any(shapely.intersects(g, box) for g in extent))):
                    continue
                hits = sorted(hits, key=lambda i: rank[i])
                drawn = tuple((wkb[i], int(survey.classes[i])) for i in hits)
                ext = tuple(shapely.to_wkb(g) for g in extent if shapely.intersects(g, box)) \
                    if extent is not None and survey.background is not None else None
                cells.append((f"{names[p]}-r{r0 // block_px}c{c0 // block_px}",
                              Block(str(p), win, (h, w), tuple(gt)[:6], split_of or "", (), drawn, ext,
                                    survey.background, image_filter, "")))
    if outside_split:
        notes.append(f"{survey.extent.where()}: {outside_split} blocks holding labels lie outside every extent polygon "
                     f"with a {cfg.split_field} (their centre): left out of every split")
    if block_px < 2 * buffer_px:
        notes.append(f"blocks of {block_px} px are under twice the {buffer_px}-px buffer: a training block beside "
                     "validation blocks on two sides may lose every pixel; give a larger block:")
    if not cells:
        raise DataError(f"{survey.path}: no block of the rasters holds a label polygon (labels outside every "
                        "raster, or in another CRS than they declare?)")
    if assigned is None:
        _draw_splits(cells, val_fraction, test_fraction, seed)
    plan = SurveyPlan(survey, gsd, block_px, buffer_px, {}, notes,
                      {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}, cells, ident)
    return plan.reassigned(assigned) if assigned is not None else plan.reassigned(None)



def _reprojected(geoms: np.ndarray, layer: VectorLayer, crs) -> np.ndarray:
    """``geoms`` of ``layer`` in ``crs`` (GDAL's transformation from the WKT the layer declares)."""
    import shapely
    from rasterio.warp import transform_geom

    try:
        out = transform_geom(layer.crs_wkt, crs, [shapely.geometry.mapping(g) for g in geoms])
    except Exception as exc:  # noqa: BLE001 - GDAL/PROJ errors of a transformation that cannot be made
        raise DataError(f"{layer.where()}: cannot reproject to {crs.to_string() or 'the raster CRS'} "
                        f"({str(exc).splitlines()[0]})") from None
    return np.array([shapely.geometry.shape(g) for g in out], dtype=object)


def _bounds(gt, h: int, w: int) -> tuple[float, float, float, float]:
    xs, ys = zip(*(gt @ (x, y) for x, y in ((0, 0), (w, 0), (0, h), (w, h))))
    return min(xs), min(ys), max(xs), max(ys)


def _round_gsd(g: float) -> float:
    """Two significant digits: 0.0213 -> 0.021 m."""
    digits = 1 - math.floor(math.log10(g))
    return round(g, digits)


def _draw_splits(cells: list[tuple[str, Block]], val_fraction: float, test_fraction: float, seed: int) -> None:
    """Blocks without an extent split are shuffled (seeded) and dealt: val, test, then train."""
    from dataclasses import replace

    free = [i for i, (_, b) in enumerate(cells) if not b.split]
    rng = np.random.default_rng(seed)
    order = [free[i] for i in rng.permutation(len(free))]
    n = len(free)
    n_val = max(1, math.floor(val_fraction * n + 0.5)) if val_fraction and n >= 2 else 0
    n_test = max(1, math.floor(test_fraction * n + 0.5)) if test_fraction and n >= 3 else 0
    while n_val + n_test > n - 1 and (n_val > 1 or n_test > 0):  # at least one block to train on
        if n_test:
            n_test -= 1
        else:
            n_val -= 1
    for k, i in enumerate(order):
        split = "val" if k < n_val else "test" if k < n_val + n_test else "train"
        cells[i] = (cells[i][0], replace(cells[i][1], split=split))


GIVES_WAY = {"train": 0, "test": 1, "val": 2}
"""Of two neighbouring blocks of different splits, the one ranked lower here gives up the whole buffer: training
loses pixels before test, test before validation (which keeps its full context)."""


def _with_buffers(cells: list[tuple[str, Block]], buffer_px: int) -> dict[str, Block]:
    """Each block's pixels within ``buffer_px`` (Chebyshev, working pixels) of a block of another split that ranks
    above it (:data:`GIVES_WAY`), ignored: rectangles (row0, col0, row1, col1) in the block's own pixels. One side
    of each pair gives the whole buffer, so the gap holds at corners too, where two half-buffers would leave half.
    Blocks of one raster share its working grid; blocks of different rasters are not compared."""
    from dataclasses import replace

    def origin(b: Block) -> tuple[int, int]:  # (row, col) of the block on its raster's working grid
        return round(b.window[1] / (b.window[3] / b.shape[0])), round(b.window[0] / (b.window[2] / b.shape[1]))

    out = {}
    for name, b in cells:
        rects = []
        if buffer_px:
            r0, c0 = origin(b)
            for _, o in cells:
                if o.raster != b.raster or GIVES_WAY[o.split] <= GIVES_WAY[b.split]:
                    continue
                or0, oc0 = origin(o)
                top, left = max(0, or0 - buffer_px - r0), max(0, oc0 - buffer_px - c0)
                bottom = min(b.shape[0], or0 + o.shape[0] + buffer_px - r0)
                right = min(b.shape[1], oc0 + o.shape[1] + buffer_px - c0)
                if top < bottom and left < right:
                    rects.append((top, left, bottom, right))
        out[name] = replace(b, ignore=tuple(rects))
    return out


def _keyed(b: Block, ident: list, gsd: float) -> Block:
    from dataclasses import replace

    h = hashlib.sha1(json.dumps([SURVEY_VERSION, ident, gsd, b.raster, b.window, b.shape, b.split, b.ignore,
                                 b.background, b.image_filter]).encode())
    for wkb, value in b.labels:
        h.update(wkb)
        h.update(bytes([value]))
    return replace(b, key=h.hexdigest()[:16])


def render_block(block: Block) -> tuple[np.ndarray, np.ndarray]:
    """A block's pixels and labels on its working grid -> ((h, w, 3) uint8 RGB, (h, w) uint8 source indices, 255
    where unlabelled, invalid or in the buffer). Reads one block's window of the raster."""
    import shapely
    from rasterio.features import rasterize
    from rasterio.transform import Affine
    from rasterio.windows import Window

    from droneseg.geo.raster import open_ortho

    h, w = block.shape
    with open_ortho(Path(block.raster)) as ortho:
        image, valid = ortho.read_working(Window(*block.window), (h, w), block.image_filter)
    transform = Affine(*block.transform)
    mask = np.full((h, w), IGNORE_INDEX, np.uint8)
    if block.background is not None and block.extent is None:  # no extent: the whole valid area
        mask[:] = block.background
    elif block.extent:
        inside = rasterize([(shapely.from_wkb(g), 1) for g in block.extent], out_shape=(h, w), transform=transform,
                           fill=0, dtype="uint8")
        mask[inside == 1] = block.background
    if block.labels:
        # one call, shapes in drawing order: later shapes overwrite earlier ones (rasterio's merge_alg replace)
        drawn = rasterize([(shapely.from_wkb(g), v) for g, v in block.labels], out_shape=(h, w), transform=transform,
                          fill=IGNORE_INDEX, dtype="uint8")
        labelled = drawn != IGNORE_INDEX
        mask[labelled] = drawn[labelled]
    mask[valid < 0.5] = IGNORE_INDEX  # nodata, alpha 0, outside the raster
    for r0, c0, r1, c1 in block.ignore:
        mask[r0:r1, c0:c1] = IGNORE_INDEX
    return image, mask


def write_split_layer(plan: SurveyPlan, out: Path) -> Path:
    """The blocks as a GeoPackage layer per raster CRS (``blocks``: block id, split, raster, labelled share), and
    the buffer rectangles (``buffer``), for a person to open in QGIS. Written atomically; -> ``out``."""
    import pyogrio.raw
    import rasterio
    import shapely
    from rasterio.transform import Affine

    from droneseg.files import atomic_path

    by_crs: dict[str, list[tuple[str, Block]]] = {}
    for name, b in plan.blocks.items():
        with rasterio.open(b.raster) as ds:
            wkt = ds.crs.to_wkt()
        by_crs.setdefault(wkt, []).append((name, b))
    with atomic_path(out, ".gpkg") as tmp:
        tmp.unlink()
        append = False
        for n, (wkt, blocks) in enumerate(by_crs.items()):
            suffix = "" if n == 0 else f"_{n + 1}"
            geoms = [shapely.box(*b.bounds) for _, b in blocks]
            pyogrio.raw.write(tmp, geometry=shapely.to_wkb(np.array(geoms, dtype=object)),
                              field_data=[np.array([i for i, _ in blocks], object),
                                          np.array([b.split for _, b in blocks], object),
                                          np.array([Path(b.raster).name for _, b in blocks], object)],
                              fields=["block", "split", "raster"], layer=f"blocks{suffix}", driver="GPKG",
                              geometry_type="Polygon", crs=wkt, append=append)
            append = True
            rects = []
            for name, b in blocks:
                t = Affine(*b.transform)
                for r0, c0, r1, c1 in b.ignore:
                    rects.append((name, shapely.box(*_bounds(t @ Affine.translation(c0, r0), r1 - r0, c1 - c0))))
            if rects:
                pyogrio.raw.write(tmp, geometry=shapely.to_wkb(np.array([g for _, g in rects], dtype=object)),
                                  field_data=[np.array([i for i, _ in rects], object)], fields=["block"],
                                  layer=f"buffer{suffix}", driver="GPKG", geometry_type="Polygon", crs=wkt,
                                  append=True)
    return out



def check_survey(plan: SurveyPlan, progress: bool = False):
    """``check-data`` of a survey: its notes (labels reprojected, geographic or non-square rasters, the share of
    pixels a nodata value masks, bit depths read from the values, repaired or skipped features), problems (labels outside every raster, overlaps between classes, blocks without a labelled
    pixel), and per source class the blocks holding it and its pixels; its summary lines (labelled area per class
    and split in m², the share of the extent labelled). -> (problems, notes, (N,) blocks holding each class, (N,)
    pixels of each class, summary lines)."""
    import warnings

    import rasterio
    import shapely
    from rasterio.warp import transform_bounds
    from tqdm import tqdm

    from droneseg.geo.raster import open_ortho

    survey = plan.survey
    labels = survey.labels
    problems: list[str] = []
    notes = list(plan.notes)
    if labels.repaired:
        notes.append(f"{labels.where()}: {labels.repaired} invalid geometries repaired (shapely.make_valid)")
    notes += [f"{labels.where()}: {s}; skipped" for s in labels.skipped]
    # labels that no raster covers
    footprints = []
    for p in survey.rasters:
        with warnings.catch_warnings(record=True) as said:  # the reader's warnings (nodata share, bit depth) as notes
            warnings.simplefilter("always")
            open_ortho(p).close()
        notes += [str(w.message) for w in said]
        with rasterio.open(p) as ds:
            bounds = ds.bounds if labels.crs_wkt is None else transform_bounds(ds.crs, labels.crs_wkt, *ds.bounds)
            footprints.append(shapely.box(*bounds))
    for i in range(len(footprints)):
        for j in range(i + 1, len(footprints)):
            if shapely.area(shapely.intersection(footprints[i], footprints[j])) > 0:
                notes.append(f"{survey.rasters[i]} and {survey.rasters[j]} overlap: their blocks are drawn to splits "
                             "independently, so the same ground may be in train and val; mosaic them into one "
                             "raster (gdalbuildvrt) for a split that cannot leak")
    covered = shapely.intersects(labels.geoms, shapely.union_all(footprints))
    outside = [int(f) for f, c in zip(labels.fids, covered) if not c]
    if outside:
        problems.append(f"{labels.where()}: {len(outside)} features lie outside every raster (e.g. feature "
                        f"{outside[0]})")
    # overlaps between polygons of different classes: the smaller wins; say how much ground that decides
    tree = shapely.STRtree(labels.geoms)
    left, right = tree.query(labels.geoms, predicate="intersects")
    pairs = [(a, b) for a, b in zip(left, right) if a < b and survey.classes[a] != survey.classes[b]]
    shared = [float(shapely.area(shapely.intersection(labels.geoms[a], labels.geoms[b]))) for a, b in pairs]
    pairs = [p for p, area in zip(pairs, shared) if area > 0]  # neighbours share edges: no area, no overlap
    if pairs:
        area = sum(a for a in shared if a > 0)
        a, b = pairs[0]
        names = survey.table.names
        notes.append(f"{labels.where()}: {len(pairs)} pairs of polygons of different classes overlap, "
                     f"{area:.4g} {'m²' if is_metric(labels.crs_wkt) else 'square CRS units'} in all (e.g. features "
                     f"{labels.fids[a]} {names[survey.classes[a]]} and {labels.fids[b]} {names[survey.classes[b]]}); "
                     "the smaller polygon wins")
    n = len(survey.table)
    class_blocks = np.zeros(n, np.int64)
    class_pixels = np.zeros(n, np.int64)
    per_split = {s: np.zeros(n, np.int64) for s in SPLITS}
    labelled = 0
    for name, block in tqdm(plan.blocks.items(), desc="check-data", unit="block", disable=not progress):
        _, mask = render_block(block)
        counts = np.bincount(mask.ravel(), minlength=256)[:n].astype(np.int64)
        if not counts.sum():
            problems.append(f"{block.raster}: block {name} ({block.split}) holds no labelled valid pixel")
        class_blocks += counts > 0
        class_pixels += counts
        per_split[block.split] += counts
        labelled += int(counts.sum())
    px_m2 = plan.gsd**2
    lines = [f"survey {survey.path}: {len(survey.rasters)} raster{'s' if len(survey.rasters) > 1 else ''}, "
             f"{len(labels.geoms)} label polygons, working GSD "
             f"{plan.gsd:g} m/px, blocks of {plan.block_px} px ({plan.block_px * plan.gsd:g} m), buffer "
             f"{plan.buffer_px} px between splits (the split and buffer check-data draws with the defaults; "
             "training draws its own with data.split_seed, data.val_fraction and its crop or tile); "
             + ("unlabelled pixels are ignored (never trained, never scored)" if survey.background is None else
                f"unlabelled pixels inside the extent are '{survey.table.names[survey.background]}'")]
    lines.append("labelled area by split (m²): " + ", ".join(
        f"{s} {per_split[s].sum() * px_m2:.1f} ({sum(b.split == s for b in plan.blocks.values())} blocks)"
        for s in SPLITS))
    if survey.extent is not None:
        extent_area = float(sum(shapely.area(survey.extent.geoms)))
        if is_metric(survey.extent.crs_wkt) and extent_area:
            lines.append(f"the extent is {extent_area:.1f} m², {100 * labelled * px_m2 / extent_area:.1f} % of it "
                         "labelled (the buffers between splits excluded)")
    for i in np.flatnonzero(class_pixels):
        lines.append(f"  {survey.table.names[i]:<16} " + "  ".join(
            f"{s} {per_split[s][i] * px_m2:10.1f} m²" for s in SPLITS))
    return problems, notes, class_blocks, class_pixels, lines


def is_metric(crs_wkt: str | None) -> bool:
    """Whether a CRS measures in metres (a projected or local CRS whose unit is the metre)."""
    if crs_wkt is None:
        return False
    from rasterio.crs import CRS

    crs = CRS.from_wkt(crs_wkt)
    return not crs.is_geographic and (crs.linear_units or "").lower() in ("metre", "meter", "m")


SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#9467bd"}
MAP_SIDE = 900
"""Long side, in pixels, of the orthomosaic preview under the block map."""


def block_map(plan: SurveyPlan, path: Path, scores: dict[str, float] | None = None) -> Path:
    """A PNG per survey of its blocks over a preview of each raster (at most 4, the ones holding the most blocks):
    outlines coloured by split, the buffers between splits hatched grey; with ``scores`` (block id -> mIoU) the
    scored blocks are filled by their mIoU on a colour scale, its value written in them. -> ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.patches import Patch, Rectangle
    from rasterio.enums import Resampling

    from droneseg.report.plots import save_figure

    by_raster: dict[str, list[tuple[str, Block]]] = {}
    for name, b in plan.blocks.items():
        by_raster.setdefault(b.raster, []).append((name, b))
    shown = sorted(by_raster, key=lambda r: -len(by_raster[r]))[:4]
    with rasterio.open(shown[0]) as ds:
        aspect = ds.height / ds.width
    fig, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown) + 1.2, 6.5 * min(aspect, 1.5) + 1.4),
                             squeeze=False, layout="constrained")
    cmap = plt.get_cmap("viridis")
    for ax, raster in zip(axes[0], shown):
        with rasterio.open(raster) as ds:
            f = min(1.0, MAP_SIDE / max(ds.width, ds.height))
            shape = (max(1, round(ds.height * f)), max(1, round(ds.width * f)))
            bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
            rgb = ds.read(bands, out_shape=(3, *shape), resampling=Resampling.average)
            valid = ds.dataset_mask(out_shape=shape) > 0
            left, bottom, right, top = ds.bounds
        preview = np.where(valid[..., None], rgb.transpose(1, 2, 0), 255).astype(np.uint8)
        ax.imshow(preview, extent=(left, right, bottom, top), alpha=0.55 if scores else 0.8)
        for name, b in by_raster[raster]:
            x0, y0, x1, y1 = b.bounds
            if scores and name in scores and scores[name] is not None:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=cmap(scores[name]), alpha=0.55,
                                       edgecolor="none"))
                ax.text((x0 + x1) / 2, (y0 + y1) / 2, f"{scores[name]:.2f}", ha="center", va="center", fontsize=8,
                        color="white", fontweight="bold")
            t = rasterio.Affine(*b.transform)
            for r0, c0, r1, c1 in b.ignore:
                bx0, by0, bx1, by1 = _bounds(t @ rasterio.Affine.translation(c0, r0), r1 - r0, c1 - c0)
                ax.add_patch(Rectangle((bx0, by0), bx1 - bx0, by1 - by0, facecolor="none", edgecolor="0.4",
                                       hatch="///", linewidth=0))
            # val and test outlines above train's: neighbours share their edges
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor="none", edgecolor=SPLIT_COLOURS[b.split],
                                   linewidth=1.6 if b.split == "train" else 2.2, zorder=2 if b.split == "train" else 3))
        ax.set_title(f"{Path(raster).name}: {len(by_raster[raster])} blocks", fontsize=10)
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(useOffset=False, style="plain")
    handles = [Patch(facecolor="none", edgecolor=c, label=s) for s, c in SPLIT_COLOURS.items()
               if any(b.split == s for b in plan.blocks.values())]
    handles.append(Patch(facecolor="none", edgecolor="0.4", hatch="///", label="buffer (out of loss and scores)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    if scores:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
        fig.colorbar(sm, ax=axes[0].tolist(), shrink=0.8, label="block mIoU")
    title = "Spatial blocks by split" + (" and the mIoU of each scored block" if scores else "")
    fig.suptitle(f"{title} ({plan.block_px} px = {plan.block_px * plan.gsd:g} m blocks, {plan.buffer_px} px buffer)")
    save_figure(fig, path)
    return Path(path)
