"""``droneseg predict``: segment photos of any size; write masks, colour masks, overlays and class areas.

Contract
--------
* Inputs: photo files or folders (JPEG, PNG, TIFF; a folder is listed sorted, not recursively). EXIF orientation
  is applied (as everywhere in droneseg); grey, RGBA, CMYK and 16-bit photos become RGB
  (:func:`droneseg.images.read_image`).
* Working scale: a photo is decoded at the model's working scale (its long side = the model's ``long_side``, with
  the resize filter it was trained with; :func:`droneseg.images.read_working_image`, the training cache's decoder).
  That a photo of another size was taken from the same height is unknown, so its long side, not the dataset's
  scale factor, fixes the size. The network always sees that scale: a ground sampling distance it never trained
  on would change what it predicts, not just how fast.
* Inference: a :class:`~droneseg.session.ModelSession` (torch or ONNX Runtime, a run folder or an exported
  ``.onnx``) and its :class:`~droneseg.tiler.Tiler`, the code validation and ``evaluate`` run too, with the model's
  :class:`~droneseg.tiler.InferenceConfig` (tile, overlap, blend, TTA, luma threshold) changed by the command
  line's :class:`~droneseg.tiler.InferenceOverrides`.
* Output size: the photo's size, or ``scale`` (0 < scale <= 1) of it, for fast previews: ``--scale 0.25`` writes
  16x fewer pixels and skips decoding the full-size photo; the logits are the same, upsampled to wherever each
  output pixel lies (luma's split level, the map's own mean or median, is then taken over the smaller map).
* One truth with ``evaluate``: for a dataset photo (no EXIF turn, mask of the photo's size) the masks written at
  scale 1 re-score to exactly the numbers ``evaluate`` reports.
* Outputs in ``out/`` per photo (same-named outputs of an earlier run are replaced, each file atomically):
  ``<stem>.png`` mode L, ``<stem>_color.png`` RGB, ``<stem>_overlay.jpg`` the photo blended 50/50 with the colours;
  ``class_dict.csv`` (``name, r, g, b``, row = pixel value) beside them. Values follow
  :meth:`~droneseg.schemes.LabelScheme.written`: the dataset's indices and colours where the scheme maps classes one
  to one (``full``), the scheme's own 0..K-1 and colours where it groups them (``six``, ``paved``, ``luma``);
  ``numbering`` forces either. For the run ``class_areas.csv`` (:mod:`droneseg.areas`, the table orthomosaics
  write too): one row per photo and target class with the pixels written, their share of the photo and, with
  ``gsd`` (metres per photo pixel), area in square metres (a written pixel covers gsd² / scale²).
* ``uncertainty``: also ``<stem>_uncertainty.png`` (uint8, 255 · (1 - the margin between the two most probable
  classes), the tiler's blended probabilities upsampled like the labels) and the run's ``label_next.csv``, the photos
  ranked by their uncertain share (:mod:`droneseg.labelling.uncertainty`): what to label next.
* A photo that cannot be read is named on stderr in one line and skipped; ``PredictSummary.failed`` lists it.
* A photo's alpha channel is a validity mask: transparent pixels get no class (255 in the mask, transparent in the
  colour mask, untinted in the overlay) and count in no area of ``class_areas.csv``.
* In a job of several processes (``torchrun``, ``srun``, an OAR job started on every node) rank r segments every
  ``world``-th photo from the r-th, each photo once, on its own device; rank 0 writes ``class_dict.csv``, the one
  ``class_areas.csv`` of the whole list and ``predict_ranks.json`` (which rank segmented what).
* Refused before any work: a missing input, two photos with one stem, an output path that is an input photo, an
  output folder another ``predict`` is writing to (a lock held for the whole run; files are atomic anyway).
* ``backend="onnx"`` runs the same tiling on ONNX Runtime (:mod:`droneseg.session`).

>>> sorted(output_paths(Path("a/p.jpg"), Path("out")))
['color', 'mask', 'overlay']
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from droneseg.areas import AreaTable, write_csv
from droneseg.chance import near_chance
from droneseg.classes import IGNORE_INDEX, DataError
from droneseg.cluster import broadcast_object, detect, gather_objects, process_group
from droneseg.files import atomic_save, atomic_write_text, folder_lock, save_png
from droneseg.geo import GDAL_SUFFIXES, is_ortho, require
from droneseg.geo.options import OrthoOptions
from droneseg.images import IMAGE_SUFFIXES, photo_size, read_alpha, read_image, read_working_image
from droneseg.runs import read_training
from droneseg.schemes import Numbering, WrittenClasses
from droneseg.session import ModelSession, open_session
from droneseg.tiler import InferenceConfig, InferenceOverrides, Tiler

OVERLAY_ALPHA = 0.5
OVERLAY_QUALITY = 90
OVERLAY_BAND_ROWS = 256
PNG_LEVEL = 3  # zlib level: half the time of PIL's default 6 on 6000x4000 masks, files ~15% larger
# what a photo that cannot be decoded raises (read_image turns most into DataError)
_READ_ERRORS = (DataError, OSError, SyntaxError, Image.DecompressionBombError)


@dataclass
class PredictSummary:
    """What a prediction run did; the caller exits non-zero when ``failed`` is not empty."""

    out: Path
    photos: list[str]
    failed: list[str]
    class_areas: Path | None
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds spent reading, inferring, writing
    rank: int = 0  # in a job of several processes: this one's rank (rank 0's summary covers them all)
    ranks: dict[int, list[str]] = field(default_factory=dict)  # photos each rank segmented
    orthos: dict[str, dict] = field(default_factory=dict)  # orthomosaic -> {"files", "seconds", "tiles", …}


def list_photos(inputs: list[Path]) -> list[Path]:
    """Files as given, folders' photos sorted by name (not recursive), each file once; every input must exist."""
    photos: dict[Path, Path] = {}  # resolved -> as given
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES + GDAL_SUFFIXES)
            found = [f for f in found if f.name not in _earlier_outputs(found, p)]
        elif p.is_file():
            found = [p]
        else:
            raise DataError(f"{p}: no such file or folder")
        for f in found:
            photos.setdefault(f.resolve(), f)
    if not photos:
        raise DataError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return list(photos.values())


def _earlier_outputs(found: list[Path], folder: Path) -> set[str]:
    """Names in ``folder`` that an earlier predict wrote there for the photos ``found`` (a run into its input
    folder): colour masks and overlays, and a photo's mask ``<stem>.png`` when its colour mask and overlay lie beside
    it too (predict writes the three together). A ``<stem>.png`` without them is the user's file, not ours: it stays
    an input, and check_outputs refuses the clash with ``<stem>.jpg``."""
    names = {f.name for f in found}
    ours = set()
    for f in found:
        files = output_paths(f, folder, uncertainty=True)  # every file a run may have written
        ours |= {o.name for o in files.values() if o.stem != f.stem}
        mask = files.get("mask")
        if mask is not None and mask.name != f.name and {files["color"].name, files["overlay"].name} <= names:
            ours.add(mask.name)
    return ours


def output_paths(photo: Path, out: Path, uncertainty: bool = False) -> dict[str, Path]:
    """What predicting ``photo`` writes (for an orthomosaic, every file it may write)."""
    if is_ortho(photo):
        from droneseg.geo.ortho import ortho_paths  # no rasterio needed: paths only

        return {**ortho_paths(photo, out, True, "gpkg", True),
                "geojson": ortho_paths(photo, out, False, "geojson")["polygons"]}
    return {
        "mask": out / f"{photo.stem}.png",
        "color": out / f"{photo.stem}_color.png",
        "overlay": out / f"{photo.stem}_overlay.jpg",
        **({"uncertainty": out / f"{photo.stem}_uncertainty.png"} if uncertainty else {}),
    }


def check_outputs(photos: list[Path], out: Path) -> None:
    """Refuse runs where two photos share a stem, or where an output would replace an input photo."""
    seen: dict[str, Path] = {}
    for p in photos:
        key = p.stem.casefold()
        if key in seen:
            raise DataError(f"{seen[key]} and {p} would write the same outputs {p.stem}.*; rename one")
        seen[key] = p
    inputs = {p.resolve() for p in photos}
    for p in photos:
        for target in output_paths(p, out, uncertainty=True).values():
            if target.resolve() in inputs:
                raise DataError(f"{target}: predicting {p.name} would overwrite this input photo; choose another --out")


def write_outputs(photo: np.ndarray, labels: np.ndarray, written: WrittenClasses, files: dict[str, Path]) -> np.ndarray:
    """Mask, colour mask and overlay of one photo, in ``written``'s numbering; -> (K,) pixel count per target.

    Full-size images exist one at a time (a 6000x4000 RGB image is 72 MB, 96 MB inside PIL); the overlay is
    blended in row bands.
    """
    mask = Image.fromarray(written.apply(labels))
    atomic_save(files["mask"], lambda fh: mask.save(fh, format="PNG", compress_level=PNG_LEVEL))
    del mask
    k = len(written.values)
    palette = np.zeros((256, 3), np.uint8)
    palette[:k] = written.target_colors
    indexed = Image.fromarray(labels)  # mode L, shares nothing with labels
    counts = np.array(indexed.histogram()[:k])
    indexed.putpalette(palette.tobytes())
    nodata = bool((labels == IGNORE_INDEX).any())  # transparent input pixels stay transparent in the colour mask
    # a palette PNG (1 byte a pixel, the colours in PLTE, nodata in tRNS) reads as the same RGB(A) image in every
    # viewer and library and takes a fifth of the time of an RGB one to write (0.1 s vs 0.5 s at 6000x4000)
    transparency = {"transparency": IGNORE_INDEX} if nodata else {}
    atomic_save(files["color"], lambda fh: indexed.save(fh, format="PNG", compress_level=PNG_LEVEL, **transparency))
    del indexed
    overlay = np.empty_like(photo)
    a = round(OVERLAY_ALPHA * 256)  # blend in 8-bit fixed point: (photo·(256-a) + colour·a + 128) / 256
    tint = palette.astype(np.uint16) * a + 128  # (256, 3)
    for y in range(0, photo.shape[0], OVERLAY_BAND_ROWS):
        band = slice(y, y + OVERLAY_BAND_ROWS)
        mixed = photo[band].astype(np.uint16)  # (rows, W, 3)
        mixed *= 256 - a
        mixed += tint.take(labels[band], axis=0)
        overlay[band] = mixed >> 8
        if nodata:  # nodata pixels show the photo as it is (black where it was transparent)
            hole = labels[band] == IGNORE_INDEX
            overlay[band][hole] = photo[band][hole]
    atomic_save(files["overlay"], lambda fh: Image.fromarray(overlay).save(fh, format="JPEG", quality=OVERLAY_QUALITY,
                                                                         subsampling=0))  # 4:4:4: crisp class edges
    return counts


def predict(
    model: str | Path,
    inputs: list[Path],
    out: Path,
    inference: InferenceOverrides | None = None,
    backend: str | None = None,
    gsd: float | None = None,
    scale: float = 1.0,
    numbering: Numbering = "auto",
    device: str | None = None,
    progress: bool = True,
    ortho: OrthoOptions | None = None,
    uncertainty: bool = False,
) -> PredictSummary:
    """Segment every photo of ``inputs`` into ``out`` (see the module contract) with the model ``model`` (a run
    folder, its model.json, or an exported .onnx) on ``backend`` (:data:`droneseg.session.BACKENDS`).

    ``inference``: changes to the model's inference settings. ``uncertainty``: also each photo's uncertainty map and
    ``label_next.csv``, the photos ranked by uncertain share (:mod:`droneseg.labelling.uncertainty`). Raises DataError (bad inputs or options, an output
    folder another predict holds) before any photo is read or any output written.
    """
    t_start = time.perf_counter()
    # 1. setup: check arguments and inputs before loading anything
    if not 0.0 < scale <= 1.0:
        raise DataError(f"scale must be in (0, 1], got {scale}")
    if gsd is not None and not gsd > 0:
        raise DataError(f"gsd must be a positive number of metres per pixel, got {gsd}")
    out = Path(out)
    ortho = ortho or OrthoOptions()
    if uncertainty:
        ortho = ortho.model_copy(update={"uncertainty": True})
    photos = list_photos(inputs)
    check_outputs(photos, out)
    if any(is_ortho(p) for p in photos):
        require()  # before the model is loaded: a missing extra is said at once
    env = detect()
    with process_group(env) as (rank, world):
        session = open_session(model, backend, device, env.local_rank)
        settings = session.settings(inference)
        scheme = session.scheme
        if scheme.is_luma and any(is_ortho(p) for p in photos):
            raise DataError(f"{next(p for p in photos if is_ortho(p))}: the luma scheme splits each photo at its own "
                            "mean brightness; it has no meaning on an orthomosaic")
        if scheme.is_luma and uncertainty:
            raise DataError("--uncertainty: the luma scheme splits each photo at its own mean brightness, not where "
                            "the model is unsure; there is no margin between classes to rank by")
        written = scheme.written(numbering)
        if rank == 0:
            _say_if_near_chance(session)
        with _job_lock(out, rank, world):  # settings checked and model loaded: now the folder is ours
            return _segment(photos, out, rank, world, written, session, settings, gsd, scale,
                            progress and rank == 0, t_start, ortho, uncertainty)


@contextlib.contextmanager
def _job_lock(out: Path, rank: int, world: int) -> Iterator[None]:
    """One predict at a time per output folder (another job's ranks would interleave class_areas.csv): the job's
    rank 0 holds the lock for all its ranks, and they all stop if it cannot."""
    with contextlib.ExitStack() as stack:
        refused = None
        if rank == 0:
            try:
                stack.enter_context(folder_lock(out, "droneseg predict"))
            except DataError as exc:
                refused = str(exc)
        refused = broadcast_object(refused, world)
        if refused:
            raise DataError(refused)
        yield


def _segment(photos: list[Path], out: Path, rank: int, world: int, written: WrittenClasses, session: ModelSession,
             settings: InferenceConfig, gsd: float | None, scale: float, progress: bool, t_start: float,
             ortho: OrthoOptions, uncertainty: bool = False) -> PredictSummary:
    """:func:`predict`'s loop over this rank's photos (every ``world``-th from ``rank``) and the run's tables, with
    the output folder locked; rank 0 writes the tables."""
    tiler = session.tiler(settings)
    scheme, info = session.scheme, session.info
    rows: list[dict[str, str]] = []
    ranking: list[dict] = []  # with uncertainty: label_next.csv's rows
    orthos: dict[str, dict] = {}
    done: list[str] = []
    failed: list[str] = []
    timings = {"read": 0.0, "infer": 0.0, "write": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_text(out / "class_dict.csv", written.to_csv())

    # 2. loop: one photo at a time (this rank's share); an unreadable one is reported and skipped
    for path in tqdm(photos[rank::world], desc="predict", unit="photo", disable=not progress):
        t0 = time.perf_counter()
        if is_ortho(path):
            try:
                result = _segment_ortho(path, out, tiler, written, session, ortho, progress)
            except DataError as exc:
                tqdm.write(f"skipped {exc}", file=sys.stderr)
                failed.append(str(path))
                continue
            _say_stale_outputs(path, out, result.files)
            orthos[str(path)] = {"files": {k: str(v) for k, v in result.files.items()},
                                 "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
                                 "working_scale": list(result.scale), "tiles": result.tiles,
                                 "tiles_skipped": result.tiles_skipped, "polygons": result.polygons}
            done.append(str(path))
            timings["infer"] += time.perf_counter() - t0
            continue
        try:
            W, H = photo_size(path)  # as displayed
            size = (max(1, round(W * scale)), max(1, round(H * scale)))
            # the training cache's decoder: the model sees the pixels evaluate gives it, so scoring these masks
            # repeats evaluate's numbers
            small = read_working_image(path, info.long_side, info.image_filter)
            photo = small if size == (small.shape[1], small.shape[0]) else read_image(path, size=size)
            valid = read_alpha(path, size)  # transparent pixels: nodata
        except _READ_ERRORS as exc:
            msg = str(exc) if isinstance(exc, DataError) else f"{path}: cannot read ({exc})"
            tqdm.write(f"skipped {msg}", file=sys.stderr)
            failed.append(str(path))
            continue
        t1 = time.perf_counter()
        luma_rule = settings.luma_threshold if scheme.is_luma else None
        unc = None
        if uncertainty:  # the same loop as labels(), with the margin map upsampled beside the labels
            bands = list(tiler.iter_labels(small, (size[1], size[0]), maps=("uncertainty",)))
            labels = np.concatenate([b for _, b, _ in bands])
            unc = np.concatenate([m["uncertainty"] for _, _, m in bands])
            del bands
        else:
            labels = tiler.labels(small, (size[1], size[0]), luma=luma_rule)  # (h_out, w_out) uint8 targets
        if valid is not None:
            labels[~valid] = IGNORE_INDEX  # no class, no area
        t2 = time.perf_counter()
        files = output_paths(path, out, uncertainty)
        counts = write_outputs(photo, labels, written, files)
        if unc is not None:
            from droneseg.labelling.uncertainty import photo_row

            if valid is not None:
                unc[~valid] = 0
            save_png(files["uncertainty"], unc)
            pixel_m2 = gsd**2 * (W / size[0]) * (H / size[1]) if gsd is not None else None
            ranking.append(photo_row(str(path), unc, valid, pixel_m2))
            del unc
        del photo, small, labels  # before the next photo is read
        areas = AreaTable(list(scheme.names), [int(v) for v in written.values])
        areas.add_counts(counts, gsd**2 * (W / size[0]) * (H / size[1]) if gsd is not None else None)
        rows += areas.rows(photo=str(path))
        done.append(str(path))
        timings["read"] += t1 - t0
        timings["infer"] += t2 - t1
        timings["write"] += time.perf_counter() - t2

    # 3. finish: the run's class-area table, one for all ranks, in the order of the photo list
    parts = gather_objects((rows, done, failed, orthos, ranking), world)
    orthos = {k: v for part in parts for k, v in part[3].items()}
    ranks = {r: part[1] for r, part in enumerate(parts)}
    if rank > 0:
        return PredictSummary(out, done, failed, None, time.perf_counter() - t_start, timings, rank, ranks, orthos)
    order = {str(p): i for i, p in enumerate(photos)}
    rows = sorted((row for part in parts for row in part[0]), key=lambda row: order[row["photo"]])
    done = sorted((p for part in parts for p in part[1]), key=order.__getitem__)
    failed = sorted((p for part in parts for p in part[2]), key=order.__getitem__)
    areas_csv = out / "class_areas.csv" if rows else None
    if areas_csv is not None:
        write_csv(areas_csv, rows)
    ranking = [row for part in parts for row in part[4]]
    if ranking:
        from droneseg.labelling.uncertainty import write_ranking

        write_ranking(out / "label_next.csv", ranking)
    summary = PredictSummary(out, done, failed, areas_csv, time.perf_counter() - t_start, timings, rank, ranks, orthos)
    if world > 1:  # which process segmented what, for a job's logs
        atomic_write_text(out / "predict_ranks.json", json.dumps({"ranks": world, "photos": ranks,
                                                                  "failed": failed}, indent=1) + "\n")
    return summary


def _say_if_near_chance(session: ModelSession) -> None:
    """A warning when the run's own final evaluation scored the model near chance (``train_summary.json``)."""
    s = read_training(session.folder)
    if s is None:
        return  # the summary is a note, not the model: predicting does not depend on it
    flag = near_chance({"miou": s.get("val_miou_native"), "chance_miou": s.get("chance_miou")})
    if flag:
        tqdm.write(f"warning: {session.folder}: {flag}", file=sys.stderr)


def _say_stale_outputs(path: Path, out: Path, written: dict[str, Path]) -> None:
    """Name the outputs of an earlier run on ``path`` that this run did not replace (a ``_confidence.tif`` or
    ``_polygons.gpkg`` of other options), so that nobody takes them for this run's."""
    fresh = {p.resolve() for p in written.values()}
    stale = [p for p in output_paths(path, out).values() if p.is_file() and p.resolve() not in fresh]
    for p in stale:
        tqdm.write(f"warning: {p} is left from an earlier run with other options (not written now); remove it if "
                   "it no longer applies", file=sys.stderr)


def _segment_ortho(path: Path, out: Path, tiler: Tiler, written: WrittenClasses, session: ModelSession,
                   ortho: OrthoOptions, progress: bool):
    """One orthomosaic through :func:`droneseg.geo.ortho.segment_ortho` -> its OrthoResult."""
    import warnings

    from droneseg.geo.ortho import segment_ortho

    info = session.info
    model_gsd = ortho.model_gsd if ortho.model_gsd is not None else info.gsd
    with warnings.catch_warnings():  # said at once, on one line, above the progress bar
        warnings.showwarning = lambda message, *args, **kwargs: tqdm.write(f"warning: {message}", file=sys.stderr)
        return segment_ortho(path, out, tiler, written, model_gsd, ortho, class_names=list(session.scheme.names),
                             image_filter=info.image_filter, progress=progress,
                             meta={"model_gsd_source": "--model-gsd" if ortho.model_gsd is not None else
                                   ("model.json" if info.gsd is not None else "unknown")})
