"""ModelConfig validation, the ARCHITECTURES registry and build_model's errors."""

from __future__ import annotations

import re

import pytest
import segmentation_models_pytorch as smp
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from pydantic import ValidationError

from droneseg.errors import DataError
from droneseg.models import ARCHITECTURES, CLASSIC, ModelConfig, build_model, model_summary
from droneseg.models.pretrained import LITE0_ENCODER, LITE_ENCODERS
from droneseg.models.unet import UNet


def test_defaults_are_the_classic_student_unet() -> None:
    cfg = ModelConfig()
    assert (cfg.arch, cfg.channels, cfg.weights, cfg.in_channels) == (CLASSIC, [16, 32, 64], None, 3)
    model = build_model(cfg, num_classes=24)
    assert isinstance(model, UNet) and model.size_divisor == 4


def test_every_registered_smp_name_is_an_smp_class() -> None:
    smp_names = set(ARCHITECTURES) - {CLASSIC}
    assert {"Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Linknet", "MAnet", "PAN",
            "UPerNet", "Segformer"} <= smp_names  # fmt: skip
    assert all(isinstance(getattr(smp, name), type) for name in smp_names)


def test_unknown_arch_lists_sorted_choices() -> None:
    choices = re.escape(str(sorted(ARCHITECTURES)))
    with pytest.raises(ValidationError, match=f"unknown architecture 'unet3d'; choose from {choices}"):
        ModelConfig(arch="unet3d")
    with pytest.raises(DataError, match=f"unknown architecture 'unet3d'; choose from {choices}"):
        build_model(ModelConfig.model_construct(arch="unet3d"), num_classes=2)


def test_unknown_key_is_rejected_by_name() -> None:
    with pytest.raises(ValidationError, match="encoder_name"):
        ModelConfig(encoder_name="resnet18")


@pytest.mark.parametrize("channels", [[], [16, 0]], ids=["empty", "zero-width"])
def test_bad_channel_lists_are_rejected(channels: list[int]) -> None:
    with pytest.raises(ValidationError, match="channels"):
        ModelConfig(channels=channels)


def test_unknown_smp_encoder_lists_sorted_choices() -> None:
    with pytest.raises(DataError, match=r"unknown encoder 'resnet19'; choose from \[.*'resnet18', 'resnet34'"):
        build_model(ModelConfig(arch="Unet", encoder="resnet19"), num_classes=2)


def test_unknown_timm_encoder_is_named() -> None:
    with pytest.raises(DataError, match="timm has no model 'no_such_net'"):
        build_model(ModelConfig(arch="Unet", encoder="tu-no_such_net"), num_classes=2)


@pytest.mark.parametrize("weights", ["lite0", "lite1", "lite2"])
def test_lite_weights_set_their_encoder_when_none_given(weights: str) -> None:
    assert ModelConfig(arch="FPN", weights=weights).encoder == LITE_ENCODERS[weights] == f"tu-tf_efficientnet_{weights}"


def test_lite_weights_reject_another_encoder() -> None:
    with pytest.raises(ValidationError, match="weights 'lite0' need encoder 'tu-tf_efficientnet_lite0'"):
        ModelConfig(arch="Unet", encoder="resnet34", weights="lite0")
    with pytest.raises(ValidationError, match="weights 'lite1' need encoder 'tu-tf_efficientnet_lite1'"):
        ModelConfig(arch="Unet", encoder=LITE0_ENCODER, weights="lite1")


@pytest.mark.parametrize("weights", ["imagenet", "lite0", "lite2"])
def test_classic_unet_rejects_named_encoder_weights(weights: str) -> None:
    with pytest.raises(ValidationError, match=f"weights '{weights}' are for smp encoders"):
        ModelConfig(weights=weights)


def test_imagenet_weights_offline_fail_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> str:
        raise LocalEntryNotFoundError("no connection and no cached file")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    with pytest.raises(DataError, match="could not download 'imagenet' weights for encoder 'resnet18'.*'lite0'"):
        build_model(ModelConfig(arch="Unet", encoder="resnet18", weights="imagenet"), num_classes=2)


def test_random_init_downloads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object, **kwargs: object) -> str:
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", no_download)
    model = build_model(ModelConfig(arch="Unet", encoder="resnet18"), num_classes=2).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_summary_reports_parameters_and_normalisation() -> None:
    summary = model_summary(build_model(ModelConfig(channels=[8, 16]), num_classes=3))
    assert summary["parameters"] == summary["trainable_parameters"] == 6651  # counted in test_model_architectures
    assert (summary["class"], summary["num_classes"], summary["size_divisor"]) == ("UNet", 3, 2)
    assert summary["mean"] == pytest.approx([0.485, 0.456, 0.406])
