"""The DataModule: owns the layout, scheme, splits, cache, transforms and loaders of one training run.

Contract
--------
``prepare_data`` decodes every split image into the cache once (rank 0 of each node; sets no state);
``setup`` only opens what is cached. Batches are ``(image uint8 (B, 3, h, w), target int64 (B, h, w))``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from droneseg.classes import DataError
from droneseg.config import DataConfig
from droneseg.data.cache import CacheEntry, build_cache
from droneseg.data.dataset import (
    CropDataset,
    EpochSampler,
    ShardSampler,
    WholeImageDataset,
    class_counts,
    ignore_sigint,
    images_per_class,
)
from droneseg.data.layout import SurveyOptions, open_dataset
from droneseg.data.splits import assigned_splits, make_splits, split_folder


def loader_workers(setting: int | str, on_gpu: bool, cores: int | None = None) -> int:
    """Loader processes for ``setting`` (a number, or ``auto``; see :class:`DataConfig`).

    >>> loader_workers("auto", on_gpu=False, cores=2), loader_workers("auto", on_gpu=True, cores=16), loader_workers(3, False)
    (0, 8, 3)
    """
    if setting != "auto":
        return int(setting)
    cores = cores or os.cpu_count() or 1
    if not on_gpu:
        return 0 if cores <= 4 else 2
    return max(1, min(8, cores - 1))


class DroneDataModule(pl.LightningDataModule):
    def __init__(self, cfg: DataConfig, seed: int, on_gpu: bool = False, split_dir: Path | None = None,
                 min_buffer_px: int = 0) -> None:
        """``split_dir``: split files that override ``cfg.splits`` (a resumed run's own ``splits/``).
        ``min_buffer_px``: a survey's shortest buffer between blocks of different splits (the crop or the tile)."""
        super().__init__()
        self.cfg, self.seed, self.on_gpu = cfg, seed, on_gpu
        self.workers = loader_workers(cfg.workers, on_gpu)
        survey = SurveyOptions(cfg.val_fraction, cfg.test_fraction, cfg.split_seed, cfg.image_filter,
                               assigned=assigned_splits(split_dir) if split_dir is not None else None,
                               gsd=cfg.gsd, min_buffer_px=min_buffer_px)
        self.layout, self.scheme = open_dataset(cfg.root, cfg.scheme, cfg.images, cfg.masks, cfg.class_table, survey)
        self.root = self.layout.root
        ids = [s.id for s in self.layout.samples]
        if self.layout.splits is not None:  # a survey: its spatial blocks' split
            self.splits = {k: sorted(v) for k, v in self.layout.splits.items()}
        else:
            self.splits = make_splits(ids, split_dir or split_folder(cfg.splits, cfg.root), cfg.val_fraction,
                                      cfg.test_fraction, cfg.split_seed)
        if not self.splits["train"]:
            raise DataError(f"{self.root}: the train split is empty")
        self.entries: dict[str, list[CacheEntry]] = {}
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) of a mid-epoch checkpoint
        self._counts: np.ndarray | None = None  # (N, K) class pixels per training image

    def _samples(self, split: str):
        by_id = self.layout.by_id()
        return [by_id[i] for i in self.splits[split]]

    def _cache(self, split: str, progress: bool) -> list[CacheEntry]:
        cache_dir = Path(self.cfg.cache_dir) if self.cfg.cache_dir else None
        return build_cache(self._samples(split), self.layout.table, self.cfg.long_side, cache_dir,
                           self.cfg.image_filter, workers=max(1, self.workers, min(4, os.cpu_count() or 1)),
                           progress=progress)

    def prepare_data(self) -> None:
        for split in ("train", "val"):
            self._cache(split, progress=sys.stderr.isatty())

    def setup(self, stage: str) -> None:
        for split in ("train", "val"):
            self.entries[split] = self._cache(split, progress=False)
        self._counts = None

    def _train_counts(self) -> np.ndarray:
        """(N, K) pixels of each target class in each training image at working size; computed once."""
        if self._counts is None:
            self._counts = class_counts(self.entries["train"], self.scheme)
        return self._counts

    def train_class_counts(self) -> np.ndarray:
        """(K,) training pixels per target class at working size (for class weights)."""
        return self._train_counts().sum(axis=0)

    def class_images(self) -> dict[int, list[int]]:
        """Class -> indices of the training images holding at least one pixel of it (for class-uniform crops)."""
        return images_per_class(self._train_counts())

    def _loader(self, dataset, batch_size: int, sampler=None) -> DataLoader:
        # pinned host memory lets the copy to a GPU run asynchronously
        # workers ignore Ctrl-C: training stops at a step boundary and needs them until then
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.workers,
                          persistent_workers=self.workers > 0, pin_memory=self.on_gpu,
                          worker_init_fn=ignore_sigint if self.workers else None)

    def state_dict(self) -> dict:
        """Where in its epoch a checkpoint was saved (a requeue saves between two batches)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        return {"epoch": trainer.current_epoch,
                "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume_at = (int(state["epoch"]), int(state["batches_done"]))

    def train_dataloader(self) -> DataLoader:
        n = len(self.entries["train"])
        sampler = EpochSampler(n, self.cfg.samples_per_epoch or n, self.seed,
                               class_images=self.class_images() if self.cfg.rare_crop else None,
                               class_share=self.cfg.rare_crop)
        if self._resume_at is not None:  # mid-epoch checkpoint: the rest of that epoch, as if never interrupted
            epoch, batches = self._resume_at
            if 0 < batches < -(-len(sampler) // self.cfg.batch_size):
                sampler.skip(epoch, batches * self.cfg.batch_size)
            self._resume_at = None
        dataset = CropDataset(self.entries["train"], self.scheme, self.cfg.crop, self.cfg.augment, self.seed)
        return self._loader(dataset, self.cfg.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        """Each val image on one rank only (no padding); the metrics' sums are reduced across ranks."""
        return self._loader(WholeImageDataset(self.entries["val"], self.scheme), 1, ShardSampler(len(self.entries["val"])))
