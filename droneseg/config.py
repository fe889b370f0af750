"""The run configuration: per-stage pydantic models, flat YAML presets, typed overrides and ``--set key=value``.

Contract
--------
Defaults live in pydantic models: ``DataConfig`` and ``TrainConfig`` here, ``ModelConfig``, ``LossConfig``,
``AugmentConfig`` and ``InferenceConfig`` (how validation, evaluate and predict tile photos, saved in model.json)
beside the code they configure, none of which imports Lightning: reading a config costs no Lightning import.
A preset (``droneseg/configs/<name>.yaml`` or any YAML path) overrides them one level deep; typed values from the
command line (``--data``, ``--gsd``, ``--devices``…) and ``--set`` override the preset. Errors name the key.
``config.yaml`` saved in a run folder is the resolved config and repeats the run.

>>> load_config("demo", ["train.lr=0.01", "model.channels=[8,16]"], {"data.gsd": 0.02}).data.gsd
0.02
"""

from __future__ import annotations

import re
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from droneseg.data.layout import DataSource
from droneseg.data.transforms import AugmentConfig
from droneseg.errors import DataError
from droneseg.losses import LossConfig
from droneseg.models import NAMED_WEIGHTS, ModelConfig
from droneseg.tiler import InferenceConfig

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``2h``, ``1h30m``, ``1d`` or ``DD:HH:MM:SS`` -> timedelta."""
    t = text.strip().lower()
    if t.count(":") == 3:
        d, h, m, s = (int(v) for v in t.split(":"))
        return timedelta(days=d, hours=h, minutes=m, seconds=s)
    match = _DURATION.match(t)
    if not t or not match or not any(match.groups()):
        raise DataError(f"duration {text!r}: use e.g. 90s, 30m, 2h, 1h30m or DD:HH:MM:SS")
    d, h, m, s = (int(v or 0) for v in match.groups())
    return timedelta(days=d, hours=h, minutes=m, seconds=s)


class TrainConfig(BaseModel):
    """Optimisation and the Trainer; defaults suit a 2-core CPU."""

    model_config = ConfigDict(extra="forbid")
    max_epochs: int = Field(default=30, ge=1)
    max_time: str | None = Field(default=None, description="wall-clock budget such as 90s, 30m, 2h, 1h30m")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    schedule: Literal["cosine", "onecycle", "plateau", "none"] = Field(
        default="cosine", description="over the planned optimiser steps (fitted to max_time when given); plateau: per epoch")
    warmup: float | None = Field(default=None, ge=0.0, lt=1.0,
                                 description="share of the planned steps spent warming up; null: 0.05 cosine, 0.3 onecycle")
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = Field(
        default="auto", description="auto: bf16-mixed on GPUs that support it, else 32 (CPU autocast is slow)"
    )
    @field_validator("max_time")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_duration(v)
            except DataError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) else v  # YAML reads `32` as a number

    accumulate: int = Field(default=1, ge=1, description="gradient accumulation steps")
    patience: int | None = Field(default=10, ge=1, description="early stopping on val mIoU; null = off")
    seed: int = 0
    deterministic: bool = False
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int | str = "auto"
    num_nodes: int = Field(default=1, ge=1)
    sample_every: int = Field(default=5, ge=0, description="epochs between sample prediction figures; 0 = never")
    samples: int = Field(default=3, ge=1, description="val images in each sample figure")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads; null = torch's default")
    final_eval: bool = Field(default=True, description="evaluate the best model on val at native resolution at the end")
    channels_last: bool | Literal["auto"] = Field(
        default="auto", description="train in NHWC memory layout; auto: on CPU, where it measured 1.15-1.27x faster "
        "(benchmarks/training.py), not on GPUs (unmeasured)")
    compile: bool = Field(default=False, description="torch.compile the net (in place; saved weights unchanged). "
                          "Measured on the 2-core CPU: 80 s to compile, then 0.76x the eager step (FPN-Lite0, 384², "
                          "batch 4): off by default; worth measuring on a GPU")
    ema: float | None = Field(default=None, gt=0.0, lt=1.0,
                              description="decay of an exponential moving average of the weights, used for "
                              "validation and the saved model (e.g. 0.99); null = off")
    init: str | None = Field(default=None, description="a trained run to start from (--init): the same classes "
                             "load the whole network, other classes the encoder and decoder with a new head")
    freeze: Literal["encoder"] | None = Field(default=None, description="keep the encoder fixed (weights and "
                                              "BatchNorm statistics) for the first freeze_share of the steps")
    freeze_share: float = Field(default=0.3, gt=0.0, le=1.0, description="share of the planned optimiser steps "
                                "the frozen part stays fixed")



class DataConfig(BaseModel):
    """Where samples come from and how they are cut; defaults suit 2 CPU cores."""

    model_config = ConfigDict(extra="forbid")
    root: str | None = Field(default=None, description="dataset folder, or a survey YAML of orthomosaics and vector labels (the --data option)")
    images: str | None = Field(default=None, description="folder of photos, with masks (--images), instead of root")
    masks: str | None = Field(default=None, description="folder of masks paired with images by file stem (--masks)")
    class_table: str | None = Field(default=None, description="class_dict CSV overriding the one found (--class-table)")
    scheme: str = Field(default="full", description="full, six, paved, luma, or a scheme .yaml")
    long_side: int | None = Field(default=768, ge=16, description="working size: long side in pixels; null = native")
    crop: int = Field(default=384, ge=16, description="side of the square training crops")
    batch_size: int = Field(default=4, ge=1)
    workers: int | Literal["auto"] = Field(
        default="auto", description="loader processes; auto: 0 for CPU training on <= 4 cores (crops from the "
        "memory-mapped cache cost less than a process competing with the step), else min(8, cores - 1) per device")
    samples_per_epoch: int | None = Field(default=None, ge=1, description="crops per epoch; null = one per training image")
    rare_crop: float = Field(default=0.0, ge=0.0, le=1.0, description="share of crops centred on a class drawn "
                             "uniformly among the training classes, in an image holding it (class-uniform sampling)")
    splits: str = Field(default="auto", description="auto (dataset's splits/ if present, else seeded), seed, or a folder")
    val_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    split_seed: int = 0
    image_filter: Literal["area", "bilinear"] = "area"
    gsd: float | None = Field(default=None, gt=0, description="metres per pixel of the dataset's photos at their own "
                              "size (null = unknown); model.json records the working GSD it gives, for orthomosaics")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    cache_dir: str | None = Field(default=None, description="null = $DRONESEG_CACHE or ~/.cache/droneseg")

    def source(self) -> DataSource:
        """Where the data is (``root``, or ``images`` + ``masks``), as evaluate and check-data take it."""
        path = lambda v: Path(v) if v else None  # noqa: E731
        return DataSource(path(self.root), path(self.images), path(self.masks), path(self.class_table))

    @model_validator(mode="after")
    def _crop_fits(self) -> DataConfig:
        if self.long_side is not None and self.crop > self.long_side:
            raise ValueError(f"crop {self.crop} is larger than the working size (long side {self.long_side}): "
                             "lower data.crop or raise data.long_side")
        return self



class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="run", pattern=r"^[A-Za-z0-9_.-]+$", description="run folder prefix")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)


PRESETS: dict[str, str] = {
    "demo": "the classic small U-Net on the demo's synthetic scenes, six classes, ~2 minutes on 2 cores",
    "full": "every class of your class table (unlabeled/conflicting ignored: the 22 real classes of the Semantic "
            "Drone Dataset): FPN on EfficientNet-Lite0, the CPU recipe",
    "full-long": "the full CPU recipe with a 2-hour budget (--max-time overrides it) and 1000 crops an epoch",
    "full-gpu": "the full preset for long GPU training (1500 px, 512² crops, bf16)",
    "six": "paved-area, dirt, grass, roof, water, other (the original project's 6-class mode)",
    "finetune": "tens of labelled photos: start from a trained run (--init RUN) or ImageNet, encoder frozen for "
                "the first 30 % of the steps",
    "paved": "paved-area vs other (the original project's binary mode)",
    "luma": "mask luminance above vs below its per-image mean (the original project's 1-class mode)",
}
"""One line per shipped preset, for ``train --help`` (a test checks every preset file has one)."""


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
    try:
        set_value(raw, key.strip(), yaml.safe_load(value) if value.strip() else None)
    except DataError as exc:
        raise DataError(f"--set {assignment!r}: {str(exc).split(': ', 1)[1]}") from None


def validate(raw: dict, origin: str) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise DataError(f"{origin}: {key}: {err['msg']}{more}") from None


def set_value(raw: dict, key: str, value: object) -> None:
    """Set the dotted ``key`` (``data.gsd``) of the nested dict ``raw`` to ``value``, as it is (no parsing)."""
    *parents, leaf = key.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise DataError(f"{key}: {p} is not a section")
    node[leaf] = value


def load_config(name_or_path: str, overrides: list[str] | None = None, values: dict[str, object] | None = None
                ) -> RunConfig:
    """A preset or YAML file, then ``overrides`` (``--set key=value`` text, read as YAML), then ``values``
    (typed values of command-line options, by dotted key, set as they are; None values are skipped).
    Raises DataError naming the key of the first invalid value."""
    raw, origin = _preset(name_or_path)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    for key, value in (values or {}).items():
        if value is not None:
            set_value(raw, key, value)
    return validate(raw, origin)


def resolve_paths(cfg: RunConfig, base: Path | None = None) -> RunConfig:
    """``cfg`` with every path it holds made absolute against ``base`` (default: the working folder): the dataset
    root, a scheme YAML, a split folder, a weights file, a parent run, the cache folder. A run's ``config.yaml`` then repeats the
    run from any folder. Names (``full``, ``auto``, ``imagenet``…) stay names.

    >>> resolve_paths(load_config("demo", ["data.root=data", "model.weights=w.safetensors"]), Path("/x")).data.root
    '/x/data'
    """
    base = Path.cwd() if base is None else Path(base)
    absolute = lambda p: str((base / Path(p).expanduser()).resolve())  # noqa: E731
    data, model = cfg.data, cfg.model
    changes_data: dict = {}
    for key in ("root", "images", "masks", "class_table"):
        if getattr(data, key):
            changes_data[key] = absolute(getattr(data, key))
    if data.scheme.endswith((".yaml", ".yml")):
        changes_data["scheme"] = absolute(data.scheme)
    if data.splits not in ("auto", "seed"):
        changes_data["splits"] = absolute(data.splits)
    if data.cache_dir:
        changes_data["cache_dir"] = absolute(data.cache_dir)
    changes_model = {"weights": absolute(model.weights)} if model.weights and model.weights not in NAMED_WEIGHTS else {}
    changes_train = {"init": absolute(cfg.train.init)} if cfg.train.init else {}
    return cfg.model_copy(update={"data": data.model_copy(update=changes_data),
                                  "model": model.model_copy(update=changes_model),
                                  "train": cfg.train.model_copy(update=changes_train)})


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
