"""Run a trained slow-fast policy (a ``python -m rdp.train`` run directory) in the simulator.

``make_policy(task, checkpoint=RUN)`` returns a ``SimPolicy`` with ``reset(env)`` / ``act(obs)`` for ``sim.eval``
(hydra: ``configs/policy/<name>.yaml``): the run's ``Planner`` (slow: plans a chunk every ``replan_every`` steps)
and ``Decoder`` (fast: one action per step; rdp's tokenizer GRU reads the touch of that step, dp indexes its
chunk), ``rdp.api``, composed with a simulated inference latency. ``dataset.features.lowdim_features`` turns
one live observation into the low-dim features the policy was trained on (the same function computed them from the
recorded streams at training time); ``obs_images`` its camera frames into the policy's image inputs (resized as in
training; the runtime's slow node uses it too). An image policy holds each camera frame until the next one, at the
camera rate it was trained with (run.json ``image_hz``, 10 Hz from ``teleop.record_expert``): the env renders a
frame every control tick, the policy keeps the one of every 5th tick (50 / 10 Hz, from the episode's first tick),
exactly the frames the recorder stored and ``rdp.data`` held.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bus.cli import UsageError, choose
from bus.resources import checkpoint_dir
from rdp.api import DEFAULT_NOISE_SCALE, Decoder, Planner, episode_noise_seed, get_method
from rdp.checkpoint import RUN_FORMAT, CheckpointError, check_run_against_weights, load_run_info
from rdp.data import ACTION_DIM, resize_images
from rdp.policy import DiffusionPolicy

__all__ = ["DEFAULT_NOISE_SCALE", "RUN_FORMAT", "SimPolicy", "episode_noise_seed", "load_run", "make_policy",
           "shipped_run"]
HANDOVERS = ("latest", "rtc")  # how a new plan replaces the running one (see SimPolicy)
# What lowdim_features raises on a malformed reading (a missing or wrongly shaped array): callers count and skip it.
UNUSABLE_OBSERVATION = (KeyError, ValueError, IndexError, TypeError)


def camera_rate(run: Mapping[str, Any]) -> float:
    """The one camera rate (Hz) an image policy's frames were held at in training (run.json ``image_hz`` of its
    ``image_keys``; rounded to 1e-6, as a recording's stamps give e.g. 10.000000000000002); refuses several."""
    keys = list(run.get("image_keys") or ())
    rates = {round(float(run["image_hz"][k]), 6) for k in keys}
    if len(rates) != 1:
        raise UsageError(f"camera rates {run['image_hz']} Hz for {keys}: frames are held at one rate only")
    return rates.pop()


def obs_images(obs: Mapping[str, np.ndarray], image_keys: tuple[str, ...], size: int | None) -> dict[str, np.ndarray]:
    """One observation's camera frames {key: (H, W, 3) uint8} -> resized with ``rdp.data.resize_images`` as in
    training; a missing key names the observation's keys."""
    missing = [k for k in image_keys if k not in obs]
    if missing:
        raise KeyError(f"observation lacks camera images {missing} (has {sorted(obs)}); the policy was trained on "
                       f"them: build the env with cameras=True (python -m sim.eval ... sensors=vision)")
    return {k: resize_images(np.asarray(obs[k]), size) for k in image_keys}


class SimPolicy:
    """``sim.eval``'s adapter: a ``Planner`` and a ``Decoder`` (``rdp.api``) composed with the latency model. The env
    ticks at its control rate (50 Hz); the policy steps at the training rate (25 Hz), holding its action in between.
    Every ``replan_every`` policy steps the planner reads the last To observations (sampled at the training rate)
    and plans; the decoder emits one action per policy step.

    Simulated inference latency: a plan made from the observation of step ``k`` takes over at step
    ``k + latency_steps`` (the previous plan keeps running meanwhile; the first plan of an episode is waited for, as
    a robot waits for its first plan). With ``latency_matching`` (RDP's default) the new plan starts at its entry
    for the current step, the decoder stepping through the ``latency_steps`` entries whose time has passed on the
    readings of those steps (rdp: its GRU state is what it would have been); without it, it starts at entry 0 and
    executes stale actions.

    Hand-over (``handover``): ``"latest"`` (RDP's) replaces the running plan by the new one; ``"rtc"`` (real-time
    chunking, Black et al. 2025) plans the new one by inpainting (``Planner.rtc_prefix``): the entries that execute
    while it is computed are pinned to what the running plan does there, the rest of the overlap is pulled towards
    it with decaying weights (``rtc_weights``), so the hand-over does not jump."""

    def __init__(self, planner: Planner, decoder: Decoder, replan_every: int, latency_steps: int = 0,
                 latency_matching: bool = True, handover: str = "latest") -> None:
        horizon = int(planner.run["horizon"])
        if not 1 <= replan_every <= horizon:
            raise UsageError(f"replan_every must be in [1, horizon={horizon}], got {replan_every}")
        if latency_steps < 0 or replan_every + latency_steps > horizon:
            raise UsageError(f"need 0 <= latency_steps and replan_every + latency_steps <= horizon={horizon} (a "
                             f"chunk must last until the next one arrives), got {replan_every} + {latency_steps}")
        choose("handover", handover, HANDOVERS, "hand-over")
        self.planner, self.decoder = planner, decoder
        self.run = planner.run
        self.replan_every = replan_every
        self.latency_steps = int(latency_steps)
        self.latency_matching = bool(latency_matching)
        self.handover = handover
        self.image_keys = planner.image_keys
        self.image_size = self.run.get("image_size")
        self.frames: dict[str, np.ndarray] = {}  # the held camera frames (resized), replaced at the camera rate
        # What makes each plan instead of ``planner.plan(history, guide)``: chooser(self, guide) -> plan (a planner
        # above the slow policy that picks among its samples, world_model.task_plan); None: the slow policy alone.
        self.chooser: Callable[[SimPolicy, dict], torch.Tensor] | None = None

    @property
    def noise_scale(self) -> float:
        return self.planner.noise_scale

    def reset(self, env: Any, seed: int | None = None) -> None:
        """Start an episode on ``env``. ``seed`` (the episode's env seed) gives the episode its own diffusion noise,
        ``episode_noise_seed(sampler seed, seed)``; None re-seeds with the sampler seed alone."""
        ratio = env.control_hz / float(self.run["rate_hz"])
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
            raise UsageError(f"env control rate {env.control_hz} Hz is not a multiple of the policy's training "
                             f"rate {self.run['rate_hz']} Hz")
        if len(env.arms) != self.run["num_arms"] or len(env.pads) != self.run["num_pads"]:
            raise UsageError(f"policy trained for {self.run['num_arms']} arm(s) / {self.run['num_pads']} pads, env has "
                             f"{len(env.arms)} / {len(env.pads)} (task {self.run['task']!r})")
        if "goal" in self.run["obs_keys"] and not getattr(env.task, "goal_conditioned", False):
            raise UsageError(f"this policy observes a goal, but the env has the default goal and observes none: "
                             f"evaluate with task.goal=random or a goal (python -m sim.eval task={self.run['task']} "
                             f"policy=... task.goal=random)")
        self.ticks_per_step = int(round(ratio))
        if self.image_keys:
            self.camera_every = self._check_cameras(env)
            self.frames = {}
        self.tick = 0
        self.step_index = 0
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=int(self.run["obs_steps"]))
        self.recent: deque[dict[str, np.ndarray]] = deque(maxlen=self.latency_steps + 1)  # features per step
        self.pending: tuple[torch.Tensor, np.ndarray, int] | None = None  # plan, anchor, step it was made at
        self.active: tuple[torch.Tensor, np.ndarray, int] | None = None  # running plan, anchor, step of entry 0
        self.action: np.ndarray | None = None
        self.planner.new_episode(seed)
        self.decoder.reset()

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
        rate = camera_rate(self.run)
        ratio = env.control_hz / rate
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-3:
            raise UsageError(f"camera rate {rate:g} Hz: need one dividing the env's control rate {env.control_hz} Hz "
                             "to hold frames as in training")
        return int(round(ratio))

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
                guide = {}
                if self.handover == "rtc" and self.active is not None:
                    prev, prev_anchor, prev_start = self.active
                    guide = self.planner.rtc_prefix(prev, prev_anchor, k - prev_start, self.history[-1]["proprio"],
                                                    self.latency_steps, features)
                plan = self.planner.plan(self.history, guide) if self.chooser is None else self.chooser(self, guide)
                self.pending = (plan, self.history[-1]["proprio"], k)
            if self.pending is not None and (k == 0 or k >= self.pending[2] + self.latency_steps):
                self._take_over(*self.pending, k)
                self.pending = None
            self.action = self.decoder.step(features)
            self.step_index += 1
        self.tick += 1
        assert self.action is not None
        return self.action.copy()

    def _take_over(self, plan: torch.Tensor, anchor: np.ndarray, planned_at: int, now: int) -> None:
        """Make ``plan`` the running one at step ``now``; with latency matching, decode the entries of past steps."""
        self.decoder.start(plan, anchor)
        self.active = (plan, np.asarray(anchor, dtype=np.float32), planned_at if self.latency_matching else now)
        if self.latency_matching:
            past = list(self.recent)[-(now - planned_at) - 1:-1] if now > planned_at else []
            for f in past:  # steps planned_at .. now-1, with what was sensed at each
                self.decoder.step(f)

    def _features(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        features = self.planner.features(obs)
        if self.image_keys:
            features.update(self.frames)  # (H, W, 3) uint8 each, the latest camera frame at or before this tick
        return features


def load_run(checkpoint: str | os.PathLike[str]) -> tuple[dict[str, Any], DiffusionPolicy, dict[str, Any]]:
    """A training run directory -> (run.json, slow policy, the method's parts: rdp {"tokenizer": (tokenizer, its
    normaliser)}, dp {}).

    ``run.json`` is checked against its schema, each checkpoint against its weights, and ``run.json`` against the
    weights' sizes (``rdp.checkpoint``); every error names the file and the field."""
    root = Path(checkpoint)
    run = load_run_info(root)
    method = get_method(run["method"])
    slow = DiffusionPolicy.from_checkpoint(_part(root, "policy"))
    parts = method.load_parts(root, run)
    if run.get("perception"):  # the scene estimator the run was trained with (rdp.perception)
        from rdp.perception import SceneEstimator

        parts["perception"] = SceneEstimator.load(_part(root, "perception"))
    check_run_against_weights(root, run, slow.cfg)
    if run["action_dim"] != ACTION_DIM * run["num_arms"]:
        raise CheckpointError(f"{root / 'run.json'}: num_arms is {run['num_arms']} but the weights' action_dim "
                              f"{run['action_dim']} holds {run['action_dim'] / ACTION_DIM:g} arm(s) ({ACTION_DIM} "
                              "per arm)")
    return run, slow, parts


def _part(root: Path, name: str) -> Path:
    if not (root / name).is_dir():
        raise FileNotFoundError(f"{root / name}: no such directory; a training run holds the {name} checkpoint there "
                                "(config.json + model.safetensors)")
    return root / name


def shipped_run(task: str, name: str) -> Path:
    """The run directory shipped with the project for ``task`` and policy ``name``; a clear error if absent."""
    from sim.registry import TASKS

    choose("task", task, TASKS, "task")
    shipped = checkpoint_dir()
    path = shipped / task / name
    if not (path / "run.json").is_file():
        have = sorted(str(p.parent.relative_to(shipped)) for t in TASKS for p in shipped.glob(f"{t}/*/run.json"))
        raise FileNotFoundError(f"no shipped {name!r} checkpoint for task {task!r} at {path}; shipped: "
                                f"{', '.join(have)}; train one (python -m rdp.train task={task} ... out=RUN) and "
                                "pass its directory (sim.eval: policy.checkpoint=RUN, rdp.run: checkpoint=RUN)")
    return path


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
    noise_scale: float | None = None,
) -> SimPolicy:
    """Load a training run for ``sim.eval``. ``method`` must match the run's when given; ``train`` is the config's
    training section, accepted so configs/policy/<name>.yaml serves both commands (the run's own run.json fixes the
    sizes). ``latency_s``: simulated slow-policy inference latency, rounded to training-rate steps (see
    ``SimPolicy``); ``handover``: "latest" or "rtc" (see there); ``noise_scale``: the sampling temperature
    (``DiffusionPolicy.predict``; None: the run's, ``rdp.api.deploy_noise_scale``). Without ``checkpoint``, the
    shipped run ``checkpoints/<task>/<default_run>`` is used."""
    from sensors.embedding import TactileEmbedding

    del train
    torch.set_num_threads(1)
    if checkpoint is None:
        if default_run is None:
            raise UsageError("make_policy needs checkpoint=RUN_DIR (a `python -m rdp.train` out directory); "
                             "on the command line: policy.checkpoint=RUN_DIR")
        checkpoint = shipped_run(task, default_run)
    run, slow, parts = load_run(checkpoint)
    root = Path(checkpoint)
    if run["task"] != task:
        raise UsageError(f"{root} was trained on task {run['task']!r}, not {task!r}: pass a {task} run or "
                         f"task={run['task']}")
    if method is not None and method != run["method"]:
        raise UsageError(f"{root} holds a {run['method']!r} run, not {method!r}")
    if not (latency_s >= 0 and math.isfinite(latency_s)):
        raise UsageError(f"latency_s must be a finite number >= 0, got {latency_s}")
    impl = get_method(run["method"])
    embedding = TactileEmbedding.load(run["tactile_embedding"])
    planner = Planner(run, slow, impl.codec(run, parts), num_inference_steps, noise_scale, seed, embedding,
                      perception=parts.get("perception"))
    return SimPolicy(planner, impl.decoder(run, parts, embedding), replan_every,
                     latency_steps=int(round(latency_s * float(run["rate_hz"]))), latency_matching=latency_matching,
                     handover=handover)
