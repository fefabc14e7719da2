"""Perception backbones: (B, C, H, W) images (or (B, C, L) sequences, or (B, N, C) point clouds) -> (B, F) features
or (B, K) logits."""

from rdp.encoders.pointnet import PointNetEncoder
from rdp.encoders.resnet import ResNetEncoder, training_layout
from rdp.encoders.terminator import Terminator

__all__ = ["PointNetEncoder", "ResNetEncoder", "Terminator", "training_layout"]
