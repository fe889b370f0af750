"""Segmenting an orthomosaic strip by strip, in memory bounded by a tile row of one strip, never by the scene.

Contract
--------
* Scale: the network meets the orthomosaic at the model's working GSD (``model.json`` ``gsd``, metres per working
  pixel, or ``--model-gsd``): the scene has one working grid of round(W·f) x round(H·f) pixels, f = ortho GSD /
  model GSD per axis, read by GDAL with the model's image filter (average for ``area``, bilinear). With the
  model's GSD unknown the orthomosaic is read at its own resolution, with a warning.
* Strips: the working grid is cut into vertical strips of at most ``strip`` working pixels of core width, each
  read with context on its left and right (at least half a tile and a tile's overlap past the pixels its
  upsampling reads, rounded out to the scene's tile grid), so that a strip's tiles are the whole scene's tiles,
  with the same weights for every core pixel: the labels equal one pass of :class:`~droneseg.tiler.Tiler` over
  the whole scene, bit for bit. A strip is read from GDAL band by band as the tiler asks for tiles
  (:class:`~droneseg.geo.raster.WorkingWindow`, fractional windows of the one grid), and its labels come back
  row band by row band at full resolution (:meth:`Tiler.iter_labels`, the one upsampler): memory is one tile row
  of one strip, whatever the scene's height. Tiles with no valid pixel under them are not inferred (a pixel next
  to the collar may then differ from a one-pass result that also inferred the empty tiles).
* Outputs per input, in ``out``: ``<stem>_classes.tif`` (COG, written values of the scheme's numbering, colour
  table, nodata 255 on every pixel outside the valid area), ``<stem>_classes.qml`` (its QGIS style: class names
  and colours) and ``<stem>_classes.tif.aux.xml`` (its raster attribute table: value, class name, colour), with ``confidence`` ``<stem>_confidence.tif`` (uint8
  round(255 · top softmax probability), nodata 0), with ``uncertainty`` ``<stem>_uncertainty.tif`` (uint8
  round(255 · (1 - margin)) capped at 254, nodata 255) and ``<stem>_label_next.csv`` (cells of CELL x CELL pixels
  ranked by uncertain area, bounds in the raster's CRS: :mod:`droneseg.labelling.uncertainty`),
  ``<stem>_polygons.gpkg`` (or ``.geojson``; ``vector=None``:
  none), ``<stem>_class_areas.csv`` and ``.json`` (pixels, m², share of the valid area, read back from the class
  raster: one truth), ``<stem>_preview.jpg``. Each file is atomic.
* ``min_area`` (m²): regions of one class smaller than that are merged into their largest neighbour (GDAL's
  sieve filter, 4-connected, over windows of the class raster with a ring of context; a region cut by the edge of
  the context is never merged, so a large region is never eaten window by window, and one under the minimum that
  does not fit in the ring, at most 1024 px, may stay) before areas and polygons are taken, so all three agree
  and no holes open.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm import tqdm

from droneseg.areas import AreaTable, write_csv
from droneseg.classes import IGNORE_INDEX
from droneseg.files import atomic_write_text
from droneseg.geo.options import OrthoOptions, VectorFormat
from droneseg.geo.outputs import RasterWriter, write_attribute_table, write_polygons, write_preview, write_qml
from droneseg.geo.raster import Ortho, WorkingWindow, open_ortho
from droneseg.schemes import WrittenClasses
from droneseg.tiler import Tiler

NODATA = IGNORE_INDEX  # 255: written for pixels outside the valid area
CONFIDENCE_NODATA = 0  # a top probability is at least 1/K > 0
UNCERTAINTY_NODATA = 255  # uncertainty is written as round(255 · (1 - margin)) capped at 254: 255 is free
CELL = 1024  # raster pixels a side of the cells label_next.csv ranks
WRITE_ROWS = 512  # full-resolution rows gathered before a write (one COG tile row)
GDAL_CACHE_MB = 256
PASS_WINDOW = 4096  # raster pixels a side per window of the sieve and area passes


@dataclass
class OrthoResult:
    """What :func:`segment_ortho` wrote and measured."""

    files: dict[str, Path]
    scale: tuple[float, float]  # working pixels per ortho pixel, x and y
    strips: int
    tiles: int  # tiles inferred
    tiles_skipped: int  # tiles with no valid pixel, not inferred
    polygons: int
    seconds: dict[str, float] = field(default_factory=dict)


def ortho_paths(path: Path, out: Path, confidence: bool = False, vector: VectorFormat | None = "gpkg",
                uncertainty: bool = False) -> dict[str, Path]:
    stem = Path(path).stem
    files = {"classes": out / f"{stem}_classes.tif", "style": out / f"{stem}_classes.qml",
             "attributes": out / f"{stem}_classes.tif.aux.xml",
             "areas_csv": out / f"{stem}_class_areas.csv",
             "areas_json": out / f"{stem}_class_areas.json", "preview": out / f"{stem}_preview.jpg"}
    if confidence:
        files["confidence"] = out / f"{stem}_confidence.tif"
    if uncertainty:
        files["uncertainty"] = out / f"{stem}_uncertainty.tif"
        files["label_next"] = out / f"{stem}_label_next.csv"
    if vector:
        files["polygons"] = out / f"{stem}_polygons.{vector}"
    return files


@dataclass(frozen=True)
class Grid:
    """The scene's working grid: ``size`` = (h, w) working pixels over the (H, W) raster (each working pixel the
    same fractional footprint of raster pixels, so windows read from one grid line up exactly)."""

    raster: tuple[int, int]  # (H, W)
    size: tuple[int, int]  # (h, w)

    @property
    def scale(self) -> tuple[float, float]:
        """Working pixels per raster pixel along x and y."""
        return self.size[1] / self.raster[1], self.size[0] / self.raster[0]

    def window(self, rows: tuple[int, int], cols: tuple[int, int]) -> Window:
        """The fractional raster window working rows/cols cover (rasterio reads it resampled, exactly)."""
        sx, sy = self.scale
        return Window(cols[0] / sx, rows[0] / sy, (cols[1] - cols[0]) / sx, (rows[1] - rows[0]) / sy)


def working_grid(width: int, height: int, scale: tuple[float, float]) -> Grid:
    return Grid((height, width), (max(1, round(height * scale[1])), max(1, round(width * scale[0]))))


@dataclass(frozen=True)
class Strip:
    """Raster columns x0..x1 written, from working columns i0..i1 read (all rows)."""

    x0: int
    x1: int
    i0: int
    i1: int


def plan_strips(grid: Grid, strip: int, tile: int, stride: int) -> list[Strip]:
    """Strips left to right: cores of <= ``strip`` working px, each read with columns enough that its tiles are
    the scene's tiles (origins on the scene's grid of ``stride``, the last one flush with the scene's end) and
    that every core pixel is covered by all the scene's tiles that cover it, with their weights: the pixels the
    core's bilinear upsampling reads, plus max(tile / 2, tile - stride), rounded out to the tile grid."""
    (_, W), (_, w) = grid.raster, grid.size
    sx = grid.scale[0]
    bx = max(1, int(strip / sx))
    margin = max(math.ceil(tile / 2), tile - stride)
    strips = []
    for x in range(0, W, bx):
        x1 = min(W, x + bx)
        first = max(0, math.floor((x + 0.5) * sx - 0.5))  # PyTorch's rule, align_corners=False
        last = min(w - 1, math.floor((x1 - 0.5) * sx - 0.5) + 1)
        if w <= tile:
            i0, i1 = 0, w
        else:
            # on the scene's tile grid, and never closer to the scene's end than a tile (else the strip's last
            # tile would be narrower than the scene's)
            i0 = min(max(0, (first - margin) // stride * stride), (w - tile) // stride * stride)
            i1 = min(w, i0 + tile + max(0, math.ceil((last + 1 + margin - i0 - tile) / stride)) * stride)
            if last >= w - tile:  # the scene's last tile, flush with its end and off the grid, covers the core
                i1 = w
        strips.append(Strip(x, x1, i0, i1))
    return strips


def working_scale(ortho: Ortho, model_gsd: float | None) -> tuple[float, float]:
    """Working pixels per ortho pixel along x and y (1, 1 when the model's GSD is unknown, with a warning)."""
    if model_gsd is None:
        gx, gy = (100 * g for g in ortho.gsd)
        warnings.warn(f"{ortho.path}: the model's GSD is unknown (train with --gsd, or pass --model-gsd): the "
                      f"orthomosaic is read at its own {gx:.2f} x {gy:.2f} cm/px, which may not be the scale the "
                      "model learned", stacklevel=2)
        return 1.0, 1.0
    scale = ortho.gsd[0] / model_gsd, ortho.gsd[1] / model_gsd
    if not 1 / 50 <= min(scale) <= max(scale) <= 50:
        warnings.warn(f"{ortho.path}: read at {scale[0]:.3g}x its resolution (model {model_gsd * 100:.3g} cm/px, "
                      f"orthomosaic {ortho.gsd[0] * 100:.3g} cm/px): is the GSD in metres?", stacklevel=2)
    return scale


def segment_ortho(path: Path, out: Path, tiler: Tiler, written: WrittenClasses, model_gsd: float | None,
                  options: OrthoOptions = OrthoOptions(), *, class_names: list[str] | None = None,
                  image_filter: str = "area", progress: bool = True, meta: dict | None = None) -> OrthoResult:
    """Segment the orthomosaic ``path`` into ``out`` (see the module contract) with ``options`` (checked when they
    were made). ``model_gsd``: metres per working pixel (None: unknown). ``class_names``: the K target classes'
    names, for the area table and the polygons (default: the names of their written values; with ``--numbering
    dataset`` a group's value is its first member's, so a scheme's names say what was predicted).
    Raises DataError naming the file."""
    confidence, vector, min_area, simplify = options.confidence, options.vector, options.min_area, options.simplify
    t0 = time.perf_counter()
    files = ortho_paths(path, out, confidence, vector, options.uncertainty)
    tiles_before, skipped_before = tiler.tiles_run, tiler.tiles_skipped
    # GDAL's block cache defaults to 5% of the machine's memory; reads and writes stream, so a little suffices
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), open_ortho(path, options.nodata) as ortho:
        grid = working_grid(ortho.width, ortho.height, working_scale(ortho, model_gsd))
        strips = plan_strips(grid, options.strip, tiler.tile, tiler.stride())
        palette = np.zeros((256, 3), np.uint8)
        palette[: len(written.colors)] = written.colors
        colormap = {v: (*palette[v].tolist(), 255) for v in range(256)}
        colormap[NODATA] = (0, 0, 0, 0)
        lut = np.full(256, NODATA, np.uint8)  # written value -> target
        lut[written.values] = np.arange(len(written.values), dtype=np.uint8)
        names = class_names or [written.names[v] for v in written.values]
        table = AreaTable(list(names), [int(v) for v in written.values], ortho.area.method)
        cells = CellCounts(ortho.height, ortho.width) if options.uncertainty else None
        with RasterWriter(files["classes"], ortho, NODATA, colormap, "MODE", "class") as classes, \
                (RasterWriter(files["confidence"], ortho, CONFIDENCE_NODATA, None, "AVERAGE", "confidence")
                 if confidence else _Nothing()) as conf_out, \
                (RasterWriter(files["uncertainty"], ortho, UNCERTAINTY_NODATA, None, "AVERAGE", "uncertainty")
                 if options.uncertainty else _Nothing()) as unc_out:
            bar = tqdm(total=ortho.height * ortho.width, desc=Path(path).name, unit="px", unit_scale=True,
                       disable=not progress)
            maps_out = {k: w for k, w in (("confidence", conf_out), ("uncertainty", unc_out)) if w is not None}
            for s in strips:
                _segment_strip(ortho, grid, s, tiler, written, classes, maps_out, image_filter, bar, cells)
            bar.close()
            if cells is not None:
                cells.write(files["label_next"], ortho)
            t_infer = time.perf_counter()
            if min_area is not None:
                px_area = ortho.area.constant() or ortho.gsd[0] * ortho.gsd[1]
                _sieve(classes, max(1, round(min_area / px_area)))
            _count(classes, ortho, lut, table)
            t_count = time.perf_counter()
            n_polygons = 0
            if vector:  # from the draft, before the COG is made of it: see RasterWriter
                by_value = {int(v): n for v, n in zip(written.values, names)}
                n_polygons = write_polygons(classes.ds, files["polygons"], by_value, ortho.area, NODATA, simplify,
                                            layer=Path(path).stem)
            t_vector = time.perf_counter()
        t_cog = time.perf_counter()
        info = {"input": str(path), "crs": ortho.ds.crs.to_wkt(), "gsd_m": list(ortho.gsd), "model_gsd_m": model_gsd,
                "bits": ortho.bits, "bits_from": ortho.bits_from, "nodata_value": ortho.ds.nodata,
                "nodata_from": "the file" if options.nodata is None else "--nodata", "nodata_share": ortho.nodata_share,
                "working_scale": list(grid.scale), "working_size": list(grid.size), "min_area_m2": min_area,
                **(meta or {})}
        write_csv(files["areas_csv"], table.rows())
        table.write_json(files["areas_json"], info)
        legend = [(int(v), tuple(palette[v].tolist()), n) for v, n in zip(written.values, names)]
        write_qml(files["style"], legend, NODATA)  # QGIS opens the class COG with its class names and colours
        write_attribute_table(files["classes"], legend, NODATA)  # and GDAL names its values
        write_preview(ortho, files["classes"], files["preview"], palette,
                      {int(v): n for v, n in zip(written.values, names)}, NODATA)
    seconds = {"infer": t_infer - t0, "sieve_count": t_count - t_infer, "polygons": t_vector - t_count,
               "cog": t_cog - t_vector, "total": time.perf_counter() - t0}
    return OrthoResult(files, grid.scale, len(strips), tiler.tiles_run - tiles_before,
                       tiler.tiles_skipped - skipped_before, n_polygons, seconds)


class CellCounts:
    """Uncertain and valid pixels per cell of CELL x CELL raster pixels, for ``<stem>_label_next.csv``."""

    def __init__(self, height: int, width: int) -> None:
        self.rows, self.cols = -(-height // CELL), -(-width // CELL)
        self.uncertain = np.zeros(self.rows * self.cols, np.int64)
        self.valid = np.zeros(self.rows * self.cols, np.int64)

    def add(self, y0: int, x0: int, uncertainty: np.ndarray, valid: np.ndarray) -> None:
        """Count a written window at raster (y0, x0): (n, w) uint8 map values and validity."""
        from droneseg.labelling.uncertainty import UNCERTAIN

        n, w = uncertainty.shape
        ids = ((y0 + np.arange(n))[:, None] // CELL) * self.cols + (x0 + np.arange(w))[None, :] // CELL
        size = self.rows * self.cols
        self.valid += np.bincount(ids[valid], minlength=size)
        self.uncertain += np.bincount(ids[valid & (uncertainty >= UNCERTAIN)], minlength=size)

    def write(self, path: Path, ortho: Ortho) -> None:
        """The cells with valid pixels, most uncertain area first: rank, cell, bounds in the raster's CRS, shares
        and m² (each pixel's own ground area where the CRS is geographic: its mean over the cell's rows)."""
        import csv
        import io

        t = ortho.ds.transform
        rows = []
        for cell in np.flatnonzero(self.valid):
            r, c = divmod(int(cell), self.cols)
            x0, y0 = c * CELL, r * CELL
            x1, y1 = min(ortho.width, x0 + CELL), min(ortho.height, y0 + CELL)
            left, top = t * (x0, y0)
            right, bottom = t * (x1, y1)
            px = float(np.mean(ortho.area.window(Window(x0, y0, x1 - x0, y1 - y0))))  # m² per pixel here
            rows.append({"cell": f"r{r}c{c}", "left": left, "bottom": bottom, "right": right, "top": top,
                         "uncertain_share": self.uncertain[cell] / self.valid[cell],
                         "uncertain_px": int(self.uncertain[cell]), "valid_px": int(self.valid[cell]),
                         "uncertain_m2": float(self.uncertain[cell]) * px})
        rows.sort(key=lambda row: (-row["uncertain_px"], row["cell"]))
        buf = io.StringIO()
        fields = ["rank", "cell", "left", "bottom", "right", "top", "uncertain_share", "uncertain_px", "valid_px",
                  "uncertain_m2"]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for i, row in enumerate(rows, start=1):
            writer.writerow({**row, "rank": i, "uncertain_share": f"{row['uncertain_share']:.6f}",
                             "uncertain_m2": f"{row['uncertain_m2']:.2f}",
                             **{k: f"{row[k]:.6f}" for k in ("left", "bottom", "right", "top")}})
        atomic_write_text(path, buf.getvalue())


class _Nothing:
    """Stands in for an output not asked for."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _segment_strip(ortho: Ortho, grid: Grid, s: Strip, tiler: Tiler, written: WrittenClasses,
                   classes: RasterWriter, maps_out: dict[str, RasterWriter], image_filter: str, bar: tqdm,
                   cells: CellCounts | None = None) -> None:
    """Infer one strip and write its core columns, WRITE_ROWS rows at a time (rows without valid pixels are left
    unwritten: they read back as nodata)."""
    (H, _), (h, _) = grid.raster, grid.size
    band = tiler.tile + 3 * tiler.stride()  # four tile rows per GDAL read
    image = WorkingWindow(ortho, grid.window, (0, h), (s.i0, s.i1), image_filter, band)
    width = s.x1 - s.x0
    buf = np.empty((WRITE_ROWS, width), np.uint8)
    mbufs = {name: np.empty((WRITE_ROWS, width), np.uint8) for name in maps_out}
    filled, y_buf = 0, 0

    def flush() -> None:
        win = Window(s.x0, y_buf, width, filled)
        valid = ortho.valid(win)
        if valid.any():
            labels = buf[:filled]
            labels[~valid] = NODATA
            classes.write(win, written.apply(labels))
            for name, mbuf in mbufs.items():
                values = mbuf[:filled]
                if name == "uncertainty":
                    np.minimum(values, UNCERTAINTY_NODATA - 1, out=values)
                    if cells is not None:
                        cells.add(y_buf, s.x0, values, valid)
                values[~valid] = CONFIDENCE_NODATA if name == "confidence" else UNCERTAINTY_NODATA
                maps_out[name].write(win, values)
        bar.update(filled * width)

    rows = tiler.iter_labels(image, grid.raster, region=(0, H, s.x0, s.x1), window_of=(0, s.i0, *grid.size),
                             maps=tuple(mbufs), skip=image.empty)
    for y, labels, maps in rows:
        done = 0
        while done < len(labels):  # a band may straddle the end of the buffer
            n = min(len(labels) - done, WRITE_ROWS - filled)
            buf[filled : filled + n] = labels[done : done + n]
            for name, mbuf in mbufs.items():
                mbuf[filled : filled + n] = maps[name][done : done + n]
            filled, done = filled + n, done + n
            if filled == WRITE_ROWS:
                flush()
                y_buf, filled = y_buf + WRITE_ROWS, 0
    if filled:
        flush()


def _windows(height: int, width: int, ring: int = 0) -> list[tuple[Window, Window]]:
    """(core, core with ``ring`` pixels of context) windows of PASS_WINDOW pixels covering a raster."""
    out = []
    for y in range(0, height, PASS_WINDOW):
        for x in range(0, width, PASS_WINDOW):
            h, w = min(PASS_WINDOW, height - y), min(PASS_WINDOW, width - x)
            y0, x0 = max(0, y - ring), max(0, x - ring)
            y1, x1 = min(height, y + h + ring), min(width, x + w + ring)
            out.append((Window(x, y, w, h), Window(x0, y0, x1 - x0, y1 - y0)))
    return out


def _sieve(classes: RasterWriter, min_pixels: int) -> None:
    """Merge regions under ``min_pixels`` into their largest neighbour (GDAL's sieve, 4-connected), window by
    window with a ring of context. A region that touches the edge of its window's context (inside the scene) may
    go on beyond it, so it is left as it is: a region under the minimum is always merged when it fits in the ring
    (any region of n pixels fits when n <= the ring), one as large or larger never is."""
    if min_pixels <= 1:
        return
    from rasterio.features import rasterize, shapes, sieve

    ds = classes.ds
    ring = min(1024, max(64, min_pixels))
    for core, ext in _windows(ds.height, ds.width, ring):
        values = ds.read(1, window=ext)
        valid = values != NODATA
        if not valid.any():
            continue
        merged = sieve(values, min_pixels, mask=valid, connectivity=4)
        changed = (merged != values) & valid
        h, w = values.shape
        inner = (ext.row_off > 0, ext.col_off > 0, ext.row_off + h < ds.height, ext.col_off + w < ds.width)
        cut = []  # merged regions touching an edge of the context that is not the scene's: may be larger
        for geom, _ in shapes(values, mask=changed, connectivity=4):  # each merged region, as it was
            xs, ys = zip(*geom["coordinates"][0])
            if (inner[0] and min(ys) == 0) or (inner[1] and min(xs) == 0) or (inner[2] and max(ys) == h) or \
                    (inner[3] and max(xs) == w):
                cut.append((geom, 1))
        if cut:
            keep = rasterize(cut, out_shape=values.shape, dtype="uint8").astype(bool)
            merged[keep] = values[keep]
        merged[~valid] = NODATA
        r, c = int(core.row_off - ext.row_off), int(core.col_off - ext.col_off)
        block = merged[r : r + int(core.height), c : c + int(core.width)]
        if (block != NODATA).any():
            ds.write(block[None], window=core)


def _count(classes: RasterWriter, ortho: Ortho, lut: np.ndarray, table: AreaTable) -> None:
    """Areas per class, read back from the class raster as written."""
    ds = classes.ds
    for core, _ in _windows(ds.height, ds.width):
        targets = lut[ds.read(1, window=core)]
        valid = targets != NODATA
        if valid.any():
            table.add(targets, valid, ortho.area.window(core))
