"""int8 export: calibrated on the train split, checked class by class against the float model on val, refused when
it labels unlike it; the onnx-int8 backend runs the file and refuses a stale or missing one."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import save_tiny_model
from safetensors.torch import load_file, save_file

from droneseg import quantize as q
from droneseg.artifact import read_info
from droneseg.classes import DataError
from droneseg.cli import main
from droneseg.session import open_session


def test_agreement_of_a_collapse_onto_one_class_names_the_swallowed_classes():
    """The silent int8 failure: everything becomes the majority class."""
    reference = np.zeros((10, 10), np.uint8)
    reference[:, 6:] = 1  # 60 % class 0, 40 % class 1
    reference[0, 0] = 2  # class 2: 1 % of the pixels
    collapsed = np.zeros_like(reference)
    pixels, classes, rare = q.agreement([reference], [collapsed], ["a", "b", "c", "d"])
    assert pixels == pytest.approx(0.59)
    assert classes == {"a": pytest.approx(0.59), "b": 0.0, "c": 0.0}  # c is rare, but 1 % is above the floor
    assert rare == []


def test_agreement_reports_classes_too_rare_to_judge():
    reference = np.zeros((100, 100), np.uint8)
    reference[0, 0] = 1  # 0.01 % of the pixels: below MIN_CLASS_SHARE
    candidate = reference.copy()
    candidate[0, 0] = 0
    pixels, classes, rare = q.agreement([reference], [candidate], ["a", "b"])
    assert pixels == pytest.approx(0.9999) and classes == {"a": pytest.approx(0.9999)} and rare == ["b"]


def test_calibration_tiles_are_seeded_float_crops_of_the_tile_size():
    images = [np.full((40, 50, 3), 255, np.uint8), np.zeros((20, 30, 3), np.uint8)]
    tiles = q._calibration_tiles(images, tile=32, count=3)
    assert [t.shape for t in tiles] == [(1, 3, 32, 32), (1, 3, 20, 30), (1, 3, 32, 32)]
    assert tiles[0].dtype == np.float32 and tiles[0].max() == 1.0 and tiles[1].max() == 0.0
    again = q._calibration_tiles([np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)], 16, 2)
    same = q._calibration_tiles([np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)], 16, 2)
    assert all(np.array_equal(a, b) for a, b in zip(again, same))


@pytest.fixture
def tiny_run(tmp_path):
    return save_tiny_model(tmp_path / "run", scheme="full", long_side=96, inference={"tile": 64, "overlap": 0.25})


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, synth_root):
    """A tiny run with its model-int8.onnx, written with the limits loosened: the tiny net is random, its logits near
    ties, so its int8 labels differ more than a trained model's; the limits themselves are tested on their own."""
    run = save_tiny_model(tmp_path_factory.mktemp("int8") / "run", scheme="full", long_side=96,
                          inference={"tile": 64, "overlap": 0.25})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(q, "MIN_PIXEL_AGREEMENT", 0.0)
        mp.setattr(q, "MIN_CLASS_AGREEMENT", 0.0)
        mp.setenv("DRONESEG_CACHE", str(run.parent / "cache"))
        return run, q.quantize(run, synth_root, calibration=4, check=2)


def test_int8_export_writes_a_checked_file_the_onnx_int8_backend_runs(int8_run):
    run, result = int8_run
    assert result.path == run / q.INT8_FILE and result.path.is_file()
    assert result.calibration_tiles == 4 and result.photos_checked == 2 and 0 < result.pixel_agreement <= 1
    proto = onnx.load(str(result.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    record = json.loads(meta["quantization"])
    assert record["calibration_tiles"] == 4 and len(record["photos_checked"]) == 2
    assert json.loads(meta["class_names"])[0] == "paved-area" and "weights_sha256" in meta
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)  # integer, not a renamed float copy
    # the first convolution (the pixels) and the last (the logits) stay float: no dequantised weights feed them
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    made_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert [c.name for c in convs if made_by.get(c.input[1]) != "DequantizeLinear"] == record["kept_float"]
    assert len(record["kept_float"]) == 2 and len(convs) > 2
    session = open_session(run, "onnx-int8")
    assert session.backend == "onnx-int8"
    labels = session.tiler().labels(np.zeros((64, 96, 3), np.uint8), (64, 96))
    assert labels.shape == (64, 96) and labels.max() < session.scheme.num_classes


def test_the_recorded_agreement_is_what_the_two_models_label(int8_run, synth_root, monkeypatch, tmp_path):
    """Recomputed from the float and int8 sessions' own labels of the photos the record names, with set
    operations on boolean masks (not the export's confusion matrix)."""
    run, result = int8_run
    monkeypatch.setenv("DRONESEG_CACHE", str(run.parent / "cache"))
    info = read_info(run)
    images, ids = q._split_images(synth_root, info, run, "val", result.photos_checked, progress=False)
    record = json.loads({p.key: p.value for p in onnx.load(str(result.path)).metadata_props}["quantization"])
    assert ids == record["photos_checked"]
    float_session, int8_session = open_session(run, "onnx"), open_session(run, "onnx-int8")
    ref = np.stack([float_session.tiler().labels(im, im.shape[:2]) for im in images])
    got = np.stack([int8_session.tiler().labels(im, im.shape[:2]) for im in images])
    assert record["pixel_agreement"] == pytest.approx(float((ref == got).mean()), abs=1e-12)
    for name, value in record["class_agreement"].items():
        c = info.scheme.names.index(name)
        a, b = ref == c, got == c
        assert value == pytest.approx((a & b).sum() / (a | b).sum(), abs=1e-12), name


def test_int8_export_that_labels_unlike_the_float_model_is_refused_and_not_written(tiny_run, synth_root,
                                                                                    monkeypatch):
    monkeypatch.setattr(q, "MIN_CLASS_AGREEMENT", 1.01)  # no model can pass: the refusal path
    with pytest.raises(DataError, match=r"the int8 model labels unlike the float one on 2 val photos .*class "
                                        r"\S+ IoU [0-9.]+; limits 98%, 1.01\); not written"):
        q.quantize(tiny_run, synth_root, calibration=2, check=2)
    assert not (tiny_run / q.INT8_FILE).exists()


def test_onnx_int8_backend_without_the_file_says_how_to_make_it(tiny_run):
    with pytest.raises(DataError, match=r"model-int8.onnx: no such file; write it with `droneseg export .* "
                                        r"--format int8 --data DATA`"):
        open_session(tiny_run, "onnx-int8")


def test_int8_of_other_weights_is_refused(int8_run, tmp_path):
    run, result = int8_run
    other = save_tiny_model(tmp_path / "other", scheme="full", long_side=96)  # the same net, then retrained:
    state = load_file(other / "model.safetensors")
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, other / "model.safetensors")
    (other / q.INT8_FILE).write_bytes(result.path.read_bytes())
    with pytest.raises(DataError, match="exported from other weights"):
        open_session(other, "onnx-int8")


def test_cli_int8_needs_data(tiny_run, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["export", str(tiny_run), "--format", "int8"])
    assert stop.value.code and "--format int8 needs --data" in capsys.readouterr().err


def test_int8_export_of_a_dataset_without_val_photos_says_so(tiny_run, synth_copy):
    (synth_copy / "splits" / "val.txt").write_text("")
    with pytest.raises(DataError, match=r"val"):
        q.quantize(tiny_run, synth_copy, calibration=1, check=1)
    assert not (tiny_run / q.INT8_FILE).exists()
