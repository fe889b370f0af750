"""``droneseg export RUN --format int8 --data DATA``: the network in 8-bit integers for ONNX Runtime on CPUs, checked
class by class against the float model before it is written.

Contract
--------
* Static post-training quantisation (ONNX Runtime's ``quantize_static``; Jacob et al. 2018, "Quantization and
  training of neural networks for efficient integer-arithmetic-only inference") of the convolutions
  (:data:`QUANTIZED_OPS`) but the first, which sees the pixels, and the last, which writes the logits: they stay
  float, the usual practice since DoReFa-Net (Zhou et al. 2016) and PACT (Choi et al. 2018); weights int8 per
  output channel,
  activations uint8 per tensor, ranges from min/max over ``calibration`` tiles of the model's inference tile size,
  cut at seeded places from the working-size photos of the run's ``train`` split (never val), as QDQ nodes that
  ONNX Runtime fuses into integer kernels. The graph's input and output are the ``onnx`` format's (float pixels in
  [0, 1] in, float logits out) and it carries the same metadata plus ``quantization`` (the method, the tiles and
  the parity table below).
* Parity, class by class: int8 models of segmentation nets are known to fail silently, one class swallowing others.
  The float and int8 models label the first ``check`` photos of the ``val`` split (the whole photo through the same
  tiler ``predict`` uses, at working size); for each class holding at least :data:`MIN_CLASS_SHARE` of the float
  labels, the IoU of the int8 labels with the float labels must be at least :data:`MIN_CLASS_AGREEMENT`, and all
  pixels must agree at least :data:`MIN_PIXEL_AGREEMENT`; otherwise nothing is written and the error names the
  worst class.
* Default file: ``RUN/model-int8.onnx``, which ``--backend onnx-int8`` opens (:mod:`droneseg.session`).

>>> round(MIN_PIXEL_AGREEMENT, 2), MIN_CLASS_AGREEMENT
(0.98, 0.9)
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from droneseg.artifact import ModelInfo, read_info, resolve_model_path
from droneseg.classes import DataError
from droneseg.files import atomic_save
from droneseg.session import INT8_FILE, open_session

if TYPE_CHECKING:
    import onnx

MIN_PIXEL_AGREEMENT = 0.98
MIN_CLASS_AGREEMENT = 0.90
MIN_CLASS_SHARE = 1e-3  # classes rarer than this in the float labels are reported, not judged: too few pixels
# convolutions only: quantising every op also quantised the FPN decoder's shape arithmetic, and ONNX Runtime then
# failed on mismatched map sizes ("broadcast an axis by a dimension other than 1. 42 by 46"). Weights use 7 bits
# (reduce_range), as ONNX Runtime advises on x86 CPUs without VNNI, whose u8·s8 instruction saturates
QUANTIZED_OPS = ("Conv",)


@dataclass
class QuantizeResult:
    """Where the int8 model went and how closely it labels like the float one."""

    path: Path
    calibration_tiles: int
    photos_checked: int
    pixel_agreement: float
    class_agreement: dict[str, float]  # class -> IoU of int8 labels with float labels (judged classes)
    seconds: float
    rare: list[str] = field(default_factory=list)  # classes too rare in the float labels to judge

    def __str__(self) -> str:
        worst = min(self.class_agreement, key=self.class_agreement.get)
        return (f"{self.path}: int8 labels agree with the float model's on {self.pixel_agreement:.2%} of the pixels of "
                f"{self.photos_checked} val photos; worst class {worst} IoU {self.class_agreement[worst]:.3f} "
                f"(limits {MIN_PIXEL_AGREEMENT:.0%}, {MIN_CLASS_AGREEMENT}); calibrated on {self.calibration_tiles} "
                "training tiles")


def agreement(reference: list[np.ndarray], candidate: list[np.ndarray], names: list[str]
              ) -> tuple[float, dict[str, float], list[str]]:
    """Pixel agreement and per-class IoU of ``candidate`` labels with ``reference`` labels ((H, W) uint8 each,
    class indices into ``names``) -> (share of equal pixels, {class: IoU} for classes holding at least
    :data:`MIN_CLASS_SHARE` of the reference pixels, the rarer classes present).

    >>> a, b = np.array([[0, 0, 1, 1]], np.uint8), np.array([[0, 1, 1, 1]], np.uint8)
    >>> agreement([a], [b], ["x", "y"])
    (0.75, {'x': 0.5, 'y': 0.6666666666666666}, [])
    """
    k = len(names)
    cm = np.zeros((k, k), np.int64)
    for ref, got in zip(reference, candidate):
        cm += np.bincount(ref.ravel().astype(np.int64) * k + got.ravel(), minlength=k * k).reshape(k, k)
    total = cm.sum()
    ref_count, got_count, inter = cm.sum(1), cm.sum(0), np.diag(cm)
    judged, rare = {}, []
    for c, name in enumerate(names):
        if ref_count[c] >= MIN_CLASS_SHARE * total:
            judged[name] = float(inter[c] / (ref_count[c] + got_count[c] - inter[c]))
        elif ref_count[c] or got_count[c]:
            rare.append(name)
    return float(inter.sum() / total), judged, rare


def float_ends(graph_model: onnx.ModelProto) -> list[str]:
    """Names of the first and the last of the :data:`QUANTIZED_OPS` nodes of an ONNX model (its graph in
    topological order): the convolution that sees the pixels and the one that writes the logits, which stay float.
    With every convolution int8, a trained `full` model's int8 labels agreed with its float labels on 73.5 % of
    the pixels of 10 dev val photos; with these two kept float, 95.6 % (``benchmarks/int8.py``).

    >>> import onnx
    >>> n = [onnx.helper.make_node(op, [], [], name=name) for op, name in (("Conv", "a"), ("Relu", "r"), ("Conv", "b"),
    ...                                                                   ("Conv", "c"))]
    >>> float_ends(onnx.helper.make_model(onnx.helper.make_graph(n, "g", [], [])))
    ['a', 'c']
    """
    names = [n.name for n in graph_model.graph.node if n.op_type in QUANTIZED_OPS]
    return sorted({names[0], names[-1]}, key=names.index) if names else []


def _calibration_tiles(images: list[np.ndarray], tile: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` float32 (1, 3, t, t) tiles in [0, 1], t = min(tile, image sides), at seeded places, spread over
    ``images`` ((h, w, 3) uint8) in turn."""
    rng = np.random.default_rng(seed)
    tiles = []
    for i in range(count):
        image = images[i % len(images)]
        h, w = image.shape[:2]
        th, tw = min(tile, h), min(tile, w)
        y, x = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
        crop = np.asarray(image[y : y + th, x : x + tw], np.float32) / 255.0
        tiles.append(np.ascontiguousarray(crop.transpose(2, 0, 1)[None]))
    return tiles


def _split_images(data: str | Path, info: ModelInfo, model_dir: Path, split: str, limit: int, progress: bool
                  ) -> tuple[list[np.ndarray], list[str]]:
    """Working-size (h, w, 3) uint8 images of the first ``limit`` photos of ``split`` (the run's split when ``data``
    is the dataset it trained on) and their ids."""
    from droneseg.data.cache import build_cache
    from droneseg.data.layout import DataSource
    from droneseg.data.splits import select
    from droneseg.evaluate import find_split

    layout, _, ids, _, split_file = find_split(DataSource.of(data), info, model_dir, split)
    samples = select(layout.samples, ids, split_file)[:limit]
    if not samples:
        raise DataError(f"{data}: no photo in its {split} split, which the int8 export needs "
                        f"({'calibration' if split == 'train' else 'the parity check'})")
    entries = build_cache(samples, layout.table, info.long_side, image_filter=info.image_filter, progress=progress)
    return [entry.load()[0] for entry in entries], [s.id for s in samples]


def write_int8(float_file: Path, int8_file: Path, tiles: list[np.ndarray]) -> list[str]:
    """The int8 graph of the float ONNX file ``float_file`` written to ``int8_file`` as the module contract says
    (QDQ, the convolutions but :func:`float_ends`, ranges from min/max over ``tiles``: float32 (1, 3, t, t) in
    [0, 1]), unchecked; -> the names of the convolutions kept float. Needs the ``onnx`` extra."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = iter(tiles)

        def get_next(self) -> dict | None:
            x = next(self._next, None)
            return None if x is None else {"image": x}

    with tempfile.TemporaryDirectory(prefix="droneseg-int8-") as tmp:
        ready = Path(tmp) / "ready.onnx"
        # shape inference and graph fusions first, as ONNX Runtime's quantisation guide advises
        quant_pre_process(str(float_file), str(ready), skip_symbolic_shape=True)
        kept_float = float_ends(onnx.load(str(ready)))
        quantize_static(str(ready), str(int8_file), Tiles(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTIZED_OPS),
                        reduce_range=True, nodes_to_exclude=kept_float)
    return kept_float


def quantize(model: str | Path, data: str | Path, out: Path | None = None, calibration: int = 32, check: int = 10,
             progress: bool = False) -> QuantizeResult:
    """Write the int8 model of ``model`` (a run folder or its model.json) calibrated on ``data`` (the dataset it
    trained on; see the module contract) to ``out`` (a file, or a folder for ``model-int8.onnx``; default the run
    folder). Raises UserError when the ``onnx`` extra is missing, DataError when the split has no photo or the int8
    labels fail the parity check (nothing written then)."""
    from droneseg.export import export
    from droneseg.extras import require

    require("onnx", "onnx", "onnxruntime", what="int8 export and the onnx-int8 backend")
    import onnx

    t0 = time.perf_counter()
    model_dir = resolve_model_path(model)
    info = read_info(model_dir)
    if info.scheme.is_luma:
        raise DataError(f"{model_dir}: the luma scheme's network output is a brightness, not class logits; "
                        "int8 export is for class models")
    out = model_dir if out is None else Path(out)
    out = out / INT8_FILE if out.is_dir() else out
    if calibration < 1 or check < 1:
        raise DataError(f"--calibration {calibration}, --check {check}: both must be at least 1")
    train_images, _ = _split_images(data, info, model_dir, "train", calibration, progress)
    tiles = _calibration_tiles(train_images, info.inference.tile, calibration)
    del train_images

    with tempfile.TemporaryDirectory(prefix="droneseg-int8-") as tmp:
        float_file, int8_file = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        export(model_dir, float_file)
        kept_float = write_int8(float_file, int8_file, tiles)
        proto = onnx.load(str(int8_file))
        float_proto = onnx.load(str(float_file), load_external_data=False)
        val_images, val_ids = _split_images(data, info, model_dir, "val", check, progress)
        reference_session = open_session(float_file, "onnx")
        int8_session = open_session(int8_file, "onnx")
        reference, candidate = [], []
        for image in tqdm(val_images, desc="int8 parity", unit="photo", disable=not progress):
            size = image.shape[:2]
            reference.append(reference_session.tiler().labels(image, size))
            candidate.append(int8_session.tiler().labels(image, size))
    pixels, classes, rare = agreement(reference, candidate, list(info.scheme.names))
    worst = min(classes, key=classes.get)
    if pixels < MIN_PIXEL_AGREEMENT or classes[worst] < MIN_CLASS_AGREEMENT:
        raise DataError(f"{model_dir}: the int8 model labels unlike the float one on {len(val_ids)} val photos "
                        f"(pixels agree {pixels:.2%}, class {worst} IoU {classes[worst]:.3f}; limits "
                        f"{MIN_PIXEL_AGREEMENT:.0%}, {MIN_CLASS_AGREEMENT}); not written, use the onnx backend")
    del proto.metadata_props[:]
    for prop in float_proto.metadata_props:
        proto.metadata_props.add(key=prop.key, value=prop.value)
    record = {"method": "ONNX Runtime quantize_static, QDQ, int8 weights per channel (7-bit range), uint8 "
                        "activations, MinMax",
              "quantized_ops": list(QUANTIZED_OPS), "kept_float": kept_float,
              "calibration_tiles": len(tiles), "tile": info.inference.tile, "photos_checked": val_ids,
              "pixel_agreement": pixels, "class_agreement": classes, "too_rare_to_judge": rare}
    proto.metadata_props.add(key="quantization", value=json.dumps(record))
    proto.doc_string = float_proto.doc_string + " (int8)"
    data_bytes = proto.SerializeToString()
    atomic_save(out, lambda fh: fh.write(data_bytes))
    return QuantizeResult(out, len(tiles), len(val_ids), pixels, classes, time.perf_counter() - t0, rare)
