"""Label Studio exports -> :class:`Imported`: the JSON export (brush RLE and polygons) and the PNG-per-region export.

JSON export: a list of tasks ``{"id", "data": {"image": ".../<upload prefix>-photo.jpg"}, "annotations": [{"id",
"result": [region, ...], "was_cancelled"}]}``. A brush region (``"type": "brushlabels"``) holds ``value.rle``:
Label Studio's run-length code of the RGBA canvas, ``original_height x original_width x 4`` bytes (decoded
exactly as ``label_studio_converter.brush.decode_rle``; a pixel is painted where alpha > 127, the threshold its own
``image2rle`` uses); a polygon region (``polygonlabels``) ``value.points`` in percent of the photo's width and
height. Of a task's annotations, the latest (highest id) not cancelled is read. Regions are painted in the order
the export lists them, a later region over an earlier one (the order Label Studio draws them in).

PNG export (``task-<id>-annotation-<id>-by-<user>-<tag>-<label>-<i>.png``, one alpha mask a region): it names no
photo, so ``--tasks`` gives the JSON export (or JSON-MIN) that maps task ids to photos; of a task's annotations the
latest (highest id) is read, as in the JSON path. Its regions' drawing order is
lost: they are painted in class order, then region number, and the pixels two classes cover are counted.

Photos are matched by the path of ``data.image`` under ``--images`` (local-files storage: its ``?d=`` path), else by its
file name, also without the 8-hex-digit prefix Label Studio gives uploads (``3f2a1b4c-photo.jpg`` -> ``photo.jpg``);
a name two photos share is a problem, never a guess.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from droneseg.errors import DataError
from droneseg.labelling.dataset import Imported, Photo, PhotoFinder, check_size

UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
PNG_NAME = re.compile(r"^task-(\d+)-annotation-(\d+)-by-([A-Za-z0-9@.]*)-(.+)-(\d+)\.png$")


def decode_rle(rle: list[int]) -> np.ndarray:
    """Label Studio's brush RLE -> its flat uint8 values (``original_height * original_width * 4``, RGBA).

    The format (``label_studio_converter.brush``, after thi.ng/rle-pack): a bit stream, most significant bit first;
    32 bits the number of values, 5 bits the word size - 1, four 4-bit run-length field sizes - 1; then blocks: 1
    bit (1 = a run of one repeated word, 0 = literal words), 2 bits choosing a length field size, that many bits the
    length - 1, then the word (run) or the words (literals). Raises ValueError on a truncated stream."""
    data = np.frombuffer(bytes(int(v) & 255 for v in rle), np.uint8)
    bits = np.unpackbits(data)
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise ValueError("truncated brush RLE")
        value = 0
        for b in bits[pos:pos + n]:
            value = (value << 1) | int(b)
        pos += n
        return value

    num = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        repeat = read(1)
        j = min(num, i + 1 + read(sizes[read(2)]))
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out


def _regions(annotation: dict) -> list[dict]:
    return [r for r in annotation.get("result", []) if isinstance(r, dict)]


def _latest(task: dict) -> dict | None:
    done = [a for a in task.get("annotations", []) if isinstance(a, dict) and not a.get("was_cancelled")]
    return max(done, key=lambda a: a.get("id", 0)) if done else None


def _image_name(task: dict) -> str | None:
    data = task.get("data") if isinstance(task.get("data"), dict) else task  # JSON-MIN: the data at the top
    value = data.get("image")
    if not isinstance(value, str):  # an image field of another name
        value = next((v for k, v in data.items() if isinstance(v, str) and k not in ("id",)
                      and v.lower().rsplit(".", 1)[-1] in ("jpg", "jpeg", "png", "tif", "tiff")), None)
    if value is None:
        return None
    url = urllib.parse.urlsplit(value)
    query = urllib.parse.parse_qs(url.query)
    if "d" in query:  # local-files storage: /data/local-files/?d=flight/DJI_0001.JPG
        return urllib.parse.unquote(query["d"][0]).replace("\\", "/")
    return urllib.parse.unquote(url.path).replace("\\", "/").rsplit("/", 1)[-1]


def _find(finder: PhotoFinder, name: str) -> Path | str:
    found = finder.find(name)
    if isinstance(found, str) and UPLOAD_PREFIX.match(name):
        again = finder.find(UPLOAD_PREFIX.sub("", name))
        return again if not isinstance(again, str) else found
    return found


def _read_json(path: Path) -> list[dict]:
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc})") from None
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise DataError(f"{path}: not a Label Studio export (a list of tasks)")
    return tasks


def _classes(imported: Imported, classes: list | None, found: list[str]) -> None:
    imported.classes = list(classes) if classes is not None else [(n, None) for n in sorted(set(found))]


def read_labelstudio(source: Path, images: Path, classes: list | None = None, tasks: Path | None = None) -> Imported:
    """A Label Studio JSON export (a ``.json`` file) or PNG export (a folder, with ``tasks``: the JSON that maps its
    task ids to photos); ``classes``: [(name, colour or None)] in the order wanted (default: the labels found,
    sorted). Problems collected, one line each: a task without a photo or an annotation, a label not in
    ``classes``, a region of another size than its photo, an undecodable RLE, a PNG whose task is unknown."""
    source = Path(source)
    finder = PhotoFinder(images)
    if source.is_dir():
        return _read_pngs(source, finder, classes, tasks)
    tasks_list = _read_json(source)
    imported = Imported("Label Studio JSON", source)
    plans: list[tuple[Path, str, list[dict]]] = []
    found: list[str] = []
    for task in tasks_list:
        where = f"{source}: task {task.get('id')}"
        name = _image_name(task)
        annotation = _latest(task)
        if name is None:
            imported.problems.append(f"{where}: no image in its data")
            continue
        if annotation is None or not _regions(annotation):
            imported.problems.append(f"{where} ({name}): no labels (no annotation, or all cancelled)")
            continue
        photo = _find(finder, name)
        if isinstance(photo, str):
            imported.problems.append(f"{where}: {photo}")
            continue
        regions = [r for r in _regions(annotation) if r.get("type", "").lower() in ("brushlabels", "polygonlabels")]
        skipped = {r.get("type") for r in _regions(annotation)} - {r.get("type") for r in regions}
        if not regions:
            imported.problems.append(f"{where} ({name}): no brush or polygon region (has {sorted(skipped)})")
            continue
        for r in regions:
            found.extend((r.get("value") or {}).get(r["type"].lower(), []) or [])
        plans.append((photo, where, regions))
    _classes(imported, classes, found)
    names = [n for n, _ in imported.classes]
    for photo, where, regions in plans:
        mask = _paint(photo, where, regions, names, imported.problems)
        if mask is not None:
            imported.photos.append(Photo(photo, mask))
    return imported


def _paint(photo: Path, where: str, regions: list[dict], names: list[str], problems: list[str]) -> np.ndarray | None:
    """One photo's regions painted in order into a mask of class numbers; None after a problem (appended)."""
    from droneseg.images import photo_size

    w, h = photo_size(photo)
    mask = np.zeros((h, w), np.uint8)
    ok = True
    for n, r in enumerate(regions):
        kind = r["type"].lower()
        value = r.get("value") or {}
        labels = value.get(kind) or []
        if len(labels) != 1 or labels[0] not in names:
            problems.append(f"{where} ({photo.name}), region {n}: label {labels} is not one of the classes "
                            f"({', '.join(names[:8])})")
            ok = False
            continue
        rw, rh = r.get("original_width"), r.get("original_height")
        if (rw, rh) != (w, h):
            problems.append(f"{where} ({photo.name}), region {n}: drawn on a {rw}x{rh} image, the photo is {w}x{h}")
            ok = False
            continue
        number = names.index(labels[0]) + 1
        if kind == "brushlabels":
            try:
                flat = decode_rle(value.get("rle") or [])
                painted = flat.reshape(h, w, 4)[..., 3] > 127
            except ValueError as exc:
                problems.append(f"{where} ({photo.name}), region {n}: brush RLE does not decode to {w}x{h} RGBA "
                                f"({exc})")
                ok = False
                continue
            mask[painted] = number
        else:
            canvas = Image.new("L", (w, h), 0)
            points = [(x * w / 100.0, y * h / 100.0) for x, y in value.get("points", [])]
            if len(points) >= 3:
                ImageDraw.Draw(canvas).polygon(points, outline=1, fill=1)
            mask[np.asarray(canvas) > 0] = number
    if ok and not mask.any():
        problems.append(f"{where} ({photo.name}): its regions cover no pixel")
        ok = False
    return mask if ok else None


def _read_pngs(folder: Path, finder: PhotoFinder, classes: list | None, tasks: Path | None) -> Imported:
    if tasks is None:
        raise DataError(f"{folder}: Label Studio's PNG export names no photo; give --tasks, its JSON export "
                        "(or JSON-MIN), which maps task ids to photos")
    images = {int(t["id"]): _image_name(t) for t in _read_json(tasks) if "id" in t}
    imported = Imported("Label Studio PNG", folder)
    files = sorted(folder.glob("*.png"))
    if not files:
        raise DataError(f"{folder}: no PNG (Label Studio's PNG export: task-<id>-annotation-<id>-by-...png)")
    known = [n for n, _ in classes] if classes is not None else None
    by_task: dict[int, dict[int, list[tuple[str, int, Path]]]] = {}  # task -> annotation -> regions
    found: list[str] = []
    for f in files:
        m = PNG_NAME.match(f.name)
        if not m:
            imported.problems.append(f"{f}: not a Label Studio region PNG (task-<id>-annotation-<id>-by-<user>-"
                                     "<tag>-<label>-<i>.png)")
            continue
        rest = m.group(4)  # "<tag>-<label>": the label is the known class it ends with, else after the first '-'
        label = next((k for k in sorted(known or [], key=len, reverse=True) if rest.endswith("-" + k)), None)
        if label is None:
            label = rest.split("-", 1)[1] if "-" in rest else rest
        found.append(label)
        by_task.setdefault(int(m.group(1)), {}).setdefault(int(m.group(2)), []).append((label, int(m.group(5)), f))
    _classes(imported, classes, found)
    names = [n for n, _ in imported.classes]
    for task_id, annotations in sorted(by_task.items()):
        latest = max(annotations)  # as the JSON path: the latest annotation of a task, not several merged
        regions = annotations[latest]
        if len(annotations) > 1:
            imported.notes.append(f"task {task_id}: annotation {latest} read, the earlier "
                                  f"{sorted(set(annotations) - {latest})} left out")
        name = images.get(task_id)
        if name is None:
            imported.problems.append(f"{regions[0][2]}: task {task_id} is not in {tasks}")
            continue
        photo = _find(finder, name)
        if isinstance(photo, str):
            imported.problems.append(f"{regions[0][2]}: {photo}")
            continue
        from droneseg.images import photo_size

        w, h = photo_size(photo)
        mask = np.zeros((h, w), np.uint8)
        overlap, ok = 0, True
        for label, _, f in sorted(regions, key=lambda r: (names.index(r[0]) if r[0] in names else -1, r[1])):
            if label not in names:
                imported.problems.append(f"{f}: label {label!r} is not one of the classes ({', '.join(names[:8])})")
                ok = False
                continue
            alpha = np.asarray(Image.open(f).convert("L")) > 127
            problem = check_size(photo, alpha, f)
            if problem:
                imported.problems.append(problem)
                ok = False
                continue
            number = names.index(label) + 1
            overlap += int((alpha & (mask > 0) & (mask != number)).sum())
            mask[alpha] = number
        if ok:
            if overlap:
                imported.notes.append(f"{photo.name}: {overlap} px covered by regions of two classes (the later "
                                      "class in class order kept)")
            imported.photos.append(Photo(photo, mask))
    return imported
