"""Run folders and the trained-model artefact (``model.safetensors`` + ``model.json``).

Contract
--------
* A run folder is created once and never reused: ``<out>/<name>-<YYYYMMDD-HHMMSS>`` (``-2``, ``-3``…
  on a clash). In a job (torchrun, SLURM, OAR: :mod:`droneseg.cluster`) every rank and node derives the
  same name from the job id, ``<name>-job<id>``; rank 0 creates it, the others wait for it, and a
  requeued job finds it again and resumes it.
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
from droneseg.cluster import ClusterEnv, detect
from droneseg.io import atomic_open, atomic_write_json
from droneseg.schemes import LabelScheme
from droneseg.tiler import InferenceConfig

MODEL_FORMAT = 3  # 2: image_filter, inference and dataset at the top level; 3: gsd
RUN_DIR_ENV = "DRONESEG_RUN_DIR"  # set by the process that created the run folder, for the ones it launches


def is_creator(env: ClusterEnv) -> bool:
    """Whether this process makes the run folder: rank 0 of node 0, not a process another one started."""
    return env.rank == 0 and env.local_rank == 0 and env.node_rank == 0


def finished(run: Path) -> bool:
    """Whether ``run`` holds a run that ended (its ``train_summary.json`` is written last)."""
    return (Path(run) / "train_summary.json").is_file()


def job_run_dir(out: Path, name: str, job_id: str) -> Path:
    """The folder of a job's run, the same on every rank and node and again after a requeue: ``<name>-job<id>``,
    or ``-2``, ``-3``… past folders holding finished runs (a job script that trains twice)."""
    base = Path(out) / f"{name}-job{job_id}"
    for i in range(1, 1000):
        run = base if i == 1 else base.with_name(f"{base.name}-{i}")
        if not finished(run):
            return run
    raise DataError(f"{out}: 999 finished runs named {base.name}; pass --run-dir")


def shared_run_dir(run: Path, env: ClusterEnv, wait_s: float = 300.0) -> Path:
    """``run``, made by the creating process (also when it exists: a requeued job that stopped before its first
    checkpoint starts again there) and waited for by the others. Raises DataError after ``wait_s``."""
    run = Path(run)
    if is_creator(env):
        run.mkdir(parents=True, exist_ok=True)
        return run
    deadline = time.monotonic() + wait_s
    while not run.is_dir():
        if time.monotonic() > deadline:
            raise DataError(f"{run}: rank 0 did not create the run folder within {wait_s:.0f} s")
        time.sleep(0.5)
    return run


def new_run_dir(out: Path, name: str, env: ClusterEnv | None = None, wait_s: float = 300.0) -> Path:
    """A fresh run folder, never an existing one; in a job, the job's folder (:func:`job_run_dir`), which the
    creating process makes and the others wait for. Processes a creator started get its folder (``RUN_DIR_ENV``).
    """
    env = env or detect()
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and not is_creator(env) and Path(inherited).is_dir():
        return Path(inherited)
    out = Path(out)
    if env.world_size > 1 and not env.names_run:
        raise DataError("multi-process training needs a job id to name its run folder alike on every rank "
                        "(torchrun --rdzv-id ID or --standalone, SLURM or OAR), or --run-dir")
    if env.names_run:
        return shared_run_dir(job_run_dir(out, name, env.job_id), env, wait_s)
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
    own split files only on that dataset; ``gsd``: metres of ground per working pixel (``data.gsd`` scaled by the
    photos' native size over the working size), None when the training photos' GSD was not given.
    """

    model: dict
    scheme: dict
    long_side: int | None
    crop: int | None = None
    image_filter: str = "area"
    inference: dict = field(default_factory=dict)
    dataset: dict | None = None
    gsd: float | None = None  # metres per working pixel (the ground the network saw per pixel); None: unknown
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

