"""A small convolutional frame autoencoder: the latent space the video world model diffuses in.

Frames (B, 3, H, W) in [0, 1] -> latents (B, C, H/4, W/4) -> frames. Deterministic (no KL term): the video model
only needs a compact, smooth-enough space, and a plain autoencoder trained with an L1 + L2 reconstruction loss gives
sharper reconstructions at this size than a VAE with the same width. ``latent_scale`` (a buffer saved with the
weights) rescales latents to unit standard deviation over the training frames, so the diffusion noise schedule sees
the variance it assumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AutoencoderConfig:
    """Sizes: ``image_size`` must be divisible by 4 (two stride-2 stages)."""

    image_size: int = 32
    latent_channels: int = 4
    width: int = 32

    def __post_init__(self) -> None:
        if self.image_size % 4 or self.image_size < 8:
            raise ValueError(f"image_size must be a multiple of 4 and >= 8, got {self.image_size}")
        if self.latent_channels < 1 or self.width < 8:
            raise ValueError(f"latent_channels >= 1 and width >= 8 required, got {self.latent_channels}, {self.width}")

    @property
    def latent_size(self) -> int:
        return self.image_size // 4


class _Res(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FrameAutoencoder(nn.Module):
    """(B, 3, H, W) float in [0, 1] <-> (B, C, H/4, W/4) latents (unit scale after ``fit_scale``)."""

    def __init__(self, cfg: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or AutoencoderConfig()
        w = cfg.width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), _Res(w),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), _Res(2 * w),
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), _Res(2 * w),
            nn.GroupNorm(8, 2 * w), nn.SiLU(), nn.Conv2d(2 * w, cfg.latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, 2 * w, 3, padding=1), _Res(2 * w),
            nn.ConvTranspose2d(2 * w, 2 * w, 4, stride=2, padding=1), _Res(2 * w),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), _Res(w),
            nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, 3, 3, padding=1),
        )
        self.register_buffer("latent_scale", torch.ones(()))

    def _check(self, frames: torch.Tensor) -> None:
        s = self.cfg.image_size
        if frames.dim() != 4 or tuple(frames.shape[1:]) != (3, s, s):
            raise ValueError(f"frames must be (B, 3, {s}, {s}) in [0, 1], got {tuple(frames.shape)}")

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C, H/4, W/4), divided by ``latent_scale``."""
        self._check(frames)
        return self.encoder(frames * 2.0 - 1.0) / self.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, H, W) in [0, 1] (clamped)."""
        return ((self.decoder(latents * self.latent_scale) + 1.0) / 2.0).clamp(0.0, 1.0)

    def reconstruction_loss(self, frames: torch.Tensor) -> torch.Tensor:
        """L1 + L2 between frames and their reconstruction, on the [-1, 1] scale (before clamping)."""
        self._check(frames)
        target = frames * 2.0 - 1.0
        out = self.decoder(self.encoder(target))
        return (out - target).abs().mean() + (out - target).pow(2).mean()

    @torch.no_grad()
    def fit_scale(self, frames: torch.Tensor) -> float:
        """Set ``latent_scale`` to the latents' standard deviation over ``frames`` (B, 3, H, W); returns it."""
        self._check(frames)
        std = float(self.encoder(frames * 2.0 - 1.0).std())
        self.latent_scale.fill_(max(std, 1e-6))
        return float(self.latent_scale)
