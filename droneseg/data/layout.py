"""Finding image/mask pairs on disk.

Contract
--------
``find_layout`` returns a :class:`Layout`: the pairs (matched by file stem, never by sorted position),
the class table, and the pairing problems (image without mask, mask without image, stray files),
one line each naming the file. It reads no pixels: that is ``check`` and ``cache``'s job.

Layouts understood:
* Kaggle: ``original_images/``, ``label_images_semantic/`` (index) and/or ``RGB_color_image_masks/``
  (colour), ``class_dict_seg.csv``; also nested one or two folders deep, as the Kaggle archive unpacks.
* TU Graz: ``training_set/images/``, ``training_set/gt/semantic/label_images/`` (colour), ``class_dict.csv``.
* Two folders given explicitly (``images=``, ``masks=``); the mask kind is read from the first mask.
* A survey: a YAML file naming orthomosaics and vector labels (:mod:`droneseg.geo.survey`, the ``geo`` extra).
  Its samples are spatial blocks (``mask_kind`` ``"survey"``, ``block`` set) and its layout carries their split
  and its working GSD.

>>> Path("000.jpg").stem == Path("000.png").stem
True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from droneseg.classes import ClassTable, DataError
from droneseg.geo.survey import SurveyOptions  # a plain dataclass: the survey code itself loads on demand
from droneseg.images import IMAGE_SUFFIXES, MaskKind, open_image
from droneseg.schemes import LabelScheme, get_scheme

KAGGLE_IMAGES = "original_images"
KAGGLE_INDEX = "label_images_semantic"
KAGGLE_RGB = "RGB_color_image_masks"
TUGRAZ_IMAGES = "training_set/images"
TUGRAZ_MASKS = "training_set/gt/semantic/label_images"
TABLE_NAMES = ("class_dict_seg.csv", "class_dict.csv")
_SEARCH_DEPTH = 3


@dataclass(frozen=True)
class Sample:
    """One photo and its mask (mask None only for unlabelled photos)."""

    id: str
    image: Path
    mask: Path | None
    mask_kind: MaskKind | str
    block: Any = None  # a survey's block (droneseg.geo.survey.Block): what its cache entry is built from


@dataclass(frozen=True)
class DataSource:
    """Where a dataset is: a folder in a known layout (``root``), or two folders of photos and masks; ``table``
    overrides the class table found. What ``--data``, ``--images``, ``--masks`` and ``--class-table`` say."""

    root: Path | None = None
    images: Path | None = None
    masks: Path | None = None
    table: Path | None = None

    @classmethod
    def of(cls, data: DataSource | str | Path | None) -> DataSource:
        """``data`` as a DataSource (a path is a dataset folder)."""
        return data if isinstance(data, DataSource) else cls(root=None if data is None else Path(data))

    def find(self, survey: SurveyOptions | None = None) -> Layout:
        """The pairs (:func:`find_layout`), or a survey's blocks cut as ``survey`` says; raises DataError when
        neither a folder, a survey nor both folders are given."""
        if self.is_survey():
            from droneseg.geo import require

            require()
            from droneseg.geo.survey import load_survey, plan_survey

            return survey_layout(plan_survey(load_survey(self.root), survey or SurveyOptions()))
        return find_layout(self.root, images=self.images, masks=self.masks, table=self.table)

    def is_survey(self) -> bool:
        """Whether this is a survey YAML (``--data survey.yaml``)."""
        return self.root is not None and self.root.suffix.lower() in (".yaml", ".yml") and self.root.is_file()

    def splits_root(self) -> Path | None:
        """The folder whose ``splits/`` belongs to this dataset (None for two loose folders and surveys, whose
        split is drawn from blocks)."""
        return None if self.is_survey() else self.root

    def __str__(self) -> str:
        return str(self.root) if self.root is not None else f"{self.images} + {self.masks}"


@dataclass
class Layout:
    kind: str  # "kaggle", "tugraz" or "folders"
    root: Path
    table: ClassTable
    table_path: Path | None
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)
    splits: dict[str, list[str]] | None = None  # a survey's blocks by split
    gsd: float | None = None  # a survey's working GSD, metres per pixel
    plan: Any = None  # a survey's SurveyPlan

    def describe(self) -> str:
        if self.splits is not None:  # a survey
            counts = ", ".join(f"{len(v)} {k}" for k, v in self.splits.items() if v)
            table = self.table_path.name if self.table_path else "the class names found in the labels"
            return (f"survey {self.plan.survey.path}: {len(self.samples)} blocks ({counts}) at {self.gsd:g} m/px, classes "
                    f"{table}")
        table = self.table_path.name if self.table_path else "built-in (no class table file found)"
        kinds = sorted({s.mask_kind for s in self.samples})
        return f"{self.kind} layout at {self.root}: {len(self.samples)} pairs, class table {table}, masks {'/'.join(kinds) or '-'}"

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}

    def fingerprint(self) -> str:
        """16 hex digits naming this dataset's content, wherever it lies: the class table and every pair's id and
        file sizes (no pixels read; a copy or a move keeps it, adding, removing or replacing a file changes it)."""
        h = hashlib.sha256("\n".join(self.table.names).encode() + self.table.colors.tobytes())
        for s in sorted(self.samples, key=lambda s: s.id):
            sizes = [p.stat().st_size if p is not None else -1 for p in (s.image, s.mask)]
            h.update(f"\n{s.id}:{sizes[0]}:{sizes[1]}:{s.mask_kind}".encode())
        return h.hexdigest()[:16]


def survey_layout(plan: Any) -> Layout:
    """The :class:`Layout` of a survey's :class:`~droneseg.geo.survey.SurveyPlan`: a sample per block."""
    labels = plan.survey.labels.path
    samples = [Sample(i, Path(b.raster), labels, "survey", block=b) for i, b in plan.blocks.items()]
    return Layout("survey", plan.survey.root, plan.survey.table, plan.survey.table_path, samples,
                  splits=plan.splits(), gsd=plan.gsd, plan=plan)


def _files(folder: Path, suffixes: tuple[str, ...], problems: list[str]) -> dict[str, Path]:
    """Stem -> file for image files in ``folder``; other non-hidden files are reported as stray."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir() or p.name in TABLE_NAMES:  # a class table beside them is no stray
            continue
        if p.suffix.lower() not in suffixes:
            problems.append(f"{p}: stray file (not {', '.join(suffixes)})")
        elif p.stem in out:
            problems.append(f"{p}: same stem as {out[p.stem].name}")
        else:
            out[p.stem] = p
    return out


def _find_dir(root: Path, rel: str) -> Path | None:
    """``root/rel``, or the one folder ending in ``rel`` that holds files, a few levels down."""
    direct = root / rel
    if direct.is_dir() and any(p.is_file() for p in direct.iterdir()):
        return direct
    hits = []
    for depth in range(1, _SEARCH_DEPTH + 1):
        pattern = "/".join(["*"] * depth) + "/" + rel
        hits += [p for p in root.glob(pattern) if p.is_dir() and any(q.is_file() for q in p.iterdir())]
    if len(hits) > 1:
        raise DataError(f"{root}: several '{rel}' folders ({', '.join(str(h) for h in hits[:3])}); pass one explicitly")
    return hits[0] if hits else (direct if direct.is_dir() else None)


def _find_table(*folders: Path) -> tuple[ClassTable, Path | None]:
    for folder in folders:
        for depth in range(_SEARCH_DEPTH + 1):
            for name in TABLE_NAMES:
                for p in sorted(folder.glob("/".join(["*"] * depth + [name]))):
                    return ClassTable.from_csv(p), p
    return ClassTable.builtin(), None


def _pair(
    images: dict[str, Path], masks: list[tuple[dict[str, Path], MaskKind]], problems: list[str]
) -> list[Sample]:
    samples = []
    for stem, img in images.items():
        found = next(((m[stem], kind) for m, kind in masks if stem in m), None)
        if found is None:
            problems.append(f"{img}: image without mask")
            continue
        samples.append(Sample(stem, img, found[0], found[1]))
    for m, _ in masks:
        problems += [f"{p}: mask without image" for stem, p in m.items() if stem not in images]
    return samples


def _mask_kind_of(paths: list[Path]) -> MaskKind:
    """Colour or index masks, from the first mask that opens (an unreadable one is check-data's to name)."""
    for path in paths:
        try:
            with open_image(path) as im:
                return "rgb" if im.mode in ("RGB", "RGBA", "RGBX", "CMYK") else "index"
        except DataError:
            continue
    return "index"


def find_layout(
    root: str | Path | None = None,
    images: str | Path | None = None,
    masks: str | Path | None = None,
    table: str | Path | None = None,
) -> Layout:
    """Locate pairs in ``root`` (Kaggle or TU Graz layout) or in explicit ``images``/``masks`` folders."""
    problems: list[str] = []
    if images is not None or masks is not None:
        if images is None or masks is None:
            raise DataError("give both --images and --masks, or a dataset folder")
        images, masks = Path(images), Path(masks)
        for d in (images, masks):
            if not d.is_dir():
                raise DataError(f"{d}: not a folder")
        cls_table, table_path = (ClassTable.from_csv(table), Path(table)) if table else _find_table(masks, masks.parent)
        mask_files = _files(masks, (".png", ".tif", ".tiff"), problems)
        kind: MaskKind = _mask_kind_of(list(mask_files.values()))
        img_files = _files(images, IMAGE_SUFFIXES, problems)
        samples = _pair(img_files, [(mask_files, kind)], problems)
        return Layout("folders", images.parent, cls_table, table_path, samples, problems)

    if root is None:
        raise DataError("give a dataset folder, or --images and --masks")
    root = Path(root)
    if root.is_file():
        raise DataError(f"{root}: a file, not a dataset folder (give the folder that holds {KAGGLE_IMAGES}/ and its "
                        "masks, or --images DIR --masks DIR)")
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    kaggle_images = _find_dir(root, KAGGLE_IMAGES)
    tugraz_images = _find_dir(root, TUGRAZ_IMAGES)
    if kaggle_images is not None:
        kind_name = "kaggle"
        img_dir = kaggle_images
        mask_dirs = [(d, k) for d, k in ((_find_dir(root, KAGGLE_INDEX), "index"), (_find_dir(root, KAGGLE_RGB), "rgb")) if d]
    elif tugraz_images is not None:
        kind_name = "tugraz"
        img_dir = tugraz_images
        mask_dirs = [(d, "rgb") for d in (_find_dir(root, TUGRAZ_MASKS),) if d]
    else:
        raise DataError(
            f"{root}: no '{KAGGLE_IMAGES}/' (Kaggle) or '{TUGRAZ_IMAGES}/' (TU Graz) folder; "
            "or pass --images DIR --masks DIR"
        )
    if not mask_dirs:
        raise DataError(f"{root}: found {img_dir} but no mask folder next to it")
    if table:
        cls_table, table_path = ClassTable.from_csv(table), Path(table)
    else:
        cls_table, table_path = _find_table(root)
    img_files = _files(img_dir, IMAGE_SUFFIXES, problems)
    mask_maps = [(_files(d, (".png", ".tif", ".tiff"), problems), k) for d, k in mask_dirs]
    samples = _pair(img_files, mask_maps, problems)
    return Layout(kind_name, root, cls_table, table_path, samples, problems)


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) from the header only, as stored (masks have no EXIF turn; photos: :func:`droneseg.images.photo_size`)."""
    with open_image(path) as im:
        return im.size


def open_dataset(root: str | Path | None, scheme: str, images: str | Path | None = None,
                 masks: str | Path | None = None, table: str | Path | None = None,
                 survey: SurveyOptions | None = None) -> tuple[Layout, LabelScheme]:
    """The layout of a dataset (``root``, or ``images`` + ``masks``; ``table`` overrides its class table; a survey
    YAML, cut as ``survey`` says), refusing pairing problems, and the scheme named ``scheme`` resolved against its
    class table. Raises DataError."""
    source = DataSource(Path(root) if root is not None else None, Path(images) if images is not None else None,
                        Path(masks) if masks is not None else None, Path(table) if table is not None else None)
    layout = source.find(survey)
    if layout.problems:
        more = f" (and {len(layout.problems) - 1} more)" if len(layout.problems) > 1 else ""
        raise DataError(f"{layout.problems[0]}{more}; run droneseg check-data on it")
    if not layout.samples:
        raise DataError(f"{root or images}: no image/mask pairs")
    return layout, get_scheme(scheme, layout.table)
