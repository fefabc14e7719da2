"""The slow node: the latent diffusion policy (or the DP baseline) planning chunks from live observations.

    python -m rdp.runtime.slow checkpoint=RUN addresses.obs=ROBOT_PUB addresses.chunk=FAST_CHUNK [...]

Reads the robot node's ``state`` / ``tactile`` / ``wrench`` (one observation = the three messages of one node tick,
same ``seq``) and keeps the observation of every training-rate step (``rdp.runtime.chunks``), the last ``To`` of them
as the policy's history (padded by repetition at an episode's start, as in training). It plans at the first step
``>= last plan + replan_every`` it has seen: in lockstep that is exactly every ``replan_every`` steps (the fast node
waits for it); in realtime, when inference is slower than that, it plans on the newest observation as soon as it is
free. Each chunk goes to the fast node stamped with its observation step, episode and take-over step.

Episodes: the robot node's ``episode`` reset events (and, for a node started mid-episode, the episode counter of its
``status`` messages) clear the history and give the sampler the episode's own noise (``episode_noise_seed`` of
``slow.noise_seed`` and the episode's env seed, as sim.eval), so a lockstep run is reproducible and repeats sim.eval.
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
from rdp.inference import UNUSABLE_OBSERVATION
from rdp.runtime.chunks import policy_step
from rdp.runtime.config import RuntimeConfig, load_config
from rdp.runtime.curve import client_context, with_source
from rdp.runtime.timing import Every, Window, emit

log = logging.getLogger("rdp.runtime.slow")
OBS_TOPICS = ("state", "tactile", "wrench", "episode", "status")
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
        if self.planner.image_keys:
            raise UsageError(f"{cfg.checkpoint}: this run's policy sees cameras {list(self.planner.image_keys)}; the "
                             "runtime's slow node plans from state, touch and wrench only (train without cameras)")
        self.rate_hz = float(run["rate_hz"])
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=int(run["obs_steps"]))
        self.latest: dict[str, Message] = {}
        self.episode: int | None = None
        self.hist_step: int | None = None
        self.hist_stamp = 0.0
        self.next_plan = 0
        self.last: tuple[torch.Tensor, np.ndarray, int] | None = None  # last chunk sent, its anchor, its obs step
        self.plans = 0
        self.hears_robot = False  # any message from the robot node yet (told to the fast node in "alive")
        self.infer = Window()
        self.counts: Counter[str] = Counter()
        self._stop = False
        self._ctx = client_context(cfg.secure.keys) if cfg.secure.enabled else None
        source = cfg.secure.slow_source
        self.sub: Subscriber | None = None
        self.pub: Publisher | None = None
        try:
            self.sub = Subscriber(with_source(cfg.addresses.obs, source), topics=OBS_TOPICS, hwm=20_000, ctx=self._ctx)
            self.pub = Publisher(with_source(cfg.addresses.chunk, source), bind=False, ctx=self._ctx)
        except Exception:
            self.close()
            raise

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
            if heartbeat():
                self._alive()
            if stats():
                emit(self.stats("stats"))

    def stats(self, event: str) -> dict:
        return {"event": event, "node": "slow", "episode": self.episode, "plans": self.plans,
                "infer_ms": self.infer.summary(1e3, 3), "rejects": self.rejects(), **dict(self.counts)}

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
        else:  # a prefix match such as "statex"
            self.counts["rej_topic"] += 1

    def _new_episode(self, episode: int, seed: object) -> None:
        """Clear the history and draw this episode's noise as sim.eval does (``episode_noise_seed`` of the sampler
        seed and the episode's env seed; a robot that sends no seed gets the sampler seed alone, counted)."""
        self.episode = episode
        self.history.clear()
        self.hist_step = None
        self.next_plan = 0
        self.last = None
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
        try:
            features = self.planner.features({**state.arrays, **tactile.arrays, **wrench.arrays})
        except UNUSABLE_OBSERVATION as exc:
            self.counts["rej_schema"] += 1
            if self.counts["rej_schema"] == 1:
                log.warning("observation unusable (%s); further ones are only counted", exc)
            return
        if self.history:
            self.history.append(features)
        else:
            self.history.extend([features] * self.history.maxlen)
        self.hist_step, self.hist_stamp = step, wrench.stamp

    # ------------------------------------------------------------------------------------ planning
    def _plan(self) -> None:
        step = self.hist_step
        anchor = np.ascontiguousarray(self.history[-1]["proprio"], dtype=np.float32)
        t0 = time.perf_counter()
        guide = self._rtc_guide(step, anchor) if self.cfg.slow.handover == "rtc" and self.last is not None else {}
        chunk = self.planner.plan(self.history, guide)
        infer_s = time.perf_counter() - t0
        self.infer.add(infer_s)
        self.counts["inpainted"] += bool(guide)
        self.last = (chunk, anchor, step)
        arrays = {"chunk": np.ascontiguousarray(chunk.numpy(), dtype=np.float32), "anchor": anchor}
        self.pub.publish("chunk", arrays, meta={
            "episode": self.episode, "obs_step": step, "start_step": step + self.cfg.slow.handover_steps,
            "obs_stamp": self.hist_stamp, "plan": self.plans, "infer_ms": round(infer_s * 1e3, 3),
        })
        self.plans += 1
        self.next_plan = step + self.cfg.slow.replan_every

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
