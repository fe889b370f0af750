"""Procedural scenes: determinism, the Kaggle layout on disk, valid labels, class coverage, colour ambiguity."""

from __future__ import annotations

import doctest
import re

import numpy as np
import pytest
from PIL import Image

from droneseg.classes import ClassTable
from droneseg.data import synthetic
from droneseg.data.synthetic import render_scene, write_synthetic
from droneseg.errors import DataError

TABLE = ClassTable.builtin()
REQUIRED = [("paved-area",), ("grass",), ("dirt", "gravel"), ("tree",), ("roof",), ("wall",), ("water", "pool"),
            ("car",), ("person",)]


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    """Eight small scenes, as a user's first synthetic dataset would hold."""
    return [render_scene(192, 128, np.random.default_rng(s)) for s in range(8)]


def test_module_example_runs():
    assert doctest.testmod(synthetic).failed == 0


def test_same_seed_gives_same_scene_and_another_seed_differs():
    a_img, a_mask = render_scene(96, 64, np.random.default_rng(3))
    b_img, b_mask = render_scene(96, 64, np.random.default_rng(3))
    c_img, _ = render_scene(96, 64, np.random.default_rng(4))
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)


def test_more_images_only_append_scenes(tmp_path):
    few = write_synthetic(tmp_path / "few", n=2, size=(80, 48), seed=5)
    more = write_synthetic(tmp_path / "more", n=4, size=(80, 48), seed=5)
    for sub, name in [("original_images", "000.jpg"), ("original_images", "001.jpg"),
                      ("label_images_semantic", "001.png"), ("RGB_color_image_masks", "001.png")]:
        assert (few / sub / name).read_bytes() == (more / sub / name).read_bytes()
    assert (more / "original_images" / "003.jpg").is_file()


def test_layout_file_formats_and_splits(tmp_path):
    out = write_synthetic(tmp_path / "data", n=5, size=(96, 64), seed=1, val_fraction=0.4)
    assert out == tmp_path / "data"
    ids = [f"{i:03d}" for i in range(5)]
    for sub, ext, mode in [("original_images", "jpg", "RGB"), ("label_images_semantic", "png", "L"),
                           ("RGB_color_image_masks", "png", "RGB")]:
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"{i}.{ext}" for i in ids]
        with Image.open(out / sub / f"000.{ext}") as im:
            assert (im.mode, im.size) == (mode, (96, 64))
    lines = (out / "class_dict_seg.csv").read_text().splitlines()
    assert lines[:3] == ["name, r, g, b", "unlabeled, 0, 0, 0", "paved-area, 128, 64, 128"]
    assert ClassTable.from_csv(out / "class_dict_seg.csv") == TABLE
    train = (out / "splits" / "train.txt").read_text().split()
    val = (out / "splits" / "val.txt").read_text().split()
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == ids


@pytest.mark.parametrize("n, fraction, n_val", [(2, 0.2, 1), (10, 0.25, 2), (4, 0.0, 0), (1, 0.5, 0)])
def test_val_split_size(tmp_path, n, fraction, n_val):
    out = write_synthetic(tmp_path / "data", n=n, size=(32, 32), val_fraction=fraction)
    assert len((out / "splits" / "val.txt").read_text().split()) == n_val


def test_masks_hold_valid_classes_and_rgb_masks_use_table_colours(synth_root):
    for path in sorted((synth_root / "label_images_semantic").glob("*.png")):
        mask = np.asarray(Image.open(path))
        rgb = np.asarray(Image.open(synth_root / "RGB_color_image_masks" / path.name))
        assert mask.max() < TABLE.index("conflicting")
        assert np.array_equal(rgb, TABLE.colors[mask])


def test_required_classes_occur_in_eight_small_scenes(scenes):
    present = {TABLE.names[i] for _, mask in scenes for i in np.unique(mask)}
    missing = [group for group in REQUIRED if not present & set(group)]
    assert not missing, f"missing {missing}; present {sorted(present)}"
    assert "unlabeled" not in present and "conflicting" not in present


def test_colour_alone_does_not_give_the_class(scenes):
    """A nearest-class-mean RGB classifier, fitted on the very pixels it labels, stays far from perfect."""
    rgb = np.concatenate([img.reshape(-1, 3) for img, _ in scenes]).astype(np.float64)
    labels = np.concatenate([mask.ravel() for _, mask in scenes])
    classes = np.unique(labels)
    means = np.stack([rgb[labels == c].mean(0) for c in classes])  # (C, 3)
    pred = classes[np.argmin(((rgb[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    accuracy = float((pred == labels).mean())
    print(f"nearest-class-mean RGB pixel accuracy: {accuracy:.3f}")
    assert accuracy < 0.85


def test_refuses_to_write_into_a_non_empty_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "data"))):
        write_synthetic(tmp_path / "data", n=1, size=(32, 32))
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["keep.txt"]


def test_an_existing_empty_folder_is_used(tmp_path):
    (tmp_path / "data").mkdir()
    assert (write_synthetic(tmp_path / "data", n=1, size=(32, 32)) / "original_images" / "000.jpg").is_file()


def test_64x64_scene():
    image, mask = render_scene(64, 64, np.random.default_rng(0))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == np.uint8
    assert len(np.unique(mask)) >= 3


@pytest.mark.parametrize(
    "kwargs, word",
    [({"n": 0}, "n must"), ({"size": (8, 64)}, "8x64"), ({"val_fraction": 1.0}, "val_fraction"),
     ({"jpeg_quality": 0}, "jpeg_quality"), ({"seed": -1}, "seed")],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=re.escape(word)):
        write_synthetic(tmp_path / "data", **{"n": 1, "size": (32, 32), **kwargs})
    assert not (tmp_path / "data").exists()
