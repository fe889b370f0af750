"""labelme -> :class:`Imported`: its JSON files (one a photo, polygons) or labelme2voc's output (palette PNGs).

labelme JSON (``{"shapes": [{"label", "points", "shape_type"}], "imagePath", "imageHeight", "imageWidth"}``):
shapes are rasterised as labelme itself does (``labelme.utils.shape_to_mask``: PIL draws the polygon, rectangle or
circle with its outline), in file order, a later shape over an earlier one (``shapes_to_label``'s order); shapes
labelled ``__ignore__`` or ``_background_`` paint pixels back to unlabelled. Lines and
points have no area: refused. The photo is ``imagePath`` beside the JSON, else its file name in ``--images``.

labelme2voc output (``class_names.txt``, ``SegmentationClassPNG/`` or ``SegmentationClass/`` palette PNGs,
``JPEGImages/``): the PNGs' values are class indices into ``class_names.txt`` (row 0 ``_background_``: no polygon;
255: ``__ignore__``), read as indices, never through their palette colours. Both become ``unlabeled``. A mask
saved as RGB (a viewer's "save as") has lost its indices: refused.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from droneseg.errors import DataError
from droneseg.labelling.dataset import LABELME_SPECIAL, Imported, Photo, PhotoFinder

AREA_SHAPES = ("polygon", "rectangle", "circle", "mask")


def shape_mask(shape: dict, size: tuple[int, int]) -> np.ndarray:
    """One labelme shape -> (H, W) bool, drawn as ``labelme.utils.shape_to_mask`` draws it (PIL, outline included).
    ``size``: (width, height). Raises ValueError for a shape without area or malformed points."""
    w, h = size
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    kind = shape.get("shape_type") or "polygon"
    points = [tuple(float(v) for v in p) for p in shape.get("points") or []]
    if kind == "polygon":
        if len(points) < 3:
            raise ValueError(f"a polygon of {len(points)} points")
        draw.polygon(points, outline=1, fill=1)
    elif kind == "rectangle":
        if len(points) != 2:
            raise ValueError("a rectangle needs 2 points")
        (x0, y0), (x1, y1) = points
        draw.rectangle([(min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1))], outline=1, fill=1)
    elif kind == "circle":
        if len(points) != 2:
            raise ValueError("a circle needs 2 points")
        (cx, cy), (px, py) = points
        d = math.hypot(cx - px, cy - py)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif kind == "mask":  # labelme 5.4+: a PNG of the box between its two points
        (x0, y0), _ = points
        part = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"]))).convert("L")) > 0
        out = np.zeros((h, w), bool)
        x0, y0 = int(x0), int(y0)
        ph, pw = min(part.shape[0], h - y0), min(part.shape[1], w - x0)
        out[y0:y0 + ph, x0:x0 + pw] = part[:ph, :pw]
        return out
    else:
        raise ValueError(f"a {kind} has no area")
    return np.asarray(canvas) > 0


def read_labelme(source: Path, images: Path | None, classes: list | None = None) -> Imported:
    """labelme JSON files (a folder of them, or one) or a labelme2voc output folder; ``classes``: [(name, colour or
    None)] in the order wanted (default: ``class_names.txt`` for labelme2voc, else the labels found, sorted)."""
    source = Path(source)
    if source.is_dir() and (source / "class_names.txt").is_file():
        return _read_voc(source, images, classes)
    # tiles.json: the georeference `droneseg tiles` leaves beside the tiles that labelme saves its JSON next to
    files = sorted(f for f in source.rglob("*.json") if f.name != "tiles.json") if source.is_dir() else [source]
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    if not files:
        raise DataError(f"{source}: no labelme .json file (or class_names.txt of labelme2voc)")
    finder = PhotoFinder(images) if images is not None else None
    imported = Imported("labelme", source)
    docs: list[tuple[Path, dict, Path]] = []
    found: list[str] = []
    for f in files:
        try:
            doc = json.loads(f.read_text(encoding="utf-8-sig"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            imported.problems.append(f"{f}: not a readable JSON file ({exc})")
            continue
        if not isinstance(doc, dict) or "shapes" not in doc or "imagePath" not in doc:
            imported.problems.append(f"{f}: not a labelme file (no shapes/imagePath)")
            continue
        name = str(doc["imagePath"]).replace("\\", "/")
        beside = (f.parent / name).resolve()
        photo = beside if beside.is_file() else (finder.find(name) if finder is not None else
                                                 f"no photo {name!r} beside it (give --images)")
        if isinstance(photo, str):
            imported.problems.append(f"{f}: {photo}")
            continue
        if not doc["shapes"]:
            imported.problems.append(f"{f}: no shapes (a photo without labels)")
            continue
        found.extend(str(s.get("label")) for s in doc["shapes"] if str(s.get("label")) not in LABELME_SPECIAL)
        docs.append((f, doc, photo))
    imported.classes = list(classes) if classes is not None else [(n, None) for n in sorted(set(found))]
    names = [n for n, _ in imported.classes]
    from droneseg.images import photo_size

    for f, doc, photo in docs:
        w, h = photo_size(photo)
        if (doc.get("imageWidth"), doc.get("imageHeight")) not in ((w, h), (None, None)):
            imported.problems.append(f"{f}: drawn on a {doc.get('imageWidth')}x{doc.get('imageHeight')} image, its "
                                     f"photo {photo.name} is {w}x{h}")
            continue
        mask = np.zeros((h, w), np.uint8)
        ok = True
        for n, shape in enumerate(doc["shapes"]):
            label = str(shape.get("label"))
            if label in LABELME_SPECIAL:  # labelme2voc's rule: __ignore__ and _background_ paint no class
                try:
                    mask[shape_mask(shape, (w, h))] = 0
                except (ValueError, TypeError, KeyError, OSError) as exc:
                    imported.problems.append(f"{f}: shape {n} ({label}): {exc}")
                    ok = False
                continue
            if label not in names:
                imported.problems.append(f"{f}: shape {n}: label {label!r} is not one of the classes "
                                         f"({', '.join(names[:8])})")
                ok = False
                continue
            try:
                mask[shape_mask(shape, (w, h))] = names.index(label) + 1
            except (ValueError, TypeError, KeyError, OSError) as exc:
                imported.problems.append(f"{f}: shape {n} ({label}): {exc}")
                ok = False
        if ok:
            imported.photos.append(Photo(photo, mask))
    return imported


def _read_voc(folder: Path, images: Path | None, classes: list | None) -> Imported:
    names_voc = [line.strip() for line in (folder / "class_names.txt").read_text(encoding="utf-8-sig").splitlines()
                 if line.strip() and line.strip() != "__ignore__"]  # index 0 is _background_ (labelme2voc.py)
    real = [n for n in names_voc if n not in LABELME_SPECIAL]
    imported = Imported("labelme2voc", folder)
    imported.classes = list(classes) if classes is not None else [(n, None) for n in real]
    names = [n for n, _ in imported.classes]
    missing = [n for n in real if n not in names]
    if missing:
        raise DataError(f"{folder / 'class_names.txt'}: classes {missing} are not in --classes")
    lut = np.zeros(256, np.uint8)  # VOC index -> class number; _background_ and 255 (__ignore__) -> 0
    for i, n in enumerate(names_voc):
        if n not in LABELME_SPECIAL and i < 255:
            lut[i] = names.index(n) + 1
    masks_dir = next((folder / d for d in ("SegmentationClassPNG", "SegmentationClass")
                      if (folder / d).is_dir() and any((folder / d).glob("*.png"))), None)
    if masks_dir is None:
        raise DataError(f"{folder}: no SegmentationClassPNG/*.png (labelme2voc's class masks)")
    photos = images if images is not None else folder / "JPEGImages"
    finder = PhotoFinder(photos)
    for f in sorted(masks_dir.glob("*.png")):
        photo = finder.find(f.stem)
        if isinstance(photo, str):
            imported.problems.append(f"{f}: {photo}")
            continue
        im = Image.open(f)
        if im.mode not in ("P", "L"):
            imported.problems.append(f"{f}: a {im.mode} image; labelme2voc writes palette PNGs whose values are the "
                                     "class indices (this one was saved as colours): use the original")
            continue
        values = np.asarray(im)
        bad = (values >= len(names_voc)) & (values != 255)
        if bad.any():
            imported.problems.append(f"{f}: index {int(values[bad].max())} in {int(bad.sum())} px is outside "
                                     f"class_names.txt ({len(names_voc)} rows)")
            continue
        imported.add(photo, lut[values], f, "only _background_/__ignore__")
    return imported
