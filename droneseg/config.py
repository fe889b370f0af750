"""The run configuration: per-stage pydantic models, flat YAML presets, ``--set key=value`` overrides.

Contract
--------
Defaults live beside the code they configure (``DataConfig``, ``ModelConfig``, ``LossConfig``,
``TrainConfig``, ``InferenceConfig``: how validation, evaluate and predict tile photos, saved in model.json); a preset (``droneseg/configs/<name>.yaml`` or any YAML path) overrides them one
level deep, and ``--set`` overrides the preset. Errors name the key. ``config.yaml`` saved in a run
folder is the resolved config and repeats the run.

>>> load_config("demo", ["train.lr=0.01", "model.channels=[8,16]"]).model.channels
[8, 16]
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from droneseg.classes import DataError
from droneseg.data.datamodule import DataConfig
from droneseg.engine.task import TrainConfig
from droneseg.losses import LossConfig
from droneseg.models import NAMED_WEIGHTS, ModelConfig
from droneseg.tiler import InferenceConfig


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="run", pattern=r"^[A-Za-z0-9_.-]+$", description="run folder prefix")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)


def presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("droneseg.configs").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, origin: str) -> dict:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{origin}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{origin}: a config must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _preset(name_or_path: str) -> tuple[dict, str]:
    if name_or_path in presets():
        text = resources.files("droneseg.configs").joinpath(f"{name_or_path}.yaml").read_text(encoding="utf-8")
        return _read_yaml(text, f"preset {name_or_path}"), f"preset {name_or_path}"
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _read_yaml(path.read_text(encoding="utf-8"), str(path)), str(path)
    raise DataError(f"unknown config {name_or_path!r}: choose a preset from {presets()} or a .yaml file")


def apply_override(raw: dict, assignment: str) -> None:
    """``a.b.c=value`` (value read as YAML: numbers, lists, null) set into the nested dict ``raw``."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise DataError(f"--set {assignment!r}: expected key=value, e.g. train.lr=3e-4")
    *parents, leaf = key.strip().split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise DataError(f"--set {assignment!r}: {p} is not a section")
    node[leaf] = yaml.safe_load(value) if value.strip() else None


def validate(raw: dict, origin: str) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise DataError(f"{origin}: {key}: {err['msg']}{more}") from None


def load_config(name_or_path: str, overrides: list[str] | None = None) -> RunConfig:
    raw, origin = _preset(name_or_path)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return validate(raw, origin)


def resolve_paths(cfg: RunConfig, base: Path | None = None) -> RunConfig:
    """``cfg`` with every path it holds made absolute against ``base`` (default: the working folder): the dataset
    root, a scheme YAML, a split folder, a weights file, the cache folder. A run's ``config.yaml`` then repeats the
    run from any folder. Names (``full``, ``auto``, ``imagenet``…) stay names.

    >>> resolve_paths(load_config("demo", ["data.root=data", "model.weights=w.safetensors"]), Path("/x")).data.root
    '/x/data'
    """
    base = Path.cwd() if base is None else Path(base)
    absolute = lambda p: str((base / Path(p).expanduser()).resolve())  # noqa: E731
    data, model = cfg.data, cfg.model
    changes_data: dict = {}
    if data.root:
        changes_data["root"] = absolute(data.root)
    if data.scheme.endswith((".yaml", ".yml")):
        changes_data["scheme"] = absolute(data.scheme)
    if data.splits not in ("auto", "seed"):
        changes_data["splits"] = absolute(data.splits)
    if data.cache_dir:
        changes_data["cache_dir"] = absolute(data.cache_dir)
    changes_model = {"weights": absolute(model.weights)} if model.weights and model.weights not in NAMED_WEIGHTS else {}
    return cfg.model_copy(update={"data": data.model_copy(update=changes_data),
                                  "model": model.model_copy(update=changes_model)})


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
