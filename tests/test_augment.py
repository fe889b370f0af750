"""Offline augmentation: training ids only, Kaggle layout, masks stay exact class indices."""

from __future__ import annotations

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from droneseg.cli import app
from droneseg.data.check import check_dataset
from droneseg.data.layout import find_layout

RUN = CliRunner()


def test_augment_writes_copies_of_training_ids_only(synth_root, tmp_path):
    out = tmp_path / "aug"
    result = RUN.invoke(app, ["augment", str(synth_root), "--out", str(out), "--copies", "2"])
    assert result.exit_code == 0, result.output
    train = (synth_root / "splits" / "train.txt").read_text().split()
    val = (synth_root / "splits" / "val.txt").read_text().split()
    new_train = (out / "splits" / "train.txt").read_text().split()
    assert sorted(new_train) == sorted(train + [f"{i}_aug{k}" for i in train for k in range(2)])
    assert (out / "splits" / "val.txt").read_text().split() == val  # validation stays unaugmented
    assert not any("_aug" in p.name and p.stem.split("_aug")[0] in val for p in (out / "original_images").iterdir())
    layout = find_layout(out)
    assert len(layout.samples) == len(train) * 3 + len(val)
    assert check_dataset(layout, workers=1, progress=False).ok  # every mask index is a class, RGB agrees
    # a copy holds the same classes as its source (flips, turns and jitter move pixels, never invent labels)
    src = np.asarray(Image.open(synth_root / "label_images_semantic" / f"{train[0]}.png"))
    aug = np.asarray(Image.open(out / "label_images_semantic" / f"{train[0]}_aug0.png"))
    assert set(np.unique(aug)) <= set(np.unique(src))


def test_augment_refuses_to_overwrite(synth_root, tmp_path):
    out = tmp_path / "aug"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = RUN.invoke(app, ["augment", str(synth_root), "--out", str(out)])
    assert result.exit_code != 0 and (out / "keep.txt").read_text() == "mine"
