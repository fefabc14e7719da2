"""Slow diffusion policy: observations -> a chunk of latents (RDP's LDP) or of actions (vanilla Diffusion Policy).

Written from the ideas of Chi et al. 2023 (Diffusion Policy) and Xue et al. 2025 (Reactive Diffusion Policy); not a
port of either public code. The two methods are one network with a different target, chosen by config:

* ``target="latent"`` -- the asymmetric tokenizer's latent chunk z (B, L, C), decoded by its fast GRU at run time.
* ``target="action"`` -- the action chunk (B, T, Da) itself (the baseline).

Shape contract (glossary: ``B`` batch, ``To`` observation steps, ``Ta`` / ``Da`` target steps / dim, which are
(L, C) or (T, Da), ``Dk`` a low-dim key's dim, ``F`` image feature dim, ``K`` DDIM steps)::

    obs = {lowdim key: (B, To, Dk) raw floats, image key: (B, To, 3, H, W) floats in [0, 1] or uint8}
    predict(obs)                        -> (B, Ta, Da) unnormalised
    compute_loss({"obs": obs, target: (B, Ta, Da)}) -> scalar

Observation encoding (once per ``predict``, not per denoising step): every camera has its own encoder, shared over
the To steps; its (B, To, F) features are concatenated with the normalised low-dim observations and flattened into
the (B, To * (cameras * F + sum Dk)) global condition of the FiLM UNet.

Training is DDPM epsilon prediction on the normalised target with the cosine schedule; inference is K-step
deterministic DDIM (``rdp.schedulers``). Checkpoints (``save`` / ``load`` / ``from_checkpoint``) are
``rdp.checkpoint`` directories: the config as JSON, weights and normaliser statistics as safetensors.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rdp.checkpoint import CheckpointError, config_from_dict, load_checkpoint, load_config, save_checkpoint
from rdp.encoders import ResNetEncoder, Terminator, training_layout
from rdp.normalizer import Normalizer, NormMode
from rdp.schedulers import NoiseScheduler, SchedulerConfig
from rdp.unet1d import ConditionalUnet1D


def rtc_weights(horizon: int, frozen: int, overlap: int) -> torch.Tensor:
    """Inpainting weights (horizon,) for a new chunk whose first ``frozen`` entries execute while it is being
    computed (weight 1: they must equal the previous chunk) and whose first ``overlap`` entries the previous chunk
    still covers (weights decaying exponentially to 0 across ``frozen .. overlap``; 0 after it). The soft mask of
    Black et al. 2025 (real-time chunking): w_i = c_i (e^{c_i} - 1) / (e - 1), c_i = (overlap - i) / (overlap - frozen
    + 1)."""
    if not 0 <= frozen <= overlap <= horizon:
        raise ValueError(f"need 0 <= frozen <= overlap <= horizon, got {frozen}, {overlap}, {horizon}")
    i = torch.arange(horizon, dtype=torch.float32)
    c = (overlap - i) / (overlap - frozen + 1)
    w = c * torch.expm1(c) / math.expm1(1.0)
    w = torch.where(i < frozen, torch.ones_like(w), w)
    return torch.where(i >= overlap, torch.zeros_like(w), w)


# Fields that change what the weights mean without changing their shapes: must match to load into a policy.
_SEMANTIC_FIELDS = ("target", "lowdim_keys", "image_keys", "encoder", "obs_steps")


@dataclass(frozen=True)
class DiffusionPolicyConfig:
    """Sizes and settings of the slow policy. Defaults: RDP's LDP (latent 8 x 16, 2 obs steps, two 96x96 cameras,
    proprio + two tactile pads x 15 PCA dims + 6-D wrench, 100 train / 8 DDIM steps)."""

    target: Literal["latent", "action"] = "latent"
    horizon: int = 32  # T, action steps per chunk
    action_dim: int = 10  # Da
    latent_steps: int = 8  # L
    latent_channels: int = 16  # C
    obs_steps: int = 2  # To
    lowdim_keys: tuple[str, ...] = ("proprio", "tactile", "wrench")
    lowdim_dims: tuple[int, ...] = (10, 30, 6)
    image_keys: tuple[str, ...] = ("cam_front", "cam_wrist")
    image_size: tuple[int, int] = (96, 96)  # (H, W)
    encoder: Literal["resnet", "terminator", "none"] = "resnet"
    encoder_width: int = 32  # ResNet: features 4 * width; Terminator: features = width
    encoder_stem_stride: int = 4  # patchify stem; 4 suits 96x96
    target_norm: NormMode = "minmax"
    lowdim_norm: NormMode = "minmax"
    lowdim_min_range: float = 0.0  # low-dim dims are scaled as if they spanned at least this (rdp.normalizer)
    num_train_timesteps: int = 100
    num_inference_steps: int = 8
    # DDIM clips its x0 estimate to [-r, r]: right for minmax-normalised targets (training data lies in [-1, 1]), and
    # it tames epsilon-prediction's 1 / sqrt(abar_t) blow-up at the noisiest steps. Widen or turn off for meanstd.
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    down_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 64

    def __post_init__(self) -> None:
        if self.target not in ("latent", "action"):
            raise ValueError(f"DiffusionPolicyConfig.target must be 'latent' or 'action', got {self.target!r}")
        if self.encoder not in ("resnet", "terminator", "none"):
            raise ValueError(f"DiffusionPolicyConfig.encoder must be resnet/terminator/none, got {self.encoder!r}")
        for name in ("horizon", "action_dim", "latent_steps", "latent_channels", "obs_steps", "encoder_width",
                     "encoder_stem_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiffusionPolicyConfig.{name} must be >= 1, got {getattr(self, name)}")
        if len(self.lowdim_keys) != len(self.lowdim_dims) or min(self.lowdim_dims, default=1) < 1:
            raise ValueError(
                f"lowdim_keys and lowdim_dims must pair up with dims >= 1, got {self.lowdim_keys} / {self.lowdim_dims}"
            )
        keys = (*self.lowdim_keys, *self.image_keys)
        if len(set(keys)) != len(keys) or self.target in keys:
            raise ValueError(f"observation keys must be unique and differ from the target {self.target!r}, got {keys}")
        if self.image_keys and self.encoder == "none":
            raise ValueError(f"image_keys {self.image_keys} need an image encoder, but encoder='none'")
        if not self.image_keys and not self.lowdim_keys:
            raise ValueError("the policy needs at least one observation key (lowdim_keys or image_keys)")
        SchedulerConfig(num_train_timesteps=self.num_train_timesteps, num_inference_steps=self.num_inference_steps)

    @property
    def target_shape(self) -> tuple[int, int]:
        """(Ta, Da): (L, C) for latents, (T, Da) for actions."""
        if self.target == "latent":
            return (self.latent_steps, self.latent_channels)
        return (self.horizon, self.action_dim)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DiffusionPolicyConfig:
        """Inverse of ``dataclasses.asdict`` after a JSON round trip (lists back to tuples); unknown keys raise."""
        return config_from_dict(cls, d)


class ObservationEncoder(nn.Module):
    """obs dict of (B, To, ...) -> (B, To * (cameras * F + sum Dk)) global condition (normalised low-dim obs)."""

    def __init__(self, cfg: DiffusionPolicyConfig, normalizer: Normalizer) -> None:
        super().__init__()
        self.cfg = cfg
        self.normalizer = [normalizer]  # a list: shared with the policy, not registered twice as a submodule
        self.cameras = nn.ModuleDict({key: _image_encoder(cfg) for key in cfg.image_keys})
        feature_dim = sum(enc.feature_dim for enc in self.cameras.values()) + sum(cfg.lowdim_dims)
        self.output_dim = cfg.obs_steps * feature_dim

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        B = self.check(obs)
        To = self.cfg.obs_steps
        parts = []
        for key, encoder in self.cameras.items():
            images = obs[key]
            images = training_layout(images.float() / 255.0 if images.dtype == torch.uint8 else images)
            features = encoder(images.flatten(0, 1) * 2.0 - 1.0)  # (B * To, 3, H, W) in [-1, 1] -> (B * To, F)
            parts.append(features.reshape(B, To, -1))
        normalizer = self.normalizer[0]
        parts += [normalizer.normalize(key, obs[key]) for key in self.cfg.lowdim_keys]  # (B, To, Dk) each
        return torch.cat(parts, dim=-1).flatten(1)  # (B, To * feature_dim)

    def check(self, obs: Mapping[str, torch.Tensor]) -> int:
        """Validate every key's shape against the config; return B. Errors name key, expected and got."""
        cfg = self.cfg
        expected: dict[str, tuple[int | str, ...]] = {
            key: ("B", cfg.obs_steps, dim) for key, dim in zip(cfg.lowdim_keys, cfg.lowdim_dims, strict=True)
        }
        expected.update({key: ("B", cfg.obs_steps, 3, *cfg.image_size) for key in cfg.image_keys})
        batch: int | None = None
        for key, shape in expected.items():
            if key not in obs:
                raise ValueError(f"obs is missing key {key!r}: expected shape {_fmt(shape)}; got keys {sorted(obs)}")
            got = tuple(obs[key].shape)
            batch = got[0] if batch is None and got else batch
            want = tuple(batch if s == "B" else s for s in shape)
            if got != want:
                raise ValueError(f"obs[{key!r}]: expected shape {_fmt(shape)} = {want}, got {got}")
        assert batch is not None  # the config guarantees at least one key
        return batch


class DiffusionPolicy(nn.Module):
    """Conditional 1-D UNet denoiser + observation encoder + normaliser + DDPM/DDIM schedule, one module."""

    def __init__(self, cfg: DiffusionPolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.target_key = cfg.target
        Ta, Da = cfg.target_shape
        self.normalizer = Normalizer({cfg.target: Da, **dict(zip(cfg.lowdim_keys, cfg.lowdim_dims, strict=True))})
        self.obs_encoder = ObservationEncoder(cfg, self.normalizer)
        self.model = ConditionalUnet1D(
            input_dim=Da,
            global_cond_dim=self.obs_encoder.output_dim,
            down_dims=cfg.down_dims,
            kernel_size=cfg.kernel_size,
            n_groups=cfg.n_groups,
            diffusion_step_embed_dim=cfg.diffusion_step_embed_dim,
        )
        self.noise_scheduler = NoiseScheduler(
            SchedulerConfig(
                num_train_timesteps=cfg.num_train_timesteps,
                beta_schedule="squaredcos_cap_v2",
                num_inference_steps=cfg.num_inference_steps,
                clip_sample=cfg.clip_sample,
                clip_sample_range=cfg.clip_sample_range,
            )
        )

    # ----------------------------------------------------------------------------------------------- data

    def fit_normalizer(self, obs: Mapping[str, Any], target: Any) -> dict[str, list[int]]:
        """Fit the low-dim obs keys (arrays (..., Dk)) and the target ((..., Da)); return constant dims per key."""
        constant = {self.target_key: self.normalizer.fit(self.target_key, target, self.cfg.target_norm)}
        for key in self.cfg.lowdim_keys:
            if key not in obs:
                raise ValueError(f"fit_normalizer: obs is missing low-dim key {key!r}; got keys {sorted(obs)}")
            constant[key] = self.normalizer.fit(key, obs[key], self.cfg.lowdim_norm, self.cfg.lowdim_min_range)
        return constant

    # ----------------------------------------------------------------------------------------------- training

    def compute_loss(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """batch {"obs": obs dict, target key: (B, Ta, Da) raw} -> scalar MSE between true and predicted noise."""
        if "obs" not in batch or self.target_key not in batch:
            raise ValueError(f"batch needs keys 'obs' and {self.target_key!r}, got {sorted(batch)}")
        cond = self.obs_encoder(batch["obs"])  # (B, G)
        target = batch[self.target_key]
        expected = (cond.shape[0], *self.cfg.target_shape)
        if tuple(target.shape) != expected:
            raise ValueError(f"batch[{self.target_key!r}]: expected shape {expected}, got {tuple(target.shape)}")
        x0 = self.normalizer.normalize(self.target_key, target)
        # Drawn on the CPU (where the generator lives) and moved: the same seed gives the same noise on any device.
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        steps = self.noise_scheduler.sample_timesteps(x0.shape[0], generator=generator).to(x0.device)
        x_t = self.noise_scheduler.add_noise(x0, noise, steps)
        loss = F.mse_loss(self.model(x_t, steps, cond), noise)
        for encoder in self.obs_encoder.cameras.values():
            if isinstance(encoder, Terminator) and encoder.use_slow_loss:
                loss = loss + encoder.slow_loss()
        return loss

    # ----------------------------------------------------------------------------------------------- inference

    @torch.inference_mode()
    def predict(
        self,
        obs: Mapping[str, torch.Tensor],
        generator: torch.Generator | None = None,
        num_inference_steps: int | None = None,
        prefix: torch.Tensor | None = None,
        prefix_weights: torch.Tensor | None = None,
        noise_scale: float = 1.0,
    ) -> torch.Tensor:
        """obs dict of (B, To, ...) -> (B, Ta, Da) unnormalised target chunk, by K-step DDIM from N(0, I) noise.

        ``noise_scale`` multiplies the starting noise (a sampling temperature; DDIM here is deterministic given its
        start, so this is the only randomness): 1 samples the learned distribution, 0 gives one deterministic plan.

        The same generator state gives the same chunk. Call ``eval()`` first (the encoders have no batch-dependent
        layers, but Terminator skips its slow loss only in eval).

        Inpainting (the real-time-chunking hand-over): ``prefix`` (B, Ta, Da) unnormalised, what the previous chunk
        will do at the new chunk's steps, and ``prefix_weights`` (Ta,) in [0, 1] (``rtc_weights``). At every DDIM
        step the clean-sample estimate is pulled towards the prefix, ``x0 <- w * prefix + (1 - w) * x0_hat``, and the
        step continues from that estimate (its noise is re-derived from it), so weight-1 entries come out equal to
        the prefix, weight-0 entries are free, and the model fills the rest consistently with both.
        """
        if not (math.isfinite(noise_scale) and noise_scale >= 0):
            raise ValueError(f"noise_scale must be a finite number >= 0, got {noise_scale}")
        cond = self.obs_encoder(obs)  # (B, G), once per chunk
        scheduler = self.noise_scheduler
        scheduler.set_timesteps(num_inference_steps or self.cfg.num_inference_steps)
        x = torch.randn((cond.shape[0], *self.cfg.target_shape), generator=generator, dtype=cond.dtype)
        x = (x * noise_scale).to(cond.device)
        guide = self._guide(prefix, prefix_weights, cond.shape[0], x)
        for t in scheduler.timesteps.tolist():
            eps = self.model(x, t, cond)
            if guide is not None:
                eps = scheduler.guide_eps(eps, t, x, *guide)
            x = scheduler.ddim_step(eps, t, x)
        return self.normalizer.unnormalize(self.target_key, x)

    def _guide(self, prefix: torch.Tensor | None, weights: torch.Tensor | None, batch: int,
               like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Check the inpainting inputs; -> (normalised prefix (B, Ta, Da), weights (1, Ta, 1)) or None."""
        if prefix is None and weights is None:
            return None
        if prefix is None or weights is None:
            raise ValueError("inpainting needs both prefix and prefix_weights")
        expected = (batch, *self.cfg.target_shape)
        if tuple(prefix.shape) != expected or tuple(weights.shape) != (self.cfg.target_shape[0],):
            raise ValueError(f"prefix {tuple(prefix.shape)} / prefix_weights {tuple(weights.shape)}: expected "
                             f"{expected} / ({self.cfg.target_shape[0]},)")
        if not bool(((weights >= 0) & (weights <= 1)).all()):
            raise ValueError(f"prefix_weights must lie in [0, 1], got {weights.tolist()}")
        target = self.normalizer.normalize(self.target_key, prefix.to(like))
        if self.cfg.clip_sample:  # DDIM clips its estimate there anyway
            target = target.clamp(-self.cfg.clip_sample_range, self.cfg.clip_sample_range)
        return target, weights.to(like).reshape(1, -1, 1)

    # ----------------------------------------------------------------------------------------------- checkpoints

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write config.json + model.safetensors (weights and normaliser); the normaliser must be fitted."""
        return save_checkpoint(directory, self, self.cfg, self.normalizer.arrays())

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Load weights and normaliser into this policy. Shapes must match (``CheckpointError`` names both), and so
        must the fields that give them meaning (target, keys, encoder, obs steps); on any error nothing changes."""
        staging = DiffusionPolicy(self.cfg)
        ckpt = load_checkpoint(directory, staging)  # checks names and shapes before touching staging
        staging.normalizer.load_arrays(ckpt.normalizer)
        stored = DiffusionPolicyConfig.from_dict(ckpt.config)
        differing = [f"{name}: checkpoint {getattr(stored, name)!r}, model {getattr(self.cfg, name)!r}"
                     for name in _SEMANTIC_FIELDS if getattr(stored, name) != getattr(self.cfg, name)]
        if differing:
            raise CheckpointError(f"checkpoint {directory} was trained for a different policy: {'; '.join(differing)}")
        self.load_state_dict(staging.state_dict())
        self.normalizer.load_arrays(ckpt.normalizer)

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike[str]) -> DiffusionPolicy:
        """Build the policy its checkpoint's config describes and load it: a checkpoint is usable on its own."""
        model_name, config = load_config(directory)
        if model_name != cls.__name__:
            raise CheckpointError(f"checkpoint {directory} holds a {model_name}, not a {cls.__name__}")
        policy = cls(DiffusionPolicyConfig.from_dict(config))
        policy.load(directory)
        return policy


def _image_encoder(cfg: DiffusionPolicyConfig) -> nn.Module:
    if cfg.encoder == "resnet":
        return ResNetEncoder(3, None, width=cfg.encoder_width, stem_stride=cfg.encoder_stem_stride)
    return Terminator(3, None, width=cfg.encoder_width, depth=2, patch_size=cfg.encoder_stem_stride)


def _fmt(shape: tuple[int | str, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
