"""Evaluation at native resolution through the tiler: one truth with predict's masks, any size, the right split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TRAIN, ShapeRecorder, save_tiny_model
from PIL import Image

import droneseg.session as session_module
from droneseg.artifact import load_model
from droneseg.classes import ClassTable, DataError
from droneseg.data.layout import find_layout
from droneseg.data.synthetic import write_synthetic
from droneseg.evaluate import curve_stride, evaluate
from droneseg.images import read_mask
from droneseg.predict import predict
from droneseg.schemes import get_scheme
from droneseg.tiler import InferenceOverrides


def rescore(data: Path, masks: Path, ids: list[str], scheme_name: str, numbering: str = "scheme") -> dict:
    """Pooled mIoU and pixel accuracy of written masks, recomputed with plain numpy."""
    scheme, table = get_scheme(scheme_name), find_layout(data).table
    k = scheme.num_classes
    cm = np.zeros((k, k), np.int64)
    for i in ids:
        gt = scheme.encode(read_mask(data / "label_images_semantic" / f"{i}.png", "index", table))
        written = np.asarray(Image.open(masks / f"{i}.png"))
        assert written.shape == gt.shape  # native size
        pred = scheme.encode(written) if numbering == "dataset" else written
        keep = gt != 255
        cm += np.bincount(gt[keep].astype(np.int64) * k + pred[keep], minlength=k * k).reshape(k, k)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    present = support > 0
    return {"miou": float(np.mean(tp[present] / (support + predicted - tp)[present])),
            "pixel_accuracy": float(tp.sum() / cm.sum())}


def val_ids(data: Path) -> list[str]:
    return (data / "splits" / "val.txt").read_text().split()


@pytest.mark.parametrize("numbering", ["auto", pytest.param("dataset", marks=pytest.mark.slow)])
def test_miou_equals_an_independent_recomputation_from_the_saved_masks(synth_root, tmp_path, numbering):
    # 'six' groups classes: by default its masks hold its own 0..5, with its class table beside them
    model = save_tiny_model(tmp_path / "run", "six", long_side=48, inference={"tile": 32})  # 48x32 in two 32² tiles
    folder = evaluate(model, synth_root, save_masks=True, numbering=numbering, figures=3, progress=False)
    metrics = json.loads((folder / "metrics.json").read_text())
    expected = rescore(synth_root, folder / "masks", val_ids(synth_root), "six",
                       "dataset" if numbering == "dataset" else "scheme")
    assert metrics["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    table = ClassTable.from_csv(folder / "masks" / "class_dict.csv")
    assert table.names == (get_scheme("six").names if numbering == "auto" else get_scheme("six").table.names)
    # three figures: the best, the median and the worst image
    ranked = sorted(((-float(r.split(",")[1]), r.split(",")[0]) for r in
                     (folder / "per_image.csv").read_text().splitlines()[1:]))
    drawn = {p.stem for p in (folder / "predictions").iterdir()}
    assert drawn == {ranked[0][1], ranked[(len(ranked) - 1) // 2][1], ranked[-1][1]}
    for name in ("metrics.txt", "per_class.csv", "confusion_matrix.png", "confusion_matrix_normalized.csv",
                 "pr_curves.png", "roc_curves.png", "report.html"):
        assert (folder / name).is_file(), name
    assert metrics["context"]["inference"]["tile"] == 32 and metrics["context"]["curves"] == "every pixel"


@pytest.mark.slow
def test_predict_masks_rescore_evaluate_miou_when_the_photo_spans_several_tiles(tmp_path):
    """One truth: a trained model whose working size spans 3x2 tiles; predict's masks give evaluate's mIoU."""
    from typer.testing import CliRunner

    from droneseg.cli import app

    data = write_synthetic(tmp_path / "data", n=6, size=(384, 256), seed=3, val_fraction=0.34)
    result = CliRunner().invoke(app, [
        "train", "-c", "demo", "--data", str(data), "--out", str(tmp_path / "runs"), "--max-epochs", "2", *TINY_TRAIN,
        "--set", "data.crop=64", "--set", "data.long_side=256", "--set", "inference.tile=96",
        "--set", "inference.overlap=0.25",
    ])
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip().splitlines()[-1])
    info = json.loads((run / "model.json").read_text())
    assert info["inference"]["tile"] == 96 and info["long_side"] == 256  # 256x171 working size: 3x2 tiles
    metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())  # training's final evaluation
    ids = val_ids(data)
    predict(run, [data / "original_images" / f"{i}.jpg" for i in ids], tmp_path / "pred", progress=False)
    expected = rescore(data, tmp_path / "pred", ids, "six")
    assert metrics["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["val_miou_native"] == metrics["miou"]


@pytest.mark.slow
def test_a_native_size_model_is_evaluated_in_tiles_never_in_one_pass(synth_root, tmp_path, monkeypatch):
    """long_side null: the network never sees more than a tile, and the numbers still match predict's masks."""
    seen: list[tuple[int, int]] = []

    def load(path, device):
        net, info = load_model(path, device)
        recorder = ShapeRecorder(net)
        recorder.shapes = seen
        return recorder, info

    monkeypatch.setattr(session_module, "load_model", load)
    model = save_tiny_model(tmp_path / "run", "six", long_side=None, inference={"tile": 32, "overlap": 0.5})
    metrics = json.loads((evaluate(model, synth_root, figures=0, progress=False) / "metrics.json").read_text())
    assert seen and max(max(s) for s in seen) == 32  # 96x64 photos, 32-pixel tiles
    ids = val_ids(synth_root)
    predict(model, [synth_root / "original_images" / f"{i}.jpg" for i in ids], tmp_path / "pred", progress=False)
    assert metrics["miou"] == pytest.approx(rescore(synth_root, tmp_path / "pred", ids, "six")["miou"], abs=1e-12)


def test_curves_sample_large_images_on_a_regular_grid():
    assert curve_stride(1000, 1500) == 1  # the dev set's photos: every pixel
    assert curve_stride(4000, 6000) == 3  # 2000x1334 samples of a full-size photo
    assert curve_stride(1, 10**7) == 3


@pytest.mark.slow
def test_luma_scheme_thresholds_each_map_and_scores_two_classes(synth_root, tmp_path):
    model = save_tiny_model(tmp_path / "run", "luma", long_side=None, inference={"tile": 48})
    folder = evaluate(model, synth_root, split="val", figures=0, progress=False, inference=InferenceOverrides(luma_threshold="median"))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["luma_threshold"] == "median"
    assert [c["name"] for c in metrics["per_class"]] == ["dark", "bright"]
    # a median threshold marks about half of every image 'bright'
    predicted = [c["predicted"] for c in metrics["per_class"]]
    assert predicted[1] / sum(predicted) == pytest.approx(0.5, abs=0.02)


@pytest.mark.slow
def test_the_runs_split_applies_only_to_the_dataset_it_was_trained_on(synth_root, tmp_path):
    layout = find_layout(synth_root)
    identity = {"root": str(synth_root), "fingerprint": layout.fingerprint(), "images": len(layout.samples)}
    model = save_tiny_model(tmp_path / "run", "paved", long_side=48, dataset=identity)
    own = sorted(s.id for s in layout.samples)[:2]  # the run's own val split differs from the dataset's
    (tmp_path / "run" / "splits").mkdir()
    (tmp_path / "run" / "splits" / "val.txt").write_text("\n".join(own) + "\n")
    metrics = json.loads((evaluate(model, synth_root, figures=0, progress=False) / "metrics.json").read_text())
    assert metrics["context"]["images"] == 2 and metrics["context"]["trained_on_this_dataset"] is True
    assert metrics["context"]["split_file"] == str((tmp_path / "run" / "splits" / "val.txt").resolve())
    # a moved copy is the same dataset
    copy = Path(shutil.copytree(synth_root, tmp_path / "moved"))
    metrics = json.loads((evaluate(model, copy, figures=0, progress=False) / "metrics.json").read_text())
    assert metrics["context"]["images"] == 2
    # another dataset: its own splits/val.txt, recorded in metrics.json
    other = write_synthetic(tmp_path / "other", n=5, size=(96, 64), seed=11, val_fraction=0.4)
    metrics = json.loads((evaluate(model, other, figures=0, progress=False) / "metrics.json").read_text())
    assert metrics["context"]["trained_on_this_dataset"] is False
    assert metrics["context"]["split_file"] == str((other / "splits" / "val.txt").resolve())
    assert metrics["context"]["images"] == len(val_ids(other)) and metrics["context"]["dataset_fingerprint"]
    # ...and without one, an error that says what to do
    shutil.rmtree(other / "splits")
    with pytest.raises(DataError, match="not the dataset the model was trained on.*--split FILE"):
        evaluate(model, other, progress=False)


def test_unknown_split_file_is_a_one_line_error(synth_root, tmp_path):
    model = save_tiny_model(tmp_path / "run", "six", long_side=48)
    with pytest.raises(DataError, match="not train/val/test or a file of ids"):
        evaluate(model, synth_root, split="nope.txt", progress=False)
    ids = tmp_path / "ids.txt"
    ids.write_text("does-not-exist\n")
    with pytest.raises(DataError, match="1 ids have no image/mask pair"):
        evaluate(model, synth_root, split=str(ids), progress=False)


@pytest.mark.slow
def test_an_evaluation_is_never_overwritten(synth_root, tmp_path):
    model = save_tiny_model(tmp_path / "run", "paved", long_side=48)
    first = evaluate(model, synth_root, figures=0, progress=False)
    second = evaluate(model, synth_root, figures=0, progress=False)
    assert (first.name, second.name) == ("val", "val-2") and (first / "metrics.json").is_file()
    with pytest.raises(DataError, match="exists and is not empty"):
        evaluate(model, synth_root, out=first, progress=False)


def test_on_its_own_dataset_a_run_is_scored_on_its_own_splits_only(synth_root, tmp_path):
    layout = find_layout(synth_root)
    identity = {"root": str(synth_root), "fingerprint": layout.fingerprint(), "images": len(layout.samples)}
    model = save_tiny_model(tmp_path / "run", "paved", long_side=48, dataset=identity)
    (tmp_path / "run" / "splits").mkdir()
    (tmp_path / "run" / "splits" / "test.txt").write_text("")  # the run had no test split
    with pytest.raises(DataError, match="the run has no test split"):  # never the dataset's file instead
        evaluate(model, synth_root, split="test", progress=False)


def test_a_model_from_before_fingerprints_keeps_the_old_rule_with_a_warning(synth_root, tmp_path):
    model = save_tiny_model(tmp_path / "run", "paved", long_side=48)  # no dataset recorded
    (tmp_path / "run" / "splits").mkdir()
    own = sorted(s.id for s in find_layout(synth_root).samples)[:3]
    (tmp_path / "run" / "splits" / "val.txt").write_text("\n".join(own) + "\n")
    with pytest.warns(UserWarning, match="records no training dataset; using the run's split files"):
        folder = evaluate(model, synth_root, figures=0, progress=False)
    assert json.loads((folder / "metrics.json").read_text())["context"]["images"] == 3
