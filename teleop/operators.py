"""Operator processes that speak the teleop node's operator protocol (see ``teleop.node``).

    python -m teleop.operators scripted task=wipe teleop.operator=ADDR teleop.feedback=ADDR [seed=0]
    python -m teleop.operators keyboard teleop.operator=ADDR teleop.feedback=ADDR

**scripted** (``configs/teleop/scripted.yaml``): a virtual operator that watches the forwarded feedback and
drives the task's force-aware expert (``sim.experts``) through a virtual hand, the way a person drives the
robot through a controller: it releases and presses the clutch after every episode reset, reads the anchors
the node reports, and from then on holds its hand where the node's relative mapping puts the expert's target
(it inverts the mapping the node announces: scale, rotation mode). Like a person it reacts late and shakes:
each pose leaves ``latency`` after the observation it was computed from (drawn per episode from
``latency_ms``, plus ``jitter_ms``; never out of order), with AR(1) tremor on position and rotation. The
expert is stepped once per control period of *simulated* time (from the forwarded ``state`` stamps), so its
internal timing matches the robot's. It plans from ``task.nominal`` of a local copy of the task reset with
the episode's seed (what the robot node announces), exactly what the expert sees in evaluation.

**keyboard** (``configs/teleop/keyboard.yaml``): a terminal operator for a desktop. Terminals report key
presses but not releases, so each press moves the hand one step; the pose streams at ``rate_hz``.
Keys: w/s a/d r/f move x/y/z, j/l i/k u/o rotate about z/y/x, space toggles the clutch, g the grip,
tab the arm, x resets the episode, q quits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bus.config import load_node_config
from bus.message import Message
from bus.transport import Publisher, Subscriber
from sim.controller import mat_to_rotvec, rotvec_to_mat
from teleop.node import FRAMES, mat_to_quat, quat_to_mat

log = logging.getLogger("teleop.operators")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "teleop"
GRIPPER_MAX_WIDTH = 0.08
OBS_TOPICS = ("state", "wrench", "tactile")


@dataclass
class TeleopEndpoints:
    operator: str = "tcp://127.0.0.1:5570"
    feedback: str = "tcp://127.0.0.1:5571"


@dataclass
class ScriptedConfig:
    """Typed scripted-operator settings; ``configs/teleop/scripted.yaml`` says what each key means."""

    task: str = "wipe"
    perturb: bool = True
    seed: int = 0
    latency_ms: list[float] = field(default_factory=lambda: [50.0, 150.0])
    jitter_ms: float = 5.0
    noise_pos_m: float = 0.0005
    noise_rot_rad: float = 0.003
    noise_tau_s: float = 0.1
    hand_home: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    teleop: TeleopEndpoints = field(default_factory=TeleopEndpoints)

    def __post_init__(self) -> None:
        lo, hi = self.latency_ms
        if not 0 <= lo <= hi:
            raise ValueError(f"latency_ms={self.latency_ms} must be [low, high] with 0 <= low <= high")
        if min(self.jitter_ms, self.noise_pos_m, self.noise_rot_rad) < 0 or not self.noise_tau_s > 0:
            raise ValueError("jitter_ms and noise_* must be >= 0, noise_tau_s > 0")
        if len(self.hand_home) != 3:
            raise ValueError(f"hand_home={self.hand_home} must be [x, y, z]")


@dataclass
class KeyboardConfig:
    step_m: float = 0.005
    step_rad: float = 0.05
    rate_hz: float = 50.0
    teleop: TeleopEndpoints = field(default_factory=TeleopEndpoints)


def load_config(cls: type, name: str, overrides: Sequence[str]) -> Any:
    return load_node_config(cls, CONFIG_DIR / f"{name}.yaml", overrides, f"{name} operator", "key=value")


# ------------------------------------------------------------------------------------------ link
class OperatorLink:
    """The two sockets every operator process holds: poses out, feedback in."""

    def __init__(self, endpoints: TeleopEndpoints) -> None:
        self.pub = Publisher(endpoints.operator, bind=False)
        try:
            self.sub = Subscriber(endpoints.feedback, topics=("state", "wrench", "tactile", "teleop", "episode"))
        except Exception:
            self.pub.close()
            raise

    def wait_connected(self, timeout: float = 20.0) -> dict[str, Any]:
        """Block until the node hears us and we hear its status; returns the status meta."""
        if not self.pub.wait_for_subscriber("operator", timeout=timeout):
            raise TimeoutError(f"teleop node at {self.pub.address} did not subscribe within {timeout} s")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.sub.recv(timeout=0.2)
            if msg is not None and msg.topic == "teleop" and msg.meta.get("arms"):
                return msg.meta
        raise TimeoutError(f"no teleop status with a robot on {self.sub.address} within {timeout} s")

    def send(self, pose: np.ndarray, grip: np.ndarray, clutch: np.ndarray, frame: str = "robot") -> None:
        self.pub.publish("operator", {"pose": pose, "grip": grip, "clutch": clutch.astype(np.uint8)},
                         {"frame": frame, "sent": time.monotonic()})

    def reset(self, seed: int | None = None) -> None:
        self.pub.publish("reset", meta={} if seed is None else {"seed": int(seed)})

    def close(self) -> None:
        self.pub.close()
        self.sub.close()


def hand_for_target(target: np.ndarray, anchor_target: np.ndarray, anchor_hand: np.ndarray, mapping: dict[str, Any],
                    frame: np.ndarray = FRAMES["robot"]) -> np.ndarray:
    """Invert the node's mapping: the hand pose (7,) [x, y, z, qw, qx, qy, qz] that commands ``target`` (7,).

    ``anchor_target`` (7,) and ``anchor_hand`` (7,) are the anchors the node reported at the clutch press.
    """
    pos = anchor_hand[:3] + frame.T @ (target[:3] - anchor_target[:3]) / float(mapping["pos_scale"])
    h0 = quat_to_mat(anchor_hand[3:])
    if mapping["rotation"] == "locked":
        return np.concatenate((pos, anchor_hand[3:]))
    d_world = rotvec_to_mat(target[3:6]) @ rotvec_to_mat(anchor_target[3:6]).T
    d_op = frame.T @ d_world @ frame
    if float(mapping["rot_scale"]) != 1.0:
        d_op = rotvec_to_mat(mat_to_rotvec(d_op) / float(mapping["rot_scale"]))
    return np.concatenate((pos, mat_to_quat(d_op @ h0)))


class Tremor:
    """AR(1) noise with standard deviation ``sigma`` and correlation time ``tau``: a hand is not white noise."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, ...], sigma: float, tau: float) -> None:
        self.rng, self.sigma, self.tau = rng, sigma, tau
        self.value = np.zeros(shape)

    def step(self, dt: float) -> np.ndarray:
        a = math.exp(-dt / self.tau)
        self.value = a * self.value + math.sqrt(1.0 - a * a) * self.sigma * self.rng.standard_normal(self.value.shape)
        return self.value


# -------------------------------------------------------------------------------------- scripted
class ScriptedOperator:
    """Drives the task expert through the operator protocol; see the module docstring."""

    def __init__(self, cfg: ScriptedConfig, link: OperatorLink) -> None:
        from sim.experts import make_expert
        from sim.registry import make_env

        self.cfg = cfg
        self.link = link
        self.env = make_env(cfg.task, perturb=cfg.perturb, cameras=False)
        self.expert = make_expert(cfg.task, force_feedback=True)
        self.n_arms = len(self.env.arms)
        self.dt = 1.0 / self.env.control_hz
        self.rng = np.random.default_rng(cfg.seed)
        self.home = np.array([*cfg.hand_home, 1.0, 0.0, 0.0, 0.0])
        self.pos_noise = Tremor(self.rng, (self.n_arms, 3), cfg.noise_pos_m, cfg.noise_tau_s)
        self.rot_noise = Tremor(self.rng, (self.n_arms, 3), cfg.noise_rot_rad, cfg.noise_tau_s)
        self.outbox: deque[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = deque()
        self.obs: dict[str, Message] = {}
        self.phase = "idle"  # idle -> release -> press -> drive -> (end) idle
        self.episode = -1
        self.latency = 0.0
        self.anchors: tuple[np.ndarray, np.ndarray] | None = None
        self.mapping: dict[str, Any] = {"pos_scale": 1.0, "rot_scale": 1.0, "rotation": "relative"}
        self.next_step = 0.0
        self.pose = np.tile(self.home, (self.n_arms, 1))
        self.grip = np.ones(self.n_arms)
        self.counts = {"episodes": 0, "sent": 0, "steps": 0, "reclutch": 0}
        self._phase_t = 0.0
        self._last_enqueue = -math.inf
        self._stop = False

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self) -> None:
        while not self._stop:
            msg = self.link.sub.recv(timeout=0.002)
            while msg is not None:
                self._on_feedback(msg)
                msg = self.link.sub.recv(timeout=0)
            self._act()
            self._flush_outbox()

    # ------------------------------------------------------------------------------ feedback
    def _on_feedback(self, msg: Message) -> None:
        if msg.topic in OBS_TOPICS:
            self.obs[msg.topic] = msg
        elif msg.topic == "episode":
            event = msg.meta.get("event")
            if event == "reset":
                self._start_episode(msg)
            elif event == "end" and self.phase != "idle":
                self.phase = "idle"
                log.info("episode %s ended: success=%s score=%s", msg.meta.get("episode"), msg.meta.get("success"),
                         msg.meta.get("score"))
        elif msg.topic == "teleop":
            self._on_status(msg)

    def _start_episode(self, msg: Message) -> None:
        seed = msg.meta.get("seed")
        self.env.reset(seed=int(seed) if isinstance(seed, int) else None)
        self.expert.reset(self.env)
        self.episode = msg.meta.get("episode", self.episode + 1)
        lo, hi = self.cfg.latency_ms
        self.latency = float(self.rng.uniform(lo, hi)) * 1e-3
        self.anchors = None
        self.obs.clear()
        self.pose = np.tile(self.home, (self.n_arms, 1))
        self.grip = np.ones(self.n_arms)
        self._enter("release")
        self.counts["episodes"] += 1

    def _on_status(self, msg: Message) -> None:
        for key in ("pos_scale", "rot_scale", "rotation"):
            if key in msg.meta:
                self.mapping[key] = msg.meta[key]
        if msg.meta.get("episode") != self.episode or "engaged" not in msg.arrays:
            return
        engaged = msg.arrays["engaged"].astype(bool)
        if self.phase == "press" and engaged.all():
            self.anchors = (msg.arrays["anchor_target"].copy(), msg.arrays["anchor_hand"].copy())
            state = self.obs.get("state")
            self.next_step = float(state.meta["sim_time"]) if state is not None else 0.0
            self.phase = "drive"
        elif self.phase == "drive" and not engaged.all() and msg.meta.get("event") in (None, "lost_sync", "release"):
            # The node dropped the clutch (lost-sync guard): release and press again, as a person would.
            self.counts["reclutch"] += 1
            self._enter("release")

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self._phase_t = time.monotonic()

    # ------------------------------------------------------------------------------ acting
    def _act(self) -> None:
        now = time.monotonic()
        if self.phase in ("release", "press"):
            if self.phase == "release" and now - self._phase_t > 0.05:
                self._enter("press")
            elif self.phase == "press" and now - self._phase_t > 1.0:
                self._enter("release")  # the press went unnoticed (e.g. sent before the node saw the reset)
            if now - self._last_enqueue >= self.dt:
                self._last_enqueue = now
                self._enqueue(now, self.pose, self.grip, np.full(self.n_arms, self.phase == "press"))
        elif self.phase == "drive":
            state, wrench, tactile = (self.obs.get(t) for t in OBS_TOPICS)
            if state is None or wrench is None or tactile is None:
                return
            sim_time = float(state.meta["sim_time"])
            stepped = False
            while sim_time + 1e-9 >= self.next_step:
                action = self.expert.act(self._expert_obs(state, wrench, tactile))
                self.next_step += self.dt
                self.counts["steps"] += 1
                stepped = True
            if stepped:
                self._set_hand(np.asarray(action).reshape(self.n_arms, 7))
                self._enqueue(now, self.pose, self.grip, np.ones(self.n_arms, bool))

    def _expert_obs(self, state: Message, wrench: Message, tactile: Message) -> dict[str, np.ndarray]:
        return {
            "tcp_pos": state.arrays["tcp_pos"], "tcp_quat": state.arrays["tcp_quat"],
            "joint_pos": state.arrays["joint_pos"], "gripper_width": state.arrays["gripper_width"],
            "wrench": wrench.arrays["wrench"], "marker_offset": tactile.arrays["marker_offset"],
            "marker_slip": tactile.arrays["marker_slip"],
        }

    def _set_hand(self, targets: np.ndarray) -> None:
        anchor_target, anchor_hand = self.anchors
        pos_noise = self.pos_noise.step(self.dt)
        rot_noise = self.rot_noise.step(self.dt)
        for i in range(self.n_arms):
            hand = hand_for_target(targets[i], anchor_target[i], anchor_hand[i], self.mapping)
            hand[:3] += pos_noise[i]
            hand[3:] = mat_to_quat(rotvec_to_mat(rot_noise[i]) @ quat_to_mat(hand[3:]))
            self.pose[i] = hand
            self.grip[i] = float(np.clip(1.0 - targets[i, 6] / GRIPPER_MAX_WIDTH, 0.0, 1.0))

    def _enqueue(self, now: float, pose: np.ndarray, grip: np.ndarray, clutch: np.ndarray) -> None:
        due = now + self.latency + float(self.rng.uniform(0.0, self.cfg.jitter_ms)) * 1e-3
        if self.outbox:
            due = max(due, self.outbox[-1][0])  # a person's hand does not overtake itself
        self.outbox.append((due, pose.copy(), grip.copy(), clutch.copy()))

    def _flush_outbox(self) -> None:
        now = time.monotonic()
        while self.outbox and self.outbox[0][0] <= now:
            _, pose, grip, clutch = self.outbox.popleft()
            self.link.send(pose, grip, clutch)
            self.counts["sent"] += 1


# -------------------------------------------------------------------------------------- keyboard
KEY_MOVES = {"w": (0, 1), "s": (0, -1), "a": (1, 1), "d": (1, -1), "r": (2, 1), "f": (2, -1)}
KEY_TURNS = {"j": (2, 1), "l": (2, -1), "i": (1, 1), "k": (1, -1), "u": (0, 1), "o": (0, -1)}


class KeyboardHand:
    """Key presses -> a hand pose per arm, clutch and grip; pure state so it can be tested without a terminal."""

    def __init__(self, n_arms: int, step_m: float, step_rad: float) -> None:
        self.pose = np.tile([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], (n_arms, 1))
        self.grip = np.ones(n_arms)
        self.clutch = np.zeros(n_arms, bool)
        self.arm = 0
        self.step_m, self.step_rad = step_m, step_rad

    def press(self, key: str) -> str | None:
        """Apply one key; returns "quit" / "reset" for the caller, else None."""
        i = self.arm
        if key in KEY_MOVES:
            axis, sign = KEY_MOVES[key]
            self.pose[i, axis] += sign * self.step_m
        elif key in KEY_TURNS:
            axis, sign = KEY_TURNS[key]
            rv = np.zeros(3)
            rv[axis] = sign * self.step_rad
            self.pose[i, 3:] = mat_to_quat(rotvec_to_mat(rv) @ quat_to_mat(self.pose[i, 3:]))
        elif key == " ":
            self.clutch[i] = not self.clutch[i]
        elif key == "g":
            self.grip[i] = 1.0 - self.grip[i]
        elif key == "\t":
            self.arm = (self.arm + 1) % len(self.pose)
        elif key == "x":
            return "reset"
        elif key in ("q", "\x03"):
            return "quit"
        return None


def run_keyboard(cfg: KeyboardConfig) -> int:
    import select
    import termios
    import tty

    if not sys.stdin.isatty():
        print("keyboard operator: stdin is not a terminal", file=sys.stderr)
        return 2
    link = OperatorLink(cfg.teleop)
    old = termios.tcgetattr(sys.stdin)
    try:
        status = link.wait_connected()
        hand = KeyboardHand(int(status["arms"]), cfg.step_m, cfg.step_rad)
        tty.setcbreak(sys.stdin.fileno())
        period, force, engaged = 1.0 / cfg.rate_hz, 0.0, []
        while True:
            if select.select([sys.stdin], [], [], period)[0]:
                action = hand.press(sys.stdin.read(1))
                if action == "quit":
                    break
                if action == "reset":
                    link.reset()
            link.send(hand.pose, hand.grip, hand.clutch)
            while (msg := link.sub.recv(timeout=0)) is not None:
                if msg.topic == "wrench":
                    force = float(np.linalg.norm(msg.arrays["wrench"][hand.arm, :3]))
                elif msg.topic == "teleop" and "engaged" in msg.arrays:
                    engaged = msg.arrays["engaged"].tolist()
            sys.stderr.write(f"\rarm {hand.arm} clutch {'ON ' if hand.clutch[hand.arm] else 'off'} engaged {engaged} "
                             f"grip {hand.grip[hand.arm]:.0f} |F| {force:5.1f} N   ")
            sys.stderr.flush()
    finally:
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, old)
        link.close()
    return 0


def run_scripted(cfg: ScriptedConfig) -> int:
    link = OperatorLink(cfg.teleop)
    op = None
    try:
        op = ScriptedOperator(cfg, link)
        signal.signal(signal.SIGINT, op.stop)
        signal.signal(signal.SIGTERM, op.stop)
        status = link.wait_connected()
        if int(status["arms"]) != op.n_arms:
            raise ValueError(f"the robot has {status['arms']} arm(s), task {cfg.task!r} has {op.n_arms}")
        print(json.dumps({"event": "ready", "pid": os.getpid(), "operator": "scripted", "task": cfg.task}), flush=True)
        op.run()
    finally:
        link.close()
        if op is not None:
            op.env.close()
            print(json.dumps({"event": "exit", **op.counts}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in ("scripted", "keyboard"):
        print(__doc__)
        return 0 if args and args[0] in ("-h", "--help") else 2
    kind, overrides = args[0], args[1:]
    try:
        cfg = load_config(ScriptedConfig if kind == "scripted" else KeyboardConfig, kind, overrides)
    except ValueError as exc:
        print(f"teleop.operators: {exc}", file=sys.stderr)
        return 2
    return run_scripted(cfg) if kind == "scripted" else run_keyboard(cfg)


if __name__ == "__main__":
    sys.exit(main())
