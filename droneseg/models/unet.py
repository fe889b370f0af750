"""The classic U-Net (Ronneberger et al., 2015) with padded convolutions, so its output aligns with its input.

Shapes for ``channels = [c0, …, cn]`` (depth n = len(channels) - 1, ``size_divisor`` = 2**n):

* ``UNetEncoder``: (B, C, H, W) -> features [(B, c0, H, W), (B, c1, H/2, W/2), …, (B, cn, H/2**n, W/2**n)];
  each level is two (3x3 conv, padding 1 -> BatchNorm -> ReLU), levels joined by 2x2 max-pooling.
* ``UNetDecoder``: features -> (B, c0, H, W); per level a 2x2 stride-2 transposed conv from c(i+1) to ci
  channels, concatenation [skip, upsampled] (2·ci channels), then two conv-BN-ReLU back to ci channels.
* ``SegmentationHead``: 1x1 conv, (B, c0, H, W) -> (B, K, H, W) logits.

``UNet`` wires them under :class:`SegmentationModel`, which pads any H, W to a multiple of 2**n and crops back.
Default channels [16, 32, 64] are the original student project's (≈ 0.12 M parameters); the paper's
[64, 128, 256, 512, 1024] gives ≈ 31 M.

>>> model = UNet(num_classes=5, channels=[8, 16, 32])
>>> model(torch.rand(1, 3, 45, 67)).shape
torch.Size([1, 5, 45, 67])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from droneseg.errors import DataError
from droneseg.models.base import SegmentationModel


class ConvBlock(nn.Sequential):
    """Two (3x3 conv padding 1 -> BatchNorm -> ReLU): keeps H, W; the conv has no bias since BatchNorm adds one."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNetEncoder(nn.Module):
    """Contracting path: (B, C, H, W) -> one feature map per level, finest first."""

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        self.levels = nn.ModuleList(ConvBlock(widths[i], widths[i + 1]) for i in range(len(channels)))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [self.levels[0](x)]
        for level in self.levels[1:]:
            features.append(level(self.pool(features[-1])))  # (B, ci, H/2**i, W/2**i)
        return features


class UNetDecoder(nn.Module):
    """Expanding path: features (finest first) -> (B, channels[0], H, W)."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        # index i joins level i+1 into level i; run deepest first
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in range(len(channels) - 1)
        )
        self.blocks = nn.ModuleList(ConvBlock(2 * channels[i], channels[i]) for i in range(len(channels) - 1))

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        for i in reversed(range(len(self.ups))):
            x = self.blocks[i](torch.cat([features[i], self.ups[i](x)], dim=1))  # (B, ci, H/2**i, W/2**i)
        return x


class SegmentationHead(nn.Conv2d):
    """1x1 conv from decoder features to K class logits."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes, kernel_size=1)


class UNet(SegmentationModel):
    """Classic U-Net: encoder -> decoder -> head, for any input size (padded to 2**depth inside)."""

    def __init__(
        self,
        num_classes: int,
        channels: Sequence[int] = (16, 32, 64),
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if not channels or min(channels) < 1:
            raise DataError(f"channels must be a non-empty list of positive widths, got {list(channels)}")
        super().__init__(num_classes, in_channels, 2 ** (len(channels) - 1), mean, std)
        self.channels = list(channels)
        self.encoder = UNetEncoder(in_channels, channels)
        self.decoder = UNetDecoder(channels)
        self.head = SegmentationHead(channels[0], num_classes)

    def forward_padded(self, x: Tensor) -> Tensor:
        return self.head(self.decoder(self.encoder(x)))
