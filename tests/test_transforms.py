"""Class-centred crops: every class present is as likely a centre as any other, from positions found once."""

from __future__ import annotations

import numpy as np

from droneseg.data.transforms import _pick_center, class_positions


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


def test_rare_crops_centre_on_each_present_class_equally_often():
    target = np.zeros((50, 50), np.uint8)
    target[:, 25:] = 1
    target[10, 10] = 2  # one pixel of class 2
    positions = class_positions(target, ignore=255)
    rng = np.random.default_rng(1)
    centres = [_pick_center(target, 1.0, 255, rng, positions) for _ in range(3000)]
    counts = np.bincount([int(target[y, x]) for y, x in centres], minlength=3)
    assert (np.abs(counts / 3000 - 1 / 3) < 0.04).all()
    assert _pick_center(target, 0.0, 255, rng, positions) is None
