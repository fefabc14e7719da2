"""Small ResNet with GroupNorm: the default image encoder and the CNN baseline for the Terminator benchmarks.

GroupNorm, not BatchNorm, so a sample's features never depend on the rest of the batch (policies run at
batch 1 and train on correlated batches). Shapes: (B, C_in, H, W) -> (B, num_classes) or (B, feature_dim).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def training_layout(images: torch.Tensor) -> torch.Tensor:
    """Images about to go through the image encoders: a contiguous copy when gradients are on. A channels-last
    (permuted) input through the convolutions' backward with one thread corrupts the heap in torch 2.13's oneDNN on
    some CPUs (AMD EPYC: "double free or corruption"). Inference keeps the input as it is (no backward; outputs
    unchanged bit for bit)."""
    return images.contiguous() if torch.is_grad_enabled() else images


def _group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection: (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _group_norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _group_norm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """ResNet of three stages (width, 2 width, 4 width), the last two at stride 2, then a mean over positions.

    ``stem_stride > 1`` turns the stem into a non-overlapping patchify conv (use 4 for 96x96 camera images);
    with the default 1 it is a 3x3 conv, suited to small inputs such as 8x8 digits.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int | None = None,
        width: int = 32,
        blocks_per_stage: tuple[int, int, int] = (1, 1, 1),
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if width < 1 or stem_stride < 1 or len(blocks_per_stage) != 3 or min(blocks_per_stage) < 1:
            raise ValueError(
                f"ResNetEncoder needs width, stem_stride >= 1 and three stage depths >= 1, got width={width}, "
                f"stem_stride={stem_stride}, blocks_per_stage={blocks_per_stage}"
            )
        self.in_channels = in_channels
        if stem_stride == 1:
            stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        else:
            stem = nn.Conv2d(in_channels, width, stem_stride, stride=stem_stride, bias=False)
        self.stem = nn.Sequential(stem, _group_norm(width), nn.ReLU())
        layers: list[nn.Module] = []
        channels = width
        for stage, num_blocks in enumerate(blocks_per_stage):
            out_channels = width * 2**stage
            for i in range(num_blocks):
                layers.append(BasicBlock(channels, out_channels, stride=2 if stage > 0 and i == 0 else 1))
                channels = out_channels
        self.stages = nn.Sequential(*layers)
        self.feature_dim = channels
        self.head = nn.Linear(channels, num_classes) if num_classes is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, num_classes) logits, or (B, feature_dim) features if num_classes is None."""
        features = self.feature_map(x).mean(dim=(2, 3))  # (B, feature_dim)
        return features if self.head is None else self.head(features)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, feature_dim, H', W') map of the last stage, before the mean over positions."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ResNetEncoder expects input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        return self.stages(self.stem(x))
