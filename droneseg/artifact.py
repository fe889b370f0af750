"""The trained-model artefact: ``model.safetensors`` (tensors only) + ``model.json`` (:class:`ModelInfo`).

Contract
--------
* ``model.json`` holds all that ``predict``/``evaluate``/``export`` need: the network (:class:`ModelConfig`), the
  label scheme (:class:`~droneseg.schemes.LabelScheme`), the working size and resize filter, the inference
  settings (:class:`~droneseg.tiler.InferenceConfig`), the identity of the training dataset and the working GSD.
  :class:`ModelInfo` carries them as those typed objects; ``model.json`` is its JSON form.
* ``model.safetensors`` holds tensors only, so loading a model never unpickles. Nothing here imports Lightning.
* Format 4 (0.2): the classic U-Net is ``classic-unet``. Formats 1-3 are read as they were written (their
  ``unet`` is the classic U-Net, ``image_filter`` may sit in ``extra``); a newer format is refused.

>>> info = ModelInfo(model=ModelConfig(channels=[8, 16]), scheme=get_scheme("paved"), long_side=512)
>>> again = ModelInfo.from_json(info.to_json())
>>> again.long_side, again.scheme.names, again.model.arch
(512, ('other', 'paved-area'), 'classic-unet')
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, model_validator
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from droneseg import __version__
from droneseg.errors import DataError
from droneseg.files import atomic_open, atomic_write_json
from droneseg.models import ModelConfig, build_model, legacy_model_dict
from droneseg.schemes import LabelScheme, get_scheme  # noqa: F401  (get_scheme: the doctest)
from droneseg.tiler import InferenceConfig

MODEL_FORMAT = 4  # 2: image_filter, inference and dataset at the top level; 3: gsd; 4: classic-unet


def _scheme(value: object) -> LabelScheme:
    return value if isinstance(value, LabelScheme) else LabelScheme.from_dict(value)  # type: ignore[arg-type]


Scheme = Annotated[LabelScheme, BeforeValidator(_scheme), PlainSerializer(lambda s: s.to_dict())]
"""A label scheme in a pydantic model: validated from (and written as) :meth:`LabelScheme.to_dict`."""


class DatasetIdentity(BaseModel):
    """The dataset a model was trained on: where it was and what it held (``Layout.fingerprint``)."""

    model_config = ConfigDict(extra="allow")
    root: str | None = None
    fingerprint: str
    images: int | None = None


class ModelInfo(BaseModel):
    """What a trained model needs besides its weights.

    ``long_side``/``image_filter``: how photos are brought to the working scale (as the training cache did);
    ``inference``: how the tiler runs it (tile, overlap, blend, TTA…); ``dataset``: the training dataset, so that
    ``evaluate`` uses the run's own split files only on that dataset; ``gsd``: metres of ground per working pixel
    (``data.gsd`` scaled by the photos' native size over the working size), None when the training photos' GSD was
    not given; ``extra``: free-form notes (the run's name, its best checkpoint).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    model: ModelConfig
    scheme: Scheme
    long_side: int | None
    crop: int | None = None
    image_filter: Literal["area", "bilinear"] = "area"
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    dataset: DatasetIdentity | None = None
    gsd: float | None = Field(default=None, gt=0)
    version: str = __version__
    format: int = MODEL_FORMAT
    extra: dict = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _older_formats(cls, d: object) -> object:
        """Formats 1-3 as they were written: ``unet`` named the classic U-Net; ``image_filter`` sat in ``extra``."""
        if not isinstance(d, dict) or int(d.get("format", 1)) >= 4:
            return d
        d = dict(d)
        if isinstance(d.get("model"), dict):
            d["model"] = legacy_model_dict(d["model"])
        if "image_filter" not in d and "image_filter" in d.get("extra", {}):
            d["image_filter"] = d["extra"]["image_filter"]
        return d

    def to_json(self) -> dict:
        """``model.json``'s content (plain data)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, d: dict, origin: str = "model.json") -> ModelInfo:
        """Read ``model.json``'s content; raises DataError naming ``origin`` for a newer format or a bad value."""
        try:
            if int(d.get("format", 1)) > MODEL_FORMAT:
                raise DataError(f"{origin}: format {d['format']} is newer than this droneseg ({__version__}) "
                                "understands; upgrade droneseg")
            return cls.model_validate(d)
        except (ValidationError, TypeError, ValueError, AttributeError, KeyError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{origin}: not a droneseg model description ({str(exc).splitlines()[0]})") from None


def save_model(folder: Path, net: torch.nn.Module, info: ModelInfo) -> Path:
    """Write ``model.safetensors`` and ``model.json`` atomically; returns the json path."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_open(folder / "model.safetensors", "wb") as fh:
        fh.write(safetensors_bytes(state))
    atomic_write_json(folder / "model.json", info.to_json())
    return folder / "model.json"


def weights_digest(folder: Path) -> str:
    """SHA-256 of a run's ``model.safetensors``: what an export records, to be matched with later."""
    h = hashlib.sha256()
    with (Path(folder) / "model.safetensors").open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_model_path(path: str | Path) -> Path:
    """A run folder, its ``model.json`` or ``model.safetensors`` -> the folder holding both; raises DataError."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    for name in ("model.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise DataError(f"{folder}: no {name} (train a model first, or point at a run folder)")
    return folder


def read_info(folder: Path) -> ModelInfo:
    """The :class:`ModelInfo` of the model in ``folder``; raises DataError naming ``model.json``."""
    path = Path(folder) / "model.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a droneseg model description ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: not a droneseg model description (not a JSON object)")
    return ModelInfo.from_json(raw, str(path))


def build_net(info: ModelInfo, state: dict[str, torch.Tensor], origin: str) -> torch.nn.Module:
    """The network ``info`` describes with the weights ``state``, in eval mode on the CPU; raises DataError naming
    ``origin`` when the weights do not fit."""
    net = build_model(info.model.model_copy(update={"weights": None}), info.scheme.num_classes)  # weights: below
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"{origin}: weights do not fit the model in model.json "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.eval()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelInfo]:
    """The trained net of a run folder (or its ``model.json``) in eval mode on ``device``, and its ModelInfo."""
    folder = resolve_model_path(path)
    info = read_info(folder)
    try:
        state = load_file(str(folder / "model.safetensors"))
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(f"{folder / 'model.safetensors'}: unreadable weights ({exc})") from None
    return build_net(info, state, str(folder / "model.safetensors")).to(device), info
