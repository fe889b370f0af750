"""One model session: a trained run or an exported file behind one interface, the only way the tiler meets a network.

Contract
--------
* :func:`open_session` opens a run folder (or its ``model.json``) or an exported ``.onnx`` file on a backend chosen
  by name (:data:`BACKENDS`): ``torch`` runs the safetensors weights in PyTorch; ``onnx`` runs ONNX Runtime on
  ``model.onnx`` next to ``model.json`` (a temporary export when there is none; refused when it was exported
  from other weights) or on the ``.onnx`` file given, whose metadata carries the model's description; ``openvino``
  compiles the same ONNX file with OpenVINO's CPU runtime, checked against ONNX Runtime when it opens;
  ``onnx-int8`` runs ONNX Runtime on ``model-int8.onnx`` (:mod:`droneseg.quantize`, checked class by class when
  it was written; never made on the fly: it needs the training data).
* :meth:`ModelSession.tiler` gives the :class:`~droneseg.tiler.Tiler` for inference settings;
  :meth:`ModelSession.settings` applies the command line's :class:`~droneseg.tiler.InferenceOverrides` to the
  model's own settings. Validation during training (:func:`net_session`), ``evaluate``, ``predict`` and the
  orthomosaic path all go through it, so one photo gives the same labels everywhere.
* ``run``: float32 (B, 3, h, w) in [0, 1] -> float32 logits (B, K, h, w) on the session's ``device`` (the host for
  ONNX Runtime, which takes and returns host arrays). Nothing here imports Lightning.

>>> sorted(BACKENDS)
['onnx', 'onnx-int8', 'openvino', 'torch']
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from droneseg.artifact import ModelInfo, load_model, resolve_model_path, weights_digest
from droneseg.cluster import device_for
from droneseg.errors import DataError
from droneseg.schemes import LabelScheme
from droneseg.tiler import InferenceConfig, InferenceOverrides, Tiler

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ModelSession:
    """A network ready to infer, with what describes it (see the module contract).

    ``info``: the model's description (None for a net being trained); ``folder``: the run folder around it (its
    ``splits/``, ``training_curves.png``), or the folder of the ``.onnx`` file opened."""

    run: Runner
    scheme: LabelScheme
    inference: InferenceConfig
    device: torch.device
    backend: str
    info: ModelInfo | None = None
    folder: Path | None = None
    net: torch.nn.Module | None = None  # the torch backend's network

    def settings(self, overrides: InferenceOverrides | None = None) -> InferenceConfig:
        """The model's inference settings with the command line's ``overrides``; raises DataError naming one."""
        return overrides.apply(self.inference) if overrides is not None else self.inference

    def tiler(self, settings: InferenceConfig | None = None) -> Tiler:
        """A :class:`Tiler` running this session with ``settings`` (default: the model's own)."""
        return Tiler.from_config(self.run, self.scheme.num_classes, settings or self.inference, self.device)


def net_session(net: torch.nn.Module, scheme: LabelScheme, inference: InferenceConfig,
                device: torch.device | str) -> ModelSession:
    """A session around a torch network in memory (validation during training)."""
    return ModelSession(net, scheme, inference, torch.device(device), "torch", net=net)


def _torch_session(model: Path, device: torch.device) -> ModelSession:
    net, info = load_model(model, device)
    return ModelSession(net, info.scheme, info.inference, device, "torch", info, resolve_model_path(model), net)


def _onnx_bytes_for(model: Path, name: str = "model.onnx") -> tuple[bytes, Path, Path | None]:
    """(the ONNX model, the file it came from, the run folder or None) for a run folder (its file ``name``) or a
    ``.onnx`` file. A run without ``model.onnx`` gets a temporary export; one without ``model-int8.onnx`` is refused
    (the int8 export needs the training data)."""
    if model.suffix.lower() == ".onnx":
        if not model.is_file():
            raise DataError(f"{model}: no such file")
        folder = model.parent if (model.parent / "model.json").is_file() else None
        return model.read_bytes(), model, folder
    folder = resolve_model_path(model)
    path = folder / name
    if path.is_file():
        return path.read_bytes(), path, folder
    if name != "model.onnx":
        raise DataError(f"{path}: no such file; write it with `droneseg export {folder} --format int8 --data DATA` "
                        "(DATA: the dataset the model was trained on, for calibration and the parity check)")
    from droneseg.export import export

    with tempfile.TemporaryDirectory() as tmp:
        tqdm.write(f"no {path}: exporting a temporary one (run `droneseg export` to keep it)", file=sys.stderr)
        return export(folder, Path(tmp) / "model.onnx").path.read_bytes(), path, folder


def info_from_onnx(meta: dict[str, str], origin: str) -> ModelInfo:
    """The :class:`ModelInfo` an exported file carries: ``model_info`` (0.2 on), else rebuilt from the keys of
    earlier exports (``model``, ``scheme``, ``long_side``, ``inference``). Raises DataError naming ``origin``."""
    if "model_info" in meta:
        return ModelInfo.from_json(json.loads(meta["model_info"]), origin)
    try:
        d = {k: json.loads(meta[k]) for k in ("model", "scheme", "long_side", "inference")}
    except (KeyError, json.JSONDecodeError):
        raise DataError(f"{origin}: not a droneseg export (its metadata lacks the model's description)") from None
    return ModelInfo.from_json({**d, "format": 3}, origin)


def _onnx_session(model: Path, device: torch.device) -> ModelSession:
    from droneseg.extras import require_onnx

    require_onnx()
    return _ort_session(model, device, *_onnx_bytes_for(model))


INT8_FILE = "model-int8.onnx"
"""The int8 export in a run folder (:mod:`droneseg.quantize` writes it), which ``--backend onnx-int8`` runs."""


def _onnx_int8_session(model: Path, device: torch.device) -> ModelSession:
    from droneseg.extras import require_onnx

    require_onnx()
    session = _ort_session(model, device, *_onnx_bytes_for(model, INT8_FILE))
    session.backend = "onnx-int8"
    return session


def _ort_session(model: Path, device: torch.device, data: bytes, path: Path, folder: Path | None) -> ModelSession:
    """ONNX Runtime on ``data`` (the ONNX file ``path`` of ``model``, in the run folder ``folder`` or None)."""
    import onnxruntime as ort

    wanted = ["CUDAExecutionProvider"] if device.type == "cuda" else []
    providers = [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    # idle ORT threads spin by default, starving the torch blending that runs between tile batches
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_pattern = False  # its per-shape plan held ~170 MB more on a 2x512² batch, for no speed
    try:
        session = ort.InferenceSession(data, options, providers=providers)
    except Exception as exc:  # ORT's own error types  # noqa: BLE001
        raise DataError(f"{path}: not an ONNX model ONNX Runtime can run ({str(exc).splitlines()[0]})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if "model_type" in meta:  # export --format qgis: fixed tiles and probabilities, for Deepness and GeoDeep
        raise DataError(f"{path}: exported for QGIS (Deepness) and WebODM (GeoDeep), on fixed tiles; droneseg runs "
                        "the run folder, or the model.onnx of `droneseg export RUN`")
    info = info_from_onnx(meta, str(path))
    if folder is not None and model.suffix.lower() != ".onnx":
        own = resolve_model_path(folder)
        recorded = json.loads(meta.get("weights_sha256", "null"))  # every metadata value is a JSON string
        names = json.loads(meta.get("class_names", "null"))
        if (recorded is not None and recorded != weights_digest(own)) or names != list(info.scheme.names):
            raise DataError(f"{path}: exported from other weights than {own / 'model.safetensors'}; run "
                            "`droneseg export` again")
        info = ModelInfo.from_json(json.loads((own / "model.json").read_text(encoding="utf-8")), str(own))
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        pixels = np.ascontiguousarray(x.cpu().numpy())  # the tiler's batches are channels-last in memory
        return torch.from_numpy(session.run(None, {input_name: pixels})[0]).to(x.device)

    return ModelSession(run, info.scheme, info.inference, torch.device("cpu"), "onnx", info, folder)


def _openvino_session(model: Path, device: torch.device) -> ModelSession:
    """OpenVINO's CPU runtime on the same ONNX file as the onnx backend (read and compiled by OpenVINO, f32 on every
    CPU: its default on CPUs with bf16 units would be bf16). Its logits are compared with ONNX Runtime's (which the
    export compared with PyTorch's) on random inputs when the session opens; a difference over
    :data:`~droneseg.export.PARITY_TOL` refuses the backend in one line."""
    from droneseg.extras import require

    require("openvino", "openvino", "onnx", "onnxruntime", what="The openvino backend")
    import openvino as ov

    from droneseg.export import PARITY_SHAPES, PARITY_TOL

    data, path, folder = _onnx_bytes_for(model)
    reference = _ort_session(model, torch.device("cpu"), data, path, folder)  # checks the file, describes it
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:  # OpenVINO reads ONNX from a file
        onnx_file = Path(tmp) / "model.onnx"
        onnx_file.write_bytes(data)
        compiled = core.compile_model(core.read_model(str(onnx_file)), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": max(1, torch.get_num_threads())})
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x: torch.Tensor) -> torch.Tensor:
        pixels = np.ascontiguousarray(x.cpu().numpy())
        return torch.from_numpy(np.array(request.infer({0: pixels})[output])).to(x.device)

    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in PARITY_SHAPES:
        x = torch.rand(shape, generator=gen)
        worst = max(worst, float((run(x) - reference.run(x)).abs().max()))
    if not worst <= PARITY_TOL:
        raise DataError(f"{path}: OpenVINO's logits differ from ONNX Runtime's by up to {worst:.2e} (> {PARITY_TOL}) "
                        "on this machine; use --backend torch or onnx")
    return ModelSession(run, reference.scheme, reference.inference, torch.device("cpu"), "openvino", reference.info,
                        folder)


BACKENDS: dict[str, Callable[[Path, torch.device], ModelSession]] = {
    "torch": _torch_session, "onnx": _onnx_session, "onnx-int8": _onnx_int8_session, "openvino": _openvino_session}
"""Backend name -> opener of a run folder or exported file on a device."""


def _default_session(model: Path, device: torch.device) -> ModelSession:
    """The fastest verified backend that is ready: ``onnx`` on a CPU when ONNX Runtime is installed and the run holds
    a ``model.onnx`` of its current weights (``droneseg export RUN`` writes it; benchmarks/results/backends.json:
    0.73x torch's seconds per 6000x4000 photo, 0.71x on the orthomosaic benchmark, the same mIoU), else ``torch``.
    A stale or unreadable ``model.onnx`` is said on stderr and torch runs."""
    import importlib.util

    if device.type == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
        folder = resolve_model_path(model)
        if (folder / "model.onnx").is_file():
            try:
                return _onnx_session(model, device)
            except DataError as exc:
                tqdm.write(f"note: {exc}; running on torch", file=sys.stderr)
    return _torch_session(model, device)


def open_session(model: str | Path, backend: str | None = None, device: str | None = None,
                 local_rank: int = 0) -> ModelSession:
    """Open ``model`` (a run folder, its ``model.json``, or an exported ``.onnx``) on ``backend`` and ``device``
    (default: this process's GPU if there is one, else the CPU). Default backend: ``onnx`` for a ``.onnx`` file; for
    a run, ``onnx`` on a CPU where ONNX Runtime is installed and the run holds an up-to-date ``model.onnx``, else
    ``torch`` (:func:`_default_session`). Raises DataError for an unknown backend, a missing or foreign model."""
    model = Path(model)
    is_onnx_file = model.suffix.lower() == ".onnx"
    if backend is None and not is_onnx_file:
        return _default_session(model, device_for(device, local_rank))
    backend = backend or "onnx"
    if backend not in BACKENDS:
        raise DataError(f"unknown backend {backend!r}; choose from {sorted(BACKENDS)}")
    if is_onnx_file and backend not in ("onnx", "openvino"):
        raise DataError(f"{model}: an exported ONNX file runs on the onnx or openvino backend, not {backend!r} "
                        "(an int8 file runs on onnx)")
    return BACKENDS[backend](model, device_for(device, local_rank))
