"""Run a trained slow-fast policy (a ``python -m rdp.train`` run directory) in the simulator.

``make_policy(task, checkpoint=RUN)`` returns an object with ``reset(env)`` / ``act(obs)`` for ``sim.eval``
(hydra: ``configs/policy/{rdp,dp}.yaml``). ``RDPSimPolicy``: the latent diffusion policy (slow) plans a latent
chunk every ``replan_every`` steps; the tokenizer's GRU (fast) decodes one action per step from it and the tactile
reading of that step. ``DPSimPolicy``: the baseline executes its predicted action chunk open-loop.
``dataset.features.lowdim_features`` turns one live observation into the low-dim features the policy was trained
on (the same function computed them from the recorded streams at training time); ``obs_images``
its camera frames into the policy's image inputs (resized as in training). An image policy holds each camera frame
until the next one, at the camera rate it was trained with (run.json ``image_hz``, 10 Hz from
``teleop.record_expert``): the env renders a frame every control tick, the policy keeps the one of every 5th tick
(50 / 10 Hz, from the episode's first tick), exactly the frames the recorder stored and ``rdp.data`` held.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bus.cli import UsageError, choose
from dataset.features import lowdim_features
from rdp.checkpoint import RUN_FORMAT, CheckpointError, check_run_against_weights, load_checkpoint, load_run_info
from rdp.data import ACTION_DIM, cond_features, policy_to_env_action, resize_images, shift_positions
from rdp.normalizer import Normalizer
from rdp.policy import DiffusionPolicy, rtc_weights
from rdp.tokenizer import AsymmetricTokenizer, TokenizerConfig

__all__ = ["RUN_FORMAT", "load_run", "make_policy", "shipped_run"]
HANDOVERS = ("latest", "rtc")  # how a new chunk replaces the running one (see _ChunkedSimPolicy)
# Sampling temperature of a deployed policy (DiffusionPolicy.predict's noise_scale). Chosen on validation seeds
# 1000-1049 with the shipped checkpoints (docs/results.md, 2026-12-03): success averaged over wipe, lift and peel
# was 0.61 at 1.0, 0.75 at 0.5 and 0.79 at 0.0, so a plan is DDIM from the prior's mean; the test seeds 0-49 were
# run afterwards.
DEFAULT_NOISE_SCALE = 0.0
# What lowdim_features raises on a malformed reading (a missing or wrongly shaped array): callers count and skip it.
UNUSABLE_OBSERVATION = (KeyError, ValueError, IndexError, TypeError)


def obs_images(obs: Mapping[str, np.ndarray], image_keys: tuple[str, ...], size: int | None) -> dict[str, np.ndarray]:
    """One observation's camera frames {key: (H, W, 3) uint8} -> resized with ``rdp.data.resize_images`` as in
    training; a missing key names the observation's keys."""
    missing = [k for k in image_keys if k not in obs]
    if missing:
        raise KeyError(f"observation lacks camera images {missing} (has {sorted(obs)}); the policy was trained on "
                       f"them: build the env with cameras=True (python -m sim.eval ... sensors=vision)")
    return {k: resize_images(np.asarray(obs[k]), size) for k in image_keys}


class _ChunkedSimPolicy:
    """Shared run-time loop. The env ticks at its control rate (50 Hz); the policy steps at the training rate
    (25 Hz), holding its action in between. Every ``replan_every`` policy steps the slow policy reads the last To
    observations (sampled at the training rate) and plans a chunk; ``_decode`` emits one action per policy step.

    Simulated inference latency: a chunk planned from the observation of step ``k`` takes over at step
    ``k + latency_steps`` (the previous chunk keeps running meanwhile; the first chunk of an episode is waited for,
    as a robot waits for its first plan). With ``latency_matching`` (RDP's default) the new chunk starts at its
    entry for the current step, skipping the ``latency_steps`` entries whose time has passed (for rdp the GRU still
    steps through them, reading the tactile signal recorded at those steps, so its state is what it would have
    been); without it, it starts at entry 0 and executes stale actions.

    Hand-over (``handover``): ``"latest"`` (RDP's) replaces the running chunk by the new one; ``"rtc"`` (real-time
    chunking, Black et al. 2025) plans the new chunk by inpainting (``DiffusionPolicy.predict(prefix=...)``): the
    entries that execute while it is computed are pinned to what the running chunk does there, the rest of the
    overlap is pulled towards it with decaying weights (``rtc_weights``), so the hand-over does not jump."""

    def __init__(self, run: Mapping[str, Any], slow: DiffusionPolicy, replan_every: int,
                 num_inference_steps: int | None, seed: int = 0, latency_steps: int = 0,
                 latency_matching: bool = True, handover: str = "latest",
                 noise_scale: float = DEFAULT_NOISE_SCALE) -> None:
        from sensors.embedding import TactileEmbedding

        horizon = int(run["horizon"])
        if not 1 <= replan_every <= horizon:
            raise UsageError(f"replan_every must be in [1, horizon={horizon}], got {replan_every}")
        if latency_steps < 0 or replan_every + latency_steps > horizon:
            raise UsageError(f"need 0 <= latency_steps and replan_every + latency_steps <= horizon={horizon} (a "
                             f"chunk must last until the next one arrives), got {replan_every} + {latency_steps}")
        self.run = dict(run)
        self.slow = slow.eval()
        self.replan_every = replan_every
        self.num_inference_steps = num_inference_steps
        self.latency_steps = int(latency_steps)
        self.latency_matching = bool(latency_matching)
        choose("handover", handover, HANDOVERS, "hand-over")
        self.handover = handover
        if not (math.isfinite(noise_scale) and noise_scale >= 0):
            raise UsageError(f"noise_scale must be a finite number >= 0, got {noise_scale}")
        self.noise_scale = float(noise_scale)
        self.embedding = TactileEmbedding.load(run["tactile_embedding"])
        self.relative = self.run.get("action_frame", "absolute") == "relative"
        self.image_keys = tuple(self.run.get("image_keys", ()))  # () for low-dim runs
        self.image_size = self.run.get("image_size")
        self.frames: dict[str, np.ndarray] = {}  # the held camera frames (resized), replaced at the camera rate
        self.seed = seed
        self.generator = torch.Generator()
        self.anchor: np.ndarray | None = None
        self.chunk_t = 0  # entry of the active chunk that the next decode returns

    def reset(self, env: Any, seed: int | None = None) -> None:
        """Start an episode on ``env``. ``seed`` (the episode's env seed) gives the episode its own diffusion noise,
        ``episode_noise_seed(self.seed, seed)``; None re-seeds with ``self.seed`` alone."""
        ratio = env.control_hz / float(self.run["rate_hz"])
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
            raise UsageError(f"env control rate {env.control_hz} Hz is not a multiple of the policy's training "
                             f"rate {self.run['rate_hz']} Hz")
        if len(env.arms) != self.run["num_arms"] or len(env.pads) != self.run["num_pads"]:
            raise UsageError(f"policy trained for {self.run['num_arms']} arm(s) / {self.run['num_pads']} pads, env has "
                             f"{len(env.arms)} / {len(env.pads)} (task {self.run['task']!r})")
        self.ticks_per_step = int(round(ratio))
        if self.image_keys:
            self.camera_every = self._check_cameras(env)
            self.frames = {}
        self.tick = 0
        self.step_index = 0
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=int(self.run["obs_steps"]))
        self.recent: deque[dict[str, np.ndarray]] = deque(maxlen=self.latency_steps + 1)  # features per step
        self.pending: tuple[torch.Tensor, np.ndarray, int] | None = None  # chunk, anchor, step it was planned at
        self.active: tuple[torch.Tensor, np.ndarray, int] | None = None  # running chunk, anchor, step of entry 0
        self.action: np.ndarray | None = None
        self.generator.manual_seed(self.seed if seed is None else episode_noise_seed(self.seed, seed))
        self._reset_chunk()

    def _check_cameras(self, env: Any) -> int:
        """Refuse an env without cameras or with another image size; return control ticks per camera frame."""
        keys = list(self.image_keys)
        if not getattr(env, "cameras", False):
            raise UsageError(f"this policy reads camera images {keys}, but the env renders none: evaluate with "
                             f"sensors=vision (python -m sim.eval task={self.run['task']} policy=... sensors=vision) "
                             f"or make the env with cameras=True")
        for key, (h, w) in self.run["camera_size"].items():
            if (env.image_size, env.image_size) != (h, w):
                raise UsageError(f"policy was trained on {key} frames of {h}x{w} pixels, env renders "
                                 f"{env.image_size}x{env.image_size}: set sensors.image_size={h}")
        rates = set(self.run["image_hz"].values())
        ratios = [env.control_hz / r for r in rates]
        if len(rates) != 1 or ratios[0] < 1 or abs(ratios[0] - round(ratios[0])) > 1e-3:
            raise UsageError(f"camera rates {self.run['image_hz']} Hz: need one rate dividing the env's control rate "
                             f"{env.control_hz} Hz to hold frames as in training")
        return int(round(ratios[0]))

    @torch.inference_mode()
    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.image_keys and self.tick % self.camera_every == 0:  # a new camera frame; held until the next
            self.frames = obs_images(obs, self.image_keys, self.image_size)
        if self.tick % self.ticks_per_step == 0:
            k = self.step_index
            features = self._features(obs)
            if not self.history:
                self.history.extend([features] * self.history.maxlen)  # start padding, as in training
            else:
                self.history.append(features)
            self.recent.append(features)
            if k % self.replan_every == 0:
                obs_t = {key: torch.from_numpy(np.stack([h[key] for h in self.history]))[None]
                         for key in (*self.run["obs_keys"], *self.image_keys)}  # (1, To, Dk) / (1, To, H, W, 3)
                obs_t.update({key: obs_t[key].permute(0, 1, 4, 2, 3) for key in self.image_keys})  # (1, To, 3, H, W)
                guide = {}
                if self.handover == "rtc" and self.active is not None:
                    prev, prev_anchor, prev_start = self.active
                    guide = self.rtc_prefix(prev, prev_anchor, k - prev_start, self.history[-1]["proprio"],
                                            self.latency_steps, features)
                chunk = self.slow.predict(obs_t, generator=self.generator, num_inference_steps=self.num_inference_steps,
                                          noise_scale=self.noise_scale, **guide)[0]
                self.pending = (chunk, self.history[-1]["proprio"], k)
            if self.pending is not None and (k == 0 or k >= self.pending[2] + self.latency_steps):
                self._take_over(*self.pending, k)
                self.pending = None
            self.action = self._action(features)
            self.step_index += 1
        self.tick += 1
        assert self.action is not None
        return self.action.copy()

    def _take_over(self, chunk: torch.Tensor, anchor: np.ndarray, planned_at: int, now: int) -> None:
        """Make ``chunk`` the active one at step ``now``; with latency matching, skip the entries of past steps."""
        self.start(chunk, anchor)
        self.active = (chunk, np.asarray(anchor, dtype=np.float32), planned_at if self.latency_matching else now)
        if self.latency_matching:
            past = list(self.recent)[-(now - planned_at) - 1:-1] if now > planned_at else []
            for f in past:  # steps planned_at .. now-1, with what was sensed at each
                self._decode(f)
                self.chunk_t += 1

    def start(self, chunk: torch.Tensor, anchor: np.ndarray) -> None:
        """Activate a planned chunk (unnormalised slow-policy output) and the proprio (10 A,) it was planned from."""
        self.anchor = np.asarray(anchor, dtype=np.float32)
        self._plan(chunk)
        self.chunk_t = 0

    def _action(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """The active chunk's next entry as an env action (7 A,) float64: decode, back to world positions."""
        action = self._decode(features)
        self.chunk_t += 1
        if self.relative:
            assert self.anchor is not None
            action = shift_positions(action[None], self.anchor, +1.0)[0]
        return policy_to_env_action(action).astype(np.float64)

    def _features(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        features = lowdim_features(obs, self.embedding)
        if self.image_keys:
            features.update(self.frames)  # (H, W, 3) uint8 each, the latest camera frame at or before this tick
        return features

    @torch.inference_mode()
    def rtc_prefix(self, prev: torch.Tensor, prev_anchor: np.ndarray, elapsed: int, anchor: np.ndarray, frozen: int,
                   features: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Inpainting inputs for a chunk planned ``elapsed`` steps after the entry 0 of the running chunk ``prev``
        (the slow policy's raw output, planned from ``prev_anchor``), from the pose ``anchor``, whose first
        ``frozen`` steps execute before it takes over -> {"prefix": (1, Ta, Da), "prefix_weights": (Ta,)} for
        ``DiffusionPolicy.predict``; {} when the running chunk does not reach the new one's steps."""
        horizon = int(self.run["horizon"])
        remaining = horizon - int(elapsed)
        if elapsed < 0 or remaining <= 0:
            return {}
        actions = self._chunk_actions(prev, np.asarray(prev_anchor, dtype=np.float32), features)  # world positions
        ahead = actions[np.minimum(np.arange(elapsed, elapsed + horizon), horizon - 1)]  # shifted, end held
        if self.relative:
            ahead = shift_positions(ahead, anchor, -1.0)
        return self._to_target(ahead.astype(np.float32), min(frozen, remaining), remaining)

    def _chunk_actions(self, chunk: torch.Tensor, anchor: np.ndarray,
                       features: Mapping[str, np.ndarray]) -> np.ndarray:
        """A planned chunk as (T, 10 A) policy actions with world positions (the running chunk's future)."""
        raise NotImplementedError

    def _to_target(self, actions: np.ndarray, frozen: int, overlap: int) -> dict[str, torch.Tensor]:
        """(T, 10 A) actions in the new chunk's frame -> inpainting inputs in the slow policy's target space."""
        raise NotImplementedError

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
                 norm: Normalizer, replan_every: int = 8, num_inference_steps: int | None = None,
                 seed: int = 0, **latency: Any) -> None:
        super().__init__(run, slow, replan_every, num_inference_steps, seed, **latency)
        self.tokenizer = tokenizer.eval()
        self.norm = norm
        self.cond_key = run["cond_key"]

    CHUNK_STATE = ("state",)  # what _plan / _decode keep per chunk (ChunkExecutor.save)

    def _reset_chunk(self) -> None:
        self.state = None

    def _plan(self, chunk: torch.Tensor) -> None:
        self.state = self.tokenizer.init_state(chunk[None])  # (1, L, C)

    def _decode(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        cond = cond_features(features, self.anchor, self.cond_key)
        cond = self.norm.normalize("cond", torch.from_numpy(cond)[None])  # (1, Dc)
        action, self.state = self.tokenizer.step(self.state, cond)
        return self.norm.unnormalize("action", action)[0].numpy()

    def _chunk_actions(self, chunk: torch.Tensor, anchor: np.ndarray,
                       features: Mapping[str, np.ndarray]) -> np.ndarray:
        # The future is decoded with the touch felt now held over the chunk (the decoder's best guess of it).
        horizon = int(self.run["horizon"])
        cond = np.repeat(cond_features(features, anchor, self.cond_key)[None], horizon, axis=0)
        cond_t = self.norm.normalize("cond", torch.from_numpy(cond)[None])  # (1, T, Dc)
        actions = self.norm.unnormalize("action", self.tokenizer.decode(chunk[None], cond_t))[0].numpy()
        return shift_positions(actions, anchor, +1.0) if self.relative else actions

    def _to_target(self, actions: np.ndarray, frozen: int, overlap: int) -> dict[str, torch.Tensor]:
        """Encode the actions into the latent the slow policy predicts (the posterior mean); weights per latent
        step, each covering ``downsample`` actions: a latent step is pinned if any of its actions is."""
        f = self.tokenizer.cfg.downsample
        latent = self.tokenizer.encode(self.norm.normalize("action", torch.from_numpy(actions)[None]))[1]
        weights = rtc_weights(self.tokenizer.cfg.latent_steps, min(-(-frozen // f), overlap // f), overlap // f)
        return {"prefix": latent, "prefix_weights": weights}


class DPSimPolicy(_ChunkedSimPolicy):
    """The baseline: executes the predicted action chunk (T, Da) open-loop until the next replan."""

    CHUNK_STATE = ("chunk",)

    def _reset_chunk(self) -> None:
        self.chunk: np.ndarray | None = None

    def _plan(self, chunk: torch.Tensor) -> None:
        self.chunk = chunk.numpy()

    def _decode(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        assert self.chunk is not None
        return self.chunk[min(self.chunk_t, len(self.chunk) - 1)]

    def _chunk_actions(self, chunk: torch.Tensor, anchor: np.ndarray,
                       features: Mapping[str, np.ndarray]) -> np.ndarray:
        actions = chunk.numpy()
        return shift_positions(actions, anchor, +1.0) if self.relative else actions

    def _to_target(self, actions: np.ndarray, frozen: int, overlap: int) -> dict[str, torch.Tensor]:
        return {"prefix": torch.from_numpy(actions)[None],
                "prefix_weights": rtc_weights(len(actions), frozen, overlap)}


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


SHIPPED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


def shipped_run(task: str, name: str) -> Path:
    """The run directory shipped in the repository for ``task`` and policy ``name``; a clear error if absent."""
    from sim.registry import TASKS

    choose("task", task, TASKS, "task")
    path = SHIPPED_DIR / task / name
    if not (path / "run.json").is_file():
        have = sorted(str(p.parent.relative_to(SHIPPED_DIR)) for p in SHIPPED_DIR.glob("*/*/run.json"))
        raise FileNotFoundError(f"no shipped {name!r} checkpoint for task {task!r} at {path}; shipped: "
                                f"{', '.join(have)}; train one (python -m rdp.train task={task} ... out=RUN) and "
                                "pass its directory (sim.eval: policy.checkpoint=RUN, rdp.run: checkpoint=RUN)")
    return path


def episode_noise_seed(sampler_seed: int, episode_seed: int) -> int:
    """The diffusion sampler's seed for one episode: a hash of the policy's sampler seed and the episode's env seed.

    Every episode draws its own noise, reproducibly (sim.eval and the runtime's slow node use this same rule, so
    lockstep repeats sim.eval). Seeding each episode with the sampler seed alone gave every episode the same noise:
    on lift one draw decided most episodes alike (20 seeds: 0.00 to 0.85 across sampler seeds 0-10)."""
    state = np.random.SeedSequence([int(sampler_seed), int(episode_seed)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # 62 bits: within torch.Generator.manual_seed's range


def make_policy(
    task: str,
    checkpoint: str | os.PathLike[str] | None = None,
    method: str | None = None,
    replan_every: int = 8,
    num_inference_steps: int | None = None,
    train: Mapping[str, Any] | None = None,
    seed: int = 0,
    latency_s: float = 0.0,
    latency_matching: bool = True,
    default_run: str | None = None,
    handover: str = "latest",
    noise_scale: float = DEFAULT_NOISE_SCALE,
) -> RDPSimPolicy | DPSimPolicy:
    """Load a training run for ``sim.eval``. ``method`` (rdp/dp) must match the run when given; ``train`` is the
    config's training section, accepted so configs/policy/<name>.yaml serves both commands (the run's own run.json
    fixes the sizes). ``latency_s``: simulated slow-policy inference latency, rounded to training-rate steps (see
    ``_ChunkedSimPolicy``); ``handover``: "latest" or "rtc" (see there); ``noise_scale``: the sampling temperature
    (``DiffusionPolicy.predict``). Without ``checkpoint``, the shipped run
    ``checkpoints/<task>/<default_run>`` is used."""
    del train
    torch.set_num_threads(1)
    if checkpoint is None:
        if default_run is None:
            raise UsageError("make_policy needs checkpoint=RUN_DIR (a `python -m rdp.train` out directory); "
                             "on the command line: policy.checkpoint=RUN_DIR")
        checkpoint = shipped_run(task, default_run)
    run, slow, tokenizer = load_run(checkpoint)
    root = Path(checkpoint)
    if run["task"] != task:
        raise UsageError(f"{root} was trained on task {run['task']!r}, not {task!r}: pass a {task} run or "
                         f"task={run['task']}")
    if method is not None and method != run["method"]:
        raise UsageError(f"{root} holds a {run['method']!r} run, not {method!r}")
    if not (latency_s >= 0 and math.isfinite(latency_s)):
        raise UsageError(f"latency_s must be a finite number >= 0, got {latency_s}")
    latency = {"latency_steps": int(round(latency_s * float(run["rate_hz"]))), "latency_matching": latency_matching,
               "handover": handover, "noise_scale": noise_scale}
    if tokenizer is not None:
        return RDPSimPolicy(run, slow, *tokenizer, replan_every, num_inference_steps, seed, **latency)
    return DPSimPolicy(run, slow, replan_every, num_inference_steps, seed, **latency)


def load_run(checkpoint: str | os.PathLike[str]) -> tuple[dict[str, Any], DiffusionPolicy,
                                                          tuple[AsymmetricTokenizer, Normalizer] | None]:
    """A training run directory -> (run.json, slow policy, (tokenizer, its normaliser) for rdp else None).

    ``run.json`` is checked against its schema, each checkpoint against its weights, and ``run.json`` against the
    weights' sizes (``rdp.checkpoint``); every error names the file and the field."""
    root = Path(checkpoint)
    run = load_run_info(root)
    slow = DiffusionPolicy.from_checkpoint(_part(root, "policy"))
    tokenizer = load_tokenizer(_part(root, "tokenizer")) if run["method"] == "rdp" else None
    check_run_against_weights(root, run, slow.cfg, tokenizer[0].cfg if tokenizer else None)
    if run["action_dim"] != ACTION_DIM * run["num_arms"]:
        raise CheckpointError(f"{root / 'run.json'}: num_arms is {run['num_arms']} but the weights' action_dim "
                              f"{run['action_dim']} holds {run['action_dim'] / ACTION_DIM:g} arm(s) ({ACTION_DIM} "
                              "per arm)")
    return run, slow, tokenizer


def _part(root: Path, name: str) -> Path:
    if not (root / name).is_dir():
        raise FileNotFoundError(f"{root / name}: no such directory; a training run holds the {name} checkpoint there "
                                "(config.json + model.safetensors)")
    return root / name


class ChunkExecutor:
    """Executes planned chunks one training-rate step at a time, outside the sim loop: the fast node's model.

    Wraps a loaded ``RDPSimPolicy`` / ``DPSimPolicy`` (``make_policy``) and reuses its ``_plan`` / ``_decode``, so the
    runtime and ``sim.eval`` run the same decoding. ``start(chunk, anchor)`` once per chunk (anchor: the proprio
    features (10 A,) of the observation it was planned from), then ``step(features)`` once per step (features:
    ``dataset.features.lowdim_features`` of that step) -> the env action (7 A,) float64; ``t`` counts the steps
    taken. For rdp every step is one incremental GRU step on the reading given (constant work); for dp it indexes
    the chunk.
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
        self.policy.start(torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)), anchor)
        self.t = 0

    def save(self) -> dict[str, Any]:
        """The running chunk's decoding context (references: starting another chunk replaces, never mutates it)."""
        names = (*self.policy.CHUNK_STATE, "anchor")
        return {"t": self.t, **{name: getattr(self.policy, name, None) for name in names}}

    def load(self, context: Mapping[str, Any]) -> None:
        """Continue a chunk exactly where ``save`` left it (the fast node stages the next chunk with these)."""
        for name, value in context.items():
            if name != "t":
                setattr(self.policy, name, value)
        self.t = int(context["t"])

    def rehearse(self, features: Mapping[str, np.ndarray]) -> None:
        """Decode one step on ``features`` and discard it: the context (and so every later action) is unchanged.
        The fast node runs this just before a step tick, so the tick's own decode finds warm caches."""
        if self.t >= self.horizon:
            return
        running = self.save()
        try:
            self.step(features)
        finally:
            self.load(running)

    @torch.inference_mode()
    def step(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.t >= self.horizon:
            raise ValueError(f"chunk exhausted after {self.horizon} steps; call start() with a new chunk")
        self.policy.chunk_t = self.t
        self.t += 1
        return self.policy._action(features)
