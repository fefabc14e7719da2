"""Perception backbones: (B, C, H, W) images (or (B, C, L) sequences) -> (B, F) features or (B, K) logits."""

from rdp.encoders.resnet import ResNetEncoder
from rdp.encoders.terminator import Terminator

__all__ = ["ResNetEncoder", "Terminator"]
