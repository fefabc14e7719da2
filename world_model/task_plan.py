"""Plan with the world model on a task of the suite (wipe, peel, lift): the third, slowest loop above the slow policy.

    python -m world_model.task_plan scorer task=wipe run=RUN out=DIR [episodes=150] [seed=820000]   # progress head
    python -m world_model.task_plan eval task=wipe run=RUN scorer=DIR [policy=rdp_perception] [episodes=50]
                                    [seed=0] [conditions=[policy,proposal,temp_lora,no_memory]] [out=DIR]
    python -m sim.eval task=wipe policy=wm_plan sensors=vision_points [policy.run=RUN policy.scorer=DIR]

``WorldModelPolicy`` wraps a slow-fast policy (``rdp.inference.SimPolicy``). Whenever the slow policy would plan,
the planner draws candidates instead: the policy's own plan (at its deployed temperature) and ``candidates - 1``
samples at the ``proposal_noise`` temperature. Each is decoded into TCP targets as the fast decoder would decode
it now, turned into the world model's actions (each arm's TCP displacement into each of the next ``frames_ahead``
camera frames) and imagined from the camera frames seen so far -- with TEMP-LoRA every frame of the episode has
been written into the adapters chunk by chunk as it came; without it only the context window is seen. A progress
head scores the last imagined frames, and the best plan goes to the fast decoder (the policy's own plan unless
another scores more than ``margin`` higher). The planner is a ``world_model.planner.WorldModelPlanner``, in this
process or behind a planner node (``world_model.node``, ``planner=process``) on the bus.

The progress head (``MarkerScorer``'s network, one logit) reads one camera frame and says how far the task is: the
env's own score at that frame (wipe: the fraction of marks removed; peel: of the strip peeled; lift: of the lift
height). It is trained on the camera frames of the scripted expert -- every second episode without its force
feedback, so that failures and stalls are in the data -- perturbations on, training looks, and on the same frames
through the world model's autoencoder (what imagined frames look like).

Eval conditions, all on the same seeds: ``policy`` (the slow policy alone, its deployed temperature), ``proposal``
(the slow policy alone at the proposal temperature: one sample, no choice), ``temp_lora`` (world-model planning with
the episodic memory), ``no_memory`` (world-model planning, context window only). ``OUT/metrics.json`` has each
condition's success with its Wilson 95 % interval, decisions per second, how often a sample replaced the policy's
own plan and the memory's update cost; ``OUT/<condition>/`` is sim.eval's result; ``OUT/<condition>-imagined.mp4``
shows, for the first episode, the imagined frames of each chosen plan beside the real frames that followed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bus.cli import UsageError, choose, command
from bus.config import compose, split_verb
from rdp.runtime.config import PlanChoiceConfig

CONDITIONS = ("policy", "proposal", "temp_lora", "no_memory")
WORLD_MODEL_CONDITIONS = ("temp_lora", "no_memory")


def shipped(task: str, what: str) -> str:
    """The shipped world model (``what="model"``) or progress head (``"scorer"``) of ``task``:
    ``checkpoints/world_model/<task>`` and ``<task>_progress``."""
    from bus.resources import checkpoint_dir

    return str(checkpoint_dir() / "world_model" / (task if what == "model" else f"{task}_progress"))


# ------------------------------------------------------------------------------------------- the planning policy

def check_plannable(slow: Any, run: dict, action_dim: int) -> None:
    """Refuse (``UsageError``, one line) a slow policy whose plans a world model with ``action_dim`` action values a
    frame cannot imagine: no plan codec, or another number of arms."""
    if slow.codec is None:
        raise UsageError(f"method {run['method']!r} has no plan codec: its plans cannot be imagined")
    arms = int(run["num_arms"])
    if action_dim != 3 * arms:
        raise UsageError(f"the world model takes {action_dim} action values a frame, this policy moves {arms} "
                         f"arm(s) (3 each: TCP displacement); make its data with gripper=false touch=false")


def frame_moves(targets: np.ndarray, last_tcp: np.ndarray, now_s: float, rate_hz: float, camera_hz: float,
                frames_ahead: int) -> np.ndarray:
    """(K, H, A * 10) TCP targets per policy step (``rate_hz``), entry 0 at ``now_s`` -> (K, L, 3 A): the TCP
    displacement into each of the next ``frames_ahead`` camera frames (at multiples of ``1 / camera_hz`` after
    ``now_s``; the first from ``last_tcp``, the TCP at the last frame seen), the target of the policy step a frame
    falls in standing for where the TCP is then (held after the plan's end)."""
    k, horizon = targets.shape[:2]
    pos = targets.reshape(k, horizon, -1, 10)[..., :3].reshape(k, horizon, -1)
    eps = 1e-6  # times are sums of float periods: 0.3 s * 10 Hz must count as frame 3, not 2.999...
    frames = (np.floor(now_s * camera_hz + eps) + np.arange(1, frames_ahead + 1)) / camera_hz
    steps = np.floor((frames - now_s) * rate_hz + eps).astype(int)
    at = pos[:, np.minimum(steps, horizon - 1)]  # (K, L, 3A)
    start = np.broadcast_to(np.asarray(last_tcp, np.float32), (k, 1, at.shape[-1]))
    return np.diff(np.concatenate([start, at], axis=1), axis=1).astype(np.float32)


class PlanChooser:
    """What a world-model planner chooses among, and the rule it chooses by: the slow policy's own plan (at its
    deployed temperature) and ``candidates - 1`` samples at ``proposal_noise``; the best-scored one, but a sample
    only when it scores more than ``margin`` above the policy's own plan. Shared by ``WorldModelPolicy`` (sim.eval)
    and the planning slow node of the runtime (``world_model.runtime``)."""

    def __init__(self, candidates: int = 4, proposal_noise: float = 1.0, margin: float = 0.0) -> None:
        if candidates < 1 or not margin >= 0:
            raise UsageError(f"need candidates >= 1 and margin >= 0; got {candidates}, {margin}")
        if not (np.isfinite(proposal_noise) and proposal_noise >= 0):
            raise UsageError(f"proposal_noise must be a finite number >= 0, got {proposal_noise}")
        self.candidates, self.proposal_noise, self.margin = candidates, proposal_noise, margin

    def proposals(self, slow: Any, history: Any, guide: dict) -> list[torch.Tensor]:
        """The policy's own plan, then the samples (``slow``: an ``rdp.api.Planner``)."""
        return [slow.plan(history, guide), *self.samples(slow, history, guide)]

    def samples(self, slow: Any, history: Any, guide: dict) -> list[torch.Tensor]:
        """The ``candidates - 1`` samples at the proposal temperature."""
        deployed = slow.noise_scale
        slow.noise_scale = self.proposal_noise
        try:
            return [slow.plan(history, guide) for _ in range(self.candidates - 1)]
        finally:
            slow.noise_scale = deployed

    @staticmethod
    def targets(slow: Any, plans: list[torch.Tensor], history: Any) -> np.ndarray:
        """(K, H, A * 10) TCP targets: each plan decoded as the fast decoder would decode it now."""
        latest = history[-1]
        anchor = np.asarray(latest["proprio"], np.float32)
        with torch.inference_mode():  # the plans are inference tensors; decoding them must not track gradients
            return np.stack([slow.codec.to_actions(p, anchor, latest) for p in plans])

    def pick(self, scores: np.ndarray) -> int:
        best = int(np.argmax(scores))
        return best if scores[best] > scores[0] + self.margin else 0


class WorldModelPolicy:
    """``sim.eval``'s policy interface (``reset(env, seed)`` / ``act(obs)``) around a ``SimPolicy`` whose plans a
    world-model planner chooses (module docstring). ``planner``: anything with ``reset`` / ``observe`` / ``decide``
    (``WorldModelPlanner`` or ``RemotePlanner``). ``trace_episodes``: the first episodes whose decisions (the chosen
    plan's imagined frames and the real frames that followed) are kept in ``traces`` for a video."""

    def __init__(self, policy: Any, planner: Any, image_size: int, action_dim: int, camera: str = "wrist_rgb",
                 camera_hz: float = 10.0, candidates: int = 4, proposal_noise: float = 1.0, frames_ahead: int = 8,
                 margin: float = 0.0, trace_episodes: int = 0) -> None:
        if frames_ahead < 1 or not camera_hz > 0:
            raise UsageError(f"need frames_ahead >= 1 and camera_hz > 0; got {frames_ahead}, {camera_hz}")
        check_plannable(policy.planner, policy.run, action_dim)
        self.policy, self.planner = policy, planner
        self.run, self.image_keys = policy.run, policy.image_keys  # what env builders read off a policy
        self.image_size, self.camera, self.camera_hz = image_size, camera, camera_hz
        self.chooser = PlanChooser(candidates, proposal_noise, margin)
        self.frames_ahead = frames_ahead
        self.trace_episodes = trace_episodes
        self.traces: list[list[dict[str, Any]]] = []
        self.stats = {"decisions": 0, "decision_s": 0.0, "replaced": 0, "episodes": 0}
        policy.chooser = self._choose if candidates > 1 else None

    def reset(self, env: Any, seed: int | None = None) -> None:
        if not getattr(env, "cameras", False):
            raise UsageError(f"the world-model planner watches the {self.camera!r} camera, but the env renders "
                             "none: evaluate with sensors=vision (or vision_points for a depth-head policy)")
        ratio = env.control_hz / self.camera_hz
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
            raise UsageError(f"camera_hz={self.camera_hz:g} must divide the env's control rate {env.control_hz} Hz")
        self.camera_every = int(round(ratio))
        self.policy.reset(env, seed=seed)
        self.planner.reset(seed=0 if seed is None else int(seed))
        self.ticks_per_step = self.policy.ticks_per_step
        self.tick = 0
        self.last_tcp: np.ndarray | None = None
        self.tracing = self.stats["episodes"] < self.trace_episodes
        if self.tracing:
            self.traces.append([])
        self.stats["episodes"] += 1

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.tick % self.camera_every == 0:
            self._observe(obs)
        action = self.policy.act(obs)
        self.tick += 1
        return action

    def _observe(self, obs: dict[str, np.ndarray]) -> None:
        """One camera frame and the TCP displacement into it (zero for an episode's first) to the planner."""
        from rdp.data import resize_images

        if self.camera not in obs:
            raise UsageError(f"the observation has no {self.camera!r} frame (has {sorted(obs)}); set camera=")
        frame = resize_images(np.asarray(obs[self.camera]), self.image_size)
        tcp = np.asarray(obs["tcp_pos"], np.float32).reshape(-1)
        move = np.zeros_like(tcp) if self.last_tcp is None else tcp - self.last_tcp
        self.last_tcp = tcp
        self.planner.observe(frame[None], move[None])
        if self.tracing:
            for d in self.traces[-1]:
                if len(d["real"]) < len(d["imagined"]):
                    d["real"].append(frame)

    def frame_moves(self, targets: np.ndarray) -> np.ndarray:
        """``frame_moves`` of this tick (the TCP at the last frame seen; ``ticks_per_step`` control ticks a policy
        step, ``camera_every`` a camera frame)."""
        assert self.last_tcp is not None
        control_hz = self.camera_every * self.camera_hz
        return frame_moves(targets, self.last_tcp, self.tick / control_hz, control_hz / self.ticks_per_step,
                           self.camera_hz, self.frames_ahead)

    def _choose(self, policy: Any, guide: dict) -> torch.Tensor:
        """SimPolicy's chooser: the policy's own plan and the proposals, imagined, scored; the best."""
        t0 = time.perf_counter()
        slow = policy.planner
        plans = self.chooser.proposals(slow, policy.history, guide)
        decision = self.planner.decide(self.frame_moves(self.chooser.targets(slow, plans, policy.history)))
        best = self.chooser.pick(decision.scores)
        self.stats["decisions"] += 1
        self.stats["replaced"] += int(best != 0)
        self.stats["decision_s"] += time.perf_counter() - t0
        if self.tracing:
            self.traces[-1].append({"tick": self.tick, "imagined": decision.imagined[best], "real": [],
                                    "scores": np.round(decision.scores, 4).tolist(), "chosen": best,
                                    "score": float(decision.scores[best])})
        return plans[best]

    def summary(self) -> dict[str, Any]:
        s = self.stats
        out = {"decisions": s["decisions"], "decisions_per_episode": round(s["decisions"] / max(s["episodes"], 1), 1),
               "decisions_per_s": round(s["decisions"] / s["decision_s"], 2) if s["decision_s"] > 0 else None,
               "replaced_fraction": round(s["replaced"] / max(s["decisions"], 1), 3)}
        updates = getattr(self.planner, "updates", 0)
        if updates:  # of the last episode (the planner counts per episode)
            out["memory_update_ms"] = round(1000 * self.planner.update_seconds / updates, 2)
        return out


def make_planning_policy(task: str, policy: str = "rdp_perception", checkpoint: str | None = None, run: str = "",
                         scorer: str = "", memory: bool = True, candidates: int = 4, proposal_noise: float = 1.0,
                         frames_ahead: int = 8, score_frames: int = 2, margin: float = 0.0, lora_rank: int = 8,
                         lora_lr: float = 1e-3, lora_steps: int = 1, camera: str = "wrist_rgb",
                         camera_hz: float = 10.0, replan_every: int = 8, latency_s: float = 0.08, seed: int = 0,
                         planner: Any = None, **unused: Any) -> WorldModelPolicy:
    """``configs/policy/wm_plan.yaml``'s factory: the slow-fast policy ``checkpoint`` (or the shipped
    ``checkpoints/<task>/<policy>``) with an in-process world-model planner (``run``, ``scorer``: empty, the shipped
    ones of ``task``); ``planner``: one to use instead (e.g. a ``RemotePlanner``)."""
    from rdp.inference import make_policy
    from world_model.node import build_planner

    del unused
    run = run or shipped(task, "model")
    info = run_info(run)
    inner = make_policy(task, checkpoint=checkpoint, default_run=policy, replan_every=replan_every, seed=seed,
                        latency_s=latency_s)
    if planner is None:
        planner = build_planner(run, scorer or shipped(task, "scorer"), memory, 0, score_frames, lora_rank, lora_lr,
                                lora_steps)
    return WorldModelPolicy(inner, planner, int(info["image_size"]), int(info["action_dim"]), camera, camera_hz,
                            candidates, proposal_noise, frames_ahead, margin)


def run_info(run: str) -> dict:
    path = Path(run) / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{run}: no world model run (train one: python -m world_model.train data=DIR "
                                f"out={run}; docs/usage.md has the task world model's commands)")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------- the progress head

@dataclass
class ProgressScorerConfig:
    """``configs/world_model/task_scorer.yaml``."""

    task: str = "wipe"
    run: str = ""  # the world model whose autoencoder round trip the head also learns; empty: the task's shipped one
    out: str = ""
    episodes: int = 150
    seed: int = 820000
    camera: str = "wrist_rgb"
    every: int = 2  # keep every this many camera frames (10 Hz) of an expert episode
    looks: str = "train"
    seconds: float = 0.0  # > 0: cut every expert episode at this simulated time (quick checks)
    steps: int = 3000
    batch: int = 64
    lr: float = 1e-3
    width: int = 16
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if self.episodes < 4 or self.every < 1 or self.steps < 1 or self.batch < 2:
            raise ValueError("episodes >= 4, every >= 1, steps >= 1, batch >= 2")


def progress_frames(task: str, seeds: Sequence[int], camera: str, image_size: int, looks: str = "train",
                    every: int = 2, progress: bool = True, seconds: float = 0.0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scripted expert's camera frames (N, S, S, 3) uint8, every ``every``-th of the 10 Hz camera, with the env's
    score at each (N,) float32 and each frame's episode (N,); odd seeds run the expert without its force feedback.
    ``seconds`` > 0 cuts every episode there."""
    from tqdm import tqdm

    from rdp.data import resize_images
    from sim.experts import make_expert
    from sim.registry import make_env

    env = make_env(task, cameras=True, image_size=96, looks=looks, perturb=True)
    frames, labels, episode = [], [], []
    stride = int(round(env.control_hz / 10.0)) * every
    try:
        for e, seed in enumerate(tqdm(seeds, desc=f"{task} expert frames", unit="ep", disable=not progress)):
            expert = make_expert(task, force_feedback=seed % 2 == 0)
            obs, _ = env.reset(seed=int(seed))
            expert.reset(env, seed=int(seed))
            tick, done = 0, False
            while not done:
                if tick % stride == 0:
                    frames.append(resize_images(np.asarray(obs[camera]), image_size))
                    labels.append(float(env.task.score))
                    episode.append(e)
                obs, _, terminated, truncated, _ = env.step(expert.act(obs))
                tick += 1
                done = terminated or truncated or (seconds > 0 and env.time >= seconds)
            frames.append(resize_images(np.asarray(obs[camera]), image_size))  # the end state
            labels.append(float(env.task.score))
            episode.append(e)
    finally:
        env.close()
    return np.stack(frames), np.asarray(labels, np.float32), np.asarray(episode)


def fit_progress_scorer(cfg: ProgressScorerConfig) -> dict:
    from world_model.plan import save_scorer
    from world_model.planner import MarkerScorer, ScorerConfig, autoencoder_roundtrip, train_scorer
    from world_model.train import load_world_model

    if not cfg.out:
        raise UsageError("out=DIR is required")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run = cfg.run or shipped(cfg.task, "model")
    ae, _, info = load_world_model(Path(run))
    t0 = time.perf_counter()
    n_val = max(2, cfg.episodes // 10)
    seeds = list(range(cfg.seed, cfg.seed + cfg.episodes + n_val))
    cache = Path(cfg.out) / "frames.npz"
    if cache.exists():
        data = np.load(cache)
        frames, labels, episode = data["frames"], data["labels"], data["episode"]
    else:
        frames, labels, episode = progress_frames(cfg.task, seeds, cfg.camera, info["image_size"], cfg.looks,
                                                  cfg.every, cfg.progress, cfg.seconds)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, frames=frames, labels=labels, episode=episode)
    train = episode < cfg.episodes
    scorer = MarkerScorer(ScorerConfig(image_size=info["image_size"], width=cfg.width))
    history = train_scorer(scorer, frames[train], labels[train], ae, cfg.steps, cfg.batch, cfg.lr, cfg.seed,
                           cfg.progress)
    val_frames, val_labels = frames[~train], labels[~train]
    quality = {}
    for name, f in (("real", val_frames), ("autoencoder", autoencoder_roundtrip(ae, val_frames))):
        pred = scorer.score(f)
        quality[name] = {"mae": round(float(np.abs(pred - val_labels).mean()), 4),
                         "correlation": round(float(np.corrcoef(pred, val_labels)[0, 1]), 4)}
    args = " ".join(f"{k}={v}" for k, v in asdict(cfg).items() if k not in ("progress", "threads") and v != "")
    meta = {"command": f"python -m world_model.task_plan scorer {args}", "world_model": run, "kind": "progress",
            "task": cfg.task, "camera": cfg.camera, "train_frames": int(train.sum()),
            "validation_frames": int((~train).sum()), "validation": quality, "loss": history,
            "seconds": round(time.perf_counter() - t0, 1), "params": sum(p.numel() for p in scorer.parameters())}
    save_scorer(Path(cfg.out), scorer, meta)
    return {"out": cfg.out, **{k: meta[k] for k in ("validation", "train_frames", "seconds", "params")}}


# ------------------------------------------------------------------------------------------- evaluation

@dataclass
class TaskPlanConfig(PlanChoiceConfig):
    """``configs/world_model/task_plan.yaml`` (how plans are chosen: ``rdp.runtime.config.PlanChoiceConfig``)."""

    task: str = "wipe"
    policy: str = "rdp_perception"  # a shipped policy of the task (checkpoints/<task>/<policy>)
    checkpoint: str = ""  # a training run instead of the shipped policy
    run: str = ""  # world model; empty: checkpoints/world_model/<task>
    scorer: str = ""  # progress head; empty: checkpoints/world_model/<task>_progress
    out: str = ""
    episodes: int = 50
    seed: int = 0
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))
    replan_every: int = 8
    latency_s: float = 0.08  # simulated slow-policy latency, as sim.eval's policy configs
    looks: str = "train"
    perturb: bool = True
    planner: str = "process"  # process: a planner node on the bus | inprocess
    videos: bool = True
    traced: int = 5  # episodes whose chosen plans' imagined progress is compared with the real frames that followed
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = sorted(set(self.conditions) - set(CONDITIONS))
        if bad or not self.conditions:
            raise ValueError(f"conditions must be a non-empty subset of {list(CONDITIONS)}, got {bad or '[]'}")
        choose("planner", self.planner, ("process", "inprocess"), "planner")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")


def imagined_vs_real(traces: list[list[dict[str, Any]]], scorer_dir: str, score_frames: int) -> dict[str, Any]:
    """How well the imagination predicts progress: for every traced decision whose real frames all came, the
    progress head on the chosen plan's last ``score_frames`` imagined frames (what the planner went by) against the
    head on the real frames at the same times."""
    from world_model.plan import load_scorer

    head = load_scorer(Path(scorer_dir))
    pairs = [(d["score"], float(head.score(np.stack(d["real"][-score_frames:])).mean()))
             for trace in traces for d in trace if len(d["real"]) == len(d["imagined"])]
    if len(pairs) < 2:
        return {"decisions": len(pairs)}
    imagined, real = np.array(pairs).T
    return {"decisions": len(pairs), "mean_abs_error": round(float(np.abs(imagined - real).mean()), 4),
            "correlation": round(float(np.corrcoef(imagined, real)[0, 1]), 4) if real.std() > 0 else None,
            "imagined_mean": round(float(imagined.mean()), 4), "real_mean": round(float(real.mean()), 4)}


def write_trace_video(path: Path, trace: list[dict[str, Any]], scale: int = 4, fps: int = 5) -> None:
    """Each decision of an episode: the chosen plan's imagined frames (right) beside the real frames that followed
    (left), one pair of frames per video frame."""
    import cv2
    import imageio.v2 as imageio

    with imageio.get_writer(path, fps=fps, macro_block_size=1) as w:
        for d in trace:
            for real, imagined in zip(d["real"], d["imagined"], strict=False):
                pair = np.concatenate([real, np.full((real.shape[0], 2, 3), 255, np.uint8), imagined], 1)
                w.append_data(cv2.resize(pair, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST))


def _condition_policy(cfg: TaskPlanConfig, info: dict, planner: Any, noise: float | None, made: list) -> Any:
    """The policy of one condition: the slow-fast policy alone (temperature ``noise``; None: its deployed one), or
    wrapped in a ``WorldModelPolicy`` around ``planner``; appended to ``made``."""
    from rdp.inference import make_policy

    policy = make_policy(cfg.task, checkpoint=cfg.checkpoint or None, default_run=cfg.policy,
                         replan_every=cfg.replan_every, noise_scale=noise, latency_s=cfg.latency_s)
    if planner is not None:
        policy = WorldModelPolicy(policy, planner, int(info["image_size"]), int(info["action_dim"]), cfg.camera,
                                  cfg.camera_hz, cfg.candidates, cfg.proposal_noise, cfg.frames_ahead, cfg.margin,
                                  trace_episodes=max(cfg.traced, int(cfg.videos)))
    made.append(policy)
    return policy


def evaluate(cfg: TaskPlanConfig) -> dict:
    from rdp.checkpoint import load_run_info
    from rdp.inference import shipped_run
    from sim.eval import evaluate as sim_evaluate
    from world_model.node import open_planner

    torch.set_num_threads(cfg.threads)
    planning = any(c in WORLD_MODEL_CONDITIONS for c in cfg.conditions)
    run = (cfg.run or shipped(cfg.task, "model")) if planning else None
    scorer = (cfg.scorer or shipped(cfg.task, "scorer")) if planning else None
    info = run_info(run) if run else {}
    out = Path(cfg.out) if cfg.out else Path("outputs/world_model") / f"task-plan-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    perception = load_run_info(Path(cfg.checkpoint or shipped_run(cfg.task, cfg.policy))).get("perception") or {}
    results: dict[str, Any] = {"config": asdict(cfg), "world_model": run, "scorer": scorer, "conditions": {}}
    for condition in cfg.conditions:
        made: list[Any] = []
        noise = cfg.proposal_noise if condition == "proposal" else None
        kwargs = dict(task=cfg.task, policy_name=condition, episodes=cfg.episodes, seed=cfg.seed,
                      out_dir=out / condition, perturb=cfg.perturb, video=False, cameras=True, looks=cfg.looks,
                      camera_hz=cfg.camera_hz,
                      point_cloud=perception.get("camera") == "scene_points",
                      policy_config={"condition": condition, **{k: v for k, v in asdict(cfg).items()
                                                                if k not in ("conditions", "progress", "out")}})
        t0 = time.perf_counter()
        if condition in WORLD_MODEL_CONDITIONS:
            assert run is not None and scorer is not None
            with open_planner(cfg.planner == "process", out / f"planner-{condition}.log", run, scorer,
                              condition == "temp_lora", 0, cfg.score_frames, cfg.lora_rank, cfg.lora_lr,
                              cfg.lora_steps, threads=cfg.threads) as planner:
                result = sim_evaluate(make_policy=lambda p=planner, m=made: _condition_policy(cfg, info, p, None, m),
                                      **kwargs)
        else:
            result = sim_evaluate(make_policy=lambda n=noise, m=made: _condition_policy(cfg, info, None, n, m),
                                  **kwargs)
        summary = {"success": result["success_rate"], "wilson95": [round(v, 4) for v in result["ci95"]],
                   "mean_score": round(result["mean_score"], 4), "episodes": result["episodes"],
                   "per_perturbation": result["per_perturbation"], "seconds": round(time.perf_counter() - t0, 1)}
        policy = made[-1]
        if isinstance(policy, WorldModelPolicy):
            summary.update(policy.summary())
            summary["imagined_vs_real_progress"] = imagined_vs_real(policy.traces, scorer, cfg.score_frames)
            if cfg.videos and policy.traces and policy.traces[0]:
                write_trace_video(out / f"{condition}-imagined.mp4", policy.traces[0])
                summary["first_decisions"] = [{k: d[k] for k in ("tick", "scores", "chosen")}
                                              for d in policy.traces[0][:5]]
        results["conditions"][condition] = summary
        (out / "metrics.json").write_text(json.dumps(results, indent=1) + "\n")
    return {"out": str(out), **{c: {k: v[k] for k in ("success", "wilson95")}
                                for c, v in results["conditions"].items()}}


@command("world_model.task_plan")
def main(argv: Sequence[str] | None = None) -> int:
    verb, rest = split_verb(list(sys.argv[1:] if argv is None else argv), ["scorer", "eval"],
                            "world_model.task_plan", "eval task=wipe", __doc__)
    if verb == "scorer":
        cfg = compose(ProgressScorerConfig, "world_model/task_scorer", rest, "progress head training", "out=DIR")
        print(json.dumps(fit_progress_scorer(cfg)))
        return 0
    pcfg = compose(TaskPlanConfig, "world_model/task_plan", rest, "world-model planning on a task", "task=wipe")
    print(json.dumps(evaluate(pcfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
