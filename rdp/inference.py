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
from rdp.data import cond_features, lowdim_features, policy_to_env_action, shift_positions
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
                self.anchor = self.history[-1]["proprio"]  # relative actions are offsets from this TCP pose
                self._plan(self.slow.predict(obs_t, generator=self.generator,
                                             num_inference_steps=self.num_inference_steps)[0])
                self.since_replan = 0
            action = self._decode(features)
            if self.run.get("action_frame", "absolute") == "relative":
                action = shift_positions(action[None], self.anchor, +1.0)[0]
            self.action = policy_to_env_action(action).astype(np.float64)
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
        cond = cond_features(features, self.anchor, self.cond_key)
        cond = self.norm.normalize("cond", torch.from_numpy(cond)[None])  # (1, Dc)
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


class ChunkExecutor:
    """Executes planned chunks one training-rate step at a time, outside the sim loop: the fast node's model.

    Wraps a loaded ``RDPSimPolicy`` / ``DPSimPolicy`` (``make_policy``) and reuses its ``_plan`` / ``_decode``, so the
    runtime and ``sim.eval`` run the same decoding. ``start(chunk, anchor)`` once per chunk (anchor: the proprio
    features (10 A,) of the observation it was planned from), then ``step(features)`` once per step (features:
    ``obs_features`` of that step) -> the env action (7 A,) float64; ``t`` counts the steps taken. For rdp every
    step is one incremental GRU step on the reading given (constant work); for dp it indexes the chunk.
    ``chunk_shape`` is what the slow policy predicts: (L, C) latents or (T, Da) actions.
    """

    def __init__(self, policy: RDPSimPolicy | DPSimPolicy) -> None:
        self.policy = policy
        self.horizon = int(policy.run["horizon"])
        self.chunk_shape = tuple(policy.slow.cfg.target_shape)
        self.anchor_dim = int(policy.run["action_dim"])
        self.relative = policy.run.get("action_frame", "absolute") == "relative"
        self.t = 0

    def start(self, chunk: np.ndarray, anchor: np.ndarray) -> None:
        """chunk (Ta, Da) float32 as the slow policy predicted it (unnormalised); anchor (10 A,) float32."""
        if tuple(chunk.shape) != self.chunk_shape or tuple(anchor.shape) != (self.anchor_dim,):
            raise ValueError(f"chunk {tuple(chunk.shape)} / anchor {tuple(anchor.shape)}, expected "
                             f"{self.chunk_shape} / ({self.anchor_dim},)")
        self.policy.anchor = np.asarray(anchor, dtype=np.float32)
        self.policy._plan(torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)))
        self.t = 0

    @torch.inference_mode()
    def step(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.t >= self.horizon:
            raise ValueError(f"chunk exhausted after {self.horizon} steps; call start() with a new chunk")
        self.policy.since_replan = self.t  # what DPSimPolicy._decode indexes by
        action = self.policy._decode(features)
        if self.relative:
            action = shift_positions(action[None], self.policy.anchor, +1.0)[0]
        self.t += 1
        return policy_to_env_action(action).astype(np.float64)
