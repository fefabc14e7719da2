"""1-D temporal UNet with FiLM conditioning: the denoiser of the slow diffusion policy.

Written from the ideas of Chi et al. 2023, "Diffusion Policy: Visuomotor Policy Learning via Action Diffusion"
(the CNN variant); not a port of the public code.

Glossary: ``B`` batch, ``T`` sequence length (8 latent steps or a 32-step action chunk), ``D`` per-step dim of the
noisy sample (``input_dim``), ``G`` global conditioning dim (flattened observation features), ``E`` diffusion-step
embedding dim, ``Ci`` channels at level i (``down_dims``).

The network convolves over time only; D is the channel axis. Every residual block is FiLM-conditioned on
``[embed(k), global_cond]`` (a per-channel scale and bias after its first conv), so the observation steers every
resolution, not just the input. Each level but the last halves T (stride-2 conv); the up path mirrors it with
transposed convs and concatenates the skip from the same resolution::

    x (B, T, D) -> (B, D, T)
    down  level i:  ResBlock(C_{i-1} -> Ci), ResBlock(Ci -> Ci), skip_i saved, T -> T / 2 (not on the last level)
    mid:            ResBlock(C_last), ResBlock(C_last)
    up    level i:  T -> 2 T, concat skip_i, ResBlock(C_{i+1} + Ci -> Ci), ResBlock(Ci)   (i = last - 1, ..., 0)
    head:           Conv1dBlock(C0), 1x1 conv -> (B, D, T) -> (B, T, D)

Lengths that are not a multiple of 2 ** (levels - 1) are zero-padded at the end and cropped again, so any T >= 1
works (the padded steps then take part in GroupNorm's statistics; T in {8, 16, 32} needs no padding with the
default three levels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """(B,) diffusion steps -> (B, E) [sin(k w_j), cos(k w_j)] with w_j = 10000 ** (-j / (E / 2 - 1))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"diffusion step embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        self.register_buffer("freqs", freqs, persistent=False)  # (E / 2,), a function of dim only

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        angles = steps.to(self.freqs.dtype)[:, None] * self.freqs[None, :]  # (B, E / 2)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(n_groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(self.norm(self.conv(x)))


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM in between: x (B, C_in, T), cond (B, Dcond) -> (B, C_out, T).

    FiLM: cond -> Mish -> Linear -> (scale, bias), each (B, C_out, 1); h = scale * h + bias.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        self.block2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        self.film = nn.Linear(cond_dim, 2 * out_channels)
        self.residual: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.residual = nn.Conv1d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)  # (B, C_out, T)
        scale, bias = self.film(F.mish(cond)).unsqueeze(-1).chunk(2, dim=1)  # (B, C_out, 1) each
        h = self.block2(h * scale + bias)
        return h + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Noise predictor eps(x_k, k, obs): sample (B, T, D), steps (B,) or scalar, global_cond (B, G) -> (B, T, D)."""

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        down_dims: tuple[int, ...] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
        diffusion_step_embed_dim: int = 64,
    ) -> None:
        super().__init__()
        down_dims = tuple(down_dims)
        if input_dim < 1 or global_cond_dim < 0 or not down_dims:
            raise ValueError(
                f"ConditionalUnet1D needs input_dim >= 1, global_cond_dim >= 0 and at least one level, got "
                f"input_dim={input_dim}, global_cond_dim={global_cond_dim}, down_dims={down_dims}"
            )
        bad = [c for c in down_dims if c < 1 or c % n_groups]
        if bad:
            raise ValueError(f"down_dims must be positive multiples of n_groups={n_groups}, got {down_dims}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-length convs), got {kernel_size}")
        self.input_dim, self.global_cond_dim = input_dim, global_cond_dim
        self.num_downsamples = len(down_dims) - 1  # T is divided by 2 ** num_downsamples at the bottom

        E = diffusion_step_embed_dim
        self.step_encoder = nn.Sequential(
            SinusoidalEmbedding(E), nn.Linear(E, 4 * E), nn.Mish(), nn.Linear(4 * E, E)
        )  # (B,) -> (B, E)
        cond_dim = E + global_cond_dim

        def res(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(c_in, c_out, cond_dim, kernel_size, n_groups)

        channels = (input_dim, *down_dims)  # (D, C0, C1, ..., C_last)
        self.down = nn.ModuleList()
        for i in range(len(down_dims)):
            last = i == len(down_dims) - 1
            resample = nn.Identity() if last else nn.Conv1d(channels[i + 1], channels[i + 1], 3, stride=2, padding=1)
            blocks = [res(channels[i], channels[i + 1]), res(channels[i + 1], channels[i + 1]), resample]
            self.down.append(nn.ModuleList(blocks))
        self.mid = nn.ModuleList([res(down_dims[-1], down_dims[-1]), res(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for i in reversed(range(len(down_dims) - 1)):  # (C_{i+1}, T / 2^{i+1}) -> (Ci, T / 2^i)
            c_below, c = down_dims[i + 1], down_dims[i]
            upsample = nn.ConvTranspose1d(c_below, c_below, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([upsample, res(c_below + c, c), res(c, c)]))
        self.head = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups), nn.Conv1d(down_dims[0], input_dim, 1)
        )

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, global_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """sample (B, T, D), timestep int / 0-d / (B,), global_cond (B, G) (None iff G = 0) -> (B, T, D)."""
        if sample.dim() != 3 or sample.shape[2] != self.input_dim:
            raise ValueError(f"sample: expected shape (B, T, {self.input_dim}), got {tuple(sample.shape)}")
        B, T, _ = sample.shape
        steps = torch.as_tensor(timestep, device=sample.device)
        steps = steps.expand(B) if steps.dim() == 0 else steps
        if steps.shape != (B,):
            raise ValueError(f"timestep: expected a scalar or shape ({B},), got {tuple(steps.shape)}")
        cond = self.step_encoder(steps)  # (B, E)
        if self.global_cond_dim:
            if global_cond is None or global_cond.shape != (B, self.global_cond_dim):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(f"global_cond: expected shape ({B}, {self.global_cond_dim}), got {got}")
            cond = torch.cat([cond, global_cond], dim=-1)  # (B, E + G)
        elif global_cond is not None and global_cond.numel():
            raise ValueError(f"global_cond: this UNet has global_cond_dim=0, got shape {tuple(global_cond.shape)}")

        x = sample.transpose(1, 2)  # (B, D, T)
        multiple = 2**self.num_downsamples
        padded_T = -(-T // multiple) * multiple
        if padded_T != T:
            x = F.pad(x, (0, padded_T - T))

        skips = []
        for block1, block2, downsample in self.down:
            x = block2(block1(x, cond), cond)
            skips.append(x)  # (B, Ci, T / 2^i)
            x = downsample(x)
        for block in self.mid:
            x = block(x, cond)
        skips.pop()  # the deepest level feeds the mid blocks directly
        for upsample, block1, block2 in self.up:
            x = torch.cat([upsample(x), skips.pop()], dim=1)  # (B, C_{i+1} + Ci, T / 2^i)
            x = block2(block1(x, cond), cond)
        x = self.head(x)  # (B, D, padded_T)
        return x[:, :, :T].transpose(1, 2)
