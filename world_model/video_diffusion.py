"""Action-conditioned masked video diffusion over autoencoder latents: the slow-learning world model.

A window of T latent frames, the first ``Tc`` given clean (context), the other ``Tg = T - Tc`` generated, each frame
conditioned on the action that led into it. Training noises only the generated frames and takes the loss only on
them (masked conditional video diffusion); sampling holds the context clean and runs DDIM on the rest, so a long
video is generated chunk by chunk, each chunk's last ``Tc`` frames the next one's context.

Glossary and shapes: ``B`` batch, ``T`` window frames, ``C`` latent channels, ``h, w`` latent size, ``Da`` action
width. Latents (B, T, C, h, w); actions (B, T, Da) (``actions[:, t]`` moved frame t-1 to frame t); per-frame
timesteps (B, T) int (0 for context frames, which also carry a learned "clean" flag).

The network factorises space and time: per-frame residual conv blocks with FiLM from the frame's condition, then
self-attention across the window's frames at every latent pixel. The temporal attention projections (``q, k, v,
out``) are where TEMP-LoRA attaches (``world_model.temp_lora``).

``motion=warp`` hands every frame of the window, as extra input channels, the last clean context frame warped by
the camera's displacement since it (``world_model.motion``: a learned map from actions to image shifts, started
from an estimate on the training videos) and where that warp left the frame: content then moves with the camera,
and the network fills in what came into view. With ``prediction=sample`` as well the network predicts the clean
frames as a correction added to that moved frame (inside the view), so an untrained model already copies what stays
in view, and training teaches it the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rdp.schedulers import NoiseScheduler, SchedulerConfig
from world_model.motion import warp


@dataclass(frozen=True)
class VideoDiffusionConfig:
    """Sizes of the world model (the defaults make about 1 M parameters)."""

    latent_channels: int = 4
    latent_size: int = 8
    action_dim: int = 7
    context_frames: int = 4  # Tc
    chunk_frames: int = 4  # Tg, generated per chunk
    width: int = 96
    depth: int = 3  # (conv block, temporal attention) pairs
    heads: int = 4
    attention: str = "time"  # time: across frames at each latent pixel; spacetime: across every frame and pixel
    motion: str = "none"  # none | warp: the last context frame moved with the camera, as input (world_model.motion)
    prediction: str = "epsilon"  # epsilon: the noise | sample: the clean frames (with warp: a correction of the warp)
    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(num_train_timesteps=100,
                                                                                num_inference_steps=10))

    def __post_init__(self) -> None:
        if self.context_frames < 1 or self.chunk_frames < 1:
            raise ValueError(f"context_frames and chunk_frames must be >= 1, got {self.context_frames}, "
                             f"{self.chunk_frames}")
        if self.attention not in ("time", "spacetime"):
            raise ValueError(f"attention must be 'time' or 'spacetime', got {self.attention!r}")
        if self.motion not in ("none", "warp"):
            raise ValueError(f"motion must be 'none' or 'warp', got {self.motion!r}")
        if self.prediction not in ("epsilon", "sample"):
            raise ValueError(f"prediction must be 'epsilon' or 'sample', got {self.prediction!r}")
        if self.width % self.heads or self.width % 8:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads} and by 8")

    @property
    def window(self) -> int:
        return self.context_frames + self.chunk_frames


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(...,) int timesteps -> (..., dim) sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs
    return torch.cat([args.sin(), args.cos()], dim=-1)


class FiLMResBlock(nn.Module):
    """Per-frame residual conv block; the frame's condition (N, E) scales and shifts the middle activation."""

    def __init__(self, ch: int, cond_dim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * ch)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (N, ch, h, w), cond (N, E) -> (N, ch, h, w)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class TemporalAttention(nn.Module):
    """Self-attention across the T frames, at each latent pixel (``spacetime=False``) or over every frame and pixel
    of the window at once (``spacetime=True``: content can move between pixels, as a moving camera needs); ``q, k,
    v, out`` are plain Linears (the LoRA targets)."""

    def __init__(self, ch: int, heads: int, max_frames: int, pixels: int, spacetime: bool = False) -> None:
        super().__init__()
        self.heads, self.spacetime = heads, spacetime
        self.norm = nn.LayerNorm(ch)
        self.pos = nn.Parameter(torch.zeros(max_frames, ch))
        self.pixel_pos = nn.Parameter(torch.zeros(pixels, ch)) if spacetime else None
        self.q, self.k, self.v, self.out = (nn.Linear(ch, ch) for _ in range(4))
        nn.init.normal_(self.pos, std=0.02)
        if self.pixel_pos is not None:
            nn.init.normal_(self.pixel_pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, ch, h, w) -> same shape."""
        B, T, C, h, w = x.shape
        tokens = x.permute(0, 1, 3, 4, 2).reshape(B, T, h * w, C) + self.pos[:T, None]  # (B, T, hw, C)
        if self.pixel_pos is not None:
            tokens = (tokens + self.pixel_pos).reshape(B, T * h * w, C)  # one sequence per sample
        else:
            tokens = tokens.transpose(1, 2).reshape(B * h * w, T, C)  # one sequence per pixel
        y = self.norm(tokens)
        N, L = y.shape[:2]

        def split(z: torch.Tensor) -> torch.Tensor:  # (N, L, C) -> (N, heads, L, C / heads)
            return z.reshape(N, L, self.heads, C // self.heads).transpose(1, 2)

        att = F.scaled_dot_product_attention(split(self.q(y)), split(self.k(y)), split(self.v(y)))
        y = self.out(att.transpose(1, 2).reshape(N, L, C))
        if self.pixel_pos is not None:
            y = y.reshape(B, T, h, w, C)
        else:
            y = y.reshape(B, h, w, T, C).permute(0, 3, 1, 2, 4)
        return x + y.permute(0, 1, 4, 2, 3)


class VideoDenoiser(nn.Module):
    """eps (or, with ``prediction=sample``, clean-frame) prediction for a window of latent frames: (B, T, C, h, w),
    timesteps (B, T), actions (B, T, Da)."""

    def __init__(self, cfg: VideoDiffusionConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or VideoDiffusionConfig()
        W, E = cfg.width, cfg.width
        self.time_mlp = nn.Sequential(nn.Linear(E, E), nn.SiLU(), nn.Linear(E, E))
        self.action_mlp = nn.Sequential(nn.Linear(cfg.action_dim, E), nn.SiLU(), nn.Linear(E, E))
        self.clean = nn.Embedding(2, E)  # 1 = a context frame, given clean
        warp = cfg.motion == "warp"
        self.conv_in = nn.Conv2d(cfg.latent_channels * (2 if warp else 1) + int(warp), W, 3, padding=1)
        self.motion = nn.Linear(cfg.action_dim, 2, bias=False) if warp else None  # action -> image shift
        if self.motion is not None:
            nn.init.zeros_(self.motion.weight)  # world_model.train sets it from world_model.motion.estimate_motion
        self.blocks = nn.ModuleList(FiLMResBlock(W, E) for _ in range(cfg.depth))
        self.temporal = nn.ModuleList(TemporalAttention(W, cfg.heads, cfg.window, cfg.latent_size**2,
                                                        cfg.attention == "spacetime") for _ in range(cfg.depth))
        self.norm_out, self.conv_out = nn.GroupNorm(8, W), nn.Conv2d(W, cfg.latent_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                actions: torch.Tensor) -> torch.Tensor:
        """latents (B, T, C, h, w), timesteps (B, T) int, context (B, T) bool, actions (B, T, Da)
        -> eps (B, T, C, h, w)."""
        cfg = self.cfg
        B, T = latents.shape[:2]
        expected = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        if tuple(latents.shape[2:]) != expected or T > cfg.window:
            raise ValueError(f"latents must be (B, T <= {cfg.window}, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(latents.shape)}")
        if actions.shape != (B, T, cfg.action_dim):
            raise ValueError(f"actions must be ({B}, {T}, {cfg.action_dim}), got {tuple(actions.shape)}")
        cond = (self.time_mlp(timestep_embedding(timesteps, cfg.width)) + self.action_mlp(actions)
                + self.clean(context.long()))  # (B, T, E)
        cond = cond.reshape(B * T, -1)
        frames = latents.reshape(B * T, *expected)
        prior = None
        if self.motion is not None:
            moved, inside = self.warped(latents, context, actions)
            frames = torch.cat([frames, moved, inside], dim=1)
            if cfg.prediction == "sample":  # the clean frame is predicted as a correction of the moved one
                prior = moved * inside
        x = self.conv_in(frames)
        for block, temporal in zip(self.blocks, self.temporal, strict=True):
            x = block(x, cond)
            x = temporal(x.reshape(B, T, *x.shape[1:])).reshape(B * T, *x.shape[1:])
        out = self.conv_out(F.silu(self.norm_out(x)))
        return (out if prior is None else out + prior).reshape(B, T, *expected)


    def warped(self, latents: torch.Tensor, context: torch.Tensor,
               actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last context frame moved to every frame of the window: ((B*T, C, h, w) latents, (B*T, 1, h, w) the
        share inside it). ``context`` must mark the same first frames of every sample (as masked_loss and generate
        do); with none, both are zero."""
        assert self.motion is not None
        B, T, C, h, w = latents.shape
        n = int(context[0].sum())
        if not bool((context == (torch.arange(T) < n)[None]).all()):
            raise ValueError("motion=warp needs the same leading context frames in every sample")
        if n == 0:
            return latents.new_zeros((B * T, C, h, w)), latents.new_zeros((B * T, 1, h, w))
        travelled = actions.cumsum(dim=1)
        shift = self.motion(travelled - travelled[:, n - 1:n])  # (B, T, 2): displacement since frame n - 1
        anchor = latents[:, n - 1, None].expand(B, T, C, h, w).reshape(B * T, C, h, w)
        return warp(anchor, shift.reshape(B * T, 2))


class VideoDiffusion(nn.Module):
    """The denoiser with its noise schedule: the masked training loss and chunk generation."""

    def __init__(self, cfg: VideoDiffusionConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or VideoDiffusionConfig()
        self.denoiser = VideoDenoiser(cfg)
        self.scheduler = NoiseScheduler(cfg.scheduler)

    def masked_loss(self, latents: torch.Tensor, actions: torch.Tensor, n_context: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise frames ``n_context:`` at one random timestep per sample, keep the first ``n_context`` clean, and
        return the MSE of the prediction (eps, or the clean frames) over the noised frames only. latents (B, T, C, h,
        w), actions (B, T, Da)."""
        B, T = latents.shape[:2]
        if not 0 <= n_context < T:
            raise ValueError(f"n_context must be in [0, {T}), got {n_context}")
        t = self.scheduler.sample_timesteps(B, generator).to(latents.device)
        target = latents[:, n_context:]
        noise = torch.randn(target.shape, generator=generator, device=latents.device)
        noised = self.scheduler.add_noise(target, noise, t)
        inputs = torch.cat([latents[:, :n_context], noised], dim=1)
        timesteps = torch.cat([torch.zeros(B, n_context, dtype=torch.long), t[:, None].expand(B, T - n_context)], 1)
        context = torch.arange(T)[None, :].expand(B, T) < n_context
        pred = self.denoiser(inputs, timesteps, context, actions)[:, n_context:]
        return F.mse_loss(pred, target if self.cfg.prediction == "sample" else noise)

    @torch.no_grad()
    def generate(self, context: torch.Tensor, actions: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """One chunk: clean context latents (B, Tc, C, h, w) and actions (B, Tc + Tg, Da) for the whole window ->
        the Tg new latent frames (B, Tg, C, h, w), by DDIM with the context held clean."""
        B, Tc = context.shape[:2]
        Tg = actions.shape[1] - Tc
        if Tg < 1:
            raise ValueError(f"actions must cover the context ({Tc}) and at least one new frame, got "
                             f"{actions.shape[1]}")
        x = torch.randn((B, Tg, *context.shape[2:]), generator=generator)
        is_context = torch.arange(Tc + Tg)[None, :].expand(B, -1) < Tc
        for t in self.scheduler.timesteps:
            steps = torch.cat([torch.zeros(B, Tc, dtype=torch.long), torch.full((B, Tg), int(t))], dim=1)
            pred = self.denoiser(torch.cat([context, x], dim=1), steps, is_context, actions)[:, Tc:]
            if self.cfg.prediction == "sample":  # the noise that clean-frame estimate implies, for the DDIM step
                abar = float(self.scheduler.alphas_cumprod[int(t)])
                pred = (x - math.sqrt(abar) * pred) / math.sqrt(1.0 - abar)
            x = self.scheduler.ddim_step(pred, int(t), x)
        return x
