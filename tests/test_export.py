"""ONNX export: dynamic sizes, parity with PyTorch, metadata, and the onnx prediction backend."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import save_tiny_model, scene
from PIL import Image

from droneseg import __version__
from droneseg.artifact import load_model
from droneseg.classes import DataError
from droneseg.export import PARITY_TOL, export
from droneseg.predict import predict
from droneseg.schemes import get_scheme
from droneseg.tiler import InferenceOverrides


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny 'six'-scheme model and its model.onnx."""
    folder = save_tiny_model(tmp_path_factory.mktemp("model"), scheme="six", long_side=120)
    return folder, export(folder)


def test_export_writes_model_onnx_beside_model_json_within_parity_tolerance(exported):
    folder, result = exported
    assert result.path == folder / "model.onnx" and result.path.is_file()
    assert result.max_abs_diff <= PARITY_TOL
    assert any(h % 2 and w % 2 for _, _, h, w in result.shapes)  # odd sizes were checked
    assert f"{result.max_abs_diff:.2e}" in str(result)


@pytest.mark.parametrize("shape", [(3, 3, 33, 51), (1, 3, 128, 96), (2, 3, 7, 200)])
def test_onnx_graph_takes_any_batch_height_and_width_like_pytorch(exported, shape):
    folder, result = exported
    net, _ = load_model(folder)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = net(x).numpy()
    got = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert got.shape == expected.shape == (shape[0], 6, *shape[2:])
    assert np.abs(got - expected).max() <= PARITY_TOL


def test_onnx_metadata_names_classes_colours_scheme_normalisation_and_size(exported):
    folder, result = exported
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(result.path)).metadata_props}
    scheme = get_scheme("six")
    assert meta["class_names"] == list(scheme.names)
    assert meta["class_colors"][0] == [128, 64, 128]  # paved-area in the dataset's colours
    assert meta["class_colors"][-1] == [128, 128, 128]  # "other": the grey the scheme (and predict) paints it
    assert meta["scheme"] == json.loads(json.dumps(scheme.to_dict()))
    assert meta["long_side"] == 120 and meta["droneseg_version"] == __version__
    assert meta["normalization"]["applied_in_model"] is True and len(meta["normalization"]["mean"]) == 3
    assert meta["model"]["channels"] == [8, 16]


def test_onnx_backend_predicts_the_same_labels_as_torch(exported, tmp_path):
    folder, _ = exported
    Image.fromarray(scene(181, 127)).save(tmp_path / "p.png")
    for backend in ("torch", "onnx"):
        predict(folder, [tmp_path / "p.png"], tmp_path / backend, backend=backend, progress=False, inference=InferenceOverrides(tile=48, overlap=0.3))
    a, b = (np.asarray(Image.open(tmp_path / backend / "p.png")) for backend in ("torch", "onnx"))
    assert len(np.unique(a)) >= 2 and (a == b).mean() >= 0.999


def test_onnx_backend_without_model_onnx_exports_a_temporary_one(tmp_path, capsys):
    folder = save_tiny_model(tmp_path / "m")
    Image.fromarray(scene(50, 40)).save(tmp_path / "p.png")
    summary = predict(folder, [tmp_path / "p.png"], tmp_path / "out", backend="onnx", progress=False, inference=InferenceOverrides(tile=32))
    assert summary.failed == [] and (tmp_path / "out" / "p.png").is_file()
    assert not (folder / "model.onnx").exists() and "exporting a temporary one" in capsys.readouterr().err


def test_export_into_a_folder_writes_model_onnx_there(exported, tmp_path):
    result = export(exported[0], tmp_path)
    assert result.path == tmp_path / "model.onnx" and result.path.is_file()


def test_model_onnx_of_another_model_is_refused(exported, tmp_path):
    folder = save_tiny_model(tmp_path / "m", scheme="full")
    shutil.copy(exported[1].path, folder / "model.onnx")
    Image.fromarray(scene(40, 40)).save(tmp_path / "p.png")
    with pytest.raises(DataError, match="model.onnx: exported from other weights"):
        predict(folder, [tmp_path / "p.png"], tmp_path / "out", backend="onnx", progress=False)


def test_an_export_carries_the_model_card_in_its_metadata_and_beside_it(exported, tmp_path):
    """In the metadata as JSON; as <stem>.MODEL_CARD.md beside an export written outside its run folder (inside
    it, the run's own MODEL_CARD.md is there)."""
    folder, result = exported
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(result.path)).metadata_props}
    assert meta["model_card"]["classes"]["names"] == list(get_scheme("six").names)
    assert meta["model_card"]["scale"]["working_long_side"] == 120
    assert not (folder / "model.MODEL_CARD.md").exists()
    moved = export(folder, tmp_path / "six.onnx")
    card = (tmp_path / "six.MODEL_CARD.md").read_text()
    assert moved.path == tmp_path / "six.onnx" and card.startswith(f"# Model card: {folder.name}")
    assert "paved-area, dirt, grass, roof, water, other" in card
