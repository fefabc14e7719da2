"""Noise schedule for training the slow latent diffusion policy, and DDIM sampling for running it.

Epsilon prediction throughout. Training uses the DDPM forward process over ``num_train_timesteps`` (100) steps with
the iDDPM cosine schedule (Nichol & Dhariwal 2021), ``alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2)`` and
``beta_t = min(1 - alpha_bar((t + 1) / N) / alpha_bar(t / N), 0.999)`` -- diffusers calls it "squaredcos_cap_v2".
Inference uses deterministic DDIM (Song et al. 2021, eta = 0) over a few (8) "leading"-spaced timesteps.

Glossary: ``N`` training timesteps, ``K`` inference steps, ``abar[t]`` = prod_{s <= t} (1 - beta_s).
The numbers match diffusers' DDPMScheduler / DDIMScheduler with the same settings (tested to 1e-5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class SchedulerConfig:
    """Diffusion schedule settings (defaults: RDP's LDP, 100 train steps, 8 DDIM steps)."""

    num_train_timesteps: int = 100
    beta_schedule: Literal["squaredcos_cap_v2", "linear"] = "squaredcos_cap_v2"
    beta_start: float = 1e-4  # linear schedule only
    beta_end: float = 2e-2  # linear schedule only
    num_inference_steps: int = 8
    eta: float = 0.0
    clip_sample: bool = False  # latents are not bounded to [-1, 1], so off by default
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True  # the last DDIM step lands on abar = 1 (the clean sample)
    steps_offset: int = 0

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.beta_schedule not in ("squaredcos_cap_v2", "linear"):
            raise ValueError(f"beta_schedule must be 'squaredcos_cap_v2' or 'linear', got {self.beta_schedule!r}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {self.num_inference_steps}"
            )
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """(N,) iDDPM cosine betas, computed in float64."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


class NoiseScheduler:
    """DDPM forward process (``add_noise``) plus DDIM reverse steps (``set_timesteps``, ``ddim_step``).

    Tables are float64 on the CPU; values are cast to the sample's dtype and device where used.
    """

    def __init__(self, cfg: SchedulerConfig | None = None) -> None:
        self.cfg = cfg = cfg or SchedulerConfig()
        N = cfg.num_train_timesteps
        if cfg.beta_schedule == "squaredcos_cap_v2":
            self.betas = cosine_betas(N)
        else:
            self.betas = torch.linspace(cfg.beta_start, cfg.beta_end, N, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # (N,) abar[t]
        self.final_alpha_cumprod = 1.0 if cfg.set_alpha_to_one else float(self.alphas_cumprod[0])
        self.timesteps = torch.empty(0, dtype=torch.long)
        self.set_timesteps(cfg.num_inference_steps)

    @property
    def num_train_timesteps(self) -> int:
        return self.cfg.num_train_timesteps

    # ----------------------------------------------------------------------------------------------- training

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): x0, noise (B, ...), timesteps (B,) int in [0, N) -> sqrt(abar) x0 + sqrt(1 - abar) noise."""
        if noise.shape != x0.shape:
            raise ValueError(f"add_noise: noise shape {tuple(noise.shape)} != sample shape {tuple(x0.shape)}")
        if timesteps.shape != (x0.shape[0],):
            raise ValueError(f"add_noise: timesteps: expected shape ({x0.shape[0]},), got {tuple(timesteps.shape)}")
        if int(timesteps.min()) < 0 or int(timesteps.max()) >= self.num_train_timesteps:
            raise ValueError(f"add_noise: timesteps must lie in [0, {self.num_train_timesteps}), got {timesteps}")
        abar = self.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[timesteps.to(x0.device)]
        abar = abar.reshape(-1, *([1] * (x0.dim() - 1)))  # (B, 1, ..., 1)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) uniform training timesteps in [0, N)."""
        return torch.randint(0, self.num_train_timesteps, (batch,), generator=generator)

    # ----------------------------------------------------------------------------------------------- sampling

    def set_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """Choose K "leading" timesteps, descending: t_k = k * (N // K) + offset, e.g. N=100, K=8 -> 84, 72, ..., 0."""
        N = self.num_train_timesteps
        if not 1 <= num_inference_steps <= N:
            raise ValueError(f"num_inference_steps must be in [1, {N}], got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        step_ratio = N // num_inference_steps
        self.timesteps = torch.arange(num_inference_steps - 1, -1, -1, dtype=torch.long) * step_ratio
        self.timesteps += self.cfg.steps_offset
        return self.timesteps

    def guide_eps(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, target: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
        """Inpainting: the noise estimate whose clean-sample estimate is ``w * target + (1 - w) * x0_hat``.

            x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t);  x0 = w target + (1 - w) x0_hat
            eps'   = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)

        so ``ddim_step(eps', t, x_t)`` continues from the guided estimate (clipping leaves an in-range target as is).
        """
        abar_t = float(self.alphas_cumprod[int(t)])
        x0_hat = (x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)
        x0 = torch.lerp(x0_hat, target, weights)
        return (x_t - math.sqrt(abar_t) * x0) / math.sqrt(1.0 - abar_t)

    def ddim_step(
        self,
        eps: torch.Tensor,
        t: int,
        x_t: torch.Tensor,
        eta: float | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One DDIM step from timestep t to t - N // K: predicted noise eps and x_t (same shape) -> x_{t_prev}.

            x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
            sigma  = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
            x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma * noise

        With eta = 0 (the default) the step is deterministic; with eta > 0, ``noise`` (or fresh N(0, I)) is used.
        """
        if eps.shape != x_t.shape:
            raise ValueError(f"ddim_step: eps shape {tuple(eps.shape)} != sample shape {tuple(x_t.shape)}")
        t = int(t)
        if not 0 <= t < self.num_train_timesteps:
            raise ValueError(f"ddim_step: t must lie in [0, {self.num_train_timesteps}), got {t}")
        eta = self.cfg.eta if eta is None else eta
        t_prev = t - self.num_train_timesteps // self.num_inference_steps
        abar_t = float(self.alphas_cumprod[t])
        abar_prev = float(self.alphas_cumprod[t_prev]) if t_prev >= 0 else self.final_alpha_cumprod

        x0_hat = (x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)
        if self.cfg.clip_sample:
            r = self.cfg.clip_sample_range
            x0_hat = x0_hat.clamp(-r, r)
        variance = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
        sigma = eta * math.sqrt(variance)
        x_prev = math.sqrt(abar_prev) * x0_hat + math.sqrt(1.0 - abar_prev - sigma**2) * eps
        if sigma > 0:
            if noise is None:
                noise = torch.randn_like(x_t)
            x_prev = x_prev + sigma * noise
        return x_prev
