"""``droneseg predict``: segment photos of any size; write masks, colour masks, overlays and class areas.

Contract
--------
* Inputs: photo files or folders (JPEG, PNG, TIFF; a folder is listed sorted, not recursively). EXIF orientation
  is applied; grey, RGBA and 16-bit photos become RGB (:func:`droneseg.io.read_image`).
* Working scale: a photo is resized (area averaging) so that its long side is the model's ``long_side`` (the
  long side its training photos were resized to; ``None`` keeps the photo's size). That a photo of another size
  was taken from the same height is unknown, so its long side, not the dataset's scale factor, fixes the size.
  ``scale`` (0 < scale <= 1) multiplies that working resolution for fast previews (0.5: 4x fewer pixels).
* Inference: :class:`droneseg.tiler.Tiler` (tiles, overlap, smooth blending, optional flip TTA, bounded memory);
  logits are upsampled to the photo's full size, so outputs always have the photo's size whatever ``scale``.
* Outputs in ``out/`` per photo (same-named outputs of an earlier run are replaced, each file atomically):
  ``<stem>.png`` mode L in the dataset's own class indices (``scheme.decode``; the luma scheme writes its 0/1
  target), ``<stem>_color.png`` RGB in the dataset's colours, ``<stem>_overlay.jpg`` the photo blended 50/50
  with them; for the run ``class_areas.csv``: one row per photo and target class with pixels, share of the
  photo and, with ``gsd`` (metres per pixel), area in square metres (pixels x gsd²).
* A photo that cannot be read is named on stderr in one line and skipped; ``PredictSummary.failed`` lists it.
* Refused before any work: a missing input, two photos with one stem, an output path that is an input photo.
* ``backend="onnx"`` runs the same tiling on ONNX Runtime with ``model.onnx`` next to ``model.json``
  (``droneseg export`` writes it); without one, the model is exported into a temporary folder for this call.

>>> ClassAreas(["a", "b"], gsd=0.5).rows("p.jpg", np.array([3, 1]))[1]["area_m2"]
'0.2500'
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from droneseg.classes import DataError
from droneseg.io import IMAGE_SUFFIXES, atomic_save, atomic_write_text, read_image, working_size
from droneseg.runs import load_model, resolve_model_path
from droneseg.schemes import LabelScheme
from droneseg.tiler import WINDOWS, Tiler

Backend = Literal["torch", "onnx"]
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


@dataclass
class ClassAreas:
    """Rows of ``class_areas.csv``: per photo and target class, pixels, share and (with gsd) square metres."""

    names: list[str]
    gsd: float | None

    def rows(self, photo: str, counts: np.ndarray) -> list[dict[str, str]]:
        total = int(counts.sum())
        rows = []
        for name, n in zip(self.names, counts.tolist()):
            row = {"photo": photo, "class": name, "pixels": str(n), "share": f"{n / total:.6f}"}
            if self.gsd is not None:
                row["area_m2"] = f"{n * self.gsd**2:.4f}"
            rows.append(row)
        return rows

    def write(self, path: Path, rows: list[dict[str, str]]) -> None:
        buf = io.StringIO()
        fields = ["photo", "class", "pixels", "share"] + (["area_m2"] if self.gsd is not None else [])
        writer = csv.DictWriter(buf, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())


def list_photos(inputs: list[Path]) -> list[Path]:
    """Files as given, folders' photos sorted by name (not recursive), each file once; every input must exist."""
    photos: dict[Path, Path] = {}  # resolved -> as given
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found = [p]
        else:
            raise DataError(f"{p}: no such file or folder")
        for f in found:
            photos.setdefault(f.resolve(), f)
    if not photos:
        raise DataError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return list(photos.values())


def output_paths(photo: Path, out: Path) -> dict[str, Path]:
    return {
        "mask": out / f"{photo.stem}.png",
        "color": out / f"{photo.stem}_color.png",
        "overlay": out / f"{photo.stem}_overlay.jpg",
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
        for target in output_paths(p, out).values():
            if target.resolve() in inputs:
                raise DataError(f"{target}: predicting {p.name} would overwrite this input photo; choose another --out")


def onnx_runner(model_dir: Path, scheme: LabelScheme, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """A tile runner on ONNX Runtime, from ``model.onnx`` next to ``model.json`` or a temporary export."""
    import onnxruntime as ort  # deferred: only the onnx backend needs it

    path = model_dir / "model.onnx"
    if path.is_file():
        data = path.read_bytes()
    else:
        from droneseg.export import export

        with tempfile.TemporaryDirectory() as tmp:
            tqdm.write(f"no {path}: exporting a temporary one (run `droneseg export` to keep it)", file=sys.stderr)
            data = export(model_dir, Path(tmp) / "model.onnx").path.read_bytes()
    wanted = ["CUDAExecutionProvider"] if device.type == "cuda" else []
    providers = [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    # idle ORT threads spin by default, starving the torch blending that runs between tile batches
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_pattern = False  # its per-shape plan held ~170 MB more on a 2x512² batch, for no speed
    session = ort.InferenceSession(data, options, providers=providers)
    names = json.loads(session.get_modelmeta().custom_metadata_map.get("class_names", "null"))
    if names != list(scheme.names):
        raise DataError(f"{path}: exported from another model (classes {names}); run `droneseg export` again")
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        pixels = np.ascontiguousarray(x.cpu().numpy())  # the tiler's batches are channels-last in memory
        return torch.from_numpy(session.run(None, {input_name: pixels})[0]).to(x.device)

    return run


def output_colors(scheme: LabelScheme) -> np.ndarray:
    """(K, 3) uint8: each target's colour in the outputs, the dataset colour of the source class it is written as."""
    return scheme.colors if scheme.is_luma else scheme.table.colors[scheme.write_as]


def write_outputs(photo: np.ndarray, labels: np.ndarray, scheme: LabelScheme, files: dict[str, Path]) -> np.ndarray:
    """Mask, colour mask and overlay of one photo; -> (K,) pixel count per target class.

    Full-size images exist one at a time (a 6000x4000 RGB image is 72 MB, 96 MB inside PIL); the overlay is
    blended in row bands.
    """
    mask = Image.fromarray(labels if scheme.is_luma else scheme.decode(labels))
    atomic_save(files["mask"], lambda fh: mask.save(fh, format="PNG", compress_level=PNG_LEVEL))
    del mask
    palette = np.zeros((256, 3), np.uint8)
    palette[: scheme.num_classes] = output_colors(scheme)
    indexed = Image.fromarray(labels)  # mode L, shares nothing with labels
    counts = np.array(indexed.histogram()[: scheme.num_classes])
    indexed.putpalette(palette.tobytes())
    atomic_save(files["color"], lambda fh: indexed.convert("RGB").save(fh, format="PNG", compress_level=PNG_LEVEL))
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
    atomic_save(files["overlay"], lambda fh: Image.fromarray(overlay).save(fh, format="JPEG", quality=OVERLAY_QUALITY,
                                                                         subsampling=0))  # 4:4:4: crisp class edges
    return counts


def predict(
    model: str | Path,
    inputs: list[Path],
    out: Path,
    tile: int = 512,
    overlap: float = 0.25,
    batch: int = 4,
    tta: bool = False,
    backend: Backend = "torch",
    gsd: float | None = None,
    scale: float = 1.0,
    blend: Literal["cosine", "gaussian"] = "gaussian",
    device: str | None = None,
    progress: bool = True,
) -> PredictSummary:
    """Segment every photo of ``inputs`` into ``out`` (see the module contract)."""
    t_start = time.perf_counter()
    # 1. setup: check arguments and inputs before loading anything
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    if gsd is not None and not gsd > 0:
        raise ValueError(f"gsd must be a positive number of metres per pixel, got {gsd}")
    if backend not in ("onnx", "torch"):
        raise KeyError(f"unknown backend {backend!r}; choose from ['onnx', 'torch']")
    if blend not in WINDOWS:
        raise KeyError(f"unknown blend {blend!r}; choose from {sorted(WINDOWS)}")
    out = Path(out)
    photos = list_photos(inputs)
    check_outputs(photos, out)
    model_dir = resolve_model_path(model)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tiler_dev = dev if backend == "torch" else torch.device("cpu")  # ORT takes and returns host arrays
    net, info = load_model(model_dir, tiler_dev)
    scheme = info.label_scheme()
    run = net if backend == "torch" else onnx_runner(model_dir, scheme, dev)
    tiler = Tiler(run, scheme.num_classes, tile, overlap, batch, tta, blend, tiler_dev)
    areas = ClassAreas(list(scheme.names), gsd)
    rows: list[dict[str, str]] = []
    done: list[str] = []
    failed: list[str] = []
    timings = {"read": 0.0, "infer": 0.0, "write": 0.0}
    out.mkdir(parents=True, exist_ok=True)

    # 2. loop: one photo at a time; an unreadable one is reported and skipped
    for path in tqdm(photos, desc="predict", unit="photo", disable=not progress):
        t0 = time.perf_counter()
        try:
            photo = read_image(path, exif=True)  # (H, W, 3) uint8, displayed orientation
        except _READ_ERRORS as exc:
            msg = str(exc) if isinstance(exc, DataError) else f"{path}: cannot read ({exc})"
            tqdm.write(f"skipped {msg}", file=sys.stderr)
            failed.append(str(path))
            continue
        H, W = photo.shape[:2]
        w0, h0 = working_size((W, H), info.long_side)
        size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
        # decoded again at the working size the way the training cache decodes (reduced-size JPEG decoding, then
        # area): the model sees the pixels evaluate gives it, so scoring these masks repeats evaluate's numbers
        small = read_image(path, size=size, exif=True) if size != (W, H) else photo
        t1 = time.perf_counter()
        labels = tiler.labels(small, (H, W), luma=scheme.is_luma)  # (H, W) uint8 targets
        t2 = time.perf_counter()
        counts = write_outputs(photo, labels, scheme, output_paths(path, out))
        del photo, small, labels  # before the next photo is read
        rows += areas.rows(str(path), counts)
        done.append(str(path))
        timings["read"] += t1 - t0
        timings["infer"] += t2 - t1
        timings["write"] += time.perf_counter() - t2

    # 3. finish: the run's class-area table
    table = out / "class_areas.csv" if rows else None
    if table is not None:
        areas.write(table, rows)
    return PredictSummary(out, done, failed, table, time.perf_counter() - t_start, timings)
