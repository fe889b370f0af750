"""Train/val/test splits by image id, fixed before any crop or augmentation (no leakage).

Contract
--------
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
from droneseg.data.layout import read_split_file
from droneseg.io import atomic_write_text

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
            missing = [i for i in listed if i not in known]
            if missing:
                raise DataError(f"{path}: {len(missing)} ids have no image/mask pair, e.g. {missing[0]!r}")
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


def save_splits(splits: dict[str, list[str]], folder: Path) -> None:
    for name, ids in splits.items():
        atomic_write_text(Path(folder) / f"{name}.txt", "".join(f"{i}\n" for i in ids))
