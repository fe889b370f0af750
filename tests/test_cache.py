"""The decode-once cache: nearest for masks, rebuild on change, memory-mapped reads."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from droneseg.classes import ClassTable
from droneseg.data.cache import build_cache
from droneseg.data.layout import Sample, find_layout


def _pair(tmp_path, w=40, h=20):
    """A photo with a vertical split and a mask whose classes alternate every pixel column pair."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, w // 2 :] = 200
    mask = np.zeros((h, w), np.uint8)
    mask[:, 0::4], mask[:, 1::4], mask[:, 2::4], mask[:, 3::4] = 1, 1, 9, 9  # paved, paved, roof, roof
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    return Sample("a", tmp_path / "a.png", tmp_path / "a_mask.png", "index")


def test_masks_are_resized_nearest_never_blended(tmp_path):
    sample = _pair(tmp_path)
    (entry,) = build_cache([sample], ClassTable.builtin(), long_side=10, cache_dir=tmp_path / "c", workers=1, progress=False)
    img, mask = entry.load()
    assert img.shape == (5, 10, 3) and mask.shape == (5, 10)
    assert set(np.unique(mask).tolist()) <= {1, 9}  # bilinear would give 5 between 1 and 9
    assert isinstance(img, np.memmap) and isinstance(mask, np.memmap)


def test_cache_is_reused_and_rebuilt_when_the_file_changes(tmp_path):
    sample = _pair(tmp_path)
    table = ClassTable.builtin()
    (e1,) = build_cache([sample], table, 10, tmp_path / "c", workers=1, progress=False)
    mtime = e1.image.stat().st_mtime_ns
    (e2,) = build_cache([sample], table, 10, tmp_path / "c", workers=1, progress=False)
    assert e2 == e1 and e2.image.stat().st_mtime_ns == mtime  # nothing re-decoded
    (e3,) = build_cache([sample], table, 20, tmp_path / "c", workers=1, progress=False)
    assert e3.image != e1.image and e3.load()[0].shape == (10, 20, 3)
    st = os.stat(sample.mask)
    os.utime(sample.mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (e4,) = build_cache([sample], table, 10, tmp_path / "c", workers=1, progress=False)
    assert e4.image != e1.image


def test_rgb_and_index_masks_cache_to_the_same_array(synth_root, tmp_path):
    layout = find_layout(synth_root)
    idx = build_cache(layout.samples[:3], layout.table, 48, tmp_path / "c", workers=2, progress=False)
    rgb_samples = [Sample(s.id, s.image, synth_root / "RGB_color_image_masks" / f"{s.id}.png", "rgb") for s in layout.samples[:3]]
    rgb = build_cache(rgb_samples, layout.table, 48, tmp_path / "c", workers=1, progress=False)
    for a, b in zip(idx, rgb):
        assert np.array_equal(a.load()[1], b.load()[1])
        assert a.load()[0].shape == (32, 48, 3)


def test_native_size_keeps_pixels(synth_root, tmp_path):
    layout = find_layout(synth_root)
    (entry,) = build_cache(layout.samples[:1], layout.table, None, tmp_path / "c", workers=1, progress=False)
    mask = np.asarray(Image.open(layout.samples[0].mask))
    assert np.array_equal(entry.load()[1], mask)
