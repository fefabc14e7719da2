"""The teleop node: operator poses in, robot commands out, touch feedback back to the operators.

    python -m teleop.node 'robot.pub=tcp://127.0.0.1:5560' 'robot.cmd=tcp://127.0.0.1:5561' [web.port=0] ...

Config: ``configs/teleop/node.yaml`` -> :class:`TeleopConfig`; ``key=value`` arguments override it. The first
stdout line is a JSON "ready" record with the bound addresses and the browser URL (with the per-run token the
page needs, see ``teleop.web.server``); the last one, on SIGINT/SIGTERM, an "exit" record with the counters.

Operator protocol (``bus`` messages on the SUB socket that binds ``addresses.operator``; the browser page's
WebSocket JSON is turned into the same messages inside this process)::

    operator  arrays pose (A, 7) f4|f8: per arm the hand/controller pose [x, y, z, qw, qx, qy, qz] (m; any
              fixed origin); grip (A,) f4|f8 in [0, 1] (1 = closed); clutch (A,) u1|b1 (1 = held).
              meta frame: "robot" (x forward, y left, z up: keyboard, scripted) or "xr" (WebXR: x right,
              y up, -z forward); sent: the operator's time.monotonic() when the pose was taken.
    reset     meta seed (optional int, 0 .. 2**32 - 1 as the robot node takes; anything else is refused and
              counted): end the episode and start a new one (forwarded to the robot node after this node stops
              commanding, so no stale target reaches the new episode).

Per arm: pressing the clutch (a rising edge) anchors the hand pose H0 and the robot target R0; while held,
target = R0 + pos_scale * F (h - h0) and rotation dR_world * R0 with dR_world = F (H H0^T)^rot_scale F^T (F:
operator frame -> robot world). Releasing it freezes the target, so the hand can be repositioned. The
lost-sync guard refuses a mapped target that jumps more than ``max_jump_m`` / ``max_jump_rad`` from the last
one (tracking loss, a dropped controller): the arm keeps its target, disengages, and the event is reported;
the clutch must be pressed again. Gripper width follows the grip only while the clutch is held. After an
episode reset every arm disengages and its target becomes the measured pose; a held clutch must be
released and pressed again.

Published on ``addresses.feedback`` (PUB): the robot's ``state``, ``tactile``, ``wrench`` (newest only, at
``forward_hz``), ``image``, ``episode``, ``watchdog``, ``status`` (every message), and ours::

    teleop    arrays engaged (A,) u1; target, anchor_target (A, 7) f8 [x, y, z, rx, ry, rz, grip];
              anchor_hand (A, 7) f8. meta event (engage | release | lost_sync | reset | null), arm,
              jump_m, jump_rad, episode, counters, mapping settings.      status_hz and on every event
    command   arrays target (A, 7) f8 = what went to the robot; meta episode, sim_time (the robot's sim time
              when it was sent, from the newest state and the shared monotonic clock), op_seq, latency_ms
              (operator sample -> command), keepalive.                  every command

Commands go out at once when an operator sample arrives (event-driven, no added latency), and as keep-alives
every tick while the operator is fresh; nothing is sent while no arm was engaged in this episode or the
operator is silent for ``operator_timeout_ms`` (the robot's own watchdog then holds it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from bus.cli import command
from bus.config import compose
from bus.message import Message
from bus.node import log_to_stderr, node_args, serve
from bus.resources import config_dir
from bus.transport import Publisher, Subscriber
from sim.node import SEED_LIMIT
from sim.press_guard import PressGuard, PressGuardConfig
from spatial.rotations import mat_to_rotvec, quat_to_mat, rotation_angle, rotvec_to_mat

log = logging.getLogger("teleop.node")

CONFIG_PATH = config_dir() / "teleop" / "node.yaml"
ROTATION_MODES = ("relative", "locked")
# Operator frame -> robot world (z up, x away from the operator). WebXR: x right, y up, -z forward.
FRAMES: dict[str, np.ndarray] = {
    "robot": np.eye(3),
    "xr": np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
}
FORWARDED_LATEST = ("state", "tactile", "wrench")
FORWARDED_ALL = ("image", "episode", "watchdog", "status")
OPERATOR_FLOATS = frozenset({np.dtype("<f4"), np.dtype("<f8")})
OPERATOR_BOOLS = frozenset({np.dtype("|u1"), np.dtype("|b1")})
MAX_DRAIN = 1000


# ------------------------------------------------------------------------------------------- config
@dataclass
class MappingConfig:
    pos_scale: float = 1.0
    rot_scale: float = 1.0
    rotation: str = "relative"
    max_jump_m: float = 0.05
    max_jump_rad: float = 0.5
    gripper_max_width: float = 0.08

    def __post_init__(self) -> None:
        if self.rotation not in ROTATION_MODES:
            raise ValueError(f"mapping.rotation={self.rotation!r}, expected one of {ROTATION_MODES}")
        for name in ("pos_scale", "rot_scale", "max_jump_m", "max_jump_rad", "gripper_max_width"):
            if not getattr(self, name) > 0:
                raise ValueError(f"mapping.{name}={getattr(self, name)} must be > 0")


@dataclass
class RobotEndpoints:
    pub: str = "tcp://127.0.0.1:5560"
    cmd: str = "tcp://127.0.0.1:5561"


@dataclass
class TeleopAddresses:
    operator: str = "tcp://127.0.0.1:5570"
    feedback: str = "tcp://127.0.0.1:5571"


@dataclass
class WebConfig:
    """The browser operator server; what each key means is in ``configs/teleop/node.yaml`` and what the server
    checks (Host, Origin, per-run token) in ``teleop.web.server``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8765
    feedback_hz: float = 30.0
    allow_remote: bool = False
    allowed_hosts: list[str] = field(default_factory=list)
    grounding: str = ""  # a grounding node's ask address (grounding.node): the page's instruction box asks it
    grounding_timeout_s: float = 30.0
    grounding_poll_s: float = 1.0  # how often the page's run (an instruction carried out) is asked for its state


@dataclass
class TeleopConfig:
    """Typed teleop-node configuration; ``configs/teleop/node.yaml`` says what each key means."""

    loop_hz: float = 100.0
    operator_timeout_ms: float = 200.0
    status_hz: float = 10.0
    forward_hz: float = 100.0
    mapping: MappingConfig = field(default_factory=MappingConfig)
    assist: PressGuardConfig = field(default_factory=PressGuardConfig)  # the force-limited press (sim.press_guard)
    robot: RobotEndpoints = field(default_factory=RobotEndpoints)
    addresses: TeleopAddresses = field(default_factory=TeleopAddresses)
    web: WebConfig = field(default_factory=WebConfig)

    def __post_init__(self) -> None:
        for name in ("loop_hz", "operator_timeout_ms", "status_hz", "forward_hz"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")


def load_config(overrides: Sequence[str] = (), path: Path = CONFIG_PATH) -> TeleopConfig:
    """``path`` composed with hydra overrides into a checked :class:`TeleopConfig` (``--help``, ``--cfg``)."""
    return compose(TeleopConfig, path, overrides, "teleop", "web.port=0", doc=__doc__)


# ------------------------------------------------------------------------------------ operator input
class OperatorRejected(ValueError):
    """An operator message that must not move the robot; ``kind`` is the counter it goes to."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind


@dataclass
class OperatorSample:
    """One validated operator message: per arm pose (A, 7) [x, y, z, qw, qx, qy, qz], grip (A,), clutch (A,)."""

    pose: np.ndarray
    grip: np.ndarray
    clutch: np.ndarray
    frame: str
    sent: float | None
    seq: int


def parse_operator(msg: Message, n_arms: int) -> OperatorSample:
    """Check an "operator" message against the A = ``n_arms`` contract; raise ``OperatorRejected``."""
    if set(msg.arrays) != {"pose", "grip", "clutch"}:
        raise OperatorRejected("schema", f"arrays {sorted(msg.arrays)}, expected ['clutch', 'grip', 'pose']")
    pose, grip, clutch = msg.arrays["pose"], msg.arrays["grip"], msg.arrays["clutch"]
    if pose.dtype not in OPERATOR_FLOATS or grip.dtype not in OPERATOR_FLOATS:
        raise OperatorRejected("dtype", f"pose {pose.dtype.str} / grip {grip.dtype.str}, expected <f4 or <f8")
    if clutch.dtype not in OPERATOR_BOOLS:
        raise OperatorRejected("dtype", f"clutch {clutch.dtype.str}, expected |u1 or |b1")
    if pose.shape != (n_arms, 7) or grip.shape != (n_arms,) or clutch.shape != (n_arms,):
        raise OperatorRejected(
            "shape", f"pose {pose.shape}, grip {grip.shape}, clutch {clutch.shape}; expected ({n_arms}, 7), "
            f"({n_arms},), ({n_arms},) for {n_arms} arm(s)"
        )
    if not (np.isfinite(pose).all() and np.isfinite(grip).all()):
        raise OperatorRejected("nonfinite", "pose or grip holds NaN/inf")
    qn = np.linalg.norm(pose[:, 3:], axis=1)
    if ((qn < 0.5) | (qn > 2.0)).any():
        raise OperatorRejected("range", f"quaternion norms {qn.tolist()} are not near 1")
    frame = msg.meta.get("frame", "robot")
    if frame not in FRAMES:
        raise OperatorRejected("frame", f"frame {frame!r}, expected one of {sorted(FRAMES)}")
    sent = msg.meta.get("sent")
    pose64 = pose.astype(np.float64)
    pose64[:, 3:] /= qn[:, None]
    return OperatorSample(
        pose=pose64,
        grip=np.clip(grip.astype(np.float64), 0.0, 1.0),
        clutch=clutch.astype(bool),
        frame=str(frame),
        sent=float(sent) if type(sent) in (int, float) and math.isfinite(sent) else None,  # inf: no latency
        seq=msg.seq,
    )


# ----------------------------------------------------------------------------------- one arm's mapping
@dataclass
class ArmEvent:
    kind: str  # engage | release | lost_sync
    jump_m: float = 0.0
    jump_rad: float = 0.0


class ArmTeleop:
    """Clutch, relative pose mapping and lost-sync guard of one arm; pure state, no I/O.

    ``target_pos`` / ``target_rot`` / ``width`` are the arm's command; they change only while engaged.
    """

    def __init__(self, cfg: MappingConfig) -> None:
        self.cfg = cfg
        self.engaged = False
        self.lost_sync = 0
        self._clutch_prev = True  # a clutch already held when we start must be released first
        self.target_pos = np.zeros(3)
        self.target_rot = np.eye(3)
        self.width = 0.0
        self.anchor_pos = np.zeros(3)
        self.anchor_rot = np.eye(3)
        self.hand_pos = np.zeros(3)
        self.hand_rot = np.eye(3)
        self.hand_quat = np.array([1.0, 0.0, 0.0, 0.0])

    def reset(self, pos: np.ndarray, rot: np.ndarray, width: float) -> None:
        """Hold ``pos`` / ``rot`` / ``width`` (the measured pose) and require a fresh clutch press."""
        self.target_pos = np.array(pos, dtype=np.float64)
        self.target_rot = np.array(rot, dtype=np.float64)
        self.width = float(width)
        self.engaged = False
        self._clutch_prev = True

    def update(self, pose: np.ndarray, grip: float, clutch: bool, frame: np.ndarray) -> ArmEvent | None:
        """Apply one operator sample; returns the clutch / guard event it caused, if any."""
        event = None
        if clutch and not self._clutch_prev:
            self.engaged = True
            self.anchor_pos, self.anchor_rot = self.target_pos.copy(), self.target_rot.copy()
            self.hand_pos, self.hand_quat = pose[:3].copy(), pose[3:].copy()
            self.hand_rot = quat_to_mat(pose[3:])
            event = ArmEvent("engage")
        elif not clutch and self.engaged:
            self.engaged = False
            event = ArmEvent("release")
        self._clutch_prev = bool(clutch)
        if not self.engaged or event is not None:
            return event
        pos, rot = self.map(pose, frame)
        jump_m = float(np.linalg.norm(pos - self.target_pos))
        jump_rad = rotation_angle(rot, self.target_rot)
        if jump_m > self.cfg.max_jump_m or jump_rad > self.cfg.max_jump_rad:
            self.engaged = False
            self.lost_sync += 1
            return ArmEvent("lost_sync", jump_m, jump_rad)
        self.target_pos, self.target_rot = pos, rot
        self.width = (1.0 - float(grip)) * self.cfg.gripper_max_width
        return None

    def map(self, pose: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hand pose (7,) -> robot target (position (3,), rotation (3, 3)) relative to the clutch anchors."""
        cfg = self.cfg
        pos = self.anchor_pos + cfg.pos_scale * (frame @ (pose[:3] - self.hand_pos))
        if cfg.rotation == "locked":
            return pos, self.anchor_rot
        d_world = frame @ (quat_to_mat(pose[3:]) @ self.hand_rot.T) @ frame.T
        if cfg.rot_scale != 1.0:
            d_world = rotvec_to_mat(cfg.rot_scale * mat_to_rotvec(d_world))
        return pos, d_world @ self.anchor_rot

    def command(self) -> np.ndarray:
        """(7,) [x, y, z, rx, ry, rz, grip width]: the robot node's command contract for this arm."""
        return np.concatenate((self.target_pos, mat_to_rotvec(self.target_rot), [self.width]))

    def anchor_command(self) -> np.ndarray:
        return np.concatenate((self.anchor_pos, mat_to_rotvec(self.anchor_rot), [self.width]))

    def anchor_hand(self) -> np.ndarray:
        return np.concatenate((self.hand_pos, self.hand_quat))


# ------------------------------------------------------------------------------------------- node
class TeleopNode:
    """Owns the sockets, the per-arm mappings and the web server; ``run()`` until ``stop()``."""

    def __init__(self, cfg: TeleopConfig) -> None:
        self.cfg = cfg
        self.arms: list[ArmTeleop] = []
        self.press = PressGuard(cfg.assist)
        self.counts: Counter[str] = Counter()
        self.op_rejects: Counter[str] = Counter()
        self.episode = -1
        self.sim_time = 0.0
        self.latency_ms: list[float] = []
        self._state: Message | None = None
        self._tick_dt = math.inf  # robot tick in sim time, once two consecutive states were seen
        self._need_hold = True  # the next state re-initialises every arm's hold target
        self._active = False  # some arm was engaged in this episode: commands may go out
        self._last_op_rx = -math.inf
        self._last_cmd_t = -math.inf
        self._pending_op: OperatorSample | None = None
        self._latest: dict[str, Message] = {}
        self._tick_times: list[float] = []
        self._stop = False
        self.web = None
        self.robot_sub = self.cmd_pub = self.op_sub = self.feedback = self.web_sub = None
        try:
            self.robot_sub = Subscriber(cfg.robot.pub, topics=("",))
            self.cmd_pub = Publisher(cfg.robot.cmd, bind=False, copy=True)
            self.op_sub = Subscriber(cfg.addresses.operator, topics=("operator", "reset"), bind=True,
                                     max_frame_bytes=65536)
            self.feedback = Publisher(cfg.addresses.feedback, copy=True)
            if cfg.web.enabled:
                from teleop.web.server import WebOperatorServer

                self.web_sub = Subscriber(f"inproc://teleop-web-{id(self)}", topics=("operator", "reset"),
                                          bind=True, max_frame_bytes=65536)
                self.web = WebOperatorServer(cfg.web, self.web_sub.address)
                self.web.start()
        except Exception:
            self.close()
            raise

    # ---------------------------------------------------------------------------- lifecycle
    def ready_record(self) -> dict[str, Any]:
        return {
            "event": "ready",
            "pid": os.getpid(),
            "operator": self.op_sub.address,
            "feedback": self.feedback.address,
            "web": self.web.url if self.web else None,
            "robot_pub": self.cfg.robot.pub,
            "robot_cmd": self.cfg.robot.cmd,
        }

    def stop(self, *_: object) -> None:
        """Leave the loop after the current iteration (signal-handler safe)."""
        self._stop = True

    def close(self) -> None:
        if self.web is not None:
            self.web.stop()
        for sock in (self.robot_sub, self.cmd_pub, self.op_sub, self.feedback, self.web_sub):
            if sock is not None:
                sock.close()

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latency_ms) if self.latency_ms else None
        periods = np.diff(self._tick_times) if len(self._tick_times) > 2 else None
        return {
            "event": "exit",
            **dict(self.counts),
            "lost_sync": sum(a.lost_sync for a in self.arms),
            "rejects": dict(self.rejects()),
            "latency_ms_p50": None if lat is None else round(float(np.percentile(lat, 50)), 3),
            "latency_ms_p99": None if lat is None else round(float(np.percentile(lat, 99)), 3),
            "loop_hz": None if periods is None else round(float(1.0 / periods.mean()), 2),
            "web_rejects": dict(self.web.rejects) if self.web else {},
        }

    def rejects(self) -> Counter[str]:
        total = Counter(self.op_sub.rejects) + self.op_rejects + Counter(self.robot_sub.rejects)
        if self.web_sub is not None:
            total += self.web_sub.rejects
        return total

    def run(self) -> None:
        """Event loop: react to operator samples at once, tick at ``loop_hz`` for keep-alives and feedback."""
        poller = zmq.Poller()
        socks = [s for s in (self.robot_sub, self.op_sub, self.web_sub) if s is not None]
        for s in socks:
            poller.register(s.socket, zmq.POLLIN)
        period = 1.0 / self.cfg.loop_hz
        status_every = max(1, round(self.cfg.loop_hz / self.cfg.status_hz))
        forward_every = max(1, round(self.cfg.loop_hz / self.cfg.forward_hz))
        web_every = max(1, round(self.cfg.loop_hz / self.cfg.web.feedback_hz))
        next_tick = time.monotonic()
        k = 0
        while not self._stop:
            timeout_ms = max(0.0, (next_tick - time.monotonic()) * 1e3)
            ready = dict(poller.poll(timeout_ms))
            if self.robot_sub.socket in ready:
                self._drain_robot()
            for sub in (self.op_sub, self.web_sub):
                if sub is not None and sub.socket in ready:
                    self._drain_operator(sub)
            now = time.monotonic()
            if now < next_tick:
                continue
            k += 1
            next_tick += period
            if now - next_tick > period:  # fell behind by more than a tick: re-anchor, do not burst
                next_tick = now + period
            self._tick_times.append(now)
            if len(self._tick_times) > 20000:
                del self._tick_times[:10000]
            self._tick(now, k, status_every, forward_every, web_every)

    # ---------------------------------------------------------------------------- robot side
    def _drain_robot(self) -> None:
        for _ in range(MAX_DRAIN):
            msg = self.robot_sub.recv(timeout=0)
            if msg is None:
                return
            topic = msg.topic
            if topic == "state":
                self._on_state(msg)
            elif topic == "episode":
                self._on_episode(msg)
            elif topic == "wrench" and self.press.enabled:
                self.press.on_wrench(msg.arrays["wrench"], float(msg.meta.get("sim_time", math.nan)))
            elif topic == "status" and self.episode < 0 and isinstance(msg.meta.get("episode"), int):
                self.episode = msg.meta["episode"]  # joined after the robot's first reset
            if topic in FORWARDED_LATEST:
                self._latest[topic] = msg
            elif topic in FORWARDED_ALL:
                self.feedback.publish(topic, msg.arrays, msg.meta, stamp=msg.stamp)
                if self.web is not None and topic == "image":
                    self.web.send_images(msg.arrays)

    def _on_state(self, msg: Message) -> None:
        sim_time = msg.meta.get("sim_time")
        if isinstance(sim_time, float):
            if self._state is not None and 0.0 < sim_time - self.sim_time < 0.1:
                self._tick_dt = sim_time - self.sim_time  # the robot's tick in sim time (consecutive states)
            self.sim_time = sim_time
        self._state = msg
        n = msg.arrays["tcp_pos"].shape[0]
        if len(self.arms) != n:
            self.arms = [ArmTeleop(self.cfg.mapping) for _ in range(n)]
            self.press.reset(n)
            self._need_hold = True
        if self.press.enabled:
            self.press.on_state(msg.arrays["tcp_quat"])
        if self._need_hold:
            self._need_hold = False
            for i, arm in enumerate(self.arms):
                arm.reset(msg.arrays["tcp_pos"][i], quat_to_mat(msg.arrays["tcp_quat"][i]),
                          float(msg.arrays["gripper_width"][i]))

    def _on_episode(self, msg: Message) -> None:
        if msg.meta.get("event") != "reset":
            return
        episode = msg.meta.get("episode")
        self.episode = episode if isinstance(episode, int) else self.episode + 1
        self.sim_time = 0.0  # the newest state is the ended episode's: stamp nothing with its clock
        self._need_hold = True
        self._active = False
        for arm in self.arms:
            arm.engaged = False
        self.press.reset(len(self.arms))
        self._publish_status(event="reset")

    # ---------------------------------------------------------------------------- operator side
    def _drain_operator(self, sub: Subscriber) -> None:
        for _ in range(MAX_DRAIN):
            msg = sub.recv(timeout=0)
            if msg is None:
                return
            if msg.topic == "reset":
                self._request_reset(msg)
            elif msg.topic == "operator":
                self._on_operator(msg)
            else:
                self._reject_op("topic", f"topic {msg.topic!r}, expected 'operator' or 'reset'")

    def _reject_op(self, kind: str, reason: str) -> None:
        if self.op_rejects[kind] == 0:
            log.warning("rejected an operator message (%s); further %r rejects are only counted", reason, kind)
        self.op_rejects[kind] += 1

    def _on_operator(self, msg: Message) -> None:
        if not self.arms or self._need_hold:
            self.counts["op_before_state"] += 1
            return
        try:
            sample = parse_operator(msg, len(self.arms))
        except OperatorRejected as exc:
            self._reject_op(exc.kind, str(exc))
            return
        self.counts["op_samples"] += 1
        now = time.monotonic()
        self._last_op_rx = now
        frame = FRAMES[sample.frame]
        for i, arm in enumerate(self.arms):
            event = arm.update(sample.pose[i], float(sample.grip[i]), bool(sample.clutch[i]), frame)
            if event is None:
                continue
            self.counts[event.kind] += 1
            if event.kind == "engage":
                self._active = True
            if event.kind == "lost_sync":
                log.warning("arm %d lost sync: the target would jump %.3f m / %.3f rad; disengaged (press the "
                            "clutch again)", i, event.jump_m, event.jump_rad)
            self._publish_status(event=event.kind, arm=i, jump_m=event.jump_m, jump_rad=event.jump_rad)
        if self._active:
            self._send_command(now, sample, keepalive=False)

    def _request_reset(self, msg: Message) -> None:
        """Stop commanding, then ask the robot for a new episode (same socket: it sees no stale command after).
        A seed the robot node would refuse is refused here (counted as ``seed``): nothing stops, nothing resets."""
        seed = msg.meta.get("seed")
        if seed is not None and not (type(seed) is int and 0 <= seed < SEED_LIMIT):
            self._reject_op("seed", f"reset seed {seed!r:.40}, expected an int in 0..{SEED_LIMIT - 1} or none")
            return
        self._active = False
        for arm in self.arms:
            arm.engaged = False
        meta = {"seed": seed} if seed is not None else {}
        self.cmd_pub.publish("reset", meta=meta)
        self.counts["resets"] += 1

    # ---------------------------------------------------------------------------- output
    def _send_command(self, now: float, sample: OperatorSample | None, keepalive: bool) -> None:
        target = self.press.apply(np.stack([arm.command() for arm in self.arms]))
        self.cmd_pub.publish("cmd", {"target": target}, stamp=now)
        self._last_cmd_t = now
        self.counts["commands"] += 1
        latency = None
        if sample is not None and sample.sent is not None:
            latency = (now - sample.sent) * 1e3
            self.latency_ms.append(latency)
            if len(self.latency_ms) > 100000:
                del self.latency_ms[:50000]
        sim_time = self.sim_time
        if self._state is not None:
            # The robot applies the command at its next tick. On time, that is the wall time since its newest
            # state; a robot that published nothing for longer was not running (a loaded machine) and skips the
            # ticks it missed, so its next tick is one tick of sim time on, not the wall time that passed.
            sim_time += min(max(0.0, now - self._state.stamp), self._tick_dt)
        self.feedback.publish(
            "command", {"target": target},
            {"episode": self.episode, "sim_time": round(sim_time, 6), "keepalive": keepalive,
             "op_seq": None if sample is None else sample.seq,
             "latency_ms": None if latency is None else round(latency, 4),
             "press_retract_m": round(self.press.retraction(), 5)},
            stamp=now,
        )

    def _tick(self, now: float, k: int, status_every: int, forward_every: int, web_every: int) -> None:
        fresh = now - self._last_op_rx < self.cfg.operator_timeout_ms * 1e-3
        if self._active and fresh and now - self._last_cmd_t >= 0.9 / self.cfg.loop_hz:
            self._send_command(now, None, keepalive=True)
        elif self._active and not fresh:
            self.counts["operator_stale_ticks"] += 1
        if k % forward_every == 0:
            for topic in FORWARDED_LATEST:
                msg = self._latest.pop(topic, None)
                if msg is not None:
                    self.feedback.publish(topic, msg.arrays, msg.meta, stamp=msg.stamp)
        if k % status_every == 0:
            self._publish_status()
        if self.web is not None and k % web_every == 0:
            self.web.send_feedback(self._web_feedback(fresh))

    def _status_arrays(self) -> dict[str, np.ndarray]:
        if not self.arms:
            return {}
        return {
            "engaged": np.array([a.engaged for a in self.arms], np.uint8),
            "target": np.stack([a.command() for a in self.arms]),
            "anchor_target": np.stack([a.anchor_command() for a in self.arms]),
            "anchor_hand": np.stack([a.anchor_hand() for a in self.arms]),
        }

    def _publish_status(self, event: str | None = None, arm: int | None = None, jump_m: float = 0.0,
                        jump_rad: float = 0.0) -> None:
        m = self.cfg.mapping
        meta = {
            "event": event, "arm": arm, "jump_m": round(jump_m, 5), "jump_rad": round(jump_rad, 5),
            "episode": self.episode, "sim_time": round(self.sim_time, 6), "active": self._active,
            "arms": len(self.arms),
            "lost_sync": sum(a.lost_sync for a in self.arms), "commands": self.counts["commands"],
            "op_samples": self.counts["op_samples"], "rejects": sum(self.rejects().values()),
            "pos_scale": m.pos_scale, "rot_scale": m.rot_scale, "rotation": m.rotation,
            "web_clients": self.web.clients if self.web else 0,
        }
        self.feedback.publish("teleop", self._status_arrays(), meta)

    def _web_feedback(self, fresh: bool) -> dict[str, Any]:
        """The browser's view: poses, targets, per-pad marker offsets, wrist force, hold state."""
        latest = self.robot_sub.latest
        state, tactile, wrench, status = self._state, latest.get("tactile"), latest.get("wrench"), latest.get("status")
        out: dict[str, Any] = {
            "type": "feedback", "arms": len(self.arms), "episode": self.episode,
            "sim_time": round(self.sim_time, 3), "active": self._active, "operator_fresh": fresh,
            "engaged": [a.engaged for a in self.arms], "lost_sync": [a.lost_sync for a in self.arms],
            "target": [np.round(a.command(), 4).tolist() for a in self.arms],
            "commands": self.counts["commands"],
        }
        if state is not None:
            out["tcp_pos"] = np.round(state.arrays["tcp_pos"], 4).tolist()
            out["tcp_quat"] = np.round(state.arrays["tcp_quat"], 4).tolist()
        if wrench is not None:
            out["wrench"] = np.round(wrench.arrays["wrench"], 3).tolist()
        if tactile is not None:
            out["pads"] = str(tactile.meta.get("pads", "")).split(",")
            out["marker_offset"] = np.round(tactile.arrays["marker_offset"] * 1e3, 2).tolist()  # mm
        if status is not None:
            out["held"] = status.meta.get("held")
            out["hold_reason"] = status.meta.get("reason")
        return out


@command("teleop.node")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = load_config(node_args(argv))  # before logging: a bad argument is the only line printed
    log_to_stderr()
    node = TeleopNode(cfg)

    def _summary(_: object) -> dict[str, Any]:
        summary = node.summary()
        log.info("teleop node stopped: %s", json.dumps(summary))
        return summary

    return serve(node, node.ready_record, _summary)


if __name__ == "__main__":
    sys.exit(main())
