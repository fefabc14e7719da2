"""The policy API: a **planner** (observation history -> plan) and a **decoder** (plan + the newest reading ->
one action per training-rate step), and the registry of methods that provide them.

* ``Planner`` owns the slow model: the diffusion policy (its normalisers are inside it), the sampler's noise (one
  draw per episode, ``episode_noise_seed``) and the inpainting prefix that lets a new plan continue the running one
  (real-time chunking). The slow node runs one; so does ``sim.eval``'s adapter.
* ``Decoder`` owns the fast model and nothing else: ``start(plan, anchor)`` once per plan, ``step(features)`` once
  per step -> the env action (7 A,) float64, and an explicit ``save()`` / ``load()`` of its per-plan state (the
  fast node stages the next plan in a context of its own). The fast node runs one; so does the adapter.
* ``Method`` says what a training run's method needs: which decoder, how its plans map to actions and back
  (``PlanCodec``, for the inpainting prefix), which checkpoint parts it loads, how its config is checked and what
  training target it prepares. Methods register by name (``@register``); ``rdp.methods`` holds ``rdp`` (latent
  plans, the asymmetric tokenizer's GRU decodes them reading touch) and ``dp`` (action plans, executed open-loop).
  Shared code asks the registry (``get_method(run["method"])``) and never branches on a method's name.

``load_planner(run_dir, ...)`` / ``load_decoder(run_dir)`` build them from a ``python -m rdp.train`` run directory.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from bus.cli import UsageError
from dataset.features import lowdim_features
from rdp.data import policy_to_env_action, shift_positions
from rdp.policy import DiffusionPolicy

# Sampling temperature of a deployed policy (DiffusionPolicy.predict's noise_scale). Chosen on validation seeds
# 1000-1049 with the shipped checkpoints (docs/results.md, 2026-12-03): success averaged over wipe, lift and peel
# was 0.61 at 1.0, 0.75 at 0.5 and 0.79 at 0.0, so a plan is DDIM from the prior's mean; the test seeds 0-49 were
# run afterwards. It is ``Method.noise_scale``'s default; a run may carry its own, chosen on validation seeds
# (``python -m rdp.temperature``, run.json ``inference.noise_scale``), and a command line may set one explicitly.
DEFAULT_NOISE_SCALE = 0.0


def deploy_noise_scale(run: Mapping[str, Any], explicit: float | None = None) -> float:
    """The sampling temperature a run is deployed with: ``explicit`` when given, else the one chosen for the run on
    validation seeds (run.json ``inference.noise_scale``, ``python -m rdp.temperature``), else its method's."""
    if explicit is not None:
        return float(explicit)
    chosen = (run.get("inference") or {}).get("noise_scale")
    return float(chosen) if chosen is not None else float(get_method(run["method"]).noise_scale)


def episode_noise_seed(sampler_seed: int, episode_seed: int) -> int:
    """The diffusion sampler's seed for one episode: a hash of the policy's sampler seed and the episode's env seed.

    Every episode draws its own noise, reproducibly (sim.eval and the runtime's slow node use this same rule, so
    lockstep repeats sim.eval). Seeding each episode with the sampler seed alone gave every episode the same noise:
    on lift one draw decided most episodes alike (20 seeds: 0.00 to 0.85 across sampler seeds 0-10)."""
    state = np.random.SeedSequence([int(sampler_seed), int(episode_seed)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # 62 bits: within torch.Generator.manual_seed's range


# ------------------------------------------------------------------------------------------------ decoder


class Decoder:
    """Executes one plan a training-rate step at a time. Subclasses implement ``_start`` (take a plan) and
    ``_decode`` (entry ``self.t`` of the plan, as a policy action (10 A,)) and name the attributes that hold their
    per-plan state in ``PLAN_STATE`` (what ``save`` / ``load`` carry besides ``t`` and the anchor).

    ``start(plan, anchor)``: plan as the planner made it (torch or numpy; shape ``plan_shape``), anchor the proprio
    features (10 A,) of the observation it was planned from. ``step(features)``: features of this step
    (``dataset.features.lowdim_features``) -> env action (7 A,) float64; positions back in the world frame for a
    relative-frame run. ``t`` counts the steps taken in the plan."""

    PLAN_STATE: ClassVar[tuple[str, ...]] = ()

    def __init__(self, run: Mapping[str, Any], plan_shape: Sequence[int], embedding: Any = None) -> None:
        from sensors.embedding import TactileEmbedding

        self.run = dict(run)
        self.embedding = embedding if embedding is not None else TactileEmbedding.load(run["tactile_embedding"])
        self.horizon = int(run["horizon"])
        self.plan_shape = tuple(int(n) for n in plan_shape)
        self.anchor_dim = int(run["action_dim"])
        self.relative = self.run.get("action_frame", "absolute") == "relative"
        self.anchor: np.ndarray | None = None
        self.t = 0

    def reset(self) -> None:
        """Forget the running plan (an episode starts)."""
        self.anchor = None
        self.t = 0
        for name in self.PLAN_STATE:
            setattr(self, name, None)

    def features(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One live reading -> the low-dim features the policy was trained on."""
        return lowdim_features(obs, self.embedding)

    def start(self, plan: torch.Tensor | np.ndarray, anchor: np.ndarray) -> None:
        if isinstance(plan, np.ndarray):
            plan = torch.from_numpy(np.ascontiguousarray(plan, dtype=np.float32))
        if tuple(plan.shape) != self.plan_shape or tuple(np.shape(anchor)) != (self.anchor_dim,):
            raise ValueError(f"plan {tuple(plan.shape)} / anchor {tuple(np.shape(anchor))}, expected "
                             f"{self.plan_shape} / ({self.anchor_dim},)")
        self.anchor = np.asarray(anchor, dtype=np.float32)
        self._start(plan)
        self.t = 0

    @torch.inference_mode()
    def step(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.t >= self.horizon:
            raise ValueError(f"plan exhausted after {self.horizon} steps; call start() with a new plan")
        action = self._decode(features)
        self.t += 1
        if self.relative:
            assert self.anchor is not None
            action = shift_positions(action[None], self.anchor, +1.0)[0]
        return policy_to_env_action(action).astype(np.float64)

    def save(self) -> dict[str, Any]:
        """The running plan's decoding context (references: starting another plan replaces, never mutates it)."""
        return {"t": self.t, "anchor": self.anchor, **{name: getattr(self, name) for name in self.PLAN_STATE}}

    def load(self, context: Mapping[str, Any]) -> None:
        """Continue a plan exactly where ``save`` left it."""
        for name, value in context.items():
            if name != "t":
                setattr(self, name, value)
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

    def _start(self, plan: torch.Tensor) -> None:
        raise NotImplementedError

    def _decode(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------ planner


class PlanCodec:
    """A method's map between its plans and actions, for the inpainting prefix: ``to_actions`` turns a planned
    chunk into (T, 10 A) policy actions with world positions; ``to_target`` turns (T, 10 A) actions in the new plan's
    frame into ``DiffusionPolicy.predict``'s ``prefix`` / ``prefix_weights``."""

    def to_actions(self, plan: torch.Tensor, anchor: np.ndarray, features: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def to_target(self, actions: np.ndarray, frozen: int, overlap: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class Planner:
    """Observation history -> plan. ``history``: the last ``obs_steps`` step features, oldest first (padded by
    repetition at an episode's start, as in training), each a dict holding the ``obs_keys`` (and the camera frames
    (H, W, 3) uint8 of an image policy). ``new_episode(env_seed)`` gives the episode its own noise."""

    def __init__(self, run: Mapping[str, Any], model: DiffusionPolicy, codec: PlanCodec | None,
                 num_inference_steps: int | None = None, noise_scale: float | None = None, seed: int = 0,
                 embedding: Any = None, perception: Any = None) -> None:
        from sensors.embedding import TactileEmbedding

        noise_scale = deploy_noise_scale(run, noise_scale)
        if not (math.isfinite(noise_scale) and noise_scale >= 0):
            raise UsageError(f"noise_scale must be a finite number >= 0, got {noise_scale}")
        self.run = dict(run)
        self.model = model.eval()
        self.codec = codec
        self.num_inference_steps = num_inference_steps
        self.noise_scale = float(noise_scale)
        self.seed = seed
        self.embedding = embedding if embedding is not None else TactileEmbedding.load(run["tactile_embedding"])
        self.obs_keys = tuple(self.run["obs_keys"])
        self.image_keys = tuple(self.run.get("image_keys", ()))  # () for low-dim runs
        self.obs_steps = int(self.run["obs_steps"])
        self.horizon = int(self.run["horizon"])
        self.relative = self.run.get("action_frame", "absolute") == "relative"
        self.plan_shape = tuple(model.cfg.target_shape)
        self.generator = torch.Generator()
        # A run trained with a perception head (rdp.perception) reads the scene off the episode's first camera frame.
        self.perception = perception
        self.perception_camera: str | None = perception.cfg.reads if perception is not None else None
        self.scene_seen: np.ndarray | None = None  # this episode's estimate, made on its first reading

    def new_episode(self, env_seed: int | None = None) -> None:
        """Seed the sampler for an episode: ``episode_noise_seed(seed, env_seed)``; None: the sampler seed alone.
        Forgets the last episode's scene estimate."""
        self.generator.manual_seed(self.seed if env_seed is None else episode_noise_seed(self.seed, env_seed))
        self.scene_seen = None

    def features(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One live reading -> the low-dim features the policy was trained on. With a perception head, the first
        reading of an episode must carry the scene camera's frame: the estimate made from it is the episode's
        ``scene_seen``, and the simulator's ``scene`` is never read."""
        if self.perception is None:
            return lowdim_features(obs, self.embedding)
        if self.scene_seen is None:
            frame = obs.get(self.perception_camera)
            if frame is None:
                raise UsageError(f"this policy reads the scene off the {self.perception_camera!r} camera's first "
                                 f"frame of each episode, but the first reading has none (has {sorted(obs)}): "
                                 f"evaluate with sensors=vision, or start the robot node with cameras=true")
            self.scene_seen = self.perception.estimate(np.asarray(frame))
        raw = {k: v for k, v in obs.items() if k != "scene"}
        raw["scene_seen"] = self.scene_seen
        return lowdim_features(raw, self.embedding)

    def plan(self, history: Sequence[Mapping[str, np.ndarray]],
             guide: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """-> the plan (unnormalised; ``plan_shape``). ``guide``: an inpainting prefix (``rtc_prefix``)."""
        obs = {key: torch.from_numpy(np.stack([h[key] for h in history]))[None]
               for key in (*self.obs_keys, *self.image_keys)}  # (1, To, Dk) / (1, To, H, W, 3)
        obs.update({key: obs[key].permute(0, 1, 4, 2, 3) for key in self.image_keys})  # (1, To, 3, H, W)
        return self.model.predict(obs, generator=self.generator, num_inference_steps=self.num_inference_steps,
                                  noise_scale=self.noise_scale, **(guide or {}))[0]

    def warm_up(self) -> float:
        """One plan on a blank history with a throwaway generator (torch builds its kernels on the first call, which
        made a realtime episode's first plan slow); the episode's noise is untouched. Returns ms."""
        cfg = self.model.cfg
        dims = dict(zip(cfg.lowdim_keys, cfg.lowdim_dims, strict=True))
        obs = {k: torch.zeros(1, cfg.obs_steps, dims[k]) for k in self.obs_keys}
        obs.update({k: torch.zeros(1, cfg.obs_steps, 3, *cfg.image_size, dtype=torch.uint8) for k in self.image_keys})
        t0 = time.perf_counter()
        self.model.predict(obs, generator=torch.Generator().manual_seed(0),
                           num_inference_steps=self.num_inference_steps, noise_scale=self.noise_scale)
        return (time.perf_counter() - t0) * 1e3

    @torch.inference_mode()
    def rtc_prefix(self, prev: torch.Tensor, prev_anchor: np.ndarray, elapsed: int, anchor: np.ndarray, frozen: int,
                   features: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Inpainting inputs for a plan made ``elapsed`` steps after the entry 0 of the running plan ``prev`` (made
        from ``prev_anchor``), from the pose ``anchor``, whose first ``frozen`` steps execute before it takes over
        -> {"prefix": (1, Ta, Da), "prefix_weights": (Ta,)} for ``DiffusionPolicy.predict``; {} when the running
        plan does not reach the new one's steps."""
        if self.codec is None:
            raise UsageError(f"method {self.run['method']!r} has no plan codec: real-time chunking needs one")
        remaining = self.horizon - int(elapsed)
        if elapsed < 0 or remaining <= 0:
            return {}
        actions = self.codec.to_actions(prev, np.asarray(prev_anchor, dtype=np.float32), features)  # world frame
        ahead = actions[np.minimum(np.arange(elapsed, elapsed + self.horizon), self.horizon - 1)]  # shifted, end held
        if self.relative:
            ahead = shift_positions(ahead, anchor, -1.0)
        return self.codec.to_target(ahead.astype(np.float32), min(frozen, remaining), remaining)


# ------------------------------------------------------------------------------------------------ methods


class Method:
    """What a training method provides. ``parts``: checkpoint sub-directories besides ``policy/`` that its decoder
    and codec load; ``target``: what the slow policy predicts ("action" or "latent"); ``noise_scale``: the sampling
    temperature its runs are deployed with unless one was chosen for the run (``deploy_noise_scale``)."""

    name: ClassVar[str]
    parts: ClassVar[tuple[str, ...]] = ()
    target: ClassVar[str] = "action"
    noise_scale: ClassVar[float] = DEFAULT_NOISE_SCALE

    @classmethod
    def load_parts(cls, root: Path, run: Mapping[str, Any]) -> dict[str, Any]:
        """The method's own checkpoint parts (e.g. rdp's tokenizer), loaded and checked against ``run.json``."""
        return {}

    @classmethod
    def decoder(cls, run: Mapping[str, Any], parts: Mapping[str, Any], embedding: Any = None) -> Decoder:
        raise NotImplementedError

    @classmethod
    def codec(cls, run: Mapping[str, Any], parts: Mapping[str, Any]) -> PlanCodec | None:
        return None

    @classmethod
    def check_config(cls, method_cfg: Any) -> None:
        """Refuse a training config this method cannot train (a ValueError naming the key)."""

    @classmethod
    def training_target(cls, cfg: Any, episodes: Any, windows: Any, state: dict, log: Any
                        ) -> tuple[np.ndarray | None, dict[str, Any]]:
        """Stages before the slow policy's (``rdp.train``): -> (the slow policy's target per training window, or
        None: the windows' action chunks; the stages' summaries by stage name)."""
        return None, {}


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name`` (training, evaluation, the runtime)."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} is registered twice")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    import rdp.methods  # noqa: F401 - registers the built-in methods

    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_names() -> tuple[str, ...]:
    import rdp.methods  # noqa: F401

    return tuple(sorted(METHODS))


# ------------------------------------------------------------------------------------------------ loading


def _check_task(root: Path, run: Mapping[str, Any], task: str | None) -> None:
    if task is not None and run["task"] != task:
        raise UsageError(f"{root} was trained on task {run['task']!r}, not {task!r}: pass a {task} run or "
                         f"task={run['task']}")


def load_decoder(root: str | os.PathLike[str], task: str | None = None, embedding: Any = None) -> Decoder:
    """The decoder of a training run: only the parts it runs (rdp: the tokenizer; dp: nothing but run.json).
    ``task``: refuse a run trained on another task."""
    from rdp.checkpoint import load_run_info

    root = Path(root)
    run = load_run_info(root)
    _check_task(root, run, task)
    method = get_method(run["method"])
    return method.decoder(run, method.load_parts(root, run), embedding)


def load_planner(root: str | os.PathLike[str], task: str | None = None, num_inference_steps: int | None = None,
                 noise_scale: float | None = None, seed: int = 0) -> Planner:
    """The planner of a training run (``rdp.inference.load_run`` checks the run whole). ``task``: refuse a run
    trained on another task."""
    from rdp.inference import load_run

    run, model, parts = load_run(root)
    _check_task(Path(root), run, task)
    return Planner(run, model, get_method(run["method"]).codec(run, parts), num_inference_steps, noise_scale, seed,
                   perception=parts.get("perception"))

