"""Torch datasets over cached arrays: random training crops, and whole evaluation images.

Contract
--------
* Items are ``(image, target)``: image (3, H, W) uint8 tensor (the model scales it to [0, 1]),
  target (H, W) int64 in 0..K-1 or the scheme's ignore index.
* Training randomness comes only from ``(seed, epoch, position)`` handed out by
  :class:`EpochSampler`, so a run is the same with 0 or 8 workers, on 1 or N ranks, and after a resume.

>>> list(EpochSampler(3, 4, seed=0, rank=0, world_size=2))[0][:2]
(0, 0)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from droneseg.data.cache import CacheEntry
from droneseg.data.transforms import AugmentConfig, augment, class_positions
from droneseg.schemes import LabelScheme

SampleKey = tuple[int, int, int]  # (epoch, position in the epoch, image index)


def _to_tensors(image: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies: cached arrays are read-only memory maps."""
    img = torch.from_numpy(np.ascontiguousarray(np.transpose(image, (2, 0, 1)), dtype=np.uint8))  # (3, H, W)
    return img, torch.from_numpy(np.array(target, dtype=np.int64))


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """The given (rank, world size), else the initialised process group's, else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSampler(Sampler[SampleKey]):
    """``samples_per_epoch`` draws over ``n_images`` (each image equally often, shuffled per epoch).

    Yields (epoch, position, image) keys; under DDP each rank takes every world_size-th position of the
    same global order, padded so every rank sees the same number of samples.
    """

    def __init__(self, n_images: int, samples_per_epoch: int, seed: int, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if n_images < 1:
            raise ValueError("no training images")
        self.n_images, self.samples, self.seed, self.epoch = n_images, samples_per_epoch, seed, 0
        self._rank, self._world = rank, world_size
        self._skip: tuple[int, int] | None = None  # (epoch, samples of this rank already trained on)

    def skip(self, epoch: int, samples: int) -> None:
        """Resume epoch ``epoch`` after this rank's first ``samples`` keys (a checkpoint saved mid-epoch): the rest
        of the epoch comes as in an uninterrupted run. Applies once, to that epoch."""
        self._skip = (epoch, samples)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every epoch."""
        self.epoch = epoch

    def _dist(self) -> tuple[int, int]:
        return rank_and_world(self._rank, self._world)

    def __len__(self) -> int:
        return -(-self.samples // self._dist()[1])

    def __iter__(self) -> Iterator[SampleKey]:
        rank, world = self._dist()
        rng = np.random.default_rng([self.seed, self.epoch])
        reps = -(-self.samples // self.n_images)
        order = np.concatenate([rng.permutation(self.n_images) for _ in range(reps)])[: self.samples]
        total = len(self) * world
        order = np.concatenate([order, order[: total - len(order)]])  # pad for equal shards
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start, self._skip = self._skip[1], None
        for pos in list(range(rank, total, world))[start:]:
            yield self.epoch, pos, int(order[pos])


class ShardSampler(Sampler[int]):
    """Rank r of w takes images r, r + w, r + 2w…: each image on exactly one rank, no padding (shards may differ
    by one image; what is computed from them is summed, so uneven shards are exact).

    >>> [list(ShardSampler(5, rank=r, world_size=2)) for r in (0, 1)]
    [[0, 2, 4], [1, 3]]
    """

    def __init__(self, n: int, rank: int | None = None, world_size: int | None = None) -> None:
        self.n, self._rank, self._world = n, rank, world_size

    def _dist(self) -> tuple[int, int]:
        return rank_and_world(self._rank, self._world)

    def __len__(self) -> int:
        rank, world = self._dist()
        return len(range(rank, self.n, world))

    def __iter__(self) -> Iterator[int]:
        rank, world = self._dist()
        return iter(range(rank, self.n, world))


class CropDataset(Dataset):
    """Random augmented crops of cached training images, indexed by :class:`EpochSampler` keys."""

    def __init__(self, entries: list[CacheEntry], scheme: LabelScheme, crop: int, augment_cfg: AugmentConfig,
                 rare_crop: float, seed: int) -> None:
        self.entries, self.scheme, self.crop = entries, scheme, crop
        self.augment_cfg, self.rare_crop, self.seed = augment_cfg, rare_crop, seed
        # per worker process, filled lazily: image, encoded target, class positions for class-centred crops
        self._targets: dict[int, tuple[np.ndarray, np.ndarray, dict | None]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _open(self, index: int) -> tuple[np.ndarray, np.ndarray, dict | None]:
        """Memory-mapped image, its encoded target and class positions, kept for the worker's lifetime."""
        if index not in self._targets:
            image, mask = self.entries[index].load()
            # encode the whole image: luma's threshold is the per-image mean, not the crop's
            target = self.scheme.encode(mask)
            positions = class_positions(target, self.scheme.ignore_index, seed=self.seed + index) if self.rare_crop else None
            self._targets[index] = (image, target, positions)
        return self._targets[index]

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, pos, index = key
        rng = np.random.default_rng([self.seed, epoch, pos])
        image, target, positions = self._open(index)
        image, target = augment(image, target, self.crop, self.augment_cfg, self.rare_crop,
                                self.scheme.ignore_index, rng, positions)
        return _to_tensors(image, target)


class WholeImageDataset(Dataset):
    """Cached images at working size, unaugmented, for validation during training."""

    def __init__(self, entries: list[CacheEntry], scheme: LabelScheme) -> None:
        self.entries, self.scheme = entries, scheme

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.entries[index].load()
        return _to_tensors(image, self.scheme.encode(mask))
