"""Every architecture keeps the model contract: (B, 3, H, W) in [0, 1] -> finite (B, K, H, W) logits, any H, W."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from droneseg.models import ARCHITECTURES, CLASSIC, ModelConfig, build_model
from droneseg.models.base import IMAGENET_MEAN, IMAGENET_STD, SmpModel
from droneseg.models.unet import UNet


class BaseModelTester:
    """64x64, batch 1; a subclass names the config (and a training batch where BatchNorm needs two samples)."""

    cfg: ModelConfig
    num_classes = 5
    train_batch = 1

    def model(self) -> nn.Module:
        torch.manual_seed(0)
        return build_model(self.cfg, self.num_classes)

    @pytest.mark.parametrize("size", [(64, 64), (67, 45)], ids=["divisible", "odd"])
    def test_logits_have_input_size_and_are_finite(self, size: tuple[int, int]) -> None:
        model = self.model().eval()
        with torch.no_grad():
            logits = model(torch.rand(1, 3, *size))
        assert logits.shape == (1, self.num_classes, *size)
        assert logits.dtype == torch.float32
        assert torch.isfinite(logits).all()

    def test_backward_gives_finite_gradients(self) -> None:
        model = self.model().train()
        logits = model(torch.rand(self.train_batch, 3, 64, 64))
        F.cross_entropy(logits, torch.randint(0, self.num_classes, (self.train_batch, 64, 64))).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)

    def test_normalisation_buffers_are_imagenet_stats_in_state_dict(self) -> None:
        state = self.model().state_dict()
        torch.testing.assert_close(state["mean"].flatten(), torch.tensor(IMAGENET_MEAN))
        torch.testing.assert_close(state["std"].flatten(), torch.tensor(IMAGENET_STD))


class TestClassicUNetSmall(BaseModelTester):
    cfg = ModelConfig(channels=[8, 16, 32])


class TestClassicUNetDefault(BaseModelTester):
    cfg = ModelConfig()


class TestSmpUnetResNet18(BaseModelTester):
    cfg = ModelConfig(arch="Unet", encoder="resnet18")


class TestSmpFPN(BaseModelTester):
    cfg = ModelConfig(arch="FPN", encoder="resnet18")


class TestSmpDeepLabV3Plus(BaseModelTester):
    cfg = ModelConfig(arch="DeepLabV3Plus", encoder="resnet18")
    train_batch = 2  # ASPP's image-pooling branch has BatchNorm over a 1x1 map: one sample cannot train it


class TestSmpSegformer(BaseModelTester):
    cfg = ModelConfig(arch="Segformer", encoder="mit_b0")


def _pass_through(model: UNet) -> UNet:
    """Dirac kernels, identity BatchNorm, nearest up-convs, no normalisation: output c = input c (times BN's eps)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.ConvTranspose2d):
                module.weight.zero_()
                module.bias.zero_()
                for c in range(min(module.in_channels, module.out_channels)):
                    module.weight[c, c] = 1.0
            elif isinstance(module, nn.Conv2d):
                nn.init.dirac_(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
        model.mean.zero_()
        model.std.fill_(1.0)
    return model.eval()


@pytest.mark.parametrize("size", [(67, 45), (5, 3), (64, 64)], ids=["odd", "smaller-than-divisor", "divisible"])
def test_classic_unet_output_pixel_is_its_input_pixel(size: tuple[int, int]) -> None:
    # the full-resolution skip path carries channels 0 and 1 through 4 BatchNorms (each x / sqrt(1 + 1e-5)):
    # any misaligned padding or crop would shift the image
    model = _pass_through(UNet(num_classes=2, channels=[8, 16, 32, 64]))
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, x[:, :2] / (1 + 1e-5) ** 2)


@pytest.mark.parametrize(("channels", "divisor"), [([4], 1), ([8, 16, 32], 4), ([1, 1, 1, 1, 1], 16)])
def test_classic_unet_size_divisor_is_two_to_the_depth(channels: list[int], divisor: int) -> None:
    assert UNet(num_classes=3, channels=channels).size_divisor == divisor


def test_classic_unet_parameter_count_by_hand() -> None:
    # channels [8, 16], 3 -> 3 classes: level 0 convs 3*8*9 + 8*8*9 + 2 BN * 16 = 824; level 1 8*16*9 + 16*16*9
    # + 2 * 32 = 3520; up-conv 16*8*4 + 8 = 520; decoder block 16*8*9 + 8*8*9 + 2 * 16 = 1760; head 8*3 + 3 = 27
    model = UNet(num_classes=3, channels=[8, 16])
    assert sum(p.numel() for p in model.parameters()) == 824 + 3520 + 520 + 1760 + 27


def test_base_normalises_pads_with_zeros_and_crops() -> None:
    seen: list[torch.Tensor] = []
    net = nn.Conv2d(3, 3, 1, bias=False)
    nn.init.dirac_(net.weight)
    net.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    model = SmpModel(net, num_classes=3, size_divisor=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.rand(1, 3, 33, 50)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, (x - 0.5) / 0.25)
    assert seen[0].shape == (1, 3, 64, 64)
    assert (seen[0][..., 33:, :] == 0).all() and (seen[0][..., 50:] == 0).all()


def test_input_with_wrong_channel_count_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\), got \(1, 4, 8, 8\)"):
        UNet(num_classes=2)(torch.rand(1, 4, 8, 8))


def test_mean_of_wrong_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="need 3 values each"):
        UNet(num_classes=2, mean=(0.5,), std=(0.5,))


def test_four_channel_input_gets_repeated_average_stats() -> None:
    model = build_model(ModelConfig(channels=[4, 8], in_channels=4), num_classes=2)
    assert model(torch.rand(1, 4, 9, 9)).shape == (1, 2, 9, 9)
    torch.testing.assert_close(model.mean.flatten(), torch.full((4,), sum(IMAGENET_MEAN) / 3))


# -- one harness over every architecture droneseg offers ----------------------------------------------------------
@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def any_arch(request) -> tuple[str, nn.Module]:
    arch = request.param
    cfg = ModelConfig(arch=arch, channels=[8, 16]) if arch == CLASSIC else ModelConfig(arch=arch, encoder="resnet18")
    torch.manual_seed(0)
    return arch, build_model(cfg, 5)


# the inner loop keeps one odd size at both batch sizes; the others run in the full suite
@pytest.mark.parametrize("size", [(67, 45), pytest.param((80, 48), marks=pytest.mark.slow),
                                  pytest.param((33, 17), marks=pytest.mark.slow)], ids=["67x45", "80x48", "33x17"])
@pytest.mark.parametrize("batch", [1, 2])
def test_every_architecture_takes_odd_sizes_and_any_batch_in_train_and_eval(any_arch, size, batch) -> None:
    """The model contract for all of ARCHITECTURES: (B, 3, H, W) -> finite (B, K, H, W) logits for sides that are
    no multiple of the stride (PAN needed 128 px before its minimum size was padded), batch 1 included in training
    (BatchNorm after image-level pooling: DeepLabV3, DeepLabV3Plus, UPerNet, PAN)."""
    arch, model = any_arch
    x = torch.rand(batch, 3, *size)
    model.train()
    logits = model(x)
    assert logits.shape == (batch, 5, *size), arch
    F.cross_entropy(logits, torch.randint(0, 5, (batch, *size))).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), arch
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (batch, 5, *size) and torch.isfinite(out).all(), arch
