"""Class-uniform sampling: every training class as likely a crop centre as any other, from positions found once."""

from __future__ import annotations

import numpy as np

from droneseg.data.dataset import NO_CLASS, EpochSampler, class_counts, images_per_class
from droneseg.data.transforms import class_positions, scaled_crop


def test_class_positions_hold_only_pixels_of_their_class_capped_per_class():
    rng = np.random.default_rng(0)
    target = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(60, 80), p=[0.7, 0.2, 0.05, 0.05])
    target[5, 7] = 9  # a one-pixel class
    pos = class_positions(target, ignore=255, cap=100)
    assert sorted(pos) == [0, 1, 2, 9]  # ignored pixels are no class
    for c, idx in pos.items():
        assert (target.ravel()[idx] == c).all() and len(set(idx.tolist())) == len(idx)
    assert len(pos[0]) == 100 and pos[9].tolist() == [5 * 80 + 7]
    assert np.array_equal(pos[1], class_positions(target, ignore=255, cap=100)[1])  # seeded: the same each time


def test_class_uniform_sampling_draws_each_class_equally_from_the_images_that_hold_it():
    holders = {0: [0, 1, 2, 3], 1: [1, 3], 7: [2]}  # class 7 lives in image 2 alone
    sampler = EpochSampler(4, 3000, seed=0, rank=0, world_size=1, class_images=holders, class_share=0.6)
    keys = list(sampler)
    centred = [(image, cls) for _, _, image, cls in keys if cls != NO_CLASS]
    assert abs(len(centred) / len(keys) - 0.6) < 0.03
    shares = np.bincount([cls for _, cls in centred], minlength=8)[[0, 1, 7]] / len(centred)
    assert (np.abs(shares - 1 / 3) < 0.04).all()  # door-like class 7 as often as the common ones
    assert all(image in holders[cls] for image, cls in centred)
    assert keys == list(sampler)  # the epoch is fixed by (seed, epoch)
    # DDP: the two ranks' keys interleave into the one-process order
    ranks = [list(EpochSampler(4, 3000, 0, rank=r, world_size=2, class_images=holders, class_share=0.6))
             for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1], key=lambda k: k[1]) == keys
    # no share: the plain order, every key uniform
    assert all(k[3] == NO_CLASS for k in EpochSampler(4, 100, 0, rank=0, world_size=1, class_images=holders))


def test_a_class_centred_crop_holds_its_class_at_the_centre():
    target = np.zeros((50, 50), np.uint8)
    target[10, 10] = 2  # one pixel of class 2
    image = np.zeros((50, 50, 3), np.uint8)
    positions = class_positions(target, ignore=255)
    rng = np.random.default_rng(1)
    for _ in range(20):
        _, crop = scaled_crop(image, target, 9, (1.0, 1.0), 255, rng, centre_on=positions[2])
        assert crop[4, 4] == 2


def test_class_presence_from_the_cache(synth_root, tmp_path):
    from droneseg.data.cache import build_cache
    from droneseg.data.layout import find_layout
    from droneseg.schemes import get_scheme

    layout = find_layout(synth_root)
    entries = build_cache(layout.samples[:3], layout.table, None, tmp_path, progress=False)
    scheme = get_scheme("full", layout.table)
    counts = class_counts(entries, scheme)
    for entry, row in zip(entries, counts):
        target = scheme.encode(entry.load()[1])
        assert row.sum() == (target != scheme.ignore_index).sum()
    assert all(counts[i, c] > 0 for c, images in images_per_class(counts).items() for i in images)


def _coded_scene(h: int = 96, w: int = 128, k: int = 20, block: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo whose every pixel's colour encodes its label (blocks of ``block`` px, k labels, k distinct colours)."""
    yy, xx = np.mgrid[:h, :w]
    target = ((yy // block) * 7 + (xx // block) * 3) % k
    palette = np.random.default_rng(0).permutation(np.arange(40, 240, 200 // k)[:k])
    colours = np.stack([palette, palette[::-1], (palette * 7) % 200 + 40], axis=1).astype(np.uint8)  # (k, 3)
    return colours[target], target.astype(np.uint8), colours


def test_augmentation_keeps_photo_and_mask_aligned_pixel_for_pixel():
    """Flips, quarter turns and crops move photo and mask together: at scale 1 every pixel's label is still the
    one its colour encodes; with scaled crops every pixel whose colour is still pure (away from block edges, where
    the photo is resampled bilinear and the mask nearest) is too, and such pixels are most of the crop."""
    from droneseg.data.transforms import AugmentConfig, augment

    image, target, colours = _coded_scene()
    lut = {tuple(c): i for i, c in enumerate(colours.tolist())}
    for scale, exact in (((1.0, 1.0), True), ((0.6, 1.6), False)):
        cfg = AugmentConfig(scale=scale, color_jitter=0.0)
        for seed in range(40):
            rng = np.random.default_rng(seed)
            centre = class_positions(target, 255)[seed % 20] if seed % 2 else None
            img, tgt = augment(image, target, 48, cfg, 255, rng, centre)
            assert img.shape == (48, 48, 3) and tgt.shape == (48, 48)
            decoded = np.array([[lut.get(tuple(px), -1) for px in row] for row in img.tolist()])
            inside = tgt != 255
            if exact:
                assert (decoded[inside] == tgt[inside]).all()
            else:
                pure = inside & (decoded >= 0)
                assert pure.mean() > 0.5 and (decoded[pure] == tgt[pure]).mean() > 0.97


def test_loader_batches_are_the_same_with_0_or_2_workers_and_shards_partition_the_epoch(synth_root, tmp_path):
    """Training randomness comes from the sampler's keys only: 0 and 2 worker processes give identical batches;
    two DDP ranks' shards partition the epoch's keys (padded to equal length)."""
    import torch

    from droneseg.data.datamodule import DataConfig, DroneDataModule

    batches = []
    for workers in (0, 2):
        cfg = DataConfig(root=str(synth_root), crop=32, batch_size=3, samples_per_epoch=10, workers=workers,
                         long_side=None, rare_crop=0.5, cache_dir=str(tmp_path / "cache"))
        dm = DroneDataModule(cfg, seed=3)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(2)
        batches.append([(x.clone(), y.clone()) for x, y in loader])
    assert len(batches[0]) == len(batches[1]) == 4
    for (x0, y0), (x1, y1) in zip(*batches):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    holders = {0: [0, 1], 3: [2]}
    one = list(EpochSampler(5, 11, 3, rank=0, world_size=1, class_images=holders, class_share=0.5))
    shards = [list(EpochSampler(5, 11, 3, rank=r, world_size=2, class_images=holders, class_share=0.5)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 6  # 11 keys padded to 12
    merged = sorted(shards[0] + shards[1], key=lambda k: k[1])
    assert merged[:11] == one and merged[11][2:] == one[0][2:]  # the pad repeats the first key's image and class
