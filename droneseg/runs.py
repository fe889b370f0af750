"""Run folders and the trained-model artefact (``model.safetensors`` + ``model.json``).

Contract
--------
* A run folder is created once and never reused: ``<out>/<name>-<YYYYMMDD-HHMMSS>`` (``-2``, ``-3``…
  on a clash). Under torchrun/SLURM/OAR every rank derives the same name from the job id; rank 0
  creates it, the others wait for it.
* ``model.json`` holds all that ``predict``/``evaluate``/``export`` need (architecture, scheme,
  working size and resize filter, inference settings, the identity of the training dataset);
  ``model.safetensors`` holds tensors only, so loading a model never unpickles.
  Neither this module nor its callers import Lightning.

>>> ModelInfo.from_dict(ModelInfo(model={"arch": "unet"}, scheme={}, long_side=512).to_dict()).long_side
512
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from droneseg import __version__
from droneseg.classes import DataError
from droneseg.io import atomic_open, atomic_write_json
from droneseg.schemes import LabelScheme
from droneseg.tiler import InferenceConfig

MODEL_FORMAT = 2  # 2: image_filter, inference and dataset at the top level
RUN_DIR_ENV = "DRONESEG_RUN_DIR"  # set by the process that created the run folder, for the ones it launches
_JOB_ID_VARS = ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "OAR_JOB_ID")


def global_rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def world_size() -> int:
    for var in ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if var in os.environ:
            return int(os.environ[var])
    return 1


def new_run_dir(out: Path, name: str, wait_s: float = 300.0) -> Path:
    """A fresh run folder; never an existing one (except the one a parent process made for this run)."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and global_rank() > 0 and Path(inherited).is_dir():
        return Path(inherited)
    out = Path(out)
    if world_size() > 1:
        job = next((os.environ[v] for v in _JOB_ID_VARS if os.environ.get(v) not in (None, "", "none")), None)
        if job is None:
            raise DataError("multi-process training needs a job id (torchrun --rdzv-id, SLURM or OAR) to name the run")
        run = out / f"{name}-job{job}"
        if global_rank() == 0:
            run.mkdir(parents=True, exist_ok=False)
        else:
            deadline = time.monotonic() + wait_s
            while not run.is_dir():
                if time.monotonic() > deadline:
                    raise DataError(f"{run}: rank 0 did not create the run folder within {wait_s:.0f} s")
                time.sleep(0.5)
        return run
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        run = out / (f"{name}-{stamp}" if i == 1 else f"{name}-{stamp}-{i}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise DataError(f"{out}: cannot find a free run folder name for {name}-{stamp}")


@dataclass
class ModelInfo:
    """What a trained model needs besides its weights.

    ``long_side``/``image_filter``: how photos are brought to the working scale (as the training cache did);
    ``inference``: :class:`~droneseg.tiler.InferenceConfig` values (tile, overlap, blend, TTA…);
    ``dataset``: ``{"root", "fingerprint", "images"}`` of the training dataset, so that ``evaluate`` uses the run's
    own split files only on that dataset.
    """

    model: dict
    scheme: dict
    long_side: int | None
    crop: int | None = None
    image_filter: str = "area"
    inference: dict = field(default_factory=dict)
    dataset: dict | None = None
    version: str = __version__
    format: int = MODEL_FORMAT
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelInfo:
        d = dict(d)
        if "image_filter" not in d and "image_filter" in d.get("extra", {}):  # models written before 0.2
            d["image_filter"] = d["extra"]["image_filter"]
        return cls(**d)

    def label_scheme(self) -> LabelScheme:
        return LabelScheme.from_dict(self.scheme)

    def inference_config(self) -> InferenceConfig:
        """The model's inference settings (defaults for what it does not record)."""
        return InferenceConfig.model_validate(self.inference)


def save_model(folder: Path, net: torch.nn.Module, info: ModelInfo) -> Path:
    """Write ``model.safetensors`` and ``model.json`` atomically; returns the json path."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_open(folder / "model.safetensors", "wb") as fh:
        fh.write(safetensors_bytes(state))
    atomic_write_json(folder / "model.json", info.to_dict())
    return folder / "model.json"


def resolve_model_path(path: str | Path) -> Path:
    """A run folder, its ``model.json`` or ``model.safetensors`` -> the folder holding both."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    for name in ("model.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise DataError(f"{folder}: no {name} (train a model first, or point at a run folder)")
    return folder


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelInfo]:
    """The trained net in eval mode, and its :class:`ModelInfo`."""
    from droneseg.models import ModelConfig, build_model

    folder = resolve_model_path(path)
    try:
        raw = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        if int(raw.get("format", 1)) > MODEL_FORMAT:
            raise DataError(f"{folder / 'model.json'}: format {raw['format']} is newer than this droneseg "
                            f"({__version__}) understands; upgrade droneseg")
        info = ModelInfo.from_dict(raw)
    except (json.JSONDecodeError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{folder / 'model.json'}: not a droneseg model description ({exc})") from None
    cfg = ModelConfig.model_validate({**info.model, "weights": None})  # weights come from the file below
    net = build_model(cfg, len(info.scheme["names"]))
    try:
        state = load_file(str(folder / "model.safetensors"))
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(f"{folder / 'model.safetensors'}: unreadable weights ({exc})") from None
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(
            f"{folder / 'model.safetensors'}: weights do not fit the model in model.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return net.to(device).eval(), info

