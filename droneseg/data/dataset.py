"""Torch datasets over cached arrays: random training crops, and whole evaluation images.

Contract
--------
* Items are ``(image, target)``: image (3, H, W) uint8 tensor (the model scales it to [0, 1]),
  target (H, W) int64 in 0..K-1 or the scheme's ignore index.
* Training randomness comes only from ``(seed, epoch, position)`` handed out by
  :class:`EpochSampler`, so a run is the same with 0 or 8 workers, on 1 or N ranks, and after a resume.
* Class-uniform sampling (the sampler's ``class_share``): that share of an epoch's samples draws a class uniformly
  among the training split's classes, then an image holding it, and the crop is centred on a pixel of that class
  (the "class uniform sampling" of Zhu et al., *Improving Semantic Segmentation via Video Propagation and Label
  Relaxation*, CVPR 2019, and NVIDIA's semantic-segmentation code). A class in 21 of 250 photos (door) is then
  centred on as often as paved area, instead of once in several hundred crops.

>>> list(EpochSampler(3, 4, seed=0, rank=0, world_size=2))[0][:2]
(0, 0)
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from droneseg.data.cache import CacheEntry
from droneseg.data.transforms import AugmentConfig, augment, class_positions
from droneseg.schemes import LabelScheme

SampleKey = tuple[int, int, int, int]  # (epoch, position in the epoch, image index, class to centre on or -1)
NO_CLASS = -1


def _to_tensors(image: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies: cached arrays are read-only memory maps."""
    img = torch.from_numpy(np.ascontiguousarray(np.transpose(image, (2, 0, 1)), dtype=np.uint8))  # (3, H, W)
    return img, torch.from_numpy(np.array(target, dtype=np.int64))


def class_counts(entries: list[CacheEntry], scheme: LabelScheme) -> np.ndarray:
    """(N, K) int64: pixels of each target class in each cached image (working size; ignored pixels not counted)."""
    return np.stack([np.bincount(scheme.encode(e.load()[1]).ravel(), minlength=256)[: scheme.num_classes]
                     for e in entries]).astype(np.int64)


def images_per_class(counts: np.ndarray) -> dict[int, list[int]]:
    """Class -> indices of the images holding at least one of its pixels, from :func:`class_counts`; classes
    absent from every image are left out.

    >>> images_per_class(np.array([[5, 0, 1], [3, 0, 0]]))
    {0: [0, 1], 2: [0]}
    """
    return {c: np.flatnonzero(counts[:, c]).tolist() for c in range(counts.shape[1]) if counts[:, c].any()}


def ignore_sigint(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C reaches the whole process group, but training stops at a step
    boundary (:mod:`droneseg.engine.requeue`) and needs its workers until then; only the main process acts on it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """The given (rank, world size), else the initialised process group's, else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSampler(Sampler[SampleKey]):
    """``samples_per_epoch`` draws over ``n_images`` (each image equally often, shuffled per epoch).

    Yields (epoch, position, image, class) keys; under DDP each rank takes every world_size-th position of the
    same global order, padded so every rank sees the same number of samples. With ``class_share`` > 0 and
    ``class_images`` (class -> indices of the images holding it), each position is, with that probability,
    replaced by a class drawn uniformly among the classes and an image drawn uniformly among its holders;
    the other positions keep their image and class -1 (a uniformly placed crop).
    """

    def __init__(self, n_images: int, samples_per_epoch: int, seed: int, rank: int | None = None,
                 world_size: int | None = None, class_images: dict[int, list[int]] | None = None,
                 class_share: float = 0.0) -> None:
        if n_images < 1:
            raise ValueError("no training images")
        self.n_images, self.samples, self.seed, self.epoch = n_images, samples_per_epoch, seed, 0
        self.class_images = {c: list(v) for c, v in sorted((class_images or {}).items()) if v}
        self.class_share = class_share if self.class_images else 0.0
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
        classes = np.full(len(order), NO_CLASS)
        if self.class_share > 0:
            pool = list(self.class_images)
            draw = rng.random(len(order)) < self.class_share
            picks = rng.integers(len(pool), size=len(order))
            which = rng.random(len(order))  # uniform among the class's images
            for i in np.flatnonzero(draw):
                c = pool[picks[i]]
                holders = self.class_images[c]
                classes[i], order[i] = c, holders[int(which[i] * len(holders))]
        total = len(self) * world
        order = np.concatenate([order, order[: total - len(order)]])  # pad for equal shards
        classes = np.concatenate([classes, classes[: total - len(classes)]])
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start, self._skip = self._skip[1], None
        for pos in list(range(rank, total, world))[start:]:
            yield self.epoch, pos, int(order[pos]), int(classes[pos])


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
                 seed: int) -> None:
        self.entries, self.scheme, self.crop = entries, scheme, crop
        self.augment_cfg, self.seed = augment_cfg, seed
        # per worker process, filled lazily: image, encoded target, class positions for class-centred crops
        self._targets: dict[int, tuple[np.ndarray, np.ndarray, dict | None]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _open(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped image and its encoded target, kept for the worker's lifetime."""
        if index not in self._targets:
            image, mask = self.entries[index].load()
            # encode the whole image: luma's threshold is the per-image mean, not the crop's
            self._targets[index] = (image, self.scheme.encode(mask), None)
        return self._targets[index][:2]

    def _positions(self, index: int) -> dict[int, np.ndarray]:
        """Class -> some of its pixels in image ``index``, found once (one sort) on the first class-centred crop."""
        image, target, positions = self._targets[index]
        if positions is None:
            positions = class_positions(target, self.scheme.ignore_index, seed=self.seed + index)
            self._targets[index] = (image, target, positions)
        return positions

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, pos, index, cls = key
        rng = np.random.default_rng([self.seed, epoch, pos])
        image, target = self._open(index)
        centre_on = self._positions(index).get(cls) if cls != NO_CLASS else None
        image, target = augment(image, target, self.crop, self.augment_cfg, self.scheme.ignore_index, rng, centre_on)
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
