"""Evaluation at native resolution: banded upsampling, one truth with the written masks, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from droneseg.classes import DataError
from droneseg.data.layout import find_layout
from droneseg.evaluate import evaluate, upsample_rows
from droneseg.io import read_mask
from droneseg.schemes import get_scheme
from helpers import save_tiny_model


def _model(tmp_path: Path, scheme_name: str, long_side: int | None) -> Path:
    return save_tiny_model(tmp_path / "run", scheme_name, long_side)


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_banded_upsampling_equals_one_interpolate(rows):
    x = torch.randn(4, 17, 23)
    full = F.interpolate(x[None], size=(61, 90), mode="bilinear", align_corners=False)[0]
    bands = torch.cat([upsample_rows(x, (61, 90), y, min(61, y + rows)) for y in range(0, 61, rows)], dim=1)
    assert torch.allclose(bands, full, atol=1e-5)


def test_miou_equals_an_independent_recomputation_from_the_saved_masks(synth_root, tmp_path):
    # 'six' has a 'rest' group: the saved masks must re-encode to the predicted targets
    model = _model(tmp_path, "six", long_side=48)  # working size 48x32, masks scored at 96x64
    folder = evaluate(model, synth_root, split="val", save_masks=True, figures=1, progress=False)
    metrics = json.loads((folder / "metrics.json").read_text())
    scheme = get_scheme("six")
    layout = find_layout(synth_root)
    ids = (synth_root / "splits" / "val.txt").read_text().split()
    cm = np.zeros((6, 6), np.int64)
    for i in ids:
        sample = layout.by_id()[i]
        gt = scheme.encode(read_mask(sample.mask, "index", layout.table))
        written = np.asarray(Image.open(folder / "masks" / f"{i}.png"))
        assert written.shape == gt.shape  # native size
        pred = scheme.encode(written)
        keep = gt != 255
        cm += np.bincount(gt[keep].astype(np.int64) * 6 + pred[keep], minlength=36).reshape(6, 6)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    present = support > 0
    miou = np.mean(tp[present] / (support + predicted - tp)[present])
    assert metrics["miou"] == pytest.approx(miou, abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(tp.sum() / cm.sum(), abs=1e-12)
    # the first image's figure, plus the best and worst images the report shows
    panels = {p.stem for p in (folder / "predictions").iterdir()}
    assert ids[0] in panels and len(panels) == min(len(ids), 1 + 2 * 3)
    for name in ("metrics.txt", "per_class.csv", "confusion_matrix.png", "confusion_matrix_normalized.csv",
                 "pr_curves.png", "roc_curves.png", "report.html"):
        assert (folder / name).is_file(), name


def test_luma_scheme_thresholds_each_map_and_scores_two_classes(synth_root, tmp_path):
    model = _model(tmp_path, "luma", long_side=None)
    folder = evaluate(model, synth_root, split="val", luma="median", figures=0, progress=False)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["luma_threshold"] == "median"
    assert [c["name"] for c in metrics["per_class"]] == ["dark", "bright"]
    # a median threshold marks about half of every image 'bright'
    predicted = [c["predicted"] for c in metrics["per_class"]]
    assert predicted[1] / sum(predicted) == pytest.approx(0.5, abs=0.02)


def test_unknown_split_file_is_a_one_line_error(synth_root, tmp_path):
    model = _model(tmp_path, "six", long_side=48)
    with pytest.raises(DataError, match="not train/val/test or a file of ids"):
        evaluate(model, synth_root, split="nope.txt", progress=False)
    ids = tmp_path / "ids.txt"
    ids.write_text("does-not-exist\n")
    with pytest.raises(DataError, match="1 ids have no image/mask pair"):
        evaluate(model, synth_root, split=str(ids), progress=False)


def test_an_evaluation_is_never_overwritten(synth_root, tmp_path):
    model = _model(tmp_path, "paved", long_side=48)
    first = evaluate(model, synth_root, figures=0, progress=False)
    second = evaluate(model, synth_root, figures=0, progress=False)
    assert (first.name, second.name) == ("val", "val-2") and (first / "metrics.json").is_file()
    with pytest.raises(DataError, match="exists and is not empty"):
        evaluate(model, synth_root, out=first, progress=False)


def test_masks_written_by_predict_score_the_same_miou(synth_root, tmp_path):
    """One truth: evaluate, and scoring predict's masks (one tile covers the working size), agree exactly."""
    from droneseg.predict import predict

    model = _model(tmp_path, "six", long_side=48)
    metrics = json.loads((evaluate(model, synth_root, figures=0, progress=False) / "metrics.json").read_text())
    ids = (synth_root / "splits" / "val.txt").read_text().split()
    predict(model, [synth_root / "original_images" / f"{i}.jpg" for i in ids], tmp_path / "pred", progress=False)
    scheme, table = get_scheme("six"), find_layout(synth_root).table
    cm = np.zeros((6, 6), np.int64)
    for i in ids:
        gt = scheme.encode(read_mask(synth_root / "label_images_semantic" / f"{i}.png", "index", table))
        pred = scheme.encode(np.asarray(Image.open(tmp_path / "pred" / f"{i}.png")))
        keep = gt != 255
        cm += np.bincount(gt[keep].astype(np.int64) * 6 + pred[keep], minlength=36).reshape(6, 6)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    present = support > 0
    assert metrics["miou"] == pytest.approx(np.mean(tp[present] / (support + predicted - tp)[present]), abs=1e-12)
