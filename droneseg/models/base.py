"""The one base class of every segmentation network: it owns input normalisation, padding and cropping.

Contract
--------
* Input: float32 (B, C, H, W), C = ``in_channels`` (3 for RGB), values in [0, 1] (pixels / 255), any H, W >= 1.
* Output: float32 logits (B, K, H, W), pixel (i, j) of the output belongs to pixel (i, j) of the input.
* The model owns its normalisation: buffers ``mean`` and ``std`` of shape (1, C, 1, 1), saved in the state dict,
  so that training, prediction and ONNX export all feed plain ``pixels / 255``.
* ``size_divisor``: the network proper needs H and W divisible by it; ``forward`` zero-pads the normalised image
  at the bottom and right (zero = the mean colour, the same value the first conv pads its borders with) and crops
  the logits back. ``min_size``: some networks also need each side at least this long (PAN's pyramid pools its
  1/16 map three times: 128 px); smaller inputs are padded up to it the same way.
* Any batch size trains, 1 included: a BatchNorm that sees one value per channel (an image-level pooling branch
  such as DeepLabV3's ASPP pooling with batch 1) normalises it with its running statistics instead of failing
  (:class:`AnySizeBatchNorm2d`).

>>> model = SmpModel(torch.nn.Conv2d(3, 2, 1), num_classes=2, size_divisor=32)
>>> model(torch.rand(1, 3, 45, 67)).shape
torch.Size([1, 2, 45, 67])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def default_stats(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for RGB; for other channel counts the RGB average repeated, as smp does for its stems."""
    if in_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    return (mean,) * in_channels, (std,) * in_channels


class SegmentationModel(nn.Module):
    """Normalise -> pad to ``size_divisor`` -> ``forward_padded`` -> crop; subclasses implement ``forward_padded``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        size_divisor: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        min_size: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        default_mean, default_std = default_stats(in_channels)
        mean = tuple(default_mean if mean is None else mean)
        std = tuple(default_std if std is None else std)
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean {mean} and std {std} need {in_channels} values each (one per input channel)")
        if min(std) <= 0:
            raise ValueError(f"std {std} must be positive")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.size_divisor = size_divisor
        self.min_size = -(-max(1, min_size) // size_divisor) * size_divisor  # a multiple of the divisor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward_padded(self, x: Tensor) -> Tensor:
        """(B, C, h, w) normalised, h and w multiples of ``size_divisor`` -> (B, K, h, w) logits."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_padded")

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, K, H, W) logits, aligned with the input for any H, W."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        x = (x - self.mean) / self.std
        pad_w, pad_h = -width % self.size_divisor, -height % self.size_divisor
        if self.min_size > self.size_divisor:  # only where needed: keeps the exported graph of the others plain
            pad_w, pad_h = max(pad_w, self.min_size - width), max(pad_h, self.min_size - height)
        x = F.pad(x, (0, pad_w, 0, pad_h))  # (B, C, h, w)
        return self.forward_padded(x)[..., :height, :width]


class AnySizeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises an input with one value per channel (batch 1 through a global
    pooling branch: its batch variance is undefined) with the running statistics, and leaves them unchanged;
    otherwise exactly BatchNorm2d. Same parameters and state dict."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.numel() // max(1, x.shape[1]) == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def any_size_batch_norm(module: nn.Module) -> nn.Module:
    """Every ``nn.BatchNorm2d`` in ``module`` becomes an :class:`AnySizeBatchNorm2d` in place (state unchanged)."""
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = AnySizeBatchNorm2d
    return module


class SmpModel(SegmentationModel):
    """Adapter for a segmentation-models-pytorch network (or any net that keeps H, W divisible by the divisor)."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        size_divisor: int,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        min_size: int = 1,
    ) -> None:
        super().__init__(num_classes, in_channels, size_divisor, mean, std, min_size)
        self.net = any_size_batch_norm(net)

    @property
    def encoder(self) -> nn.Module:
        """The smp encoder, the target of pretrained encoder weights."""
        return self.net.encoder

    def forward_padded(self, x: Tensor) -> Tensor:
        return self.net(x)
