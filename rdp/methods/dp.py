"""Diffusion Policy (the baseline): the slow policy plans the action chunk (T, Da) itself; the decoder executes it
open-loop, one entry per step, until the next plan takes over."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from rdp.api import Decoder, Method, PlanCodec, register
from rdp.data import shift_positions
from rdp.policy import rtc_weights


class ActionChunkDecoder(Decoder):
    """Indexes the planned action chunk (the entry of the current step; the last one held past the end)."""

    PLAN_STATE = ("chunk",)

    def __init__(self, run: Mapping[str, Any], embedding: Any = None) -> None:
        super().__init__(run, (int(run["horizon"]), int(run["action_dim"])), embedding)
        self.chunk: np.ndarray | None = None

    def _start(self, plan: torch.Tensor) -> None:
        self.chunk = plan.numpy()

    def _decode(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        assert self.chunk is not None
        return self.chunk[min(self.t, len(self.chunk) - 1)]


class ActionCodec(PlanCodec):
    def __init__(self, run: Mapping[str, Any]) -> None:
        self.relative = run.get("action_frame", "absolute") == "relative"

    def to_actions(self, plan: torch.Tensor, anchor: np.ndarray, features: Mapping[str, np.ndarray]) -> np.ndarray:
        actions = plan.numpy()
        return shift_positions(actions, anchor, +1.0) if self.relative else actions

    def to_target(self, actions: np.ndarray, frozen: int, overlap: int) -> dict[str, torch.Tensor]:
        return {"prefix": torch.from_numpy(actions)[None], "prefix_weights": rtc_weights(len(actions), frozen, overlap)}


@register
class DP(Method):
    name = "dp"
    target = "action"
    # DP samples its learned distribution, as Diffusion Policy does: at 0 its open-loop chunks commit to one plan
    # (wipe, expert data, test seeds: 0.32 at 1.0, 0.02 at 0). Not every run: python -m rdp.temperature.
    noise_scale = 1.0

    @classmethod
    def decoder(cls, run: Mapping[str, Any], parts: Mapping[str, Any], embedding: Any = None) -> Decoder:
        return ActionChunkDecoder(run, embedding)

    @classmethod
    def codec(cls, run: Mapping[str, Any], parts: Mapping[str, Any]) -> PlanCodec:
        return ActionCodec(run)

    @classmethod
    def check_config(cls, method_cfg: Any) -> None:
        if method_cfg.tokenizer is not None:
            raise ValueError("policy=dp predicts actions directly; set tokenizer: null")
