"""``droneseg export``: the trained net as ONNX, checked against PyTorch: for droneseg itself (``onnx``) or for the
GIS tools (``qgis``: Deepness in QGIS, GeoDeep in WebODM).

Contract
--------
* ``onnx`` graph: input ``image`` float32 (B, 3, H, W) in [0, 1] (pixels / 255; the net normalises inside, as in
  PyTorch) -> output ``logits`` float32 (B, K, H, W), for any B, H, W >= 1 (padding happens inside).
* Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)``; the torch.export-based one needs
  ``onnxscript``, which droneseg does not depend on.
* ``metadata_props`` (each value a JSON string): ``droneseg_version``, ``class_names``, ``class_colors``
  (the colour ``predict`` draws each class in), ``scheme`` (``LabelScheme.to_dict``), ``normalization``,
  ``long_side``, ``model`` (architecture config), ``input``/``output`` descriptions, ``model_info`` (the whole
  ``model.json``: ``evaluate``/``predict`` open the file alone, :mod:`droneseg.session`) and ``weights_sha256``
  (of the ``model.safetensors`` exported: a stale ``model.onnx`` beside newer weights is refused), ``model_card``
  (:mod:`droneseg.card`, from the run's own files). An export written outside its run folder gets the card beside
  it too: ``<file stem>.MODEL_CARD.md``.
* Parity: ONNX Runtime and PyTorch agree on random inputs of several sizes (odd ones included) to
  ``PARITY_TOL`` in max absolute logit difference, else the file is not written.
* ``qgis`` (one file for Deepness v0.6 and GeoDeep 0.9; their contracts are read from their code, see
  :func:`qgis_metadata`): input ``image`` float32 (B, 3, S, S), S the model's inference tile, static (both tools
  take the tile size from the input shape), RGB in [0, 1], normalised inside -> output ``probabilities`` float32
  (B, K, S, S), a softmax over K (their ``seg_thresh`` compares probabilities). The metadata adds their keys to
  droneseg's own; ``class_names`` becomes their ``{"0": name, …}``. Refused in one line: the luma scheme (its
  threshold is each photo's own mean, which tile-by-tile tools cannot compute) and a model without a GSD unless
  ``gsd`` is given. Default file: ``RUN/model-qgis.onnx``; droneseg's own backend refuses it (fixed tiles).

>>> sorted(METADATA_KEYS)[:3]
['class_colors', 'class_names', 'droneseg_version']
"""

from __future__ import annotations

import io
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from droneseg import __version__
from droneseg.artifact import ModelInfo, load_model, resolve_model_path, weights_digest
from droneseg.classes import DataError
from droneseg.extras import require, require_onnx
from droneseg.files import atomic_save, atomic_write_text

PARITY_TOL = 1e-3
MIN_OPSET = 11  # dynamic-size Resize and Pad as the network's padding needs them


def max_opset() -> int:
    """The newest opset torch's TorchScript-based exporter writes (20 in torch 2.14; a private constant, read with a
    fallback so that another torch still exports)."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):
        return 17

PARITY_SHAPES: tuple[tuple[int, int, int, int], ...] = ((1, 3, 64, 64), (2, 3, 45, 67), (1, 3, 97, 130), (1, 3, 1, 1))
METADATA_KEYS = (
    "droneseg_version", "class_names", "class_colors", "scheme", "normalization", "long_side", "inference", "model",
    "input", "output", "model_info", "weights_sha256", "model_card",
)  # fmt: skip


FORMATS = ("onnx", "qgis")
QGIS_FILE = "model-qgis.onnx"


@dataclass
class ExportResult:
    """Where the model went and how closely ONNX Runtime reproduces PyTorch."""

    path: Path
    opset: int
    max_abs_diff: float
    shapes: list[tuple[int, int, int, int]]
    seconds: float
    output: str = "logit"

    def __str__(self) -> str:
        sizes = ", ".join(f"{h}x{w}" for _, _, h, w in dict.fromkeys(self.shapes))
        return (f"{self.path} (opset {self.opset}): max |{self.output} difference| vs PyTorch {self.max_abs_diff:.2e} "
                f"on sizes {sizes} (limit {PARITY_TOL:g})")


def metadata(net: torch.nn.Module, info: ModelInfo, digest: str, card: dict | None = None) -> dict[str, str]:
    """What a consumer of the .onnx needs without model.json, as JSON strings; ``digest``: :func:`weights_digest`
    of the weights exported; ``card``: the run's model card (:func:`droneseg.card.model_card`)."""
    scheme = info.scheme
    props = {
        "droneseg_version": __version__,
        "class_names": list(scheme.names),
        "class_colors": scheme.written().target_colors.tolist(),
        "scheme": scheme.to_dict(),
        "normalization": {
            "applied_in_model": True,
            "mean": net.mean.flatten().tolist(),
            "std": net.std.flatten().tolist(),
        },
        "long_side": info.long_side,
        "inference": info.inference.model_dump(),
        "model": info.model.model_dump(mode="json"),
        "input": "image: float32 (B, 3, H, W) RGB in [0, 1] (pixels / 255), any B, H, W",
        "output": "logits: float32 (B, K, H, W), K = len(class_names)",
        "model_info": info.to_json(),
        "weights_sha256": digest,
        "model_card": card,
    }
    return {k: json.dumps(v) for k, v in props.items()}


def qgis_metadata(info: ModelInfo, tile: int, gsd: float) -> dict[str, str]:
    """The keys Deepness and GeoDeep read, as JSON strings (both ``json.loads`` them; GeoDeep also ``float()``s and
    ``int()``s numbers), for a model run on ``tile``-pixel tiles at ``gsd`` metres per pixel.

    Read from their code (Deepness v0.6.5 ``processing/models/model_base.py``, ``map_processor_segmentation.py``;
    GeoDeep 0.9.13 ``inference.py``, ``segmentation.py``): ``model_type`` must be ``"Segmentor"`` (GeoDeep treats a
    missing one as a detector); ``class_names`` keys are consecutive from ``"0"`` (Deepness refuses gaps);
    ``resolution`` is in cm/px; Deepness documents ``tiles_size`` and reads ``tile_size`` (both written);
    ``tiles_overlap`` is a percent (Deepness reads an int); ``seg_thresh`` 0 keeps every probability, so both take
    the plain argmax ``droneseg predict`` takes; ``seg_small_segment`` 0 turns off Deepness's median blur and
    GeoDeep's sieve (``predict`` keeps every region; GeoDeep still applies its fixed 5x5 median filter).
    No ``standardization_*`` keys: the normalisation is inside the graph.

    >>> from droneseg.schemes import get_scheme
    >>> m = qgis_metadata(ModelInfo(model={}, scheme=get_scheme("paved"), long_side=768), 512, 0.15625)
    >>> m["class_names"], m["resolution"], m["tiles_overlap"], m["model_type"]
    ('{"0": "other", "1": "paved-area"}', '15.625', '25', '"Segmentor"')
    """
    props = {
        "model_type": "Segmentor",
        "class_names": {str(i): name for i, name in enumerate(info.scheme.names)},
        "resolution": round(gsd * 100, 6),
        "tile_size": tile,
        "tiles_size": tile,
        "tiles_overlap": round(info.inference.overlap * 100),
        "seg_thresh": 0.0,
        "seg_small_segment": 0,
        "input": f"image: float32 (B, 3, {tile}, {tile}) RGB in [0, 1] (pixels / 255), normalised inside",
        "output": f"probabilities: float32 (B, K, {tile}, {tile}), softmax over K = len(class_names)",
    }
    return {k: json.dumps(v) for k, v in props.items()}


class Probabilities(torch.nn.Module):
    """``net`` followed by a softmax over classes: (B, 3, H, W) in [0, 1] -> (B, K, H, W) probabilities."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(image), dim=1)


def _onnx_bytes(net: torch.nn.Module, opset: int, divisor: int, tile: int | None = None) -> bytes:
    """Trace ``net``: with dynamic batch, height and width on an input that is not a multiple of its divisor (so
    the padding is traced too), or, with ``tile``, on a static square ``tile`` with a dynamic batch only."""
    buf = io.BytesIO()
    if tile is None:
        dummy = torch.rand(1, 3, 2 * divisor + 1, 3 * divisor + 1)
        names, axes = ["logits"], {0: "batch", 2: "height", 3: "width"}
    else:
        dummy = torch.rand(1, 3, tile, tile)
        names, axes = ["probabilities"], {0: "batch"}
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notices
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), buf, dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=names, dynamic_axes={"image": axes, names[0]: axes})
    return buf.getvalue()


def parity(net: torch.nn.Module, data: bytes, shapes: tuple[tuple[int, int, int, int], ...] = PARITY_SHAPES) -> float:
    """Max absolute output difference between ONNX Runtime and PyTorch over random inputs of ``shapes``."""
    ort = require_onnx()

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.rand(shape, generator=gen)
        with torch.inference_mode():
            ref = net(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        if got.shape != ref.shape:
            raise RuntimeError(f"ONNX output shape {got.shape} differs from PyTorch {ref.shape} for input {shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def export(model: str | Path, out: Path | None = None, opset: int = 17, format: str = "onnx",
           gsd: float | None = None, tile: int | None = None) -> ExportResult:
    """Export ``model`` (run folder or model.json) in ``format`` (:data:`FORMATS`, see the module contract) to
    ``out``: a file, or a folder to hold ``model.onnx`` / ``model-qgis.onnx`` (default: the model's own folder,
    where ``predict --backend onnx`` looks for ``model.onnx``). ``qgis`` only: ``gsd`` metres per working pixel
    (default the model's), ``tile`` pixels (default the model's inference tile). Raises UserError when the ``onnx``
    extra is missing, DataError for a format the model cannot take or when ONNX Runtime does not reproduce
    PyTorch (nothing is written then)."""
    require("onnx", "onnx", "onnxruntime", what="ONNX export and the onnx backend")
    import onnx

    if format not in FORMATS:
        raise DataError(f"--format {format!r}: choose from {list(FORMATS)}")
    if not MIN_OPSET <= opset <= max_opset():
        raise DataError(f"--opset {opset}: this exporter writes opsets {MIN_OPSET} to {max_opset()}")

    t0 = time.perf_counter()
    model_dir = resolve_model_path(model)
    out = model_dir if out is None else Path(out)
    out = out / (QGIS_FILE if format == "qgis" else "model.onnx") if out.is_dir() else out
    net, info = load_model(model_dir, "cpu")
    from droneseg.card import model_card, render

    card = model_card(model_dir)
    props = metadata(net, info, weights_digest(model_dir), card)
    shapes = PARITY_SHAPES
    if format == "qgis":
        if info.scheme.is_luma:
            raise DataError(f"{model_dir}: the luma scheme splits each photo at its own mean brightness, which "
                            "Deepness and GeoDeep (tile by tile) cannot do; export a model of another scheme")
        gsd = gsd if gsd is not None else info.gsd
        if gsd is None:
            raise DataError(f"{model_dir}: model.json has no GSD (train with --gsd), so the tools would not know "
                            "the resolution to run it at; give --gsd METRES (ground per pixel at the model's "
                            "working size)")
        if not gsd > 0:
            raise DataError(f"--gsd {gsd}: must be > 0 (metres per pixel)")
        tile = tile or info.inference.tile
        if tile < 32:
            raise DataError(f"--tile {tile}: must be at least 32 pixels")
        props.update(qgis_metadata(info, tile, gsd))
        net = Probabilities(net).eval()
        shapes = ((1, 3, tile, tile), (2, 3, tile, tile))
    proto = onnx.load_from_string(_onnx_bytes(net, opset, getattr(net, "size_divisor", 1),
                                              tile if format == "qgis" else None))
    if format == "qgis":  # the tracer leaves the padded net's output sizes symbolic; Deepness checks H == W
        dims = proto.graph.output[0].type.tensor_type.shape.dim
        for dim, size in zip(dims[1:], (len(info.scheme.names), tile, tile)):
            dim.dim_value = size
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"droneseg {__version__} model from {model_dir}"
    data = proto.SerializeToString()
    diff = parity(net, data, shapes)
    output = "probability" if format == "qgis" else "logit"
    if not diff <= PARITY_TOL:
        raise DataError(f"{model_dir}: ONNX {output}s differ from PyTorch by up to {diff:.2e} (> {PARITY_TOL}); "
                        "not written")
    atomic_save(out, lambda fh: fh.write(data))
    if out.parent.resolve() != model_dir.resolve():  # the run's own MODEL_CARD.md is beside an export in the run
        atomic_write_text(out.with_name(f"{out.stem}.MODEL_CARD.md"), render(card))
    return ExportResult(out, opset, diff, list(shapes), time.perf_counter() - t0, output)
