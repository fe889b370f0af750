"""The model session: one interface to a run folder or an exported file, on the torch or ONNX Runtime backend."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import save_tiny_model, scene
from PIL import Image

from droneseg.classes import DataError
from droneseg.errors import UserError
from droneseg.evaluate import evaluate
from droneseg.export import export
from droneseg.predict import predict
from droneseg.session import BACKENDS, open_session
from droneseg.tiler import InferenceOverrides


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny 'six' model with its model.onnx beside it."""
    folder = save_tiny_model(tmp_path_factory.mktemp("run"), scheme="six", long_side=None,
                             inference={"tile": 48, "overlap": 0.25})
    export(folder)
    return folder


def test_evaluate_with_the_onnx_backend_scores_what_torch_scores(model, synth_root, tmp_path):
    """`evaluate --backend onnx` runs the exported model through the same code: mIoU within 1e-3 of torch's."""
    scores = {}
    for backend in ("torch", "onnx", "openvino"):
        folder = evaluate(model, synth_root, backend=backend, figures=0, out=tmp_path / backend, progress=False)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["context"]["backend"] == backend
        scores[backend] = metrics
    for backend in ("onnx", "openvino"):
        assert scores[backend]["miou"] == pytest.approx(scores["torch"]["miou"], abs=1e-3)
        assert scores[backend]["pixel_accuracy"] == pytest.approx(scores["torch"]["pixel_accuracy"], abs=1e-3)


def test_an_exported_file_alone_predicts_the_labels_of_its_run(model, tmp_path):
    """The .onnx carries the model's description: without model.json beside it, it segments a photo as the run
    does (scheme, working size, inference settings from its metadata)."""
    alone = tmp_path / "shipped" / "roads.onnx"
    alone.parent.mkdir()
    shutil.copy(model / "model.onnx", alone)
    Image.fromarray(scene(150, 100)).save(tmp_path / "p.png")
    predict(model, [tmp_path / "p.png"], tmp_path / "torch", progress=False)
    predict(alone, [tmp_path / "p.png"], tmp_path / "onnx", progress=False)  # backend onnx by its suffix
    a, b = (np.asarray(Image.open(tmp_path / d / "p.png")) for d in ("torch", "onnx"))
    assert (a == b).mean() > 0.999
    session = open_session(alone)
    assert session.backend == "onnx" and session.folder is None
    assert session.scheme.names == open_session(model).scheme.names and session.inference.tile == 48


@pytest.mark.slow
def test_an_exported_file_outside_its_run_needs_an_output_folder_to_evaluate(model, synth_root, tmp_path):
    alone = tmp_path / "m.onnx"
    shutil.copy(model / "model.onnx", alone)
    with pytest.raises(DataError, match="pass --out"):
        evaluate(alone, synth_root, figures=0, progress=False)
    assert (evaluate(alone, synth_root, figures=0, out=tmp_path / "e", progress=False) / "metrics.json").is_file()


@pytest.mark.parametrize(("backend", "message"), [("tensorrt", "unknown backend 'tensorrt'; choose from"),
                                                  ("torch", "runs on the onnx or openvino backend")])
def test_bad_backends_are_refused_in_one_line(model, tmp_path, backend, message):
    target = model / "model.onnx" if backend == "torch" else model
    with pytest.raises(DataError, match=message):
        open_session(target, backend)


def test_the_inference_options_travel_as_one_object_and_name_the_bad_one(model):
    session = open_session(model)
    settings = session.settings(InferenceOverrides(tile=64, tta=True))
    assert (settings.tile, settings.tta, settings.overlap) == (64, True, 0.25)  # the rest: model.json's
    assert session.tiler(settings).tile == 64
    with pytest.raises(DataError, match="--blend"):
        session.settings(InferenceOverrides(blend="box"))


def test_every_backend_is_in_the_registry():
    assert sorted(BACKENDS) == ["onnx", "onnx-int8", "openvino", "torch"]


def test_the_default_backend_is_onnx_where_the_run_holds_its_export_else_torch(model, tmp_path, capsys):
    """The fastest verified backend where it is ready (CPU, ONNX Runtime, an up-to-date model.onnx); torch otherwise,
    and a stale model.onnx is said, never fatal, when nobody asked for onnx."""
    assert open_session(model, device="cpu").backend == "onnx"
    assert open_session(model, "torch", device="cpu").backend == "torch"
    bare = save_tiny_model(tmp_path / "bare", scheme="six", long_side=None)
    assert open_session(bare, device="cpu").backend == "torch"
    stale = save_tiny_model(tmp_path / "stale", scheme="paved", long_side=None)
    shutil.copy(model / "model.onnx", stale / "model.onnx")  # another model's export
    assert open_session(stale, device="cpu").backend == "torch"
    err = capsys.readouterr().err
    assert "exported from other weights" in err and "running on torch" in err


def test_the_openvino_backend_predicts_the_labels_of_torch_on_a_run_and_on_a_file_alone(model, tmp_path):
    Image.fromarray(scene(150, 100)).save(tmp_path / "p.png")
    predict(model, [tmp_path / "p.png"], tmp_path / "torch", progress=False)
    predict(model, [tmp_path / "p.png"], tmp_path / "ov", backend="openvino", progress=False)
    predict(model / "model.onnx", [tmp_path / "p.png"], tmp_path / "ov-file", backend="openvino", progress=False)
    a, b, c = (np.asarray(Image.open(tmp_path / d / "p.png")) for d in ("torch", "ov", "ov-file"))
    assert (a == b).mean() > 0.999 and (b == c).all()
    session = open_session(model, "openvino")
    assert session.backend == "openvino" and session.inference.tile == 48 and session.folder == model


def test_the_openvino_backend_without_its_extra_names_it(model, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(UserError, match=r"openvino extra.*pip install 'droneseg\[openvino\]'"):
        open_session(model, "openvino")
