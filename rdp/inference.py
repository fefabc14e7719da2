"""Run a trained slow-fast policy (a ``python -m rdp.train`` run directory) in the simulator.

``make_policy(task, checkpoint=RUN)`` returns an object with ``reset(env)`` / ``act(obs)`` for ``sim.eval``
(hydra: ``configs/policy/{rdp,dp}.yaml``). ``RDPSimPolicy``: the latent diffusion policy (slow) plans a latent
chunk every ``replan_every`` steps; the tokenizer's GRU (fast) decodes one action per step from it and the tactile
reading of that step. ``DPSimPolicy``: the baseline executes its predicted action chunk open-loop.
``obs_features`` turns one live observation into the low-dim features the policy was trained on.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rdp.checkpoint import CheckpointError, load_checkpoint
from rdp.data import lowdim_features, policy_to_env_action
from rdp.normalizer import Normalizer
from rdp.policy import DiffusionPolicy
from rdp.tokenizer import AsymmetricTokenizer, TokenizerConfig

RUN_FORMAT = "slowfast-rdp-run-v1"


def obs_features(obs: Mapping[str, np.ndarray], embedding: Any) -> dict[str, np.ndarray]:
    """One env/robot-node observation -> {proprio, tactile, wrench} features (``rdp.data.lowdim_features``), the
    marker fields embedded with ``embedding`` (a ``sensors.embedding.TactileEmbedding``)."""
    steps = {k: obs[k] for k in ("tcp_pos", "tcp_quat", "gripper_width", "wrench")}
    steps["tactile_emb"] = embedding.encode(obs["marker_offset"])
    return lowdim_features(steps)


class _ChunkedSimPolicy:
    """Shared run-time loop. The env ticks at its control rate (50 Hz); the policy steps at the training rate
    (25 Hz), holding its action in between. Every ``replan_every`` policy steps the slow policy reads the last To
    observations (sampled at the training rate) and plans a chunk; ``_decode`` emits one action per policy step."""

    def __init__(self, run: Mapping[str, Any], slow: DiffusionPolicy, replan_every: int,
                 num_inference_steps: int | None, seed: int = 0) -> None:
        from sensors.embedding import TactileEmbedding

        if not 1 <= replan_every <= int(run["horizon"]):
            raise ValueError(f"replan_every must be in [1, horizon={run['horizon']}], got {replan_every}")
        self.run = dict(run)
        self.slow = slow.eval()
        self.replan_every = replan_every
        self.num_inference_steps = num_inference_steps
        self.embedding = TactileEmbedding.load(run["tactile_embedding"])
        self.seed = seed
        self.generator = torch.Generator()

    def reset(self, env: Any) -> None:
        ratio = env.control_hz / float(self.run["rate_hz"])
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(f"env control rate {env.control_hz} Hz is not a multiple of the policy's training "
                             f"rate {self.run['rate_hz']} Hz")
        if len(env.arms) != self.run["num_arms"] or len(env.pads) != self.run["num_pads"]:
            raise ValueError(f"policy trained for {self.run['num_arms']} arm(s) / {self.run['num_pads']} pads, env has "
                             f"{len(env.arms)} / {len(env.pads)} (task {self.run['task']!r})")
        self.ticks_per_step = int(round(ratio))
        self.tick = 0
        self.since_replan = 0
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=int(self.run["obs_steps"]))
        self.action: np.ndarray | None = None
        self.generator.manual_seed(self.seed)
        self._reset_chunk()

    @torch.inference_mode()
    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.tick % self.ticks_per_step == 0:
            features = self._features(obs)
            if not self.history:
                self.history.extend([features] * self.history.maxlen)  # start padding, as in training
            else:
                self.history.append(features)
            if self.tick == 0 or self.since_replan >= self.replan_every:
                obs_t = {k: torch.from_numpy(np.stack([h[k] for h in self.history]))[None]
                         for k in self.run["obs_keys"]}  # (1, To, Dk)
                self._plan(self.slow.predict(obs_t, generator=self.generator,
                                             num_inference_steps=self.num_inference_steps)[0])
                self.since_replan = 0
            self.action = policy_to_env_action(self._decode(features)).astype(np.float64)
            self.since_replan += 1
        self.tick += 1
        assert self.action is not None
        return self.action.copy()

    def _features(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return obs_features(obs, self.embedding)

    def _reset_chunk(self) -> None:
        raise NotImplementedError

    def _plan(self, chunk: torch.Tensor) -> None:
        raise NotImplementedError

    def _decode(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class RDPSimPolicy(_ChunkedSimPolicy):
    """Slow: the latent diffusion policy plans a latent chunk (L, C). Fast: every policy step the tokenizer's GRU
    decodes one action from the latent and the tactile embedding measured now (``AsymmetricTokenizer.step``)."""

    def __init__(self, run: Mapping[str, Any], slow: DiffusionPolicy, tokenizer: AsymmetricTokenizer,
                 norm: Normalizer, replan_every: int = 16, num_inference_steps: int | None = None,
                 seed: int = 0) -> None:
        super().__init__(run, slow, replan_every, num_inference_steps, seed)
        self.tokenizer = tokenizer.eval()
        self.norm = norm
        self.cond_key = run["cond_key"]

    def _reset_chunk(self) -> None:
        self.state = None

    def _plan(self, chunk: torch.Tensor) -> None:
        self.state = self.tokenizer.init_state(chunk[None])  # (1, L, C)

    def _decode(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        cond = self.norm.normalize("cond", torch.from_numpy(features[self.cond_key])[None])  # (1, Dc)
        action, self.state = self.tokenizer.step(self.state, cond)
        return self.norm.unnormalize("action", action)[0].numpy()


class DPSimPolicy(_ChunkedSimPolicy):
    """The baseline: executes the predicted action chunk (T, Da) open-loop until the next replan."""

    def _reset_chunk(self) -> None:
        self.chunk: np.ndarray | None = None

    def _plan(self, chunk: torch.Tensor) -> None:
        self.chunk = chunk.numpy()

    def _decode(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        assert self.chunk is not None
        return self.chunk[self.since_replan]


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


def make_policy(
    task: str,
    checkpoint: str | os.PathLike[str] | None = None,
    policy: str | None = None,
    replan_every: int = 16,
    num_inference_steps: int | None = None,
    train: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> RDPSimPolicy | DPSimPolicy:
    """Load a training run for ``sim.eval``. ``policy`` (rdp/dp) must match the run when given; ``train`` is the
    config's training section, accepted so configs/policy/<name>.yaml serves both commands (the run's own
    run.json fixes the sizes)."""
    del train
    torch.set_num_threads(1)
    if checkpoint is None:
        raise ValueError("make_policy needs checkpoint=RUN_DIR (a `python -m rdp.train` out directory); "
                         "on the command line: policy.checkpoint=RUN_DIR")
    root = Path(checkpoint)
    run_file = root / "run.json"
    if not run_file.is_file() or not (root / "policy").is_dir():
        raise FileNotFoundError(f"{root}: not a finished training run (needs run.json and policy/)")
    run = json.loads(run_file.read_text())
    if run.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{run_file}: unknown format {run.get('format')!r}, expected {RUN_FORMAT!r}")
    if run["task"] != task:
        raise ValueError(f"{root} was trained on task {run['task']!r}, not {task!r}")
    if policy is not None and policy != run["method"]:
        raise ValueError(f"{root} holds a {run['method']!r} run, not {policy!r}")
    slow = DiffusionPolicy.from_checkpoint(root / "policy")
    if run["method"] == "rdp":
        tokenizer, norm = load_tokenizer(root / "tokenizer")
        return RDPSimPolicy(run, slow, tokenizer, norm, replan_every, num_inference_steps, seed)
    return DPSimPolicy(run, slow, replan_every, num_inference_steps, seed)
