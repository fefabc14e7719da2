"""The slow node: the latent diffusion policy (or the DP baseline) planning chunks from live observations.

    python -m rdp.runtime.slow checkpoint=RUN addresses.obs=ROBOT_PUB addresses.chunk=FAST_CHUNK [...]

Reads the robot node's ``state`` / ``tactile`` / ``wrench`` (one observation = the three messages of one node tick,
same ``seq``) and keeps the observation of every training-rate step (``rdp.runtime.chunks``), the last ``To`` of them
as the policy's history (padded by repetition at an episode's start, as in training). It plans at the first step
``>= last plan + replan_every`` it has seen: in lockstep that is exactly every ``replan_every`` steps (the fast node
waits for it); in realtime, when inference is slower than that, it plans on the newest observation as soon as it is
free. Each chunk goes to the fast node stamped with its observation step, episode and take-over step.

Cameras: a policy with ``image_keys`` also subscribes to the robot's ``image`` topic (a low-dim one does not, so
it carries no image traffic), on the same socket as the readings, so frames and readings arrive in the order the
robot sent them. It keeps the newest frame only (one superseded before any observation took it counts as
``images_dropped``, as does a gap in the topic's ``seq``), and each observation step holds the newest frame that
arrived before it, resized as in training (``rdp.inference.obs_images``): the frame at or before the step, which is
what ``rdp.data`` held at training time. Latency matching stays on the state: the chunk is stamped with the
observation's step and stamp as for a low-dim policy, whatever the frame's age, because training paired each step's
state with a frame held up to one camera period (``1 / image_hz``) and its actions started at that state's step.
The frame's age (observation ``sim_time`` - frame ``sim_time``) is in the chunk's meta (``image_age_ms``) and the
stats (p50 / p99 / max); a step whose frame is older than ``slow.max_image_age_s``, from the future, or unreadable
is refused (one warning, then counted) and not planned on. In lockstep the robot sends a tick's frame before that
tick's reading and one at every reset (``sim.node``), so every step holds exactly its training-time frame and runs
repeat. No usable frame for ``slow.image_timeout_s`` (the robot sends no images, or none the policy can read) ends
the node with exit 2 and one line naming what came instead; the launcher does not restart a node that exits so.

Episodes: the robot node's ``episode`` reset events (and, for a node started mid-episode, the episode counter of its
``status`` messages) clear the history and the held frame and give the sampler the episode's own noise
(``episode_noise_seed`` of ``slow.noise_seed`` and the episode's env seed, as sim.eval), so a lockstep run is
reproducible and repeats sim.eval. A frame that arrives after the reset event is the new episode's (the robot sends
them in order and drops renders of an earlier episode).
The first stdout line is a JSON ready record; then stats lines at ``stats_hz``; an exit record on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bus.cli import UsageError, command
from bus.message import Message
from bus.node import log_to_stderr, node_args
from bus.node import serve as run_node
from bus.transport import Publisher, Subscriber
from rdp.api import load_planner
from rdp.inference import UNUSABLE_OBSERVATION, camera_rate, obs_images
from rdp.runtime.chunks import policy_step
from rdp.runtime.config import RuntimeConfig, load_config
from rdp.runtime.curve import client_context, with_source
from rdp.runtime.timing import Every, Window, emit

log = logging.getLogger("rdp.runtime.slow")
OBS_TOPICS = ("state", "tactile", "wrench", "episode", "status")
IMAGE_TOPIC = "image"  # subscribed only by a slow node whose policy reads cameras
MAX_BATCH = 5000  # messages handled between two planning checks at most
# A robot's sim_time (s since its reset) at or past this, negative or not finite is corrupt: policy steps computed
# from it would overflow (inf) or leave int64 in the chunk's meta.
MAX_SIM_TIME_S = 1e9


class SlowNode:
    def __init__(self, cfg: RuntimeConfig) -> None:
        if not cfg.addresses.obs or "*" in cfg.addresses.chunk:
            raise UsageError(f"the slow node needs addresses.obs and a concrete addresses.chunk, got "
                             f"{cfg.addresses.obs!r} / {cfg.addresses.chunk!r}")
        torch.set_num_threads(cfg.slow.torch_threads)
        self.cfg = cfg
        if cfg.checkpoint is None:
            raise UsageError("the slow node needs checkpoint=RUN_DIR (a `python -m rdp.train` out directory)")
        self.planner = load_planner(cfg.checkpoint, task=cfg.task, num_inference_steps=cfg.slow.num_inference_steps,
                                    noise_scale=cfg.slow.noise_scale, seed=cfg.slow.noise_seed)
        run = self.planner.run
        if not 1 <= cfg.slow.replan_every <= self.planner.horizon:
            raise UsageError(f"slow.replan_every must be in [1, horizon={self.planner.horizon}], got "
                             f"{cfg.slow.replan_every}")
        self.rate_hz = float(run["rate_hz"])
        self.counts: Counter[str] = Counter()
        self.image_keys = self.planner.image_keys
        self.cameras = HeldFrame(run, cfg.slow.max_image_age_s, self.counts) if self.image_keys else None
        self.first_frame = FirstFrame(self.planner, self.counts) if self.planner.perception is not None else None
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=int(run["obs_steps"]))
        self.latest: dict[str, Message] = {}
        self.episode: int | None = None
        self.hist_step: int | None = None
        self.hist_stamp = 0.0
        self.hist_sim_time = 0.0  # the robot's sim_time of the newest history step
        self.hist_image_age: float | None = None  # age (s) of the frame the newest history step holds
        self.waiting_since: float | None = None  # an image policy's first step without a usable frame (monotonic)
        self.next_plan = 0
        self.last: tuple[torch.Tensor, np.ndarray, int] | None = None  # last chunk sent, its anchor, its obs step
        self.plans = 0
        self.hears_robot = False  # any message from the robot node yet (told to the fast node in "alive")
        self.infer = Window()
        self.image_age = Window()  # per plan
        self._stop = False
        self._ctx = client_context(cfg.secure.keys) if cfg.secure.enabled else None
        source = cfg.secure.slow_source
        self.sub: Subscriber | None = None
        self.pub: Publisher | None = None
        try:
            # "image" ahead of "episode": the robot has the image subscription once it has the episode one
            topics = (IMAGE_TOPIC, *OBS_TOPICS) if self.wants_images() else OBS_TOPICS
            self.sub = Subscriber(with_source(cfg.addresses.obs, source), topics=topics, hwm=20_000, ctx=self._ctx)
            self.pub = Publisher(with_source(cfg.addresses.chunk, source), bind=False, ctx=self._ctx)
        except Exception:
            self.close()
            raise

    def wants_images(self) -> bool:
        """Whether this node reads the robot's ``image`` topic (a subclass that watches the cameras says so)."""
        return bool(self.image_keys or self.first_frame)

    def warm_up(self) -> float:
        """One plan before the node says it is ready (``Planner.warm_up``). Returns ms."""
        return self.planner.warm_up()

    # ------------------------------------------------------------------------------------ lifecycle
    def stop(self, *_: object) -> None:
        self._stop = True

    def close(self) -> None:
        for sock in (self.sub, self.pub):
            if sock is not None:
                sock.close()
        if self._ctx is not None:
            self._ctx.destroy(linger=0)

    def run(self) -> None:
        heartbeat, stats = Every(self.cfg.slow.heartbeat_hz), Every(self.cfg.stats_hz)
        while not self._stop:
            msg = self.sub.recv(timeout=0.02)
            n = 0
            while msg is not None and n < MAX_BATCH:
                self._handle(msg)
                n += 1
                msg = self.sub.recv(timeout=0)
            if msg is not None:
                self._handle(msg)
            if self.episode is not None and self.hist_step is not None and self.hist_step >= self.next_plan:
                self._plan()
            if self.waiting_since is not None and time.monotonic() - self.waiting_since > self.cfg.slow.image_timeout_s:
                raise self._no_frames()
            if heartbeat():
                self._alive()
            if stats():
                emit(self.stats("stats"))

    def stats(self, event: str) -> dict:
        out = {"event": event, "node": "slow", "episode": self.episode, "plans": self.plans,
               "infer_ms": self.infer.summary(1e3, 3), "rejects": self.rejects(), **dict(self.counts)}
        if self.cameras is not None:
            out["image_age_ms"] = self.image_age.summary(1e3, 3)
        return out

    def rejects(self) -> dict[str, int]:
        return dict(Counter(self.sub.rejects) + Counter({k: v for k, v in self.counts.items() if k.startswith("rej_")}))

    # ------------------------------------------------------------------------------------ messages
    def _handle(self, msg: Message) -> None:
        self.hears_robot = True
        topic = msg.topic
        if topic in ("state", "tactile"):
            self.latest[topic] = msg
        elif topic == "wrench":
            self._on_observation(msg)
        elif topic == "episode":
            ep = msg.meta.get("episode")
            if msg.meta.get("event") == "reset" and type(ep) is int:
                self._new_episode(ep, msg.meta.get("seed"))
        elif topic == "status":
            ep = msg.meta.get("episode")
            if type(ep) is int and ep != self.episode:
                self._new_episode(ep, msg.meta.get("seed"))
        elif topic == IMAGE_TOPIC and self.wants_images():
            self._on_image(msg)
        else:  # a prefix match such as "statex"
            self.counts["rej_topic"] += 1

    def _on_image(self, msg: Message) -> None:
        if self.cameras is not None:
            self.cameras.offer(msg)
        if self.first_frame is not None:
            self.first_frame.offer(msg)

    def _new_episode(self, episode: int, seed: object) -> None:
        """Clear the history and draw this episode's noise as sim.eval does (``episode_noise_seed`` of the sampler
        seed and the episode's env seed; a robot that sends no seed gets the sampler seed alone, counted)."""
        self.episode = episode
        self.history.clear()
        self.hist_step = None
        self.next_plan = 0
        self.last = None
        self.waiting_since = None
        if self.cameras is not None:
            self.cameras.clear()  # frames of the last episode are never held in this one
        if self.first_frame is not None:
            self.first_frame.clear()
        if type(seed) is int and seed >= 0:  # SeedSequence refuses negative seeds
            self.planner.new_episode(seed)
        else:
            self.counts["episode_without_seed"] += 1
            self.planner.new_episode(None)
        self._alive()

    def _on_observation(self, wrench: Message) -> None:
        state, tactile = self.latest.get("state"), self.latest.get("tactile")
        if state is None or tactile is None or not state.seq == tactile.seq == wrench.seq:
            self.counts["unpaired"] += 1  # joined mid-tick, or a dropped message
            return
        sim_time = wrench.meta.get("sim_time")
        usable = isinstance(sim_time, float) and 0.0 <= sim_time < MAX_SIM_TIME_S
        if not usable or self.episode is None:
            self.counts["rej_meta" if not usable else "before_episode"] += 1
            return
        step = policy_step(sim_time, self.rate_hz)
        if self.hist_step is not None and step <= self.hist_step:
            return
        raw = {**state.arrays, **tactile.arrays, **wrench.arrays}
        if self.first_frame is not None and self.planner.scene_seen is None:  # the estimate is read off this frame
            frame = self.first_frame.at(sim_time)
            if frame is None:
                if self.waiting_since is None:
                    self.waiting_since = time.monotonic()
                return
            raw[self.first_frame.camera] = frame
            self.waiting_since = None
        try:
            features = self.planner.features(raw)
        except UNUSABLE_OBSERVATION as exc:
            self.counts["rej_schema"] += 1
            if self.counts["rej_schema"] == 1:
                log.warning("observation unusable (%s); further ones are only counted", exc)
            return
        if self.cameras is not None and not self._add_frames(features, sim_time):
            return
        if self.history:
            self.history.append(features)
        else:
            self.history.extend([features] * self.history.maxlen)
        self.hist_step, self.hist_stamp, self.hist_sim_time = step, wrench.stamp, sim_time

    def _add_frames(self, features: dict[str, np.ndarray], sim_time: float) -> bool:
        """Put the held camera frames into an observation step's features; False (counted, the wait clock running)
        when there is no usable frame for it."""
        assert self.cameras is not None
        frames, age = self.cameras.at(sim_time)
        if frames is None:
            if self.waiting_since is None:
                self.waiting_since = time.monotonic()
            return False
        features.update(frames)  # (H, W, 3) uint8 each, shared by the steps that hold the same frame
        self.hist_image_age = age
        self.waiting_since = None
        return True

    def _no_frames(self) -> UsageError:
        if self.cameras is None:
            assert self.first_frame is not None
            side = self.first_frame.side
            return UsageError(
                f"no usable camera frame for {self.cfg.slow.image_timeout_s:g} s of episode {self.episode} "
                f"({self.first_frame.problem}); the policy reads the scene off the episode's first "
                f"{self.first_frame.camera!r} ({side}x{side} camera): start the robot node with "
                f"{self.first_frame.how_to_start()}")
        return UsageError(
            f"no usable camera frame for {self.cfg.slow.image_timeout_s:g} s of episode {self.episode} "
            f"({self.cameras.problem}); the policy reads {list(self.image_keys)} "
            f"({_sizes(self.cameras.camera_size)} at {self.cameras.image_hz:g} Hz): start the robot node with "
            f"cameras=true camera_hz={self.cameras.image_hz:g} image_size={_side(self.cameras.camera_size)} "
            "(rdp.run does for such a policy)")

    # ------------------------------------------------------------------------------------ planning
    def _plan(self) -> None:
        step = self.hist_step
        anchor = np.ascontiguousarray(self.history[-1]["proprio"], dtype=np.float32)
        self._planning = (step, anchor, time.perf_counter(), 0)  # what _send stamps a chunk of this plan with
        guide = self._rtc_guide(step, anchor) if self.cfg.slow.handover == "rtc" and self.last is not None else {}
        chunk = self._choose(guide)
        if chunk is not None:
            self._send(chunk)
        self.counts["inpainted"] += bool(guide)
        self.plans += 1
        self.next_plan = step + self.cfg.slow.replan_every

    def _send(self, chunk: torch.Tensor) -> None:
        """Publish a chunk for the observation being planned on; a second one for it (a subclass's better pick)
        goes out as a higher ``revision``, which the fast node takes in place of the first."""
        step, anchor, t0, revision = self._planning
        infer_s = time.perf_counter() - t0
        if revision == 0:
            self.infer.add(infer_s)
        self.last = (chunk, anchor, step)
        arrays = {"chunk": np.ascontiguousarray(chunk.numpy(), dtype=np.float32), "anchor": anchor}
        meta = {"episode": self.episode, "obs_step": step, "start_step": step + self.cfg.slow.handover_steps,
                "obs_stamp": self.hist_stamp, "plan": self.plans, "infer_ms": round(infer_s * 1e3, 3)}
        if revision:
            meta["revision"] = revision
        if self.hist_image_age is not None:
            meta["image_age_ms"] = round(self.hist_image_age * 1e3, 3)
            if revision == 0:
                self.image_age.add(self.hist_image_age)
        self.pub.publish("chunk", arrays, meta=meta)
        self._planning = (step, anchor, t0, revision + 1)

    def _choose(self, guide: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The plan to send for the newest history step (a subclass may choose among several, and may send one
        itself with ``_send`` first; None: nothing more to send)."""
        return self.planner.plan(self.history, guide)

    def _rtc_guide(self, step: int, anchor: np.ndarray) -> dict[str, torch.Tensor]:
        """Inpainting inputs continuing the last chunk sent (the fast node runs it, latency-matched, from its obs
        step): pinned are the steps until this chunk takes over: ``handover_steps``, or in realtime the typical
        inference time rounded up to whole steps when that is longer (the chunk takes over at the first step it is
        both allowed and there)."""
        assert self.last is not None
        prev, prev_anchor, prev_step = self.last
        frozen = self.cfg.slow.handover_steps
        p50 = self.infer.summary()["p50"]
        if self.cfg.mode == "realtime" and p50 is not None:
            frozen = max(frozen, math.ceil(float(p50) * self.rate_hz))
        return self.planner.rtc_prefix(prev, prev_anchor, step - prev_step, anchor, frozen, self.history[-1])

    def _alive(self) -> None:
        self.pub.publish("alive", meta={"episode": -1 if self.episode is None else self.episode, "plans": self.plans,
                                        "rejects": sum(self.rejects().values()), "pid": os.getpid(),
                                        "robot": self.hears_robot})


class HeldFrame:
    """An image policy's camera input: the newest frame the robot sent, resized once as in training when the first
    observation step takes it, and the rule for which steps may hold it (at or before the step, at most
    ``max_age_s`` old). Counts into the node's counters; ``problem`` says why the last step got no frame."""

    def __init__(self, run: dict[str, Any], max_age_s: float, counts: Counter[str]) -> None:
        self.image_keys = tuple(run["image_keys"])
        self.image_size = run.get("image_size")
        self.camera_size = {k: tuple(run["camera_size"][k]) for k in self.image_keys}
        self.image_hz = camera_rate(run)
        if max_age_s < 1.0 / self.image_hz:
            raise UsageError(f"slow.max_image_age_s={max_age_s:g} is below one camera period of this policy "
                             f"({1.0 / self.image_hz:g} s at {self.image_hz:g} Hz): the frames training held would "
                             "be refused")
        self.max_age_s = max_age_s
        self.counts = counts
        self._problem = "no image message since the reset"
        self._new: Message | None = None  # the newest frame message, not yet taken by a step
        self._seq: int | None = None
        self.frames: dict[str, np.ndarray] | None = None  # resized; every step since it was taken holds it
        self.sim_time = 0.0

    @property
    def problem(self) -> str:
        return "no image message received at all" if not self.counts["images"] else self._problem

    def clear(self) -> None:
        """A new episode: nothing the last one sent is held."""
        self._new, self.frames = None, None
        self._problem = "no image message since the reset"

    def offer(self, msg: Message) -> None:
        """A frame message from the robot: kept if it is the newest; a gap in its ``seq`` counts lost frames."""
        self.counts["images"] += 1
        if self._seq is not None and msg.seq > self._seq + 1:
            self.counts["images_dropped"] += msg.seq - self._seq - 1
        self._seq = msg.seq
        if self._new is not None:
            self.counts["images_dropped"] += 1  # superseded before any step held it
        self._new = msg

    def at(self, sim_time: float) -> tuple[dict[str, np.ndarray] | None, float]:
        """The frames the observation step at ``sim_time`` holds and their age (s); None when it may hold none
        (counted: ``awaiting_image`` or ``rej_image_age``; the first refusal of a kind is logged)."""
        if self._new is not None:
            msg, self._new = self._new, None
            frames = self._read(msg)
            if frames is not None:
                self.frames, self.sim_time = frames, float(msg.meta["sim_time"])
            else:
                self._refuse("rej_image")
        if self.frames is None:
            self.counts["awaiting_image"] += 1
            return None, math.nan
        age = sim_time - self.sim_time
        if not 0.0 <= age <= self.max_age_s:
            self._problem = (f"the newest frame (sim time {self.sim_time:.3f} s) is {age * 1e3:.0f} ms old at the "
                             f"observation of {sim_time:.3f} s; slow.max_image_age_s={self.max_age_s:g}")
            self._refuse("rej_image_age")
            return None, age
        return self.frames, age

    def _refuse(self, kind: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] == 1:
            log.warning("%s; further ones are only counted as %s", self._problem, kind)

    def _read(self, msg: Message) -> dict[str, np.ndarray] | None:
        """A frame message -> {key: (image_size, image_size, 3) uint8}, resized as in training; None (the reason in
        ``problem``) for one the policy cannot read."""
        t = msg.meta.get("sim_time")
        if not (isinstance(t, float) and 0.0 <= t < MAX_SIM_TIME_S):
            self._problem = f"an image with meta sim_time {t!r:.40}, expected seconds since the reset"
            return None
        for key in self.image_keys:
            a = msg.arrays.get(key)
            if a is not None and (a.dtype != np.uint8 or a.shape != (*self.camera_size[key], 3)):
                self._problem = (f"{key} frames are {a.dtype} {a.shape}, the policy was trained on uint8 "
                                 f"{(*self.camera_size[key], 3)}")
                return None
        try:
            return obs_images(msg.arrays, self.image_keys, self.image_size)
        except KeyError as exc:
            self._problem = str(exc.args[0]) if exc.args else str(exc)
            return None


class FirstFrame:
    """A perception policy's camera input (``rdp.perception``): the episode's first frame from the robot (its
    ``scene_rgb`` image, or its ``scene_points`` cloud for a point-cloud head), which the planner reads the scene
    estimate off at the episode's first observation step, as training read it off the episode's first recorded
    frame. Later frames are not needed (only counted)."""

    def __init__(self, planner: Any, counts: Counter[str]) -> None:
        cfg = planner.perception.cfg
        self.camera = planner.perception_camera
        self.side = int(cfg.image_size)
        self.points = cfg.encoder == "pointnet"
        self.shape = (int(cfg.points), 3) if self.points else (self.side, self.side, 3)
        self.dtype = np.dtype(np.float32 if self.points else np.uint8)
        self.counts = counts
        self.frame: np.ndarray | None = None
        self.sim_time = 0.0
        self.problem = "no image message since the reset"

    def clear(self) -> None:
        self.frame, self.problem = None, "no image message since the reset"

    def offer(self, msg: Message) -> None:
        self.counts["images"] += 1
        if self.frame is not None:
            return
        t, a = msg.meta.get("sim_time"), msg.arrays.get(self.camera)
        if not (isinstance(t, float) and 0.0 <= t < MAX_SIM_TIME_S):
            self.problem = f"an image with meta sim_time {t!r:.40}, expected seconds since the reset"
        elif a is None or a.dtype != self.dtype or a.shape != self.shape or (self.points and not np.isfinite(a).all()):
            got = "none" if a is None else f"{a.dtype} {a.shape}"
            self.problem = f"{self.camera} is {got}, the perception head reads {self.dtype} {self.shape}"
        else:
            self.frame, self.sim_time = a, t
            return
        self.counts["rej_image"] += 1
        if self.counts["rej_image"] == 1:
            log.warning("%s; further ones are only counted as rej_image", self.problem)

    def at(self, sim_time: float) -> np.ndarray | None:
        """The episode's first frame if it is not from after ``sim_time``, else None (counted)."""
        if self.frame is None or self.sim_time > sim_time:
            self.counts["awaiting_image"] += 1
            return None
        return self.frame

    def how_to_start(self) -> str:
        return (f"cameras=true image_size={self.side}" + (" point_cloud=true" if self.points else ""))


def _sizes(camera_size: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{k} {h}x{w}" for k, (h, w) in camera_size.items())


def _side(camera_size: dict[str, tuple[int, int]]) -> int:
    return next(iter(camera_size.values()))[0]


def serve(argv: Sequence[str] | None, node_class: type[SlowNode], **ready: Any) -> int:
    """Run a slow node (or a subclass: the warm standby) as a process (``bus.node.serve``); the ready line comes
    after the warm-up.

    ``ready`` adds fields to the ready record. A node class with an ``activate`` method gets it as the SIGUSR1
    handler, installed before the ready line (the launcher signals only a standby that said it is ready)."""
    cfg = load_config(node_args(argv), doc=sys.modules[node_class.__module__].__doc__)
    log_to_stderr()
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # imported with the sim adapters; its INFO line is noise
    if cfg.slow.nice:
        os.nice(cfg.slow.nice)  # planning may wait a little; the fast loop and the robot must not
    node = node_class(cfg)

    def _ready() -> dict[str, Any]:
        warmup_ms = node.warm_up()
        return {"event": "ready", "node": "slow", **ready, "pid": os.getpid(), "chunk": cfg.addresses.chunk,
                "chunk_shape": list(node.planner.plan_shape), "warmup_ms": round(warmup_ms, 1)}

    signals = {signal.SIGUSR1: node.activate} if hasattr(node, "activate") else {}
    return run_node(node, _ready, lambda _: node.stats("exit"), signals=signals)


@command("rdp.runtime.slow")
def main(argv: Sequence[str] | None = None) -> int:
    return serve(argv, SlowNode)


if __name__ == "__main__":
    sys.exit(main())
