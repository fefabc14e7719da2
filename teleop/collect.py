"""Headless demonstration collection through the full process graph, and the recorder process it runs.

    python -m teleop.collect task=<wipe|peel|lift> operator=scripted episodes=N out=DIR [seed=S] [cameras=false]
                             [mode=realtime|lockstep] [feedback=true|false] [press_assist=auto|always|never]
                             [looks=train point_cloud=true]   # what a perception policy trains on
    python -m teleop.collect recorder robot=ADDR teleop=ADDR out=DIR [task=NAME]     # the recorder process alone

Processes (each its own ``python -m``; config ``configs/teleop/collect.yaml``)::

    scripted operator --operator--> teleop node --cmd--> robot node --streams--> recorder
            ^                           |   ^                  |                    ^
            +------ feedback -----------+   +---- streams -----+  teleop "command" -+

``mode=realtime``: the robot node steps on the wall clock and every other process reacts to what it publishes,
exactly as when a person operates it through the browser page; it exercises the latency, watchdog and drop
paths a real session has. ``mode=lockstep``: the robot advances one control step (20 ms) per tick request from
this process (``LockstepDriver``), each only once the operator has answered the newest observation and, when
its pose moves the robot, the teleop node has turned it into a command (relayed with the tick). The operator's
latency, jitter, tremor and clutch timing then run on simulated time, so an episode takes as long as the
processes need, not as long as it lasts, and a loaded machine does not lengthen the operator's reaction. An
episode is what the robot node says it is: the recorder begins one on the node's ``episode`` ``reset`` event
and commits it on ``end`` with the task outcome; this orchestrator asks for each reset through the teleop node
(which stops commanding first, so no stale target reaches the new episode) and waits for the commit.

``feedback=false`` runs the same operator without touch and force: it subscribes to neither stream and follows
its plan's position-only press. ``press_assist`` (the teleop node's force-limited press, ``press_limit_n`` per
task) is part of the force feedback: ``auto`` turns it on exactly when ``feedback`` is, so the comparison is
force-aware teleoperation against position-only teleoperation; ``always`` / ``never`` separate the two parts.

Recorded streams (``dataset.format`` format), each at its native rate, stamped with the robot's simulation time (1
us resolution, as ``teleop.record_expert``): every array of ``state``, ``tactile`` and ``wrench`` (250 Hz),
``scene_rgb`` / ``wrist_rgb`` (camera rate; ``scene_points`` too with ``point_cloud=true``), ``action`` (7 A,)
float32 = each command the teleop node sent (its sim time from the node's newest state and the shared monotonic
clock), ``applied_target`` (A, 7) float64 = each target the robot's controllers actually took, stamped with the
start of the tick that took it (what ``teleop.replay`` re-applies), ``clutch`` (A,) u1 (teleop status),
``robot_held`` u1 (robot status). Every stamp lies inside its own episode: the teleop node stamps with the newest
robot state it has, which right after a reset is still the last episode's (its status: 0.0 until the first state of
the new one arrives), so such samples are dropped and counted (``stale_*``), as is any sample earlier than its
stream's last (``out_of_order_*``). The episode's outcome (score, failure, end time, those counts, ``dropped``
publisher messages) goes to ``meta.json`` under ``outcome``.

Children die with this process (``PR_SET_PDEATHSIG``) and are stopped in order on exit; their stderr goes to
``OUT/logs/``. Progress goes to stderr; the last stdout line is a JSON summary (also ``OUT/collect.json``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bus.cli import choose, command
from bus.config import compose, override
from bus.message import Message
from bus.node import log_to_stderr, node_args, serve
from bus.process import Child, ChildFailed
from bus.transport import Client, Publisher, Subscriber
from sim.press_guard import TASK_PRESS_LIMIT_N

log = logging.getLogger("teleop.collect")

ANY = "tcp://127.0.0.1:*"
OPERATORS = ("scripted",)
ROBOT_STREAM_TOPICS = ("state", "tactile", "wrench", "image", "applied")
TIME_DECIMALS = 6
CONTROL_HZ = 50.0  # the robot node's control step (configs/robot_node control_hz): one lockstep tick request
MODES = ("realtime", "lockstep")
PRESS_ASSIST = ("auto", "always", "never")  # not on/off: YAML reads those as booleans
STALE_MARGIN_S = 0.01  # s: a teleop stamp this close to the robot's last time before a reset is the last episode's


# ------------------------------------------------------------------------------------------- config
@dataclass
class CollectConfig:
    """Typed collection settings; ``configs/teleop/collect.yaml`` says what each key means."""

    task: str = "wipe"
    operator: str = "scripted"
    episodes: int = 1
    out: str = ""
    seed: int = 0
    perturb: bool = True
    cameras: bool = True
    point_cloud: bool = False  # the scene camera's depth as a cloud too (``scene_points``): a depth perception head
    looks: str = "none"  # sim.looks: none | train | heldout, per-episode lighting/paint/distractor on the robot node
    latency_ms: list[float] = field(default_factory=lambda: [50.0, 150.0])
    operator_overrides: list[str] = field(default_factory=list)
    mode: str = "realtime"
    feedback: bool = True
    press_assist: str = "auto"
    press_limit_n: dict[str, float] = field(default_factory=lambda: dict(TASK_PRESS_LIMIT_N))
    lockstep_teleop: list[str] = field(default_factory=lambda: ["loop_hz=250", "forward_hz=250"])
    step_timeout_s: float = 5.0
    episode_timeout_s: float = 40.0
    start_timeout_s: float = 60.0
    progress: bool = True

    def __post_init__(self) -> None:
        from sim.registry import TASKS

        choose("task", self.task, TASKS, "task")  # first: the checks below read per-task settings
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}, expected one of {MODES}")
        from sim.looks import LOOKS

        if self.looks not in LOOKS:
            raise ValueError(f"looks={self.looks!r}, expected one of {LOOKS}")
        if self.press_assist not in PRESS_ASSIST:
            raise ValueError(f"press_assist={self.press_assist!r}, expected one of {PRESS_ASSIST}")
        if self.press_assist_on and not self.press_limit_n.get(self.task, 0.0) > 0:
            raise ValueError(f"press_limit_n has no positive limit for task {self.task!r}: {self.press_limit_n}")
        if not self.step_timeout_s > 0:
            raise ValueError(f"step_timeout_s={self.step_timeout_s} must be > 0")
        if self.operator not in OPERATORS:
            raise ValueError(f"operator={self.operator!r}: headless collection supports {OPERATORS} (the browser "
                             "and keyboard operators need a person: run python -m teleop.node)")
        if not self.out:
            raise ValueError("out=DIR is required: the dataset directory to record into")
        if self.episodes < 1:
            raise ValueError(f"episodes={self.episodes} must be >= 1")
        if self.point_cloud and not self.cameras:
            raise ValueError("point_cloud=true needs cameras=true: the cloud comes with the scene camera's frames")

    @property
    def press_assist_on(self) -> bool:
        """The teleop node's force-limited press: part of the force feedback unless set on or off explicitly."""
        return self.press_assist == "always" or self.press_assist == "auto" and self.feedback


def load_config(overrides: Sequence[str]) -> CollectConfig:
    return compose(CollectConfig, "teleop/collect", overrides, "collect", "task=wipe episodes=2 out=DIR", doc=__doc__)


# ------------------------------------------------------------------------------------------ recorder
class RecorderNode:
    """Subscribes to the robot and teleop streams and records episodes with ``EpisodeRecorder``.

    One JSON line per episode event on stdout (``begin``, ``commit``, ``abort``) lets a supervisor follow.
    """

    def __init__(self, robot_pub: str, teleop_feedback: str, out: str, task: str = "", operator: str = "") -> None:
        from dataset.recorder import EpisodeRecorder

        self.recorder = EpisodeRecorder(out)
        self.task, self.operator = task, operator
        self.robot = Subscriber(robot_pub, topics=("",), hwm=20000)
        self.teleop = Subscriber(teleop_feedback, topics=("command", "teleop"), hwm=20000)
        self.episode: int | None = None  # robot episode index being recorded
        self.pending: list[Message] = []  # commands for an episode whose reset we have not seen yet
        self.last_t: dict[str, float] = {}  # per stream, the last stamp recorded (moved on 1 us past a repeat)
        self.given_t: dict[str, float] = {}  # ... and the last stamp it came with
        self.robot_t = 0.0  # newest robot sim time of the episode being recorded
        self.robot_clock = 0.0  # newest robot stream sim time, recording or not
        self.old_clock: float | None = None  # after a reset, robot_clock before it, until the node's stamps restart
        self.robot_seq: dict[str, int] = {}  # per robot topic, the last bus sequence number (gaps = dropped)
        self.episode_counts: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self._stop = False

    def stop(self, *_: object) -> None:
        self._stop = True

    def wait_connected(self, timeout: float = 30.0) -> None:
        """Both publishers are heard (state from the robot, status from the teleop node)."""
        deadline = time.monotonic() + timeout
        heard = set()
        while heard != {"robot", "teleop"}:
            if time.monotonic() > deadline:
                raise TimeoutError(f"recorder heard only {sorted(heard)} within {timeout} s")
            if self.robot.recv(timeout=0.05) is not None:
                heard.add("robot")
            if self.teleop.recv(timeout=0.05) is not None:
                heard.add("teleop")

    def run(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self.robot.socket, zmq.POLLIN)
        poller.register(self.teleop.socket, zmq.POLLIN)
        while not self._stop:
            ready = dict(poller.poll(100))
            if self.robot.socket in ready:
                while (msg := self.robot.recv(timeout=0)) is not None:
                    self._on_robot(msg)
            if self.teleop.socket in ready:
                while (msg := self.teleop.recv(timeout=0)) is not None:
                    self._on_teleop(msg)

    def close(self) -> None:
        """Flush and leave an unfinished episode for ``python -m dataset recover`` (nothing recorded is lost)."""
        try:
            self.recorder.close()
        finally:
            self.robot.close()
            self.teleop.close()

    # ------------------------------------------------------------------------------ robot streams
    def _on_robot(self, msg: Message) -> None:
        topic = msg.topic
        last = self.robot_seq.get(topic)
        if last is not None and msg.seq > last + 1:
            self.episode_counts["dropped"] += msg.seq - last - 1  # the publisher's queue overflowed: we fell behind
        self.robot_seq[topic] = msg.seq
        if topic in ROBOT_STREAM_TOPICS:
            self.robot_clock = _sim_t(msg)
        if topic == "episode":
            self._on_episode(msg)
        elif self.episode is None:
            return
        elif topic in ROBOT_STREAM_TOPICS:
            t = _sim_t(msg)
            if t > self.robot_t:
                self.robot_t = t
            for name, arr in msg.arrays.items():
                self._append(name, t, arr)
        elif topic == "status":
            self._append("robot_held", _sim_t(msg), np.uint8(bool(msg.meta.get("held"))))

    def _on_episode(self, msg: Message) -> None:
        meta = msg.meta
        if meta.get("event") == "reset":
            if self.recorder.recording:
                self.recorder.abort()  # reset before the end: the operator discarded it
                self.counts["aborted"] += 1
                self._emit("abort", episode=self.episode)
            self.episode = int(meta.get("episode", 0))
            self.last_t.clear()
            self.given_t.clear()
            self.robot_t = 0.0
            self.old_clock = self.robot_clock
            self.episode_counts.clear()
            seed = meta.get("seed")
            user = {k: meta.get(k) for k in ("perturbation", "perturbation_time")}
            user.update(source="teleop", operator=self.operator, clock="sim", robot_episode=self.episode)
            self.recorder.begin({"task": str(meta.get("task") or self.task), "seed": seed, "user": user})
            self._emit("begin", episode=self.episode, seed=seed)
            for cmd in [m for m in self.pending if m.meta.get("episode") == self.episode]:
                self._on_command(cmd)
            self.pending.clear()
        elif meta.get("event") == "end" and self.recorder.recording and meta.get("episode") == self.episode:
            score = float(meta.get("score") or 0.0)
            t_end = meta.get("time")
            t_end = round(float(t_end), TIME_DECIMALS) if isinstance(t_end, (int, float)) else self.robot_t
            outcome = {"score": score, "failure": meta.get("failure"), "sim_time": t_end,
                       "terminated": meta.get("terminated"), "truncated": meta.get("truncated"),
                       **{k: v for k, v in self.episode_counts.items()}}
            path = self.recorder.commit(success=bool(meta.get("success")), outcome=outcome)
            self.counts["committed"] += 1
            self._emit("commit", episode=self.episode, path=str(path), seed=meta.get("seed"),
                       success=bool(meta.get("success")), score=score, perturbation=meta.get("perturbation"),
                       failure=meta.get("failure"), sim_time=meta.get("time"), **self.episode_counts)
            self.episode = None

    # ------------------------------------------------------------------------------ teleop streams
    def _on_teleop(self, msg: Message) -> None:
        episode = msg.meta.get("episode")
        if msg.topic == "command":
            if self.episode is not None and episode == self.episode:
                self._on_command(msg)
            elif isinstance(episode, int) and (self.episode is None or episode > self.episode):
                self.pending.append(msg)  # sent in an episode whose reset has not reached us yet
                del self.pending[:-1000]
        elif msg.topic == "teleop" and self.episode is not None and episode == self.episode and "engaged" in msg.arrays:
            # Sent as the node hears the reset (stamped on the last episode's clock), or before it has any state of
            # the new episode (stamped 0.0: the robot's own stamps start a tick after the reset): no clock of this
            # episode yet.
            t = _sim_t(msg)
            if msg.meta.get("event") == "reset" or not t > 0.0:
                self.episode_counts["stale_clutch"] += 1
                return
            self._append_teleop("clutch", t, msg.arrays["engaged"])

    def _on_command(self, msg: Message) -> None:
        self._append_teleop("action", _sim_t(msg), msg.arrays["target"].reshape(-1).astype(np.float32))

    def _append_teleop(self, name: str, t: float, value: Any) -> None:
        """A sample stamped by the teleop node: it belongs to this episode only once its stamps are on this episode's
        clock. The node stamps with the newest robot state it has (a command: plus up to one tick); between the
        robot's reset and its first state of the new episode (its "reset" status among them) that is the robot's
        last state before the reset, which this process saw last too (both read the robot's stream in order). The
        first stamp off that instant shows the node on the new clock."""
        if self.old_clock is not None:
            if self.old_clock - STALE_MARGIN_S <= t <= self.old_clock + STALE_MARGIN_S:
                self.episode_counts[f"stale_{name}"] += 1
                return
            self.old_clock = None
        self._append(name, t, value)

    def _append(self, name: str, t: float, value: Any) -> None:
        if not self.recorder.recording or not math.isfinite(t) or t < 0:
            return
        last = self.last_t.get(name, -1.0)
        if t < self.given_t.get(name, -1.0):  # earlier than the stream's last sample: a stamp from another clock
            if self.episode_counts[f"out_of_order_{name}"] < 3:
                log.warning("episode %s: %s sample at %.6f s after one at %.6f s; dropped", self.episode, name, t,
                            self.given_t[name])
            self.episode_counts[f"out_of_order_{name}"] += 1
            return
        self.given_t[name] = t
        t = max(t, last + 10 ** -TIME_DECIMALS)  # two samples in one microsecond
        self.last_t[name] = t
        try:
            self.recorder.append(name, t, value)
            self.counts["samples"] += 1
        except ValueError as exc:  # wrong shape or dtype mid-episode: dropped, counted, logged once
            if self.counts[f"rejected_{name}"] == 0:
                log.warning("%s", exc)
            self.counts[f"rejected_{name}"] += 1

    def _emit(self, event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)


def _recv_matching(sub: Subscriber, deadline: float, match: Callable[[Message], bool]) -> Message | None:
    """The first message on ``sub`` that ``match`` accepts (others are dropped), or None at ``deadline``."""
    while (msg := sub.recv(timeout=max(0.0, deadline - time.monotonic()))) is not None:
        if match(msg):
            return msg
    return None


def _sim_t(msg: Message) -> float:
    t = msg.meta.get("sim_time")
    return round(float(t), TIME_DECIMALS) if isinstance(t, (int, float)) else math.nan


@dataclass
class RecorderConfig:
    """The recorder process's settings; ``configs/teleop/recorder.yaml`` says what each key means."""

    robot: str
    teleop: str
    out: str
    task: str = ""
    operator: str = ""


def run_recorder(argv: Sequence[str]) -> int:
    """``python -m teleop.collect recorder robot=ADDR teleop=ADDR out=DIR [task=NAME operator=NAME]``."""
    cfg = compose(RecorderConfig, "teleop/recorder", argv, "recorder", "robot=ADDR teleop=ADDR out=DIR", doc=__doc__)
    log_to_stderr()
    node = RecorderNode(cfg.robot, cfg.teleop, cfg.out, cfg.task, cfg.operator)

    def _ready() -> dict[str, Any]:
        node.wait_connected()
        return {"event": "ready", "pid": os.getpid(), "out": cfg.out}

    return serve(node, _ready, lambda _: {"event": "exit", **node.counts})


# ------------------------------------------------------------------------------------------ lockstep
class LockstepDriver:
    """Advances a lockstep robot node one control step at a time, each only once the operator has answered.

    Per step: tick the robot (it publishes that control step's streams and replies), wait for the operator's
    ``step`` record for the observation at the reply's sim time (it has seen it and sent whatever pose was due),
    and when that pose should move the robot (``expect_command``) wait for the teleop node's ``command`` echo of
    it; its target rides on the next tick, so the robot applies it at that step whatever the socket timing (the
    node's own copy on the command socket carries the same target). The recorder is not waited for: it only
    reads, and the commit record says whether it fell behind (``dropped``).
    """

    def __init__(self, tick: str, operator_sync: str, teleop_feedback: str, robot_pub: str, step_timeout_s: float,
                 ticks_per_control: int = 5, tick_dt: float = 0.004) -> None:
        self.step_timeout_s = step_timeout_s
        self.ticks_per_control, self.tick_dt = ticks_per_control, tick_dt
        self.counts: Counter[str] = Counter()
        self.last: Message | None = None  # the newest tick reply
        self.client = Client(tick)
        self.acks = Subscriber(operator_sync, topics=("step",))
        self.echoes = Subscriber(teleop_feedback, topics=("command",), hwm=20000)
        self.events = Subscriber(robot_pub, topics=("episode",))

    def close(self) -> None:
        for sock in (self.client, self.acks, self.echoes, self.events):
            sock.close()

    def tick(self, target: np.ndarray | None = None, node_ticks: int | None = None) -> Message:
        reply = self.client.request("tick", None if target is None else {"target": target},
                                    None if node_ticks is None else {"node_ticks": node_ticks},
                                    timeout=self.step_timeout_s)
        if reply.topic != "tick":
            raise ChildFailed(f"the robot node refused a tick: {reply.meta}")
        self.counts["ticks"] += 1
        return reply

    def start(self, children: Sequence[Child], timeout: float) -> None:
        """Tick until every child has printed its ready line and the operator's step records reach us (the
        recorder and the operator need robot streams to get ready; in lockstep nothing flows without ticks)."""
        deadline = time.monotonic() + timeout
        waiting = list(children)
        heard = False
        while waiting or not heard:
            if time.monotonic() > deadline:
                raise ChildFailed(f"lockstep start: still waiting for {[c.name for c in waiting]} (operator step "
                                  f"records heard: {heard}) after {timeout:.0f} s")
            self.tick()
            waiting = [c for c in waiting if not c.take("ready")]
            heard = heard or self.acks.recv(timeout=0.02) is not None
        self.acks.drain()

    def reset(self, control: Publisher, seed: int) -> int:
        """Ask for a new episode through the teleop node (it stops commanding first) and tick until the robot
        takes it; then complete the control step so the episode's steps line up with the robot's. Returns the
        robot's episode index."""
        control.publish("reset", meta={"seed": seed})
        deadline = time.monotonic() + self.step_timeout_s * 10
        while time.monotonic() < deadline:
            reply = self.tick()
            msg = self.events.recv(timeout=0.005)
            while msg is not None:
                if msg.meta.get("event") == "reset" and msg.meta.get("seed") == seed:
                    phase = round(float(reply.meta["sim_time"]) / self.tick_dt) % self.ticks_per_control
                    self.last = self.tick(node_ticks=self.ticks_per_control - phase) if phase else reply
                    return int(msg.meta["episode"])
                msg = self.events.recv(timeout=0)
        raise ChildFailed(f"the robot node did not start the episode with seed {seed}")

    def run_episode(self, episode: int) -> dict[str, Any]:
        """Step until the robot reports the episode terminated or truncated; returns the step counters."""
        reply = self.last
        steps = 0
        while not (reply.meta.get("terminated") or reply.meta.get("truncated")):
            target = self._await_operator(episode, float(reply.meta["sim_time"]))
            reply = self.tick(target)
            steps += 1
        return {"steps": steps, "sim_time": reply.meta.get("sim_time")}

    def _timed_out(self, kind: str, what: str) -> None:
        if self.counts[kind] < 5:
            log.warning("%s", what)
        self.counts[kind] += 1

    def _await_operator(self, episode: int, sim_time: float) -> np.ndarray | None:
        """The operator's answer to the observation at ``sim_time``, and the target it produced (if any)."""
        deadline = time.monotonic() + self.step_timeout_s
        ack = _recv_matching(self.acks, deadline, lambda m: m.meta.get("episode") == episode
                             and abs(float(m.meta.get("sim_time", -1.0)) - sim_time) < 1e-9)
        if ack is None:
            self._timed_out("operator_timeouts", f"no operator answer to the observation at {sim_time:.3f} s "
                            f"of episode {episode} within {self.step_timeout_s} s; stepping on")
            return None
        seq = ack.meta.get("op_seq")
        if not ack.meta.get("expect_command") or not isinstance(seq, int):
            return None
        echo = _recv_matching(self.echoes, deadline, lambda m: m.meta.get("episode") == episode
                              and isinstance(m.meta.get("op_seq"), int) and m.meta["op_seq"] >= seq)
        if echo is None:
            self._timed_out("command_timeouts", f"no teleop command for operator sample {seq} at {sim_time:.3f} s "
                            f"of episode {episode} within {self.step_timeout_s} s; stepping on")
            return None
        return echo.arrays["target"]


def _child(name: str, module: str, log_dir: Path, args: list[str]) -> Child:
    """``python -m module args...`` in this process's session: a Ctrl-C at the terminal reaches the whole graph."""
    return Child(name, module, args, log_dir / f"{name}.log", session=False)


def _kv(**values: Any) -> list[str]:
    """Hydra overrides of these values (quoted where hydra would misread them: paths with commas or spaces)."""
    return [override(k, v) for k, v in values.items()]


def collect(cfg: CollectConfig) -> dict[str, Any]:
    """Run the process graph until ``cfg.episodes`` episodes are committed; return the summary."""
    from tqdm import tqdm

    out = Path(cfg.out)
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    children: list[Child] = []
    rows: list[dict[str, Any]] = []
    timeouts = 0
    control: Publisher | None = None
    driver: LockstepDriver | None = None
    lockstep = cfg.mode == "lockstep"
    try:
        robot = _child("robot_node", "sim.node", log_dir, _kv(
            task=cfg.task, seed=cfg.seed, mode=cfg.mode, perturb=cfg.perturb, cameras=cfg.cameras, looks=cfg.looks,
            point_cloud=cfg.point_cloud, auto_reset=False,
            **{"addresses.pub": ANY, "addresses.cmd": ANY, "addresses.tick": ANY}))
        children.append(robot)
        r = robot.wait_ready(cfg.start_timeout_s)
        limit = cfg.press_limit_n.get(cfg.task, 0.0) if cfg.press_assist_on else 0.0
        teleop = _child("teleop_node", "teleop.node", log_dir, [*_kv(**{
            "robot.pub": r["pub"], "robot.cmd": r["cmd"], "addresses.operator": ANY, "addresses.feedback": ANY,
            "web.enabled": False, "assist.press_force_n": limit}), *(cfg.lockstep_teleop if lockstep else [])])
        children.append(teleop)
        tl = teleop.wait_ready(cfg.start_timeout_s)
        recorder = _child("recorder", "teleop.collect", log_dir, ["recorder", *_kv(
            robot=r["pub"], teleop=tl["feedback"], out=cfg.out, task=cfg.task, operator=cfg.operator)])
        children.append(recorder)
        operator = _child("operator", "teleop.operators", log_dir, ["scripted", *_kv(**{
            "task": cfg.task, "perturb": cfg.perturb, "seed": cfg.seed, "latency_ms": list(cfg.latency_ms),
            "teleop.operator": tl["operator"], "teleop.feedback": tl["feedback"], "feedback": cfg.feedback,
            "lockstep": lockstep, "sync": ANY}), *cfg.operator_overrides])
        children.append(operator)
        if lockstep:
            sync = operator.wait_event("listening", cfg.start_timeout_s)["sync"]
            driver = LockstepDriver(r["tick"], sync, tl["feedback"], r["pub"], cfg.step_timeout_s,
                                    ticks_per_control=round(float(r["tick_hz"]) / CONTROL_HZ),
                                    tick_dt=1.0 / float(r["tick_hz"]))
            driver.start([recorder, operator], cfg.start_timeout_s)
        else:
            recorder.wait_ready(cfg.start_timeout_s)
            operator.wait_ready(cfg.start_timeout_s)
        control = Publisher(tl["operator"], bind=False)
        if not control.wait_for_subscriber("reset", timeout=10):
            raise ChildFailed("the teleop node did not subscribe to the control socket")
        bar = tqdm(total=cfg.episodes, desc=f"collect {cfg.task}", unit="ep", file=sys.stderr, disable=not cfg.progress)
        for k in range(cfg.episodes):
            seed = cfg.seed + k
            t0 = time.monotonic()
            if driver is not None:
                driver.run_episode(driver.reset(control, seed))
            else:
                control.publish("reset", meta={"seed": seed})
            recorder.wait_event("begin", cfg.start_timeout_s)
            try:
                row = recorder.wait_event("commit", cfg.episode_timeout_s)
            except RuntimeError:
                if recorder.proc.poll() is not None:
                    raise
                timeouts += 1
                rows.append({"seed": seed, "success": False, "score": None, "timed_out": True})
                log.warning("episode with seed %d did not end within %.0f s; skipped", seed, cfg.episode_timeout_s)
                continue
            row["wall_s"] = round(time.monotonic() - t0, 2)
            rows.append(row)
            bar.update(1)
            bar.set_postfix(ok=f"{sum(bool(r.get('success')) for r in rows)}/{len(rows)}")
        bar.close()
    finally:
        if control is not None:
            control.close()
        if driver is not None:
            driver.close()
        exits = {}
        for child in reversed(children):  # operator, recorder, teleop, robot: producers outlive their readers
            code = child.stop(timeout=30.0)
            exits[child.name] = {"code": code, **(child.last or {})}
    ok = [r for r in rows if r.get("success")]
    scores = [r["score"] for r in rows if r.get("score") is not None]
    teleop_exit = exits.get("teleop_node", {})
    summary = {
        "task": cfg.task, "operator": cfg.operator, "mode": cfg.mode, "feedback": cfg.feedback,
        "press_assist_n": cfg.press_limit_n.get(cfg.task) if cfg.press_assist_on else None,
        "latency_ms": list(cfg.latency_ms), "perturb": cfg.perturb, "seed": cfg.seed,
        "out": str(out), "episodes": len(rows),
        "success_rate": round(len(ok) / len(rows), 4) if rows else 0.0,
        "mean_score": round(float(np.mean(scores)), 4) if scores else None,
        "timed_out": timeouts, "wall_s": round(time.monotonic() - t_start, 2),
        "teleop": {k: teleop_exit.get(k) for k in ("commands", "op_samples", "lost_sync", "latency_ms_p50",
                                                   "latency_ms_p99", "loop_hz", "rejects")},
        "robot": {k: exits.get("robot_node", {}).get(k) for k in ("mean_hz", "overruns", "watchdog_trips", "rejects")},
        "exit_codes": {name: e.get("code") for name, e in exits.items()},
        "lockstep": dict(driver.counts) if driver is not None else None,
        "rows": rows,
    }
    (out / "collect.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@command("teleop.collect")
def main(argv: Sequence[str] | None = None) -> int:
    args = node_args(argv)
    if args and args[0] == "recorder":
        return run_recorder(args[1:])
    cfg = load_config(args)  # before logging is on: a bad argument is the only line printed
    log_to_stderr()
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the children like Ctrl-C does
    summary = collect(cfg)
    print(json.dumps(summary), flush=True)
    return 0 if summary["episodes"] == cfg.episodes and not summary["timed_out"] else 1


if __name__ == "__main__":
    sys.exit(main())
