"""Reactive Diffusion Policy: the slow policy plans a latent chunk (L, C) of the asymmetric tokenizer; every step the
tokenizer's GRU decodes one action from it and the touch measured now (``AsymmetricTokenizer.step``): the fast loop.
Training first fits the tokenizer on the demonstrations' action chunks, then the slow policy on their latents."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rdp.api import Decoder, Method, PlanCodec, register
from rdp.checkpoint import CheckpointError, load_checkpoint
from rdp.data import cond_features, shift_positions
from rdp.normalizer import Normalizer
from rdp.policy import rtc_weights
from rdp.tokenizer import AsymmetricTokenizer, TokenizerConfig


def load_tokenizer(directory: str | os.PathLike[str]) -> tuple[AsymmetricTokenizer, Normalizer]:
    """A tokenizer checkpoint (RUN/tokenizer) -> the tokenizer in eval mode and its action/cond normaliser."""
    from rdp.checkpoint import load_config

    model_name, config = load_config(directory)
    if model_name != AsymmetricTokenizer.__name__:
        raise CheckpointError(f"{directory} holds a {model_name}, not an {AsymmetricTokenizer.__name__}")
    tokenizer = AsymmetricTokenizer(TokenizerConfig(**config))
    stored = load_checkpoint(directory, tokenizer)
    norm = Normalizer({"action": tokenizer.cfg.action_dim, "cond": tokenizer.cfg.cond_dim})
    norm.load_arrays(stored.normalizer)
    return tokenizer.eval(), norm


class LatentDecoder(Decoder):
    """One incremental GRU step per step on the latent plan and the step's conditioning (``run.json`` ``cond_key``:
    the tactile embedding, the pads' load, the wrench...), relative to the plan's anchor: constant work per step."""

    PLAN_STATE = ("state",)

    def __init__(self, run: Mapping[str, Any], tokenizer: AsymmetricTokenizer, norm: Normalizer,
                 embedding: Any = None) -> None:
        super().__init__(run, (tokenizer.cfg.latent_steps, tokenizer.cfg.latent_channels), embedding)
        self.tokenizer = tokenizer.eval()
        self.norm = norm
        self.cond_key = run["cond_key"]
        self.state: Any = None

    def _start(self, plan: torch.Tensor) -> None:
        self.state = self.tokenizer.init_state(plan[None])  # (1, L, C)

    def _decode(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        cond = cond_features(features, self.anchor, self.cond_key)
        cond = self.norm.normalize("cond", torch.from_numpy(cond)[None])  # (1, Dc)
        action, self.state = self.tokenizer.step(self.state, cond)
        return self.norm.unnormalize("action", action)[0].numpy()


class LatentCodec(PlanCodec):
    """Latent plan <-> actions through the tokenizer: the future of a running plan is decoded with the touch felt
    now held over it (the decoder's best guess of it); actions are encoded to the posterior-mean latent."""

    def __init__(self, run: Mapping[str, Any], tokenizer: AsymmetricTokenizer, norm: Normalizer) -> None:
        self.tokenizer, self.norm = tokenizer.eval(), norm
        self.cond_key = run["cond_key"]
        self.horizon = int(run["horizon"])
        self.relative = run.get("action_frame", "absolute") == "relative"

    def to_actions(self, plan: torch.Tensor, anchor: np.ndarray, features: Mapping[str, np.ndarray]) -> np.ndarray:
        cond = np.repeat(cond_features(features, anchor, self.cond_key)[None], self.horizon, axis=0)
        cond_t = self.norm.normalize("cond", torch.from_numpy(cond)[None])  # (1, T, Dc)
        actions = self.norm.unnormalize("action", self.tokenizer.decode(plan[None], cond_t))[0].numpy()
        return shift_positions(actions, anchor, +1.0) if self.relative else actions

    def to_target(self, actions: np.ndarray, frozen: int, overlap: int) -> dict[str, torch.Tensor]:
        """Weights per latent step, each covering ``downsample`` actions: a latent step is pinned if any of its
        actions is."""
        f = self.tokenizer.cfg.downsample
        latent = self.tokenizer.encode(self.norm.normalize("action", torch.from_numpy(actions)[None]))[1]
        weights = rtc_weights(self.tokenizer.cfg.latent_steps, min(-(-frozen // f), overlap // f), overlap // f)
        return {"prefix": latent, "prefix_weights": weights}


@register
class RDP(Method):
    name = "rdp"
    parts = ("tokenizer",)
    target = "latent"

    @classmethod
    def load_parts(cls, root: Path, run: Mapping[str, Any]) -> dict[str, Any]:
        from rdp.checkpoint import check_tokenizer_against_run

        path = Path(root) / "tokenizer"
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such directory; a training run holds the tokenizer checkpoint "
                                    "there (config.json + model.safetensors)")
        tokenizer, norm = load_tokenizer(path)
        check_tokenizer_against_run(root, run, tokenizer.cfg)
        return {"tokenizer": (tokenizer, norm)}

    @classmethod
    def decoder(cls, run: Mapping[str, Any], parts: Mapping[str, Any], embedding: Any = None) -> Decoder:
        return LatentDecoder(run, *parts["tokenizer"], embedding=embedding)

    @classmethod
    def codec(cls, run: Mapping[str, Any], parts: Mapping[str, Any]) -> PlanCodec:
        return LatentCodec(run, *parts["tokenizer"])

    @classmethod
    def check_config(cls, method_cfg: Any) -> None:
        if method_cfg.tokenizer is None or method_cfg.cond_key is None or method_cfg.tokenizer_steps < 1:
            raise ValueError("policy=rdp needs a tokenizer section, a cond_key and tokenizer_steps >= 1")

    @classmethod
    def training_target(cls, cfg: Any, episodes: Any, windows: Any, state: dict, log: Any
                        ) -> tuple[np.ndarray | None, dict[str, Any]]:
        from rdp.train import encode_latents, train_tokenizer

        tokenizer, action_norm, summary = train_tokenizer(cfg, episodes, windows, state, log)
        latents = encode_latents(tokenizer, action_norm, episodes, windows, cfg.method.action_frame)
        return latents, {"tokenizer": summary}
