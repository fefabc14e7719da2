"""Operator processes that speak the teleop node's operator protocol (see ``teleop.node``).

    python -m teleop.operators scripted task=wipe teleop.operator=ADDR teleop.feedback=ADDR [seed=0]
    python -m teleop.operators keyboard teleop.operator=ADDR teleop.feedback=ADDR

**scripted** (``configs/teleop/scripted.yaml``): a virtual operator that watches the forwarded feedback and
drives a task plan (``sim.experts``) through a virtual hand, the way a person drives the robot through a
controller: it releases and presses the clutch after every episode reset, reads the anchors the node reports,
and from then on holds its hand where the node's relative mapping puts the plan's target (it inverts the
mapping the node announces: scale, rotation mode). Like a person it reacts late and shakes: each pose leaves
``latency`` after the observation it was computed from (drawn per episode from ``latency_ms``, plus
``jitter_ms``; never out of order), with AR(1) tremor on position and rotation. The plan is stepped once per
control period of *simulated* time (from the forwarded ``state`` stamps). It plans from ``task.nominal`` of a
local copy of the task reset with the episode's seed (what a person sees of the scene at the start: where
the vase, cucumber or box is), never from the running simulation.

Contact is regulated only from the touch and force the teleop node forwards (what the browser page draws
as arrows), per task (``contact``): ``press`` (all three tasks) follows the position-only plan and adds
``PressShaping``'s offset along each tool axis, driven by the displayed wrist force; for a held object
(``press.load_factor``: lift) the target squeeze grows with the vertical load the force arrows show and goes
to ``press.target_max_n`` once a tool pad's marker slip shows the object sliding. ``expert`` lets the task
expert's own force law read the forwarded streams instead (what this operator did before: its integral-only
law oscillates through 50-150 ms of latency and breaks the vase). With ``feedback=false`` the operator
subscribes to neither stream, follows the position-only plan (the expert's calibrated nominal press or
squeeze) and shapes nothing: the same person without the force display.

``lockstep=true``: the graph's clock is the simulation (``teleop.collect mode=lockstep``). Latency, jitter,
tremor and the clutch timing then run on the sim time of the forwarded ``state``; after answering each new
observation (state, plus wrench and tactile at the same time when feedback is on) the operator publishes a
``step`` record on its ``sync`` socket (``episode``, ``sim_time``, ``op_seq`` of the pose it sent, if any,
``expect_command``) so the coordinator advances the robot only once the operator has reacted.

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
from typing import Any

import numpy as np

from bus.cli import UsageError, choose, command
from bus.config import compose
from bus.message import Message
from bus.resources import config_dir
from bus.transport import Publisher, Subscriber
from spatial.rotations import mat_to_rotvec, matrix_to_quat, quat_to_mat, rotvec_to_mat
from teleop.node import FRAMES

log = logging.getLogger("teleop.operators")

CONFIG_DIR = config_dir() / "teleop"
GRIPPER_MAX_WIDTH = 0.08
OBS_TOPICS = ("state", "wrench", "tactile")


@dataclass
class TeleopEndpoints:
    operator: str = "tcp://127.0.0.1:5570"
    feedback: str = "tcp://127.0.0.1:5571"


@dataclass
class PressConfig:
    """``PressShaping`` gains; ``configs/teleop/scripted.yaml`` says what each key means."""

    gain_p: float = 0.2
    gain_i: float = 2.0
    search_speed: float = 0.02
    filter_s: float = 0.1
    contact_fraction: float = 0.3
    max_offset_m: float = 0.05
    target_n: dict[str, float] = field(default_factory=dict)
    load_factor: dict[str, float] = field(default_factory=dict)
    target_max_n: float = 40.0
    slip_speed: float = 0.004
    slip_hold_s: float = 0.1
    carry_phase: str = "lift"

    def __post_init__(self) -> None:
        if min(self.gain_p, self.gain_i, self.search_speed, self.filter_s, self.contact_fraction) < 0 \
                or not self.max_offset_m > 0:
            raise ValueError(f"press {self}: gains, search_speed, filter_s, contact_fraction >= 0, max_offset_m > 0")


CONTACT_MODES = ("press", "expert")
# Phases of the plans (sim.experts) in which the operator holds its press offset, and in which it only backs off.
PLAN_LIFT_OFF = ("return", "retract")
PLAN_APPROACH = ("descend", "approach")


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
    feedback: bool = True
    contact: dict[str, str] = field(default_factory=lambda: {"wipe": "press", "peel": "press", "lift": "press"})
    expert_args: dict[str, dict[str, float]] = field(default_factory=dict)
    press: PressConfig = field(default_factory=PressConfig)
    lockstep: bool = False
    sync: str = "tcp://127.0.0.1:*"
    teleop: TeleopEndpoints = field(default_factory=TeleopEndpoints)

    def __post_init__(self) -> None:
        if self.contact.get(self.task, "press") not in CONTACT_MODES:
            raise ValueError(f"contact.{self.task}={self.contact[self.task]!r}, expected one of {CONTACT_MODES}")
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
    return compose(cls, CONFIG_DIR / f"{name}.yaml", overrides, f"{name} operator", "key=value")


# ------------------------------------------------------------------------------------------ link
class OperatorLink:
    """The two sockets every operator process holds: poses out, feedback in."""

    def __init__(self, endpoints: TeleopEndpoints, feedback: bool = True) -> None:
        """``feedback=False``: no touch or force reaches this operator (no wrench / tactile subscription)."""
        self.pub = Publisher(endpoints.operator, bind=False)
        topics = ("state", "teleop", "episode", *(("wrench", "tactile") if feedback else ()))
        try:
            self.sub = Subscriber(endpoints.feedback, topics=topics)
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

    def send(self, pose: np.ndarray, grip: np.ndarray, clutch: np.ndarray, frame: str = "robot") -> int:
        """Publish one hand sample; returns its sequence number (the node's ``op_seq`` for it)."""
        msg = self.pub.publish("operator", {"pose": pose, "grip": grip, "clutch": clutch.astype(np.uint8)},
                               {"frame": frame, "sent": time.monotonic()})
        return msg.seq

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
    return np.concatenate((pos, matrix_to_quat(d_op @ h0)))


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
class PressShaping:
    """How the operator regulates a tool's press from the force the page displays (TactAR's force arrow).

    Returns an offset along the tool axis (m, > 0 = deeper than the plan) from the displayed normal force F:

        offset = I - gain_p * (F_seen - F*) / K,     dI/dt = gain_i * (F* - F_seen) / K

    ``F_seen`` is F low-passed over ``filter_s`` (0.1 s: a person reads a moving arrow, not its 4 ms impact
    spikes), F* the task's target force, K the arm's stiffness (N/m, so a force error maps to the depth that would
    cancel it). The loop runs through the operator's latency (50-150 ms) and the arm's lag; the expert's own
    law (8 mm/s per N, integral only) oscillates there against the stiff contact and breaks the vase, so the
    integral is slower (``gain_i`` 2 /s, about 1.7 mm/s per N) and the proportional back-off small (``gain_p``
    0.2: a larger one turned contact bounces into a chatter of 0-70 N). Without contact (F_seen below
    ``contact_fraction`` F*) the press deepens at most ``search_speed`` m/s, and only once the plan has reached
    its own depth (``searching``): a person feels for a surface
    that moved away slowly and does not push into one the plan has not reached yet.
    """

    def __init__(self, cfg: PressConfig, target_n: float, stiffness: float, dt: float) -> None:
        if not (target_n > 0 and stiffness > 0 and dt > 0):
            raise ValueError(f"target_n={target_n}, stiffness={stiffness}, dt={dt} must be > 0")
        self.cfg, self.target, self.stiffness, self.dt = cfg, float(target_n), float(stiffness), float(dt)
        self.base_target = self.target
        self.alpha = 1.0 - math.exp(-dt / cfg.filter_s) if cfg.filter_s > 0 else 1.0
        self.integral = 0.0
        self.seen = 0.0

    def reset(self) -> None:
        self.integral = 0.0
        self.seen = 0.0
        self.target = self.base_target

    def update(self, force_n: float, searching: bool) -> float:
        """One control period with the displayed normal force ``force_n`` (N); returns the press offset (m)."""
        cfg = self.cfg
        self.seen += self.alpha * (float(force_n) - self.seen)
        step = cfg.gain_i * (self.target - self.seen) / self.stiffness * self.dt
        if self.seen < cfg.contact_fraction * self.target:  # no contact shown: feel for the surface, slowly
            step = min(step, cfg.search_speed * self.dt if searching else 0.0)
        lim = cfg.max_offset_m
        self.integral = float(np.clip(self.integral + step, -lim, lim))
        offset = self.integral - cfg.gain_p * (self.seen - self.target) / self.stiffness
        return float(np.clip(offset, -lim, lim))


def displayed_normal_force(wrench: np.ndarray) -> float:
    """The press the page's force arrow shows for one arm's wrench (6,) [F, T] (TCP frame): the force along the
    tool axis, or 0.75 of the whole force on a slanted contact when that reads higher (``sim.experts`` rule)."""
    f = np.asarray(wrench[:3], dtype=np.float64)
    return max(-float(f[2]), 0.75 * float(np.linalg.norm(f)))


class ScriptedOperator:
    """Drives the task plan through the operator protocol; see the module docstring."""

    def __init__(self, cfg: ScriptedConfig, link: OperatorLink, sync: Publisher | None = None) -> None:
        from sim.experts import make_expert
        from sim.registry import make_env

        self.cfg = cfg
        self.link = link
        self.sync = sync
        self.env = make_env(cfg.task, perturb=cfg.perturb, cameras=False)
        self.contact = cfg.contact.get(cfg.task, "press")
        # The plan reads force itself only where the operator regulates contact through the expert's law.
        expert_feedback = cfg.feedback and self.contact == "expert"
        self.expert = make_expert(cfg.task, force_feedback=expert_feedback, **cfg.expert_args.get(cfg.task, {}))
        self.n_arms = len(self.env.arms)
        self.dt = 1.0 / self.env.control_hz
        self.shaping: list[PressShaping] = []  # one per arm, when the operator shapes the press from feedback
        if cfg.feedback and self.contact == "press":
            task = self.env.task
            target = cfg.press.target_n.get(cfg.task, getattr(task, "force_target", getattr(task, "squeeze_target", 0)))
            self.shaping = [PressShaping(cfg.press, float(target), float(c.gains.kp_pos), self.dt)
                            for c in self.env.controllers]
        space = self.env.observation_space
        self._blind = {k: np.zeros(space[k].shape, np.float32) for k in ("wrench", "marker_offset", "marker_slip")}
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
        self.counts = {"episodes": 0, "sent": 0, "steps": 0, "reclutch": 0, "answered": 0}
        self.press_offset = np.zeros(self.n_arms)
        self.load_seen = 0.0  # the largest vertical load the arrows showed this episode (N, all arms)
        self.slip_seen = False  # the tool pads showed the held object sliding this episode
        self.slip_time = 0.0  # how long they have shown it sliding without a break
        self.tool_pads = [self.env.pad_names.index(a.prefix + "tool") for a in self.env.task.arms
                          if a.prefix + "tool" in self.env.pad_names]
        self.teleop_active = False
        self._phase_t = 0.0
        self._last_enqueue = -math.inf
        self._answered: tuple[int, float] | None = None
        self._sent: list[tuple[int, bool]] = []  # (op_seq, clutch held) sent while answering this observation
        self._released = False  # a released clutch was sent in this episode (so a press can engage)
        self._last_obs_t: float | None = None  # sim time of the newest observation
        self._old_clock: float | None = None  # after a reset: that time, until the new episode's clock shows
        self._stop = False

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self) -> None:
        while not self._stop:
            msg = self.link.sub.recv(timeout=0.002)
            while msg is not None:
                self._on_feedback(msg)
                msg = self.link.sub.recv(timeout=0)
            if self.cfg.lockstep:
                self._answer_observation()
            else:
                now = time.monotonic()
                self._act(now)
                self._flush_outbox(now)

    # ------------------------------------------------------------------------------ feedback
    def _on_feedback(self, msg: Message) -> None:
        if msg.topic in OBS_TOPICS:
            if self._is_current(msg):
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

    def _is_current(self, msg: Message) -> bool:
        """Whether an observation belongs to the episode the last reset started. The node forwards events at once
        but streams at its next tick, so states of the ended episode can follow the reset: until one stamped
        earlier than the newest state before the reset arrives (a new clock), later stamps are the old episode's."""
        t = msg.meta.get("sim_time")
        if not isinstance(t, (int, float)):
            return False
        if self._old_clock is not None:
            if t >= self._old_clock and t > self.dt:
                return False
            self._old_clock = None
        self._last_obs_t = float(t)
        return True

    def _start_episode(self, msg: Message) -> None:
        self._old_clock = self._last_obs_t
        seed = msg.meta.get("seed")
        self.env.reset(seed=int(seed) if isinstance(seed, int) else None)
        self.expert.reset(self.env)
        for shaping in self.shaping:
            shaping.reset()
        self.press_offset[:] = 0.0
        self.load_seen = 0.0
        self.slip_seen = False
        self.slip_time = 0.0
        self.episode = msg.meta.get("episode", self.episode + 1)
        lo, hi = self.cfg.latency_ms
        self.latency = float(self.rng.uniform(lo, hi)) * 1e-3
        self.anchors = None
        self.teleop_active = False
        self.obs.clear()
        self.outbox.clear()  # poses of the last episode never reach the new one
        self._last_enqueue = -math.inf  # the clutch is released at once, whatever clock the last episode left
        self._released = False
        self.pose = np.tile(self.home, (self.n_arms, 1))
        self.grip = np.ones(self.n_arms)
        self._enter("release", self._phase_clock())
        self.counts["episodes"] += 1

    def _on_status(self, msg: Message) -> None:
        for key in ("pos_scale", "rot_scale", "rotation"):
            if key in msg.meta:
                self.mapping[key] = msg.meta[key]
        if msg.meta.get("episode") != self.episode or "engaged" not in msg.arrays:
            return
        self.teleop_active = bool(msg.meta.get("active"))
        engaged = msg.arrays["engaged"].astype(bool)
        if self.phase == "press" and engaged.all():
            self.anchors = (msg.arrays["anchor_target"].copy(), msg.arrays["anchor_hand"].copy())
            state = self.obs.get("state")
            self.next_step = float(state.meta["sim_time"]) if state is not None else 0.0
            self.phase = "drive"
        elif self.phase == "drive" and not engaged.all() and msg.meta.get("event") in (None, "lost_sync", "release"):
            # The node dropped the clutch (lost-sync guard): release and press again, as a person would.
            self.counts["reclutch"] += 1
            self._enter("release", self._phase_clock())

    def _phase_clock(self) -> float:
        """The operator's clock: sim time of the newest state in lockstep, the wall clock otherwise."""
        if not self.cfg.lockstep:
            return time.monotonic()
        state = self.obs.get("state")
        return float(state.meta["sim_time"]) if state is not None else 0.0

    def _enter(self, phase: str, now: float) -> None:
        log.info("episode %s: %s at %.3f", self.episode, phase, now)
        self.phase = phase
        self._phase_t = now

    # ------------------------------------------------------------------------------ lockstep
    def _observation_time(self) -> float | None:
        """Sim time of the newest observation once every subscribed stream has delivered it, else None."""
        state = self.obs.get("state")
        if state is None:
            return None
        t = state.meta.get("sim_time")
        if self.cfg.feedback and any(self.obs.get(k) is None or self.obs[k].meta.get("sim_time") != t
                                     for k in ("wrench", "tactile")):
            return None
        return float(t) if isinstance(t, (int, float)) else None

    def _answer_observation(self) -> None:
        """Lockstep: react to each new observation once, then tell the coordinator (``step`` on ``sync``)."""
        t = self._observation_time()
        if t is None or (self.episode, t) == self._answered:
            return
        self._answered = (self.episode, t)
        self._sent.clear()
        self._act(t)
        self._flush_outbox(t)
        self.counts["answered"] += 1
        if self.sync is not None:
            # The node commands the robot for this pose if it was active already, or if the pose presses a clutch
            # it saw released (the rising edge engages the arm).
            last = self._sent[-1] if self._sent else None
            expect = last is not None and (self.teleop_active or last[1] and self._released)
            self.sync.publish("step", meta={"episode": self.episode, "sim_time": t,
                                            "op_seq": None if last is None else last[0], "expect_command": expect})

    # ------------------------------------------------------------------------------ acting
    def _act(self, now: float) -> None:
        if self.phase in ("release", "press"):
            if self.phase == "release" and now - self._phase_t > 0.05:
                self._enter("press", now)
            elif self.phase == "press" and now - self._phase_t > 1.0:
                self._enter("release", now)  # the press went unnoticed (e.g. sent before the node saw the reset)
            if now - self._last_enqueue >= self.dt - 1e-9:
                self._last_enqueue = now
                self._enqueue(now, self.pose, self.grip, np.full(self.n_arms, self.phase == "press"))
        elif self.phase == "drive":
            state = self.obs.get("state")
            if state is None or self.cfg.feedback and not all(k in self.obs for k in ("wrench", "tactile")):
                return
            sim_time = float(state.meta["sim_time"])
            targets = None
            while sim_time + 1e-9 >= self.next_step:
                targets = np.asarray(self.expert.act(self._expert_obs(state)), dtype=np.float64).reshape(self.n_arms, 7)
                self.next_step += self.dt
                self.counts["steps"] += 1
                self._shape_press(state)
            if targets is not None:
                self._set_hand(self._pressed(targets, state))
                self._enqueue(now, self.pose, self.grip, np.ones(self.n_arms, bool))

    def _expert_obs(self, state: Message) -> dict[str, np.ndarray]:
        obs = {k: state.arrays[k] for k in ("tcp_pos", "tcp_quat", "joint_pos", "gripper_width")}
        wrench, tactile = self.obs.get("wrench"), self.obs.get("tactile")
        obs["wrench"] = wrench.arrays["wrench"] if wrench is not None else self._blind["wrench"]
        for k in ("marker_offset", "marker_slip"):
            obs[k] = tactile.arrays[k] if tactile is not None else self._blind[k]
        return obs

    def _shape_press(self, state: Message) -> None:
        """One control period of press shaping from each arm's displayed force (``contact=press`` with feedback)."""
        if not self.shaping:
            return
        phase = getattr(self.expert, "phase", "")
        if phase in PLAN_LIFT_OFF:
            return  # lifting off or flying back: the press the operator settled on is kept for the next contact
        wrench = self.obs["wrench"].arrays["wrench"]
        factor = self.cfg.press.load_factor.get(self.cfg.task, 0.0)
        if factor > 0:  # a held object: squeeze harder the heavier it feels (the arrows tilt down), never less,
            # and as hard as is safe once the pads' marker arrows show it sliding (touch, not force, shows that)
            load = sum(abs(float((quat_to_mat(q) @ f[:3])[2])) for q, f in zip(state.arrays["tcp_quat"], wrench,
                                                                               strict=True))
            self.load_seen = max(self.load_seen, load)
            slip = self.obs["tactile"].arrays["marker_slip"]
            sliding = phase == self.cfg.press.carry_phase and any(
                float(np.linalg.norm(slip[p])) > self.cfg.press.slip_speed for p in self.tool_pads)
            self.slip_time = self.slip_time + self.dt if sliding else 0.0  # a lasting slide while carrying it,
            self.slip_seen = self.slip_seen or self.slip_time >= self.cfg.press.slip_hold_s  # not a grasp's jolt
            for shaping in self.shaping:
                top = max(shaping.base_target, self.cfg.press.target_max_n)
                want = top if self.slip_seen else factor * self.load_seen
                shaping.target = float(np.clip(want, shaping.base_target, top))
        for i, shaping in enumerate(self.shaping):
            self.press_offset[i] = shaping.update(displayed_normal_force(wrench[i]),
                                                  searching=phase not in PLAN_APPROACH)

    def _pressed(self, targets: np.ndarray, state: Message) -> np.ndarray:
        """The plan's targets (A, 7) moved ``press_offset`` along each tool's axis as the operator sees it."""
        if not self.press_offset.any():
            return targets
        out = targets.copy()
        for i in range(self.n_arms):
            out[i, :3] += quat_to_mat(state.arrays["tcp_quat"][i])[:, 2] * self.press_offset[i]
        return out

    def _set_hand(self, targets: np.ndarray) -> None:
        anchor_target, anchor_hand = self.anchors
        pos_noise = self.pos_noise.step(self.dt)
        rot_noise = self.rot_noise.step(self.dt)
        for i in range(self.n_arms):
            hand = hand_for_target(targets[i], anchor_target[i], anchor_hand[i], self.mapping)
            hand[:3] += pos_noise[i]
            hand[3:] = matrix_to_quat(rotvec_to_mat(rot_noise[i]) @ quat_to_mat(hand[3:]))
            self.pose[i] = hand
            self.grip[i] = float(np.clip(1.0 - targets[i, 6] / GRIPPER_MAX_WIDTH, 0.0, 1.0))

    def _enqueue(self, now: float, pose: np.ndarray, grip: np.ndarray, clutch: np.ndarray) -> None:
        due = now + self.latency + float(self.rng.uniform(0.0, self.cfg.jitter_ms)) * 1e-3
        if self.outbox:
            due = max(due, self.outbox[-1][0])  # a person's hand does not overtake itself
        self.outbox.append((due, pose.copy(), grip.copy(), clutch.copy()))

    def _flush_outbox(self, now: float) -> None:
        while self.outbox and self.outbox[0][0] <= now + 1e-9:
            _, pose, grip, clutch = self.outbox.popleft()
            seq = self.link.send(pose, grip, clutch)
            self._sent.append((seq, bool(clutch.any())))
            self._released = self._released or not clutch.all()
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
            self.pose[i, 3:] = matrix_to_quat(rotvec_to_mat(rv) @ quat_to_mat(self.pose[i, 3:]))
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
    link = OperatorLink(cfg.teleop, feedback=cfg.feedback)
    sync = op = None
    try:
        sync = Publisher(cfg.sync) if cfg.lockstep else None
        if sync is not None:  # the coordinator subscribes before it ticks the robot the rest of us wait for
            print(json.dumps({"event": "listening", "sync": sync.address}), flush=True)
        op = ScriptedOperator(cfg, link, sync)
        signal.signal(signal.SIGINT, op.stop)
        signal.signal(signal.SIGTERM, op.stop)
        status = link.wait_connected()
        if int(status["arms"]) != op.n_arms:
            raise ValueError(f"the robot has {status['arms']} arm(s), task {cfg.task!r} has {op.n_arms}")
        print(json.dumps({"event": "ready", "pid": os.getpid(), "operator": "scripted", "task": cfg.task,
                          "feedback": cfg.feedback, "contact": op.contact if cfg.feedback else "none",
                          "sync": sync.address if sync is not None else None}), flush=True)
        op.run()
    finally:
        link.close()
        if sync is not None:
            sync.close()
        if op is not None:
            op.env.close()
            print(json.dumps({"event": "exit", **op.counts}), flush=True)
    return 0


@command("teleop.operators")
def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if not args:
        raise UsageError("name an operator: python -m teleop.operators {keyboard,scripted} [key=value ...]")
    kind, overrides = choose("operator", args[0], KINDS, "operator"), args[1:]
    cfg = load_config(KINDS[kind], kind, overrides)  # before logging is on: a bad argument is the only line printed
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    return run_scripted(cfg) if kind == "scripted" else run_keyboard(cfg)


KINDS = {"scripted": ScriptedConfig, "keyboard": KeyboardConfig}


if __name__ == "__main__":
    sys.exit(main())
