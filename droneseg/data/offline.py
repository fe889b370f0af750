"""``droneseg augment``: offline augmentation, for users who want the original project's workflow.

Contract
--------
Reads a dataset, takes its *training* ids only (the same splits as ``train``: the dataset's
``splits/`` or a seeded split), and writes a new dataset in the Kaggle layout: the originals of every
split, plus ``copies`` augmented versions of each training photo (``<id>_aug<k>``), and
``splits/{train,val,test}.txt`` in which only ``train`` lists the copies, so validation stays clean.
Augmentation uses the training transforms on source-index masks (flips, quarter turns, scale and
crop, colour jitter); pixels brought in from outside a photo are ``unlabeled``.
"""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from droneseg.data.layout import KAGGLE_IMAGES, KAGGLE_INDEX, KAGGLE_RGB, Layout, open_dataset
from droneseg.data.splits import make_splits, save_splits, split_folder
from droneseg.data.transforms import AugmentConfig, color_jitter, scaled_crop
from droneseg.errors import DataError
from droneseg.files import atomic_save, atomic_write_text, save_png
from droneseg.images import read_image, read_mask

UNLABELED = 0


def _augment_full(image: np.ndarray, mask: np.ndarray, cfg: AugmentConfig, crop: int | None,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A whole-photo copy (flips, quarter turns, jitter) or, with ``crop``, a random scaled square crop."""
    if crop:
        image, mask = scaled_crop(image, mask, crop, cfg.scale, UNLABELED, rng)
    if cfg.hflip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if cfg.vflip and rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    if cfg.rot90:
        k = int(rng.integers(4))
        image, mask = np.rot90(image, k), np.rot90(mask, k)
    return color_jitter(np.ascontiguousarray(image), cfg.color_jitter, rng), np.ascontiguousarray(mask)


def _write_table(layout: Layout, out: Path) -> None:
    rows = ["name, r, g, b"] + [f"{n}, {r}, {g}, {b}" for n, (r, g, b) in zip(layout.table.names, layout.table.colors.tolist())]
    atomic_write_text(out / "class_dict_seg.csv", "\n".join(rows) + "\n")


def _write_pair(out: Path, stem: str, image: np.ndarray, mask: np.ndarray, layout: Layout) -> None:
    atomic_save(out / KAGGLE_IMAGES / f"{stem}.jpg", lambda fh: Image.fromarray(image).save(fh, format="JPEG", quality=95))
    save_png(out / KAGGLE_INDEX / f"{stem}.png", mask)
    save_png(out / KAGGLE_RGB / f"{stem}.png", layout.table.index_to_rgb(mask))


def augment_dataset(
    data: Path,
    out: Path,
    copies: int,
    seed: int = 0,
    crop: int | None = None,
    cfg: AugmentConfig | None = None,
    splits: str = "auto",
    val_fraction: float = 0.2,
    progress: bool = True,
) -> Path:
    """Write the augmented dataset to ``out`` (which must not exist or be empty); returns ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not empty; augment never overwrites data")
    cfg = cfg or AugmentConfig()
    layout, _ = open_dataset(Path(data), "full")
    split_ids = make_splits([s.id for s in layout.samples], split_folder(splits, data), val_fraction, 0.0, seed)
    by_id = layout.by_id()
    train_ids = list(split_ids["train"])
    for split, ids in split_ids.items():
        for i in tqdm(ids, desc=f"augment {split}", unit="img", disable=not progress or not ids):
            s = by_id[i]
            image = read_image(s.image)
            mask = read_mask(s.mask, s.mask_kind, layout.table)
            if s.image.suffix.lower() in (".jpg", ".jpeg"):  # originals are copied byte for byte
                (out / KAGGLE_IMAGES).mkdir(parents=True, exist_ok=True)
                shutil.copy2(s.image, out / KAGGLE_IMAGES / f"{i}.jpg")
                save_png(out / KAGGLE_INDEX / f"{i}.png", mask)
                save_png(out / KAGGLE_RGB / f"{i}.png", layout.table.index_to_rgb(mask))
            else:
                _write_pair(out, i, image, mask, layout)
            if split != "train":
                continue
            for k in range(copies):
                rng = np.random.default_rng([seed, zlib.crc32(i.encode()), k])
                aug_img, aug_mask = _augment_full(image, mask, cfg, crop, rng)
                _write_pair(out, f"{i}_aug{k}", aug_img, aug_mask, layout)
                train_ids.append(f"{i}_aug{k}")
    _write_table(layout, out)
    save_splits({**split_ids, "train": sorted(train_ids)}, out / "splits")
    return out
