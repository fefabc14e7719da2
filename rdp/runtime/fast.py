"""The fast node: executes the slow node's chunks against live touch and commands the robot at a fixed rate.

    python -m rdp.runtime.fast checkpoint=RUN addresses.robot_pub=... addresses.robot_cmd=... [mode=lockstep ...]

Per loop iteration (``fast.cmd_hz`` in realtime; one robot control step in lockstep) it takes the newest
``state`` / ``tactile`` / ``wrench``; when a new training-rate step begins it embeds the tactile reading, hands over
to a newer chunk if one is due (latest wins; actions whose step has passed are skipped, the tokenizer's GRU being
stepped through them on the tactile readings of those steps), and runs **one** ``AsymmetricTokenizer.step`` on the
newest reading (dp: indexes the action chunk). Between steps the action is held; every iteration sends it as a
``cmd`` (meta: step, tactile_stamp, plan). After the command is out, a pending chunk is *staged*: started in a
decoding context of its own and stepped through the steps that already passed, so the hand-over step costs one
decoder step instead of a catch-up burst that would make that command late (stats ``stage_ms``, count ``staged``).
When the slow node is late the current chunk keeps running; when it runs out the robot is held:
``fast.hold=pose`` keeps commanding the pose measured at that moment, ``silence`` stops sending so that the robot
node's watchdog holds.

Modes share all of this; only the link to the robot differs (``RealtimeLink``: a ``RateKeeper`` on the wall clock,
commands on the robot's cmd socket; ``LockstepLink``: one ``tick`` request per control step carrying the command,
then the observations of that step; and in lockstep the node waits for each chunk that is due, which makes runs
reproducible). The fast node also runs the episodes: reset with ``seed + k`` (the first reset only once the slow
node's heartbeat says it is up and, in realtime, receives the robot: a realtime robot's clock runs from its reset),
wait until the robot and the slow node confirm the new episode, run until the robot reports the end (or
``max_episode_s``), report, repeat.

stdout: a JSON ready record, stats lines at ``stats_hz``, one ``episode`` record per episode, an exit record.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bus.cli import UsageError, command
from bus.clock import DEFAULT_SPIN_S, PhaseLock, RateKeeper
from bus.message import Message
from bus.node import log_to_stderr, node_args, serve
from bus.sched import current_policy, set_fifo
from bus.transport import Client, Publisher, Subscriber
from rdp.api import load_decoder
from rdp.inference import UNUSABLE_OBSERVATION
from rdp.runtime.chunks import ChunkRejected, ChunkSlot, StepRing, parse_chunk, policy_step
from rdp.runtime.config import RuntimeConfig, load_config
from rdp.runtime.curve import CurveServer
from rdp.runtime.slow import MAX_SIM_TIME_S
from rdp.runtime.timing import Every, LoopGc, Trace, Window, emit
from spatial.rotations import matrix_to_rotvec, quat_to_matrix

log = logging.getLogger("rdp.runtime.fast")
# Busy-wait before each tick under SCHED_FIFO: the kernel wakes a FIFO thread from sleep within ~0.07 ms p99 (an
# ordinary one can be milliseconds late: bus.clock.DEFAULT_SPIN_S), so 0.2 ms of spinning keeps the tick exact while
# leaving the cores 0.8 ms per tick more for the slow node and the robot.
FIFO_SPIN_MS = 0.2
ROBOT_TOPICS = ("state", "tactile", "wrench")
STAGE_STEPS_PER_TICK = 4  # realtime: decoder steps a tick may spend staging a late pending chunk (~0.3 ms each)
START_CONFIRM_S = 1.0  # first wait for the slow node's confirmation of an episode (see FastNode._start_episode)


class Stopped(Exception):
    """SIGINT/SIGTERM arrived while waiting."""


def hold_target(state: Message) -> np.ndarray:
    """(A, 7) command that keeps the robot at the pose ``state`` reports (position, rotation vector, width)."""
    a = state.arrays
    rotvec = matrix_to_rotvec(quat_to_matrix(a["tcp_quat"]))
    return np.concatenate([a["tcp_pos"], rotvec, a["gripper_width"][:, None]], axis=1).astype(np.float64)


# ----------------------------------------------------------------------------------------------- links
class RealtimeLink:
    """The robot node in realtime: wall-clock rate, commands on its cmd socket, episode events on its PUB."""

    def __init__(self, cfg: RuntimeConfig) -> None:
        a = cfg.addresses
        spin_ms = cfg.fast.spin_ms
        if spin_ms is None:
            spin_ms = FIFO_SPIN_MS if current_policy() == "fifo" else DEFAULT_SPIN_S * 1e3
        self.rate = RateKeeper(cfg.fast.cmd_hz, spin_s=spin_ms * 1e-3)
        self.prewarm_s = (cfg.fast.prewarm_ms or 0.0) * 1e-3
        lead = cfg.fast.phase_lead_ms
        self.phase = PhaseLock(self.rate, lead * 1e-3) if lead is not None else None
        self.tactile_age = Window()  # age of the newest reading at each tick that got a new one
        self._tactile_seq = -1
        self.obs = Subscriber(a.robot_pub, topics=ROBOT_TOPICS, conflate=True)
        self.events = Subscriber(a.robot_pub, topics=("episode",))
        self.cmd = Publisher(a.robot_cmd, bind=False, copy=True)
        self.done: dict[str, Any] | None = None
        self.started: dict[str, Any] = {}  # the meta of the robot's reset that began the current episode
        self.episode = -1  # the robot's newest episode known here
        self._pub_address = a.robot_pub
        self._seed = None

    def connect(self, timeout: float) -> None:
        """The robot hears our commands, and we know its current episode (from its status): a reset event it
        published before ours (its start-up reset, with the same seed) is then never taken for ours."""
        end = time.monotonic() + timeout
        if not self.cmd.wait_for_subscriber("cmd", timeout=timeout):
            raise TimeoutError(f"the robot node's command socket {self.cmd.address} never subscribed")
        with Subscriber(self._pub_address, topics=("status",)) as status:
            while (left := end - time.monotonic()) > 0:
                msg = status.recv(timeout=left)
                if msg is not None and type(msg.meta.get("episode")) is int:
                    self.episode = msg.meta["episode"]
                    return
        raise TimeoutError(f"no status message from the robot node at {self._pub_address} within {timeout} s")

    def reset(self, seed: int, timeout: float) -> int | None:
        """Ask for a new episode; its number once the robot's reset event arrived, None on timeout.

        Sent once: a second request before the robot answered the first would reset it again under a running
        episode. The robot's episode numbers only grow, so an older reset event is never taken for this one."""
        self.done, self._seed = None, seed
        self.cmd.publish("reset", meta={"seed": seed})
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            msg = self.events.recv(timeout=left)
            if msg is None or msg.meta.get("event") != "reset" or msg.meta.get("seed") != seed:
                continue
            episode = msg.meta.get("episode")
            if type(episode) is int and episode > self.episode:
                self.episode, self.started = episode, dict(msg.meta)
                self.obs.drain()
                self.obs.latest.clear()  # observations of the old episode
                self.rate.reset()
                if self.phase is not None:
                    self.phase.snap()
                return episode
        return None

    def observe(self, warm: Callable[[], None] | None = None) -> None:
        """Wait for the next tick and take the newest readings. ``warm``: run it ``fast.prewarm_ms`` before the tick
        (the coming tick starts a policy step; see ``FastNode._rehearse``)."""
        if warm is not None and self.prewarm_s:
            at = self.rate.next_deadline - self.prewarm_s
            if self.rate.clock.now() < at:
                self.rate.clock.sleep_until(at)
                warm()
        self.rate.sleep()
        self.obs.drain()
        tactile = self.obs.latest.get("tactile")
        if tactile is not None and tactile.seq != self._tactile_seq:
            self._tactile_seq = tactile.seq
            wake = self.rate.last_wake
            self.tactile_age.add(wake - tactile.stamp)
            if self.phase is not None:
                self.phase.update(wake, tactile.stamp)
        msg = self.events.recv(timeout=0)
        if msg is not None and msg.meta.get("event") == "end":
            self.done = dict(msg.meta)

    def command(self, target: np.ndarray | None, meta: dict) -> None:
        if target is not None:
            self.cmd.publish("cmd", {"target": target}, meta)

    def close(self) -> None:
        for s in (self.obs, self.events, self.cmd):
            s.close()


class LockstepLink:
    """The robot node in lockstep: one ``tick`` request per control step, carrying the command decided last."""

    def __init__(self, cfg: RuntimeConfig) -> None:
        a = cfg.addresses
        if not a.robot_tick:
            raise UsageError("mode=lockstep needs addresses.robot_tick (the robot node's tick server)")
        self.rate = None
        self.obs = Subscriber(a.robot_pub, topics=ROBOT_TOPICS, conflate=True, hwm=100_000)
        self.events = Subscriber(a.robot_pub, topics=("episode",))
        self.client = Client(a.robot_tick)
        self.pending: np.ndarray | None = None
        self.done: dict[str, Any] | None = None
        self.started: dict[str, Any] = {}  # the meta of the robot's reset that began the current episode
        self._reply: Message | None = None

    def connect(self, timeout: float) -> None:
        """Wait until the robot node sees our subscriptions (its ping answers for the "episode" topic)."""
        end = time.monotonic() + timeout
        for topic in ("episode", "tactile"):
            while not self.client.request("ping", meta={"topic": topic}, timeout=timeout).meta.get("subscribed"):
                if time.monotonic() > end:
                    raise TimeoutError(f"the robot node never saw a subscription to {topic!r}")
                time.sleep(0.01)

    def reset(self, seed: int, timeout: float) -> int | None:
        """The robot's new episode number; None when it did not answer within ``timeout``."""
        self.done, self.pending = None, None
        try:
            reply = self.client.request("reset", meta={"seed": seed}, timeout=timeout)
        except TimeoutError:
            return None
        self.obs.drain()
        self.obs.latest.clear()
        self.started = dict(reply.meta)
        return int(reply.meta["episode"])

    def observe(self, warm: Callable[[], None] | None = None) -> None:
        del warm  # lockstep: nothing waits on the wall clock
        arrays = {"target": self.pending} if self.pending is not None else None
        reply = self.client.request("tick", arrays, timeout=30.0)
        seq = reply.meta["state_seq"]
        end = time.monotonic() + 30.0
        # That tick's whole reading, deterministically: all of state, tactile and wrench (published in that order).
        # Waiting for the tactile alone let a policy that reads the wrench see the previous tick's now and then.
        while not self._tick_arrived(seq):
            if time.monotonic() > end:
                raise TimeoutError(f"observations of node tick {seq} never arrived")
            self.obs.recv(timeout=0.1)
        if reply.meta["terminated"] or reply.meta["truncated"]:
            end_event = self.events.recv(timeout=2.0)
            while end_event is not None and end_event.meta.get("event") != "end":
                end_event = self.events.recv(timeout=2.0)
            self.done = dict(end_event.meta) if end_event is not None else dict(reply.meta)

    def _tick_arrived(self, seq: int) -> bool:
        latest = self.obs.latest
        return all(topic in latest and latest[topic].seq >= seq for topic in ROBOT_TOPICS)

    def command(self, target: np.ndarray | None, meta: dict) -> None:
        self.pending = target

    def close(self) -> None:
        for s in (self.obs, self.events, self.client):
            s.close()


# ----------------------------------------------------------------------------------------------- node
class FastNode:
    def __init__(self, cfg: RuntimeConfig) -> None:
        a = cfg.addresses
        if not (a.robot_pub and a.robot_cmd):
            raise UsageError("the fast node needs addresses.robot_pub and addresses.robot_cmd (the robot node's)")
        torch.set_num_threads(cfg.fast.torch_threads)
        self.cfg = cfg
        self.lockstep = cfg.mode == "lockstep"
        if cfg.checkpoint is None:
            raise UsageError("the fast node needs checkpoint=RUN_DIR (a `python -m rdp.train` out directory)")
        self.decoder = load_decoder(cfg.checkpoint, task=cfg.task)  # the fast model only: no diffusion policy
        run = self.decoder.run
        self.rate_hz = float(run["rate_hz"])
        self.horizon = self.decoder.horizon
        self.sim_period = 1.0 / cfg.fast.cmd_hz  # realtime: sim time moves one command period per tick
        self._step_next_tick = False
        self.slot = ChunkSlot()
        self.ring = StepRing(2 * self.horizon)
        # Statistics.
        self.counts: Counter[str] = Counter()
        self.chunk_rejects: Counter[str] = Counter()
        self.step_time, self.tac_to_cmd, self.stage_time = Window(), Window(), Window()
        self.trace = Trace(("wall", "sim_time", "step_ms", "holding"))
        self.adoptions = Trace(("wall", "sim_time", "obs_step", "step", "skipped", "infer_ms", "age_ms"))
        self.digest = hashlib.sha256()
        self.slow_episode = -1
        self.slow_seen = 0.0
        self.slow_hears_robot = False  # the slow node's heartbeat says it receives the robot's stream
        self.slow_pid: int | None = None  # the process of the newest heartbeat (a restart changes it)
        self._stop = False
        self.server = CurveServer(cfg.secure.keys, cfg.secure.allow) if cfg.secure.enabled else None
        self.chunks: Subscriber | None = None
        self.link: RealtimeLink | LockstepLink | None = None
        try:
            self.chunks = Subscriber(a.chunk, topics=("chunk", "alive"), bind=True, hwm=1000,
                                     ctx=self.server.ctx if self.server else None)
            self.link = LockstepLink(cfg) if self.lockstep else RealtimeLink(cfg)
        except Exception:
            self.close()
            raise
        self._reset_episode_state()
        self.gc = LoopGc(manual=not self.lockstep)  # last: freezes what the node holds from here on

    # ------------------------------------------------------------------------------------ lifecycle
    def stop(self, *_: object) -> None:
        self._stop = True

    def close(self) -> None:
        if getattr(self, "gc", None) is not None:
            self.gc.close()
        if self.chunks is not None:
            self.chunks.close()
        if self.link is not None:
            self.link.close()
        if self.server is not None:
            self.server.close()

    def _reset_episode_state(self) -> None:
        self.episode = -1
        self.step = -1
        self.target: np.ndarray | None = None
        self.holding = False
        self.slot.clear()
        self.ring.clear()
        self.staged: tuple[Any, dict[str, Any]] | None = None  # (pending chunk, its decoding context)
        self.tactile_stamp = 0.0
        self.lockstep_slow_absent = False

    def run(self) -> list[dict[str, Any]]:
        """Every episode in turn; returns their records."""
        self.link.connect(self.cfg.fast.start_timeout_s)
        results = []
        stats = Every(self.cfg.stats_hz)
        for k in range(self.cfg.episodes):
            if self._stop:
                break
            seed = self.cfg.seed + k
            self._start_episode(seed)
            ep_counts = Counter(self.counts)
            t0 = time.monotonic()
            # max_episode_s counts from when the policy takes over: in realtime the robot's clock ran while the
            # slow node confirmed the episode (long, on a loaded machine); in lockstep this is 0.
            self.link.obs.drain()
            start_sim = self._sim_time()
            while not self._stop and self.link.done is None:
                self._iteration()
                if self.cfg.max_episode_s is not None and self._sim_time() - start_sim >= self.cfg.max_episode_s:
                    break
                if stats():
                    emit(self.stats("stats"))
            done = self.link.done
            record = {
                "event": "episode", "index": k, "seed": seed, "robot_episode": self.episode,
                "ended_by": "task" if done else ("stop" if self._stop else "max_episode_s"),
                "success": bool(done.get("success")) if done else False,
                "score": done.get("score") if done else None,
                "perturbation": done.get("perturbation") if done else None,
                **({"goal": self.link.started.get("goal"), "goal_miss": done.get("goal_miss") if done else None}
                   if self.cfg.goal != "default" else {}),
                "sim_time": round(self._sim_time(), 4), "start_sim_time": round(start_sim, 4),
                "wall_s": round(time.monotonic() - t0, 3),
                **{key: self.counts[key] - ep_counts[key] for key in ("chunks", "skipped", "exhausted", "slow_late")},
            }
            emit(record)
            results.append(record)
        return results

    def _start_episode(self, seed: int) -> None:
        """Reset the robot and wait until the slow node has seen the new episode, resetting again while it has not.

        The slow node may not be subscribed yet when the first reset event goes out (and a lockstep robot sends
        no status to catch up from until it is ticked), so a reset is repeated, but only after the robot
        answered the previous one: two resets in flight would reset it again under a running episode. The wait
        before the next reset doubles each time, so a loaded machine that answers late still gets to start.
        """
        self._reset_episode_state()
        self.gc.full()  # between episodes, where nothing waits on the loop
        timeout = self.cfg.fast.start_timeout_s
        slow_up = self._await_slow_up(timeout)
        end = time.monotonic() + timeout
        wait = START_CONFIRM_S
        while not self._stop:
            episode = self.link.reset(seed, timeout=max(0.0, end - time.monotonic()))
            if episode is None:
                raise TimeoutError(f"the robot node did not start an episode within {timeout:.0f} s of the reset")
            self.episode = episode
            if slow_up and self._await_slow(lambda ep=episode: self.slow_episode >= ep,
                                            min(wait, end - time.monotonic())):
                return
            if not slow_up or time.monotonic() >= end:
                log.warning("no slow node confirmed episode %s within %.0f s; running without one (a slow node that "
                            "comes later is picked up)", episode, timeout)
                self.counts["start_without_slow"] += 1
                return
            self.counts["start_resets"] += 1
            wait *= 2
        raise Stopped

    def _await_slow_up(self, timeout: float) -> bool:
        """Before the first reset: wait until the slow node is up (its first heartbeat) and, in realtime, hears the
        robot. A realtime robot's clock runs from its reset, so resetting while the slow node still loads would
        start the episode with the robot idle for however long that takes (0.1-1 s was measured: the first
        episode was not the one lockstep runs). Lockstep's robot publishes nothing until ticked, so there only
        the heartbeat is awaited. False when it is not up within ``timeout`` s: the episode runs without it."""

        def up() -> bool:
            return self.slow_hears_robot or (self.lockstep and self.slow_seen > 0)

        if up() or self._await_slow(up, timeout):
            return True
        log.warning("the slow node is not up after %.0f s (%s)", timeout,
                    "no heartbeat" if not self.slow_seen else "its heartbeat says it does not hear the robot")
        return False

    # ------------------------------------------------------------------------------------ one iteration
    def _iteration(self) -> None:
        self.link.observe(self._rehearse if self._step_next_tick else None)
        t0 = time.perf_counter()
        self._drain_chunks()
        obs = self.link.obs.latest
        tactile = obs.get("tactile")
        self._step_next_tick = False
        if tactile is not None and "state" in obs and "wrench" in obs:
            sim_time = tactile.meta.get("sim_time")
            usable = isinstance(sim_time, float) and 0.0 <= sim_time < MAX_SIM_TIME_S
            step = policy_step(sim_time, self.rate_hz) if usable else -1
            if step > self.step:
                self._on_step(step, tactile, obs)
            if usable:  # the robot's next reading (one sim period on) starts a policy step
                self._step_next_tick = policy_step(sim_time + self.sim_period, self.rate_hz) > self.step
        meta = {"step": self.step, "tactile_stamp": self.tactile_stamp,
                "plan": self.slot.current.plan if self.slot.current else -1}
        self.link.command(self.target, meta)
        sent = time.perf_counter()
        if self.target is not None:
            self.digest.update(self.target.tobytes())
        dt = sent - t0
        self.step_time.add(dt)
        self.trace.add(time.monotonic(), self._sim_time(), dt * 1e3, float(self.holding))
        if self._stage_pending():
            self.stage_time.add(time.perf_counter() - sent)
        self.gc.idle()  # after the command went out: a due collection delays nothing the robot waits for

    def _rehearse(self) -> None:
        """Run the coming step tick's work once on the newest reading and throw the result away.

        After a sleep the decode runs 3-6x slower than back to back (lift, offline: features + decoder step
        1.0 ms p50 after a 40 ms sleep, 0.2 ms back to back; caches and CPU state go cold while the loop
        sleeps). Rehearsing it just before the tick brings them back, so the tick that commands the robot runs
        warm (0.3 ms). The running chunk's context is saved and restored: the decoded actions are unchanged."""
        obs = self.link.obs.latest
        tactile = obs.get("tactile")
        if tactile is None or "state" not in obs or "wrench" not in obs or self.slot.current is None:
            return
        try:
            features = self._features(tactile, obs)
        except UNUSABLE_OBSERVATION:
            return  # the tick itself counts and reports an unusable observation
        self.decoder.rehearse(features)
        self.counts["rehearsals"] += 1

    def _stage_pending(self) -> bool:
        """After the command went out: start the pending chunk in a context of its own and step its decoder
        through the steps that have passed, so the step it takes over costs one decoder step, not a catch-up
        burst (which made the command late). Same readings, same order: the actions equal an unstaged hand-over."""
        pending = self.slot.pending
        if pending is None or self.step < pending.obs_step:
            return False
        due = not self.lockstep and self.step + 1 >= pending.start_step  # realtime: a due chunk up to the next step
        limit = self.horizon if due else min(pending.start_step - pending.obs_step, self.horizon)
        target_t = min(self.step - pending.obs_step + 1, limit)
        fresh = self.staged is None or self.staged[0] is not pending
        if not fresh and self.staged[1]["t"] >= target_t:
            return False
        running = self.decoder.save()
        if fresh:
            self.decoder.start(pending.data, pending.anchor)
        else:
            self.decoder.load(self.staged[1])
        stepped = 0
        budget = math.inf if self.lockstep else STAGE_STEPS_PER_TICK
        while self.decoder.t < target_t and stepped < budget:
            past = self.ring.get(pending.obs_step + self.decoder.t)
            if past is None:  # a step before the episode's first reading: left to the hand-over's own catch-up
                break
            self.decoder.step(past)
            stepped += 1
        self.staged = (pending, self.decoder.save())
        self.decoder.load(running)
        return fresh or stepped > 0

    def _staging_behind(self, step: int) -> bool:
        """Realtime: the due pending chunk still needs more catch-up than a tick's staging budget while the running
        chunk can go on; it then takes over a few ticks later, once staged (a planner's late replacement is ~25
        steps behind, ~7 ms of decoding in one tick), instead of in a burst that makes the command late."""
        pending, current = self.slot.pending, self.slot.current
        if self.lockstep or pending is None or current is None or step < pending.start_step:
            return False
        if step - current.obs_step >= self.horizon:
            return False  # the running chunk is over: take the new one now, whatever it costs
        staged_t = self.staged[1]["t"] if self.staged is not None and self.staged[0] is pending else 0
        return step - pending.obs_step - staged_t > STAGE_STEPS_PER_TICK

    def _features(self, tactile: Message, obs: dict[str, Message]) -> dict[str, np.ndarray]:
        """The policy features of one reading (state, tactile, wrench); raises one of ``UNUSABLE_OBSERVATION``."""
        return self.decoder.features({**obs["state"].arrays, **tactile.arrays, **obs["wrench"].arrays})

    def _on_step(self, step: int, tactile: Message, obs: dict[str, Message]) -> None:
        try:
            features = self._features(tactile, obs)
        except UNUSABLE_OBSERVATION as exc:
            self.counts["rej_schema"] += 1
            if self.counts["rej_schema"] == 1:
                log.warning("observation unusable (%s); further ones are only counted", exc)
            return
        self.step = step
        self.tactile_stamp = tactile.stamp
        self.ring.put(step, features)
        if self.lockstep:
            self._await_due_chunk(step)
        chunk = None if self._staging_behind(step) else self.slot.take(step)
        if chunk is not None:
            self._adopt(chunk, step)
        current = self.slot.current
        if current is not None and step - current.obs_step < self.horizon:
            self._catch_up(step - current.obs_step, features)
            self.target = self.decoder.step(features).reshape(-1, 7)
            self.holding = False
            if not self.lockstep:
                self.tac_to_cmd.add(time.monotonic() - tactile.stamp)  # + the publish, a few us
        elif current is not None and not self.holding:
            self.counts["exhausted"] += 1
            self.holding = True
            self.target = hold_target(obs["state"]) if self.cfg.fast.hold == "pose" else None

    def _adopt(self, chunk, step: int) -> None:
        if self.staged is not None and self.staged[0] is chunk:
            self.decoder.load(self.staged[1])
            self.counts["staged"] += 1
        else:
            self.decoder.start(chunk.data, chunk.anchor)
        self.staged = None
        skipped = step - chunk.obs_step
        self.counts["chunks"] += 1
        self.counts["skipped"] += skipped
        age_ms = (time.monotonic() - chunk.obs_stamp) * 1e3 if not self.lockstep else 0.0
        self.adoptions.add(time.monotonic(), self._sim_time(), chunk.obs_step, step, skipped, chunk.infer_ms, age_ms)

    def _catch_up(self, index: int, now: dict[str, np.ndarray]) -> None:
        """Step the decoder through chunk steps that passed before it could run them, on their own readings."""
        obs_step = self.slot.current.obs_step
        while self.decoder.t < index:
            past = self.ring.get(obs_step + self.decoder.t)
            self.decoder.step(past if past is not None else now)

    # ------------------------------------------------------------------------------------ chunks
    def _drain_chunks(self) -> None:
        for _ in range(1000):
            msg = self.chunks.recv(timeout=0)
            if msg is None:
                return
            self._on_chunk_message(msg)

    def _on_chunk_message(self, msg: Message) -> None:
        self.slow_seen = time.monotonic()
        if msg.topic == "alive":
            ep = msg.meta.get("episode")
            if type(ep) is int:
                self.slow_episode = ep
            if msg.meta.get("robot") is True:
                self.slow_hears_robot = True
            if type(msg.meta.get("pid")) is int:
                self.slow_pid = msg.meta["pid"]
            return
        if msg.topic != "chunk":
            self.chunk_rejects["topic"] += 1
            return
        try:
            chunk = parse_chunk(msg, self.decoder.plan_shape, self.decoder.anchor_dim, time.monotonic())
        except ChunkRejected as exc:
            if self.chunk_rejects[exc.kind] == 0:
                log.warning("rejected a chunk (%s); further %r rejects are only counted", exc, exc.kind)
            self.chunk_rejects[exc.kind] += 1
            return
        self.slow_episode = max(self.slow_episode, chunk.episode)
        self.lockstep_slow_absent = False
        if chunk.episode != self.episode:
            self.counts["stale_chunks"] += 1
        elif not self.slot.offer(chunk):
            self.counts["outdated_chunks"] += 1

    def _await_due_chunk(self, step: int) -> None:
        """Lockstep: at a step the slow node plans on, wait for that plan (the slow node's "answer") before the robot
        moves on, so it is planned on exactly this step's observation; it takes over ``handover_steps`` later.

        The slow node plans every ``replan_every`` steps from its first plan: on multiples of it from an episode's
        start, and a restarted slow node from the step it first saw. A new slow node's heartbeat during the wait
        (the one waited for died and was restarted) ends it: the new node cannot answer a step whose observation
        went out before it subscribed, so the robot goes on (holding once the chunk runs out) until its first
        chunk arrives. A warm standby that took over saw the step and answers it."""
        newest = self.slot.pending or self.slot.current
        every = self.cfg.slow.replan_every
        due = step % every == 0 if newest is None else step >= newest.obs_step + every
        if not due or self.lockstep_slow_absent:
            return
        pid = self.slow_pid

        def have() -> bool:
            c = self.slot.pending or self.slot.current
            return c is not None and c.obs_step >= step

        def replaced() -> bool:
            return pid is not None and self.slow_pid != pid

        if self._await_slow(lambda: have() or replaced(), self.cfg.fast.lockstep_wait_s) and have():
            return
        self.lockstep_slow_absent = True
        if replaced():
            self.counts["slow_replaced"] += 1
            log.warning("lockstep: a new slow node (pid %s) came up while step %d waited for a plan; going on until "
                        "its first chunk", self.slow_pid, step)
        else:
            self.counts["slow_late"] += 1
            log.warning("lockstep: no chunk for step %d within %.1f s; going on without the slow node", step,
                        self.cfg.fast.lockstep_wait_s)

    def _await_slow(self, predicate, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not predicate():
            if self._stop:
                raise Stopped
            left = end - time.monotonic()
            if left <= 0:
                return False
            msg = self.chunks.recv(timeout=min(left, 0.1))
            if msg is not None:
                self._on_chunk_message(msg)
        return True

    # ------------------------------------------------------------------------------------ reporting
    def _sim_time(self) -> float:
        t = self.link.obs.latest.get("tactile")
        v = t.meta.get("sim_time") if t is not None else None
        return v if isinstance(v, float) else 0.0

    def rejects(self) -> dict[str, int]:
        total = Counter(self.chunks.rejects) + Counter(self.link.obs.rejects) + Counter(self.link.events.rejects)
        total += Counter({f"chunk_{k}": v for k, v in self.chunk_rejects.items()})
        if self.counts["rej_schema"]:
            total["obs_schema"] = self.counts["rej_schema"]
        return dict(total)

    def stats(self, event: str) -> dict[str, Any]:
        out: dict[str, Any] = {"event": event, "node": "fast", "mode": self.cfg.mode, "episode": self.episode,
                               "step": self.step, "sim_time": round(self._sim_time(), 4), "holding": self.holding,
                               "step_ms": self.step_time.summary(1e3), "stage_ms": self.stage_time.summary(1e3),
                               "gc_ms": self.gc.summary(), "rejects": self.rejects(),
                               **{k: v for k, v in self.counts.items() if k != "rej_schema"}}
        if self.link.rate is not None:
            rs = self.link.rate.stats()
            out["cmd_rate"] = {"target_hz": self.cfg.fast.cmd_hz, "mean_hz": round(rs.mean_hz, 2),
                               "jitter_p99_ms": round(rs.period_err_p99 * 1e3, 4), "overruns": rs.overruns,
                               "missed": rs.missed}
            out["tactile_to_cmd_ms"] = self.tac_to_cmd.summary(1e3)
            out["tactile_age_ms"] = self.link.tactile_age.summary(1e3)
        out["slow_alive_age_s"] = round(time.monotonic() - self.slow_seen, 3) if self.slow_seen else None
        return out

    def write_trace(self, directory: Path) -> Path:
        """Timing trace for the launcher's plot (npz of plain arrays; tmp + rename)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "fast_timing.npz"
        tmp = directory / "fast_timing.tmp.npz"
        arrays = {f"tick_{k}": v for k, v in self.trace.arrays().items()}
        arrays.update({f"adopt_{k}": v for k, v in self.adoptions.arrays().items()})
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path


@command("rdp.runtime.fast")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = load_config(node_args(argv), doc=__doc__)
    log_to_stderr()
    # Before any socket exists, so ZeroMQ's I/O thread inherits the policy. Lockstep never sleeps between ticks.
    sched = set_fifo(cfg.fast.rt_priority if cfg.mode == "realtime" else 0)
    if cfg.fast.rt_priority and sched.note:
        log.warning("fast.rt_priority=%d: %s", cfg.fast.rt_priority, sched.note)
    node = FastNode(cfg)

    def _close() -> None:
        if cfg.out:
            node.write_trace(Path(cfg.out))
        node.close()

    def _exit(results: list[dict[str, Any]] | None) -> dict[str, Any]:
        return {**node.stats("exit"), "episodes": len(results or []), "cmd_digest": node.digest.hexdigest()}

    return serve(node, lambda: {"event": "ready", "node": "fast", "pid": os.getpid(), "chunk": node.chunks.address,
                                **sched.record()}, _exit, stopped=(Stopped,), close=_close)


if __name__ == "__main__":
    sys.exit(main())
