"""Finding pairs and check-data: clean sets pass, each kind of damage is named on its own line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from droneseg.cli import app
from droneseg.data.check import check_dataset
from droneseg.data.layout import find_layout

RUN = CliRunner()


def test_kaggle_layout_pairs_by_stem_and_prefers_index_masks(synth_root):
    layout = find_layout(synth_root)
    assert layout.kind == "kaggle" and len(layout.samples) == 12 and not layout.problems
    assert all(s.mask_kind == "index" and s.mask.parent.name == "label_images_semantic" for s in layout.samples)
    assert all(s.image.stem == s.mask.stem == s.id for s in layout.samples)
    assert layout.table_path.name == "class_dict_seg.csv"


def test_rgb_masks_are_the_fallback(synth_copy):
    shutil.rmtree(synth_copy / "label_images_semantic")
    layout = find_layout(synth_copy)
    assert {s.mask_kind for s in layout.samples} == {"rgb"}
    report = check_dataset(layout, workers=1, progress=False)
    assert report.ok and report.checked == 12


def test_nested_kaggle_archive_is_found(synth_root, tmp_path):
    nested = tmp_path / "archive" / "dataset" / "semantic_drone_dataset"
    shutil.copytree(synth_root, nested)
    assert len(find_layout(tmp_path / "archive").samples) == 12


def test_tugraz_layout(synth_root, tmp_path):
    root = tmp_path / "tugraz"
    shutil.copytree(synth_root / "original_images", root / "training_set" / "images")
    shutil.copytree(synth_root / "RGB_color_image_masks", root / "training_set" / "gt" / "semantic" / "label_images")
    shutil.copy(synth_root / "class_dict_seg.csv", root / "training_set" / "gt" / "semantic" / "class_dict.csv")
    layout = find_layout(root)
    assert layout.kind == "tugraz" and len(layout.samples) == 12
    assert check_dataset(layout, workers=1, progress=False).ok


def test_explicit_folders_pair_by_stem_not_position(synth_copy):
    masks = synth_copy / "label_images_semantic"
    # a mask whose name sorts first but has no photo must not shift the pairing
    Image.fromarray(np.zeros((64, 96), np.uint8)).save(masks / "0000.png")
    layout = find_layout(images=synth_copy / "original_images", masks=masks)
    assert len(layout.samples) == 12 and all(s.image.stem == s.mask.stem for s in layout.samples)
    assert layout.problems == [f"{masks / '0000.png'}: mask without image"]


def test_clean_set_reports_class_table_and_exits_zero(synth_root):
    result = RUN.invoke(app, ["check-data", str(synth_root), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "12 pairs checked: all clean" in result.output
    assert "paved-area" in result.output and "pixel share" in result.output


def test_broken_copy_names_each_problem_on_its_own_line(synth_copy):
    ids = sorted(p.stem for p in (synth_copy / "original_images").iterdir())
    img_dir, idx_dir, rgb_dir = (synth_copy / d for d in ("original_images", "label_images_semantic", "RGB_color_image_masks"))
    # 1. truncated JPEG
    data = (img_dir / f"{ids[0]}.jpg").read_bytes()
    (img_dir / f"{ids[0]}.jpg").write_bytes(data[: len(data) // 2])
    # 2. image without any mask
    (idx_dir / f"{ids[1]}.png").unlink()
    (rgb_dir / f"{ids[1]}.png").unlink()
    # 3. foreign colour in a colour mask (index mask removed so the colour one is used)
    (idx_dir / f"{ids[2]}.png").unlink()
    rgb = np.array(Image.open(rgb_dir / f"{ids[2]}.png"))
    rgb[:2, :5] = (1, 2, 3)
    Image.fromarray(rgb).save(rgb_dir / f"{ids[2]}.png")
    # 4. size mismatch
    Image.open(idx_dir / f"{ids[3]}.png").resize((48, 32), Image.NEAREST).save(idx_dir / f"{ids[3]}.png")
    # 5. index outside the table
    idx = np.array(Image.open(idx_dir / f"{ids[4]}.png"))
    idx[0, 0] = 40
    Image.fromarray(idx).save(idx_dir / f"{ids[4]}.png")
    # 6. stray file, 7. mask without image
    (img_dir / "notes.txt").write_text("hello")
    shutil.copy(idx_dir / f"{ids[5]}.png", idx_dir / "999.png")

    result = RUN.invoke(app, ["check-data", str(synth_copy), "--workers", "2"])
    assert result.exit_code == 1
    problems = [ln for ln in result.output.splitlines() if ln.startswith("problem: ")]
    expected = [
        f"{img_dir / ids[0]}.jpg: unreadable or truncated image",
        f"{img_dir / ids[1]}.jpg: image without mask",
        f"{rgb_dir / ids[2]}.png: unknown colour (1, 2, 3) in 10 pixels",
        f"{idx_dir / ids[3]}.png: mask is 48x32 but image {ids[3]}.jpg is 96x64",
        f"{idx_dir / ids[4]}.png: index 40 is outside the 24-class table (1 pixels)",
        f"{img_dir / 'notes.txt'}: stray file",
        f"{idx_dir / '999.png'}: mask without image",
    ]
    for want in expected:
        assert sum(ln.startswith(f"problem: {want}") for ln in problems) == 1, (want, problems)
    assert len(problems) == len(expected)


@pytest.mark.slow
def test_missing_folder_is_one_line_error_and_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "droneseg", "check-data", str(tmp_path / "nope")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"droneseg: error: {tmp_path / 'nope'}: no such folder"


@pytest.mark.slow
def test_dev_set_is_clean(dev_data):
    layout = find_layout(dev_data)
    report = check_dataset(layout, workers=2, progress=False)
    assert report.ok and report.checked == 300
    assert report.class_images[23] == 0  # 'conflicting' never occurs in the public photos


def test_loose_folders_without_a_class_table_say_the_24_classes_are_assumed(synth_root, tmp_path):
    """Two folders and no class_dict: the dataset's table is assumed, and check-data says so with what the masks
    use, so that a user's own 0/1/2 masks are not silently read as paved-area/dirt/grass."""
    images, masks = tmp_path / "img", tmp_path / "msk"
    images.mkdir()
    masks.mkdir()
    for i in range(2):
        shutil.copy(synth_root / "original_images" / f"{i:03d}.jpg", images)
        Image.fromarray(np.full((64, 96), i, np.uint8)).save(masks / f"{i:03d}.png")
    result = CliRunner().invoke(app, ["check-data", "--images", str(images), "--masks", str(masks)])
    assert result.exit_code == 0, result.output
    assert "warning: no class table found" in result.output
    assert "the Semantic Drone Dataset's 24 classes are assumed, and the masks use 2 of them (unlabeled, paved-area)" \
        in result.output and "--class-table" in result.output
