"""`export --format qgis`: one ONNX file for QGIS's Deepness plugin and WebODM's GeoDeep, tested against each.

GeoDeep is on PyPI (AGPL-3.0, in the test extra only; droneseg never imports it): the tests run GeoDeep itself.
Deepness is a QGIS plugin, not on PyPI: its contract test applies, through ONNX Runtime, what its code does with a
model (v0.6.5: ``processing/models/model_base.py`` and ``segmentor.py`` read the metadata and check the shapes,
``preprocessing_utils.py`` prepares a tile, ``map_processor_segmentation.py`` thresholds, takes the argmax and
median-blurs), so a file it would refuse or misread fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import exit_code, save_tiny_model, scene

from droneseg.artifact import load_model
from droneseg.errors import DataError
from droneseg.export import PARITY_TOL, QGIS_FILE, export
from droneseg.session import open_session

rasterio = pytest.importorskip("rasterio", reason="the geo extra is not installed (make test installs it)")
geodeep = pytest.importorskip("geodeep", reason="the test extra is not installed (make test installs it)")

from geodeep.inference import create_session  # noqa: E402
from geodeep.utils import median_filter  # noqa: E402

from droneseg.geo.scene import write_synthetic_ortho  # noqa: E402

TILE = 128
pytestmark = pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")  # GeoDeep asks for it



@pytest.fixture(scope="module")
def qgis_export(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny six-class model at 10 cm/px with 128-px tiles, and its ``model-qgis.onnx``."""
    folder = save_tiny_model(tmp_path_factory.mktemp("model"), scheme="six", long_side=None, gsd=0.1,
                             inference={"tile": TILE, "overlap": 0.25})
    return folder, export(folder, format="qgis").path


def deepness_metadata(session: ort.InferenceSession) -> dict:
    """What Deepness's ModelBase reads: every value through json.loads, with its type conversions."""
    meta = session.get_modelmeta().custom_metadata_map
    names = sorted(json.loads(meta["class_names"]).items(), key=lambda kv: int(kv[0]))
    assert [int(k) for k, _ in names] == list(range(len(names))), "Deepness refuses non-consecutive class keys"
    return {"model_type": str(json.loads(meta["model_type"])).capitalize(),
            "class_names": [v for _, v in names],
            "resolution": float(json.loads(meta["resolution"])),
            "tile_size": int(json.loads(meta["tile_size"])),
            "tiles_overlap": int(json.loads(meta["tiles_overlap"])),
            "seg_thresh": float(json.loads(meta["seg_thresh"])),
            "seg_small_segment": int(json.loads(meta["seg_small_segment"])),
            "standardization": [k for k in meta if k.startswith(("standardization", "standarization"))]}


def test_deepness_reads_shapes_and_metadata_and_its_processing_gives_droneseg_labels(qgis_export):
    folder, path = qgis_export
    assert path == folder / QGIS_FILE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    # ModelBase / Segmentor.check_loaded_model_outputs: one input [N or 1, C, S, S] and one 4-D square output
    assert len(inp.shape) == 4 and inp.shape[1:] == [3, TILE, TILE]
    assert len(out.shape) == 4 and out.shape[2] == out.shape[3] == TILE and out.shape[1] == 6
    meta = deepness_metadata(session)
    assert meta == {"model_type": "Segmentor",
                    "class_names": ["paved-area", "dirt", "grass", "roof", "water", "other"],
                    "resolution": 10.0, "tile_size": TILE, "tiles_overlap": 25, "seg_thresh": 0.0,
                    "seg_small_segment": 0, "standardization": []}

    # preprocessing_utils: uint8 NHWC tiles -> channels limited to the model's -> / 255 -> NCHW
    tiles = np.stack([scene(TILE, TILE, seed=s) for s in (1, 2)])  # (2, S, S, 3) uint8
    batch = np.transpose(np.float32(tiles[:, :, :, :3] * 1.0 / 255.0), (0, 3, 1, 2))
    probabilities = session.run(None, {inp.name: batch})[0]
    assert probabilities.shape == (2, 6, TILE, TILE)
    assert probabilities.min() >= 0 and np.abs(probabilities.sum(1) - 1).max() < 1e-5, "a softmax, not logits"
    # map_processor_segmentation._process_tile: under the threshold -> 0, argmax over classes
    probabilities[probabilities < meta["seg_thresh"]] = 0.0
    labels = np.argmax(probabilities, axis=1)
    net, _ = load_model(folder, "cpu")
    with torch.inference_mode():
        ours = net(torch.from_numpy(batch)).argmax(1).numpy()
    assert (labels == ours).mean() > 0.999  # ties of float rounding aside: droneseg's own labels
    # its median blur: size int(n // 2) * 2 + 1 = 1 for seg_small_segment 0, which OpenCV leaves as it is
    assert int(meta["seg_small_segment"] // 2) * 2 + 1 == 1


def test_geodeep_reads_the_export_as_a_segmentor_with_its_classes_resolution_and_tiles(qgis_export):
    _, path = qgis_export
    _, config = create_session(str(path))
    assert config["model_type"] == "Segmentor" and config["tiles_size"] == TILE
    assert config["class_names"] == {"0": "paved-area", "1": "dirt", "2": "grass", "3": "roof", "4": "water",
                                     "5": "other"}
    assert (config["resolution"], config["tiles_overlap"], config["seg_thresh"], config["seg_small_segment"]) == (
        10.0, 25.0, 0.0, 0)


def test_the_export_keeps_parity_with_pytorch_and_droneseg_refuses_to_predict_with_it(qgis_export, tmp_path):
    folder, path = qgis_export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, TILE, TILE, generator=torch.Generator().manual_seed(1))
    net, _ = load_model(folder, "cpu")
    with torch.inference_mode():
        ref = torch.softmax(net(x), 1).numpy()
    assert np.abs(session.run(None, {"image": x.numpy()})[0] - ref).max() <= PARITY_TOL
    meta = session.get_modelmeta().custom_metadata_map
    card = json.loads(meta["model_card"])
    assert card["classes"]["scheme"] == "six" and card["scale"]["gsd_m"] == 0.1
    assert json.loads(meta["model_info"])["scheme"]["name"] == "six", "droneseg's own keys are kept"
    with pytest.raises(DataError, match="exported for QGIS"):
        open_session(path)


def test_a_model_without_a_gsd_needs_one_and_luma_is_refused(tmp_path, capsys):
    plain = save_tiny_model(tmp_path / "plain", scheme="six", long_side=None)
    with pytest.raises(DataError, match="no GSD.*--gsd METRES"):
        export(plain, format="qgis")
    code = exit_code("export", plain, "--format", "qgis", "--gsd", "0.05", "--tile", "64", "--out", tmp_path / "x.onnx")
    assert code == 0, capsys.readouterr().err
    _, config = create_session(str(tmp_path / "x.onnx"))
    assert (config["resolution"], config["tiles_size"]) == (5.0, 64)
    assert (tmp_path / "x.MODEL_CARD.md").is_file(), "an export outside its run carries the model card beside it"
    assert exit_code("export", plain, "--gsd", "0.05") == 2, "--gsd is for --format qgis only"
    capsys.readouterr()
    luma = save_tiny_model(tmp_path / "luma", scheme="luma", long_side=None, gsd=0.1)
    code = exit_code("export", luma, "--format", "qgis")
    err = capsys.readouterr().err
    assert code == 2 and "luma scheme" in err and len(err.strip().splitlines()) == 1
    assert not (luma / QGIS_FILE).exists()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # GeoDeep's use of rasterio's older API
def test_geodeep_on_an_orthomosaic_agrees_with_droneseg_predict(survey_run, tmp_path, capsys):
    """GeoDeep runs the exported file on a synthetic orthomosaic at the model's 10 cm; its class raster agrees with
    ``droneseg predict`` on at least 98 % of valid pixels. Where they differ: GeoDeep's 5x5 median filter of the
    class values (applied to droneseg's labels too, the agreement rises above 99.5 %) and its tiling (centre crops
    of each tile against droneseg's Gaussian blend)."""
    export(survey_run, format="qgis")
    ortho = tmp_path / "other.tif"
    write_synthetic_ortho(ortho, (800, 600), gsd=0.1, seed=9)  # ground the model never saw
    assert exit_code("predict", survey_run, ortho, "--out", tmp_path / "pred", "--vector", "none") == 0
    capsys.readouterr()
    with rasterio.open(tmp_path / "pred" / "other_classes.tif") as ds:
        written, nodata = ds.read(1), ds.nodata
    scheme = load_model(survey_run, "cpu")[1].scheme
    to_index = np.full(256, 255, np.uint8)  # the COG's written values -> the network's class indices
    to_index[scheme.written().values] = np.arange(scheme.num_classes)
    ours, valid = to_index[written], written != nodata
    theirs = geodeep.segment(str(ortho), str(survey_run / QGIS_FILE), output_type="raw")
    assert theirs.shape == ours.shape
    agreement = float((theirs[valid] == ours[valid]).mean())
    filtered = float((theirs[valid] == median_filter(ours, 5)[valid]).mean())
    print(f"GeoDeep vs predict: {agreement:.4f} of valid pixels; {filtered:.4f} after GeoDeep's median filter")
    assert agreement >= 0.98 and filtered >= 0.995

    features = json.loads(geodeep.segment(str(ortho), str(survey_run / QGIS_FILE), output_type="geojson"))["features"]
    named = {f["properties"]["class"] for f in features}
    assert named <= set(scheme.names) and "unknown" not in named
    assert named >= {scheme.names[i] for i in np.unique(theirs[valid])}
