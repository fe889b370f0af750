"""``droneseg export``: the trained net as ONNX, with dynamic batch, height and width, checked against PyTorch.

Contract
--------
* Graph: input ``image`` float32 (B, 3, H, W) in [0, 1] (pixels / 255; the net normalises inside, as in
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


@dataclass
class ExportResult:
    """Where the model went and how closely ONNX Runtime reproduces PyTorch."""

    path: Path
    opset: int
    max_abs_diff: float
    shapes: list[tuple[int, int, int, int]]
    seconds: float

    def __str__(self) -> str:
        sizes = ", ".join(f"{h}x{w}" for _, _, h, w in self.shapes)
        return (f"{self.path} (opset {self.opset}): max |logit difference| vs PyTorch {self.max_abs_diff:.2e} "
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


def _onnx_bytes(net: torch.nn.Module, opset: int, divisor: int) -> bytes:
    """Trace ``net`` on an input that is not a multiple of its divisor, so the padding is traced too."""
    buf = io.BytesIO()
    dummy = torch.rand(1, 3, 2 * divisor + 1, 3 * divisor + 1)
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notices
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), buf, dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": axes, "logits": axes})
    return buf.getvalue()


def parity(net: torch.nn.Module, data: bytes, shapes: tuple[tuple[int, int, int, int], ...] = PARITY_SHAPES) -> float:
    """Max absolute logit difference between ONNX Runtime and PyTorch over random inputs of ``shapes``."""
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


def export(model: str | Path, out: Path | None = None, opset: int = 17) -> ExportResult:
    """Export ``model`` (run folder or model.json) to ``out``: a file, or a folder to hold ``model.onnx``
    (default: the model's own folder, where ``predict --backend onnx`` looks for it). Raises UserError when the
    ``onnx`` extra is missing, DataError when ONNX Runtime does not reproduce PyTorch."""
    require("onnx", "onnx", "onnxruntime", what="ONNX export and the onnx backend")
    import onnx

    if not MIN_OPSET <= opset <= max_opset():
        raise DataError(f"--opset {opset}: this exporter writes opsets {MIN_OPSET} to {max_opset()}")

    t0 = time.perf_counter()
    model_dir = resolve_model_path(model)
    out = model_dir if out is None else Path(out)
    out = out / "model.onnx" if out.is_dir() else out
    net, info = load_model(model_dir, "cpu")
    proto = onnx.load_from_string(_onnx_bytes(net, opset, getattr(net, "size_divisor", 1)))
    from droneseg.card import model_card, render

    card = model_card(model_dir)
    for key, value in metadata(net, info, weights_digest(model_dir), card).items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"droneseg {__version__} model from {model_dir}"
    data = proto.SerializeToString()
    diff = parity(net, data)
    if not diff <= PARITY_TOL:
        raise DataError(f"{model_dir}: ONNX logits differ from PyTorch by up to {diff:.2e} (> {PARITY_TOL}); "
                           "not written")
    atomic_save(out, lambda fh: fh.write(data))
    if out.parent.resolve() != model_dir.resolve():  # the run's own MODEL_CARD.md is beside an export in the run
        atomic_write_text(out.with_name(f"{out.stem}.MODEL_CARD.md"), render(card))
    return ExportResult(out, opset, diff, list(PARITY_SHAPES), time.perf_counter() - t0)
