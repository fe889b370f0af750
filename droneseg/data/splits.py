"""Train/val/test splits by image id, fixed before any crop or augmentation (no leakage): the one module that
reads, makes, chooses and writes split files.

Contract
--------
``read_split_file``: ids one per line. ``split_folder``: where a config's ``data.splits`` points. ``named_split``:
the ids ``evaluate --split`` scores. ``select``: the samples of a list of ids, refusing unknown ids.
``make_splits`` returns {"train": [...], "val": [...], "test": [...]} of ids, disjoint, sorted.
From split files (``<folder>/train.txt``, ``val.txt``, optional ``test.txt``) when given or when the
dataset ships a ``splits/`` folder, else from a seeded shuffle of the photos. Augmented copies that
``droneseg augment`` wrote (``<id>_aug<k>``) go where their source photo goes, so no copy of a training photo is
ever scored.

>>> make_splits([f"{i:03d}" for i in range(10)], None, 0.2, 0.1, seed=0)["val"]
['004', '006']
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from droneseg.classes import DataError
from droneseg.data.layout import Sample
from droneseg.files import atomic_write_text
from droneseg.images import IMAGE_SUFFIXES

SPLITS = ("train", "val", "test")


def make_splits(
    ids: list[str], split_dir: Path | None, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    known = set(ids)
    if split_dir is not None:
        out: dict[str, list[str]] = {}
        for name in SPLITS:
            path = Path(split_dir) / f"{name}.txt"
            if not path.exists():
                if name == "test":
                    out[name] = []
                    continue
                raise DataError(f"{path}: split file missing")
            listed = read_split_file(path)
            _refuse_unknown(listed, known, path)
            out[name] = sorted(set(listed))
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = set(out[a]) & set(out[b])
            if both:
                raise DataError(f"{split_dir}: {len(both)} ids are in both {a} and {b}, e.g. {sorted(both)[0]!r}")
        return out
    groups: dict[str, list[str]] = {}  # source photo -> its ids (itself and its augmented copies)
    for i in sorted(known):
        groups.setdefault(source_id(i, known), []).append(i)
    order = np.random.default_rng(seed).permutation(sorted(groups)).tolist()
    n_val = round(len(order) * val_fraction) if len(order) > 1 else 0
    n_test = round(len(order) * test_fraction) if len(order) > 2 else 0
    if val_fraction > 0 and len(order) > 1:
        n_val = max(n_val, 1)
    if n_val + n_test >= len(order):
        raise DataError(f"{len(order)} images cannot give {n_val} val and {n_test} test ids and leave any to train")
    expand = lambda sources: sorted(i for g in sources for i in groups[g])  # noqa: E731
    return {
        "val": expand(order[:n_val]),
        "test": expand(order[n_val : n_val + n_test]),
        "train": expand(order[n_val + n_test :]),
    }


_AUG = re.compile(r"^(?P<source>.+)_aug\d+$")


def source_id(image_id: str, known: set[str]) -> str:
    """The photo an id was derived from: ``<id>`` for ``<id>_aug<k>`` when ``<id>`` is in ``known``, else itself.

    >>> source_id("012_aug3", {"012", "012_aug3"}), source_id("012_aug3", {"012_aug3"})
    ('012', '012_aug3')
    """
    m = _AUG.match(image_id)
    return m["source"] if m and m["source"] in known else image_id


def assigned_splits(folder: Path) -> dict[str, str]:
    """id -> split name of the split files in ``folder`` (a run's ``splits/``; a missing file is an empty split)."""
    out: dict[str, str] = {}
    for name in SPLITS:
        path = Path(folder) / f"{name}.txt"
        if path.is_file():
            out.update((i, name) for i in read_split_file(path))
    return out


def save_splits(splits: dict[str, list[str]], folder: Path) -> None:
    for name, ids in splits.items():
        atomic_write_text(Path(folder) / f"{name}.txt", "".join(f"{i}\n" for i in ids))


def _refuse_unknown(ids: list[str], known: set[str] | dict, where: Path | str) -> None:
    missing = [i for i in ids if i not in known]
    if missing:
        raise DataError(f"{where}: {len(missing)} ids have no image/mask pair, e.g. {missing[0]!r}")


def select(samples: list[Sample], ids: list[str], where: Path | str) -> list[Sample]:
    """The samples of ``ids``, in their order; raises DataError naming ``where`` for unknown ids or no ids."""
    by_id = {s.id: s for s in samples}
    _refuse_unknown(ids, by_id, where)
    if not ids:
        raise DataError(f"{where}: the split is empty")
    return [by_id[i] for i in ids]


def split_folder(setting: str, root: str | Path | None) -> Path | None:
    """The folder of split files a config's ``data.splits`` names: ``auto`` the dataset's ``splits/`` when it
    holds ``train.txt`` (else None: seeded), ``seed`` None, anything else that folder."""
    if setting == "seed":
        return None
    if setting == "auto":
        shipped = Path(root) / "splits" if root is not None else None
        return shipped if shipped is not None and (shipped / "train.txt").exists() else None
    return Path(setting)


def named_split(split: str, run_splits: Path | None, data_root: Path | None) -> tuple[list[str], str, Path]:
    """Ids ``evaluate --split`` scores -> (ids, name, the file read).

    ``train``/``val``/``test``: the run's own split file when ``run_splits`` is given (the data is the dataset the
    model was trained on: then only the run's files count, since another file could hold its training ids), else
    the dataset's ``splits/``; anything else is a file of ids. Raises DataError naming the file.
    """
    if split in SPLITS:
        folder = run_splits if run_splits is not None else (Path(data_root) if data_root else Path(".")) / "splits"
        path = folder / f"{split}.txt"
        if path.is_file() and read_split_file(path):  # a run writes an empty test.txt when it has none
            return read_split_file(path), split, path
        if run_splits is not None:
            raise DataError(f"{path}: the run has no {split} split (empty or missing); pass --split FILE")
        raise DataError(f"no {split}.txt in {folder}; this is not the dataset the model was trained on, so its "
                        "run's split files do not apply: pass --split FILE with the ids to score")
    path = Path(split)
    if not path.is_file():
        raise DataError(f"--split {split!r}: not train/val/test or a file of ids")
    return read_split_file(path), path.stem, path


def read_split_file(path: Path) -> list[str]:
    r"""Ids one per line: blank lines and lines starting with ``#`` are skipped, a ``#`` inside a line is part of the
    id (``plot #3``: photos are named so), and a photo's suffix is dropped (``000.jpg`` and ``IMG_7.JPG`` count as
    ``000`` and ``IMG_7``; ``plot.v2`` stays ``plot.v2``).

    An id names a photo of the dataset, never a place: an entry with a folder in it (``../../etc/passwd``,
    ``a/b``) is refused with a DataError naming the file and line.

    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "val.txt"
    >>> _ = f.write_text("# val\nplot #3\nIMG_7.JPG\nplot.v2\n")
    >>> read_split_file(f)
    ['plot #3', 'IMG_7', 'plot.v2']
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read split file ({getattr(exc, 'strerror', None) or exc})") from None
    ids = []
    for line_no, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "/" in entry or "\\" in entry or entry in (".", ".."):
            raise DataError(f"{path}:{line_no}: {entry!r} is not an image id (a file name without folders)")
        ids.append(entry[: -len(Path(entry).suffix)] if Path(entry).suffix.lower() in IMAGE_SUFFIXES else entry)
    return ids
