"""The planning slow node: the runtime's slow node with a world-model planner choosing its plans.

    python -m rdp.run task=wipe policy=rdp_perception planning.enabled=true [planning.memory=false] [mode=lockstep]

``rdp.run`` starts it (and ``world_model.runtime_standby``, its warm spare) in place of ``rdp.runtime.slow`` when
``planning.enabled``, beside a planner node (``world_model.node``) whose address it gets as ``addresses.planner``.
It is ``rdp.runtime.slow.SlowNode`` in everything (observations, episodes, chunks, heartbeats, images the policy
reads) but how a plan is made, which is ``world_model.task_plan``'s rule in sim.eval:

* It also reads the robot's ``image`` topic for ``planning.camera`` (the robot node renders it at
  ``planning.camera_hz``) and pairs each frame with the TCP of the robot's ``state`` at the frame's ``sim_time``
  (``CameraFeed``; in lockstep a tick's frame comes before its state, in realtime after it).
* At every plan it sends the planner the frames up to the observation it plans on (and the TCP displacement into
  each), then the policy's own plan and ``planning.candidates - 1`` samples as the TCP displacements into each of the
  next ``frames_ahead`` camera frames; the planner imagines and scores them; the best goes to the fast node (a sample
  only when it beats the policy's own plan by more than ``planning.margin``).
* ``planning.early`` (default: in realtime): the policy's own plan goes to the fast node as soon as it is made, and
  the planner's pick follows as a higher ``revision`` of the same observation's chunk only when it is a sample; the
  fast node takes it in place of the first, latency-matched (the steps that passed meanwhile skipped). A decision
  takes ~1 s on 2 cores, longer than what is left of a chunk that waited for it (the fast node would run out and
  hold). In lockstep the fast node waits for the decision, as ``sim.eval policy=wm_plan`` does.
* Episodes: the planner's memory is reset with the robot's episode and seed. A slow node that takes over mid-episode
  (a warm standby: it followed the frames all along) asks the planner how far its memory goes (``status``) and sends
  only the frames after that, so the episode's memory is kept (also when it joined the episode just after the
  planner's last frame, with the TCP there); one that cannot (a cold restart, which missed frames)
  resets it (counted as the stats' ``planner.memory_lost``).
* Faults: a planner that answers an error, gives no answer within ``planning.timeout_s`` or is gone: the policy's
  own plan goes to the fast node at once, the node plans alone for ``planning.retry_s`` and then asks again (counted
  as ``planner.errors_timeout`` / ``errors_error``, the first of each kind logged). A frame or state it cannot read
  is refused (counted).

Its stats records carry a ``planner`` field: decisions, how often a sample replaced the policy's own plan, decision
time (p50 / p99 / max ms), frames sent, errors, take-overs that kept or lost the memory.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bus.cli import UsageError, command
from bus.message import Message
from rdp.runtime.config import RuntimeConfig
from rdp.runtime.slow import MAX_SIM_TIME_S, SlowNode, serve
from rdp.runtime.standby import StandbySlowNode
from rdp.runtime.timing import Window
from world_model.node import RemotePlanner
from world_model.task_plan import PlanChooser, check_plannable, frame_moves, run_info, shipped

log = logging.getLogger("world_model.runtime")
OBSERVE_BATCH = 128  # frames per observe request (the planner node takes up to its max_observe_frames, 256)
STATE_MEMORY = 1000  # robot states kept for pairing frames (4 s at 250 Hz: a realtime render is done long before)


class CameraFeed:
    """An episode's camera frames for the planner, in order, each with the TCP at its ``sim_time`` (the robot's
    state of that tick; the nearest one within half a camera period when that exact one was missed). ``counts``:
    the node's counters (``rej_planner_image`` / ``rej_planner_state`` / ``planner_frames_unpaired``)."""

    def __init__(self, camera: str, image_size: int, camera_hz: float, counts: Counter[str]) -> None:
        self.camera, self.image_size, self.camera_hz, self.counts = camera, image_size, camera_hz, counts
        self.clear()

    def clear(self) -> None:
        self.states: deque[tuple[float, np.ndarray]] = deque(maxlen=STATE_MEMORY)
        self.pending: deque[tuple[float, np.ndarray]] = deque()
        self.times: list[float] = []
        self.frames: list[np.ndarray] = []
        self.tcps: list[np.ndarray] = []
        self.origin: np.ndarray | None = None  # the TCP the first frame's move is from (None: a zero move)

    def offer_state(self, msg: Message) -> None:
        t, tcp = msg.meta.get("sim_time"), msg.arrays.get("tcp_pos")
        if not (isinstance(t, float) and 0.0 <= t < MAX_SIM_TIME_S) or tcp is None or tcp.dtype.kind != "f" \
                or tcp.ndim != 2 or tcp.shape[1] != 3 or not np.isfinite(tcp).all():
            self.counts["rej_planner_state"] += 1
            return
        if self.states and t <= self.states[-1][0]:
            return  # a repeat or an earlier tick
        self.states.append((t, np.asarray(tcp, np.float32).reshape(-1)))
        self._pair()

    def offer_image(self, msg: Message) -> None:
        from rdp.data import resize_images

        t, frame = msg.meta.get("sim_time"), msg.arrays.get(self.camera)
        if not (isinstance(t, float) and 0.0 <= t < MAX_SIM_TIME_S) or frame is None or frame.dtype != np.uint8 \
                or frame.ndim != 3 or frame.shape[2] != 3 or min(frame.shape[:2]) < 1:
            self.counts["rej_planner_image"] += 1
            if self.counts["rej_planner_image"] == 1:
                got = "none" if frame is None else f"{frame.dtype} {frame.shape}"
                log.warning("an image without a usable %r frame (%s, sim_time %r); further ones are only counted",
                            self.camera, got, t)
            return
        last = self.pending[-1][0] if self.pending else (self.times[-1] if self.times else -1.0)
        if t <= last:
            return  # not newer than a frame already held
        self.pending.append((t, resize_images(frame, self.image_size)))
        self._pair()

    def _pair(self) -> None:
        """Frames whose state has come (the newest state is at or after them) join the feed with its TCP."""
        while self.states and self.pending and self.pending[0][0] <= self.states[-1][0]:
            t, frame = self.pending.popleft()
            tcp = self.tcp_at(t)
            if tcp is None:
                self.counts["planner_frames_unpaired"] += 1
                continue
            self.times.append(t)
            self.frames.append(frame)
            self.tcps.append(tcp)

    def tcp_at(self, t: float) -> np.ndarray | None:
        """The TCP of the robot state nearest to sim time ``t``, if one within half a camera period was kept."""
        if not self.states:
            return None
        ts, tcp = min(self.states, key=lambda s: abs(s[0] - t))
        return tcp if abs(ts - t) <= 0.5 / self.camera_hz else None

    def resume_after(self, until: float) -> int | None:
        """Where this feed goes on from a memory whose last frame was at ``until``: the index of the next frame to
        send; None when it cannot (it lacks the frames right after ``until``, or the TCP there for the first move)."""
        held = self.index_of(until)
        if held is not None:
            return held + 1
        if self.times and until < self.times[0] <= until + 1.5 / self.camera_hz:  # joined just after that frame
            self.origin = self.tcp_at(until)
            return 0 if self.origin is not None else None
        return None
    def upto(self, sim_time: float) -> int:
        """How many frames are at or before ``sim_time``."""
        n = len(self.times)
        while n and self.times[n - 1] > sim_time:
            n -= 1
        return n

    def index_of(self, t: float) -> int | None:
        for i in range(len(self.times) - 1, -1, -1):
            if self.times[i] == t:
                return i
        return None

    def batch(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames [start, end) and the TCP displacement into each (into the feed's first frame: from ``origin``,
        zero without one)."""
        before = self.tcps[start - 1] if start else (self.origin if self.origin is not None else self.tcps[0])
        moves = np.diff(np.stack([before, *self.tcps[start:end]]), axis=0)
        return np.stack(self.frames[start:end]), moves.astype(np.float32)


class Planning:
    """The planning behaviour, mixed in ahead of ``SlowNode`` (or ``StandbySlowNode``); see the module docstring."""

    # set by SlowNode.__init__
    cfg: RuntimeConfig
    planner: Any
    counts: Counter[str]
    history: deque
    episode: int | None
    hist_step: int | None
    hist_sim_time: float
    rate_hz: float

    def __init__(self, cfg: RuntimeConfig) -> None:
        super().__init__(cfg)  # type: ignore[call-arg]
        p = cfg.planning
        if not cfg.addresses.planner:
            raise UsageError("the planning slow node needs addresses.planner (rdp.run planning.enabled=true starts "
                             "a planner node and passes it)")
        info = run_info(p.run or shipped(cfg.task, "model"))
        check_plannable(self.planner, self.planner.run, int(info["action_dim"]))
        self.chooser = PlanChooser(p.candidates, p.proposal_noise, p.margin)
        self.feed = CameraFeed(p.camera, int(info["image_size"]), p.camera_hz, self.counts)
        self.remote = RemotePlanner(cfg.addresses.planner, timeout_s=p.timeout_s)
        self.early = p.early if p.early is not None else cfg.mode == "realtime"
        self.episode_seed = 0
        self.sent = 0  # feed frames the planner holds of this episode
        self.synced = False  # the planner's memory is known to be this episode's
        self.down_until = -math.inf  # monotonic time before which the node plans alone
        self.decide_s = Window()
        self.planner_counts: Counter[str] = Counter()

    def wants_images(self) -> bool:
        return True

    def close(self) -> None:
        remote = getattr(self, "remote", None)
        if remote is not None:
            remote.close()
        super().close()  # type: ignore[misc]

    def _handle(self, msg: Message) -> None:
        super()._handle(msg)  # type: ignore[misc]
        if msg.topic == "state" and self.episode is not None:
            self.feed.offer_state(msg)

    def _on_image(self, msg: Message) -> None:
        super()._on_image(msg)  # type: ignore[misc]
        if self.episode is not None:
            self.feed.offer_image(msg)

    def _new_episode(self, episode: int, seed: object) -> None:
        super()._new_episode(episode, seed)  # type: ignore[misc]
        self.feed.clear()
        self.episode_seed = seed if type(seed) is int and seed >= 0 else 0
        self.sent, self.synced = 0, False

    def stats(self, event: str) -> dict:
        out = super().stats(event)  # type: ignore[misc]
        out["planner"] = {**dict(self.planner_counts), "decide_ms": self.decide_s.summary(1e3, 3)}
        return out

    def _choose(self, guide: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if time.monotonic() < self.down_until:
            self.planner_counts["alone"] += 1
            return self.planner.plan(self.history, guide)
        t0 = time.perf_counter()
        own = self.planner.plan(self.history, guide)
        if self.early:  # the fast node gets the policy's own plan now; the planner's pick replaces it if it differs
            self._send(own)
        plans = [own, *self.chooser.samples(self.planner, self.history, guide)]
        try:
            if not self._send_frames():
                self.planner_counts["no_frame_yet"] += 1
                return None if self.early else own
            p = self.cfg.planning
            targets = self.chooser.targets(self.planner, plans, self.history)
            moves = frame_moves(targets, self.feed.tcps[self.sent - 1], self.hist_step / self.rate_hz,
                                self.rate_hz, p.camera_hz, p.frames_ahead)
            decision = self.remote.decide(moves, imagined=False)
        except (TimeoutError, UsageError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "error"
            self.planner_counts[f"errors_{kind}"] += 1
            if self.planner_counts[f"errors_{kind}"] == 1:
                log.warning("planner %s (%s); the policy's own plan goes out, planning alone for %g s (further ones "
                            "only counted)", kind, exc, self.cfg.planning.retry_s)
            self.down_until = time.monotonic() + self.cfg.planning.retry_s
            self.synced = False  # its memory may have missed frames: ask again before trusting it
            return None if self.early else own
        best = self.chooser.pick(decision.scores)
        self.planner_counts["decisions"] += 1
        self.planner_counts["replaced"] += int(best != 0)
        self.decide_s.add(time.perf_counter() - t0)
        return None if self.early and best == 0 else plans[best]

    def _send_frames(self) -> bool:
        """The planner's memory made this episode's (``status``, else ``reset``), then every frame up to the
        observation being planned on sent. False when there is still no frame to plan from."""
        if not self.synced:
            status = self.remote.status()
            until = status.get("until")
            resume = self.feed.resume_after(until) if isinstance(until, float) else None
            if status.get("episode") == self.episode and resume is not None:
                self.sent = resume  # a take-over: the memory goes on
                self.planner_counts["memory_kept"] += 1
            else:
                if status.get("episode") == self.episode and status.get("frames"):
                    self.planner_counts["memory_lost"] += 1
                    span = f"{self.feed.times[0]:.3f}-{self.feed.times[-1]:.3f} s" if self.feed.times else "none"
                    log.warning("the planner's memory of episode %s reaches sim time %s; this node cannot go on from "
                                "there (it holds frames %s); it starts again from this node's frames", self.episode,
                                until, span)
                self.remote.reset(seed=self.episode_seed, episode=self.episode)
                self.sent = 0
            self.synced = True
        n = self.feed.upto(self.hist_sim_time)
        while n > self.sent:  # in requests of at most OBSERVE_BATCH frames (a take-over late in an episode)
            end = min(n, self.sent + OBSERVE_BATCH)
            frames, moves = self.feed.batch(self.sent, end)
            self.remote.observe(frames, moves, until=self.feed.times[end - 1])
            self.planner_counts["frames_sent"] += end - self.sent
            self.sent = end
        return self.sent > 0


class PlanningSlowNode(Planning, SlowNode):
    pass


class PlanningStandbyNode(Planning, StandbySlowNode):
    """The planning slow node's warm spare: it follows the frames too, but talks to the planner only once it takes
    over (then ``status`` tells it where the memory stands)."""


@command("world_model.runtime")
def main(argv: Sequence[str] | None = None) -> int:
    return serve(argv, PlanningSlowNode, planning=True)


if __name__ == "__main__":
    sys.exit(main())
