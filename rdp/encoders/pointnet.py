"""DP3-style point-cloud encoder: a shared per-point MLP with LayerNorm, a max over the points, a linear projection.

Written from the encoder design of Ze et al. 2024, "3D Diffusion Policy" (arXiv 2403.03954); not a port of its code.
The cloud is the ``scene_points`` observation (``sensors.pointcloud``: cropped, voxelised, a fixed count).

Shapes: ``B`` batch, ``N`` points, ``C_in`` values per point (3: xyz; 6: xyz + rgb), ``H`` the widths of the MLP.

    (B, N, C_in) --per-point MLP, (Linear, LayerNorm, ReLU) per width--> (B, N, H[-1])
                 --max over N--> (B, H[-1]) --Linear, LayerNorm--> (B, feature_dim) [--head--> (B, num_classes)]

The max makes the output independent of the points' order, and of repeated points (how a cloud with too few points
is padded); LayerNorm acts on each point alone, so a sample's features never depend on the rest of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PointNetEncoder(nn.Module):
    """(B, N, C_in) points -> (B, feature_dim) features, or (B, num_classes) logits with a head."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int | None = None,
        hidden: Sequence[int] = (64, 128, 256),
        feature_dim: int = 64,
    ) -> None:
        super().__init__()
        if in_channels < 1 or feature_dim < 1 or not hidden or min(hidden) < 1:
            raise ValueError(
                f"PointNetEncoder needs in_channels, feature_dim >= 1 and at least one hidden width >= 1, got "
                f"in_channels={in_channels}, feature_dim={feature_dim}, hidden={list(hidden)}"
            )
        self.in_channels, self.feature_dim = in_channels, feature_dim
        layers: list[nn.Module] = []
        width = in_channels
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU()]
            width = h
        self.point_mlp = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Linear(width, feature_dim), nn.LayerNorm(feature_dim))
        self.head = nn.Linear(feature_dim, num_classes) if num_classes is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C_in) -> (B, num_classes) logits, or (B, feature_dim) features if num_classes is None."""
        if x.ndim != 3 or x.shape[-1] != self.in_channels or x.shape[1] < 1:
            raise ValueError(
                f"PointNetEncoder expects points (B, N, {self.in_channels}) with N >= 1, got shape {tuple(x.shape)}"
            )
        per_point = self.point_mlp(x)  # (B, N, H[-1])
        pooled = per_point.max(dim=1).values  # (B, H[-1])
        features = self.project(pooled)  # (B, feature_dim)
        return features if self.head is None else self.head(features)
