#!/usr/bin/env python3
"""Build the dev subset of the Semantic Drone Dataset from the public download.

The README's results use a dev set of 300 of the 400 public training photos at a quarter of their size
(1500x1000), with a fixed split of 250 training and 50 validation ids. The dataset's licence forbids
redistributing its pixels, so the repo ships only the ids (``train.txt`` and ``val.txt`` beside this script)
and this script, which rebuilds the subset from the archive you downloaded:

* Kaggle "Aerial Semantic Segmentation Drone Dataset": ``original_images/*.jpg``, ``label_images_semantic/*.png``
  (index masks) and/or ``RGB_color_image_masks/*.png`` (colour masks), ``class_dict_seg.csv``; found anywhere up to
  four folders down, so the archive may be unpacked with one or two extra folder levels.
* TU Graz: ``training_set/images/*.jpg``, ``training_set/gt/semantic/label_images/*.png`` (colour masks),
  ``training_set/gt/semantic/class_dict.csv``.

It writes, for every id of the split files::

    OUT/original_images/<id>.jpg          the photo shrunk FACTOR times: the exact FACTOR x FACTOR box average
                                          (Pillow's Image.reduce), JPEG quality QUALITY, 4:2:0 chroma
    OUT/label_images_semantic/<id>.png    index mask (row of the class table), nearest: the pixel at the centre
                                          of each FACTOR x FACTOR block, mask[FACTOR//2::FACTOR, FACTOR//2::FACTOR]
    OUT/RGB_color_image_masks/<id>.png    that index mask in the class table's colours
    OUT/class_dict_seg.csv                the class table (header "name, r, g, b")
    OUT/splits/train.txt, val.txt         the split files

Colour masks become index masks by an exact lookup in the class table's palette; an unknown colour stops the
build with one line naming the file. Index masks are used as they are where the download has them.
Photos are read with ``Image.open(...).convert("RGB")`` (the originals carry no EXIF turn that matters).
OUT must not exist or be empty; the subset is built in a temporary folder beside it and renamed at the end.

Needs only Python, numpy and Pillow::

    python scripts/devset/build.py DOWNLOAD --out data/semantic-drone-dev
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
KAGGLE = {"images": "original_images", "index": "label_images_semantic", "rgb": "RGB_color_image_masks"}
TUGRAZ = {"images": "training_set/images", "rgb": "training_set/gt/semantic/label_images"}
TABLES = ("class_dict_seg.csv", "class_dict.csv")
MAX_DEPTH = 4  # folders searched below DOWNLOAD
SPLITS = ("train", "val")


class BuildError(Exception):
    """A problem with the download or OUT: reported as one line, exit status 2."""


def find_dirs(root: Path, rel: str) -> list[Path]:
    """Folders ``root/**/rel`` at most MAX_DEPTH levels below ``root`` (``rel`` may hold slashes)."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth > MAX_DEPTH:
            dirnames.clear()
            continue
        dirnames.sort()
        if (Path(dirpath) / rel).is_dir():
            found.append(Path(dirpath) / rel)
    return found


def find_one_dir(root: Path, rel: str) -> Path | None:
    """The one folder ``rel`` below root; nested copies (``X/X``, as Kaggle's archive has) resolve to the deepest."""
    found = find_dirs(root, rel)
    # a folder whose only content is a folder of the same name counts once
    leaves = [d for d in found if not any(o != d and d in o.parents for o in found)]
    if len(leaves) > 1:
        raise BuildError(f"{root}: {len(leaves)} folders named {rel!r}: {', '.join(map(str, leaves))}; point at one archive")
    return leaves[0] if leaves else None


def find_table(root: Path, near: Path) -> Path:
    """The class table beside ``near``'s folder or up to three levels above it, else anywhere below ``root``."""
    for folder in [near.parent, *list(near.parent.parents)[:3]]:
        for name in TABLES:
            if (folder / name).is_file():
                return folder / name
    for name in TABLES:
        hits = sorted(p for p in root.rglob(name) if len(p.relative_to(root).parts) <= MAX_DEPTH + 1)
        if hits:
            return hits[0]
    raise BuildError(f"{root}: no {' or '.join(TABLES)} found")


def read_table(path: Path) -> tuple[list[str], np.ndarray]:
    """Names and (N, 3) uint8 colours from a ``name, r, g, b`` table (row = index)."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = [[c.strip() for c in row] for row in csv.reader(fh) if any(c.strip() for c in row)]
    if not rows or [c.lower() for c in rows[0]] != ["name", "r", "g", "b"]:
        raise BuildError(f"{path}: header must be 'name, r, g, b'")
    try:
        names = [r[0] for r in rows[1:]]
        colors = np.array([[int(v) for v in r[1:4]] for r in rows[1:]], dtype=np.int64)
    except (ValueError, IndexError):
        raise BuildError(f"{path}: every row must be 'name, r, g, b' with integer colours") from None
    if not names or colors.shape != (len(names), 3) or colors.min() < 0 or colors.max() > 255:
        raise BuildError(f"{path}: expected rows 'name, r, g, b' with colours in 0..255")
    return names, colors.astype(np.uint8)


def read_ids(path: Path) -> list[str]:
    """Ids one per line; blank lines and ``#`` comments skipped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def locate(download: Path) -> dict:
    """Where the photos, masks and class table of a Kaggle or TU Graz download are."""
    images = find_one_dir(download, KAGGLE["images"])
    if images is not None:
        index, rgb = find_one_dir(download, KAGGLE["index"]), find_one_dir(download, KAGGLE["rgb"])
        layout = "Kaggle"
    else:
        images = find_one_dir(download, TUGRAZ["images"])
        if images is None:
            raise BuildError(
                f"{download}: no '{KAGGLE['images']}/' (Kaggle) or '{TUGRAZ['images']}/' (TU Graz) folder found"
            )
        index, rgb = None, find_one_dir(download, TUGRAZ["rgb"])
        layout = "TU Graz"
    if index is None and rgb is None:
        raise BuildError(f"{download}: found {images} but no mask folder")
    masks, kind = (index, "index") if index is not None else (rgb, "rgb")
    return {"layout": layout, "images": images, "masks": masks, "kind": kind, "table": find_table(download, masks)}


def rgb_to_index(rgb: np.ndarray, colors: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8 class indices by exact palette lookup."""
    key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    palette = (colors[:, 0].astype(np.int64) << 16) | (colors[:, 1].astype(np.int64) << 8) | colors[:, 2]
    order = np.argsort(palette)
    pos = np.clip(np.searchsorted(palette[order], key), 0, len(palette) - 1)
    known = palette[order][pos] == key
    if not known.all():
        bad = rgb[~known]
        first = tuple(int(c) for c in bad[0])
        raise BuildError(f"{path}: unknown colour {first} in {int((~known).sum())} pixels (not in the class table)")
    return order[pos].astype(np.uint8)


def build_one(photo: Path, mask: Path, kind: str, colors: np.ndarray, factor: int, quality: int, out: Path) -> None:
    """Write one id's photo, index mask and colour mask into ``out``."""
    with Image.open(photo) as im:
        img = im.convert("RGB")
    with Image.open(mask) as m:
        if kind == "index":
            index = np.asarray(m)  # L or P: the stored values are the indices
            if index.ndim != 2 or m.mode not in ("L", "P"):
                raise BuildError(f"{mask}: an index mask must be one 8-bit band (mode L or P), got mode {m.mode}")
        else:
            index = rgb_to_index(np.asarray(m.convert("RGB")), colors, mask)
    w, h = img.size
    if (index.shape[1], index.shape[0]) != (w, h):
        raise BuildError(f"{mask}: size {index.shape[1]}x{index.shape[0]} differs from the photo's {w}x{h}")
    if w % factor or h % factor:
        raise BuildError(f"{photo}: size {w}x{h} is not a multiple of --factor {factor}")
    if int(index.max()) >= len(colors):
        raise BuildError(f"{mask}: index {int(index.max())} but the class table has {len(colors)} rows")
    c = factor // 2
    small = np.ascontiguousarray(index[c::factor, c::factor]).astype(np.uint8)  # (h/f, w/f): nearest, block centre
    stem = photo.stem
    img.reduce(factor).save(out / KAGGLE["images"] / f"{stem}.jpg", quality=quality, subsampling="4:2:0")
    Image.fromarray(small).save(out / KAGGLE["index"] / f"{stem}.png")
    Image.fromarray(colors[small]).save(out / KAGGLE["rgb"] / f"{stem}.png")


def by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes and p.is_file()}


def build(download: Path, out: Path, splits_dir: Path, factor: int, quality: int) -> list[str]:
    """Build the subset; returns the lines to print. Raises BuildError for any problem, before writing OUT."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BuildError(f"{out}: exists and is not empty; give a new or empty folder with --out")
    if not download.is_dir():
        raise BuildError(f"{download}: no such folder")
    splits = {name: read_ids(splits_dir / f"{name}.txt") for name in SPLITS}
    ids = [i for name in SPLITS for i in splits[name]]
    where = locate(download)
    names, colors = read_table(where["table"])
    photos = by_stem(where["images"], (".jpg", ".jpeg", ".png"))
    masks = by_stem(where["masks"], (".png",))
    missing = [i for i in ids if i not in photos or i not in masks]
    if missing:
        raise BuildError(f"{download}: {len(missing)} of {len(ids)} ids have no photo or mask: {', '.join(missing)}")

    # build in a temporary folder beside OUT and rename it at the end, so OUT is never half written
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for sub in (KAGGLE["images"], KAGGLE["index"], KAGGLE["rgb"], "splits"):
            (tmp / sub).mkdir()
        for n, i in enumerate(ids, start=1):
            build_one(photos[i], masks[i], where["kind"], colors, factor, quality, tmp)
            if n % 50 == 0:
                print(f"  {n}/{len(ids)}", file=sys.stderr, flush=True)
        rows = "".join(f"{n}, {r}, {g}, {b}\n" for n, (r, g, b) in zip(names, colors.tolist()))
        (tmp / "class_dict_seg.csv").write_text("name, r, g, b\n" + rows, encoding="utf-8")
        for name in SPLITS:
            (tmp / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in splits[name]), encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    with Image.open(photos[ids[0]]) as im:
        src = im.size
    w, h = src[0] // factor, src[1] // factor
    return [
        f"read the {where['layout']} layout: photos {where['images']}, {where['kind']} masks {where['masks']}, "
        f"class table {where['table']}",
        f"wrote {out}/{KAGGLE['images']}/: {len(ids)} photos of {w}x{h} (from {src[0]}x{src[1]}: {factor}x{factor} "
        f"box average, JPEG quality {quality})",
        f"wrote {out}/{KAGGLE['index']}/: {len(ids)} index masks (nearest: centre pixel of each {factor}x{factor} block)",
        f"wrote {out}/{KAGGLE['rgb']}/: {len(ids)} colour masks",
        f"wrote {out}/class_dict_seg.csv: {len(names)} classes",
        f"wrote {out}/splits/train.txt ({len(splits['train'])} ids), {out}/splits/val.txt ({len(splits['val'])} ids)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the 1500x1000 dev subset of the Semantic Drone Dataset (ids in train.txt/val.txt beside "
        "this script) from the Kaggle or TU Graz download.",
    )
    parser.add_argument("download", type=Path, help="the unpacked Kaggle or TU Graz archive")
    parser.add_argument("--out", type=Path, required=True, help="new or empty folder to write, e.g. data/semantic-drone-dev")
    parser.add_argument("--factor", type=int, default=4, help="shrink factor per side (default 4: 6000x4000 -> 1500x1000)")
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality of the photos (default 75)")
    parser.add_argument("--splits", type=Path, default=HERE, help="folder with train.txt and val.txt (default: beside this script)")
    args = parser.parse_args(argv)
    if args.factor < 1:
        parser.error("--factor must be at least 1")
    if not 1 <= args.quality <= 100:
        parser.error("--quality must be in 1..100")
    try:
        lines = build(args.download, args.out, args.splits, args.factor, args.quality)
    except BuildError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"build.py: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
