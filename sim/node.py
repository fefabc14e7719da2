"""The robot node: the one process that owns the robot (the MuJoCo sim by default; a hardware driver plugs in).

    python -m sim.node task=wipe                                   # realtime, loopback defaults
    python -m sim.node task=wipe mode=lockstep 'addresses.pub=tcp://127.0.0.1:*' ...
    python -m sim.node robot=fake                                  # a wall-clock fake arm (sim.fake_robot)

The node talks to the robot only through :class:`sim.robot_interface.Robot` (reset, apply, hold, advance, read),
built by :func:`make_robot` from the config key ``robot``: ``mujoco`` (:class:`sim.mujoco_robot.MujocoRobot`, the
task's scene, stepped by the same code as ``ContactRichEnv.step``), ``fake`` (:class:`sim.fake_robot.LagArm`) or
``package.module:function`` (a driver of your own: ``docs/usage.md``, "Driving a real arm"). The node keeps the
sockets, command validation, safety, clocks, lockstep ticks, the camera thread and status.

Config: ``configs/robot_node/default.yaml`` -> :class:`RobotNodeConfig`; ``key=value`` arguments override it.
The first stdout line is a JSON "ready" record with the bound addresses (so ``*`` ports can be used); the
last one, on SIGINT/SIGTERM, an "exit" record with every counter (also logged).

One node tick = one ``Robot.advance`` = ``publish_every`` physics steps (500 Hz / 2 -> 250 Hz). Each tick: take
the newest valid command, run the safety logic (watchdog, force limit), advance the robot (MuJoCo: the physics with
the impedance controllers at every physics step, ``ContactRichEnv.advance``, which ``ContactRichEnv.step`` runs
too), read the pads and the wrist, publish. Task scoring runs at the env's control step (50 Hz), as in evaluation.

Published (``bus.transport.Publisher``; A arms, P pads, S image size). Stamps come from the node clock:
``time.monotonic`` in realtime, lockstep time in lockstep; every message has meta ``sim_time`` and the
per-topic ``seq`` of the bus header::

    state     tcp_pos (A,3) f8 world m; tcp_quat (A,4) f8 [w,x,y,z]; joint_pos, joint_vel (A,7) f8;
              gripper_width (A,) f8; scene (S,) f4 the task's one-shot object localisation at reset
              (``Task.scene_features``: constant during an episode); goal (G,) f4 the episode's goal
              (``Goal.vector``) only when the node runs with goal=random or a goal     every tick
    tactile   marker_offset (P,R,C,2) f4 ((R, C) = sensors.types.MARKER_GRID); marker_depth (P,14,18) f4;
              marker_slip (P,2) f4; meta pads (comma-separated pad names)     every tick
    wrench    wrench (A,6) f8, [F, T] in the TCP frame                        every tick
    image     scene_rgb, wrist_rgb (S,S,3) u1                at each reset, then camera_hz from it
              [scene_points (n,3) f4 with point_cloud=true: the scene camera's depth as a cloud (sim.env)]
              (lockstep: rendered in the tick, sent before that tick's state; realtime: by a render thread,
              sent when done, meta sim_time of the state it shows)
    status    meta: held, reason, episode, seed, counters (accepted, clipped, rej_<kind>...)
                                                   status_hz and on every hold change
    watchdog  meta: engaged, reason (no_command | watchdog | force_limit | latched), cmd_age_ms, force_n
                                                   on hold changes
    applied   applied_target (A,7) f8: the target the controllers took this tick (a command, or the hold pose
              when a hold begins); meta sim_time (the tick's start, 0 at reset), tick (node ticks since the
              reset), reason (None when following commands)       on every change of target
    episode   meta: event (reset | end), task, seed, episode, success, score, perturbation

Commands (``Subscriber`` that binds ``addresses.cmd``; many senders may connect):

    cmd       arrays {"target": (A, 7) f4 or f8}: per arm [x, y, z, rx, ry, rz, grip] -- TCP position (m, world),
              orientation as an axis-angle vector (rad, world, norm <= 2 pi), gripper width (m); the env's
              action contract. Positions and width are clipped to the task workspace (counted as
              ``clipped``); anything else malformed is rejected, counted per kind and never reaches physics.
    reset     meta {"seed": int} (optional): start a new episode. A seed is an int in 0 .. 2**32 - 1 (what every
              numpy seeding API takes); without one the last seed + 1 (wrapping to 0), anything else is refused
              (counted as ``rej_seed``) and resets nothing.
    hold      latch a hold: from the next tick on the robot holds where it is and every command is refused
              (counted as ``rej_latched``) until the node exits, resets included. A launcher that has decided to
              stop a run sends it, so no late command of a node it is stopping can move the robot again.

Safety: speed is bounded by the controller (its reference moves at <= 0.25 m/s). The robot holds where it
is (``Robot.hold``) until the first command, whenever the newest valid command is older
than ``watchdog_ms`` on the node clock (arrival time, so sender clocks need not agree), and while the
low-passed wrist force exceeds ``limits.force_n`` (released below ``force_release`` of it). A fresh
command ends a watchdog hold at once; nothing ends a latched hold. With ``press_guard_n`` > 0
(robot: mujoco) the scene's press guard (``sim.press_guard``, the teleop node's assist) backs every target off
along its tool axis while the wrist presses harder than that, long before the force hold; ``applied`` holds the
commands, not the guarded targets, and the episode's ``end`` event carries ``guard_retract_m`` and ``guard_active_s``.

Lockstep (``Server`` on ``addresses.tick``; requests from a ``bus.transport.Client``)::

    tick      optional arrays {"target"} = the command for this step (validated as above). The sim advances
              one control step (1 / control_hz), or meta ``node_ticks`` node ticks when given (1 = one 250 Hz
              tick: ``teleop.replay`` re-applies recorded ``applied`` targets at the tick they took effect),
              then the reply "tick" carries the state arrays and meta tick, sim_time, state_seq, held,
              reason, cmd_accepted, terminated, truncated, success.
    reset     meta {"seed"}: new episode; reply "reset" (or "error", meta reason, for a seed out of range).
    hold      as the command above; reply "hold", meta accepted (commands accepted until the latch).
    ping      meta {"topic"} (default "state"); reply "pong", meta subscribed (a subscriber to that topic is
              connected): the start-up handshake that keeps a lockstep run from losing its first messages.

The same loop runs both modes: a ``RateKeeper`` on a ``RealtimeClock`` or on a ``LockstepClock`` whose tick
source is the server. With the same seed and the same tick commands, two lockstep runs publish identical
streams (commands sent on the cmd socket in lockstep mode arrive at unpredictable ticks, so they are not).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bus.cli import UsageError, choose, command
from bus.clock import Clock, LockstepClock, RateKeeper, RealtimeClock
from bus.config import compose
from bus.message import Message, MetaValue
from bus.node import log_to_stderr, node_args, serve
from bus.resources import config_dir
from bus.transport import Publisher, Request, Server, Subscriber
from sim.looks import LOOKS
from sim.press_guard import GUARD_HZ, guard_steps
from sim.registry import goal_option, task_physics_hz
from sim.robot_interface import TARGET_DIM, Cameras, Reading, Robot, TaskStep
from spatial.rotations import quat_to_rotvec

log = logging.getLogger("sim.node")

CONFIG_PATH = config_dir() / "robot_node" / "default.yaml"
MODES = ("realtime", "lockstep")
COMMAND_DTYPES = frozenset({np.dtype("<f4"), np.dtype("<f8")})
MAX_ROTVEC_NORM = 2.0 * math.pi
MAX_DRAIN = 1000  # command messages read per tick at most: a flooding sender cannot stall the loop
STATE_HZ = 250.0  # state / tactile / wrench rate when publish_every is not given
SEED_LIMIT = 2**32  # episode seeds are 0 .. SEED_LIMIT - 1: numpy's legacy seeding takes no more, and seed + 1 wraps
# config ``robot`` -> the "module:function" that builds it from the node config (imported only when chosen)
ROBOTS = {"mujoco": "sim.mujoco_robot:from_node_config", "fake": "sim.fake_robot:from_node_config"}


# ------------------------------------------------------------------------------------------- config
@dataclass
class NodeAddresses:
    pub: str = "tcp://127.0.0.1:5560"
    cmd: str = "tcp://127.0.0.1:5561"
    tick: str = "tcp://127.0.0.1:5562"


@dataclass
class NodeLimits:
    force_n: float = 60.0
    force_release: float = 0.8
    force_filter_s: float = 0.02
    cmd_max_bytes: int = 65536


@dataclass
class RobotNodeConfig:
    """Typed robot-node configuration; see ``configs/robot_node/default.yaml`` for what each key means."""

    task: str = "wipe"
    robot: str = "mujoco"  # a name in ROBOTS, or "package.module:function" (a driver of your own)
    seed: int = 0
    mode: str = "realtime"
    perturb: bool = True
    physics_hz: float | None = None  # None: the task's own rate (sim.tasks: lift 1000 Hz, others 500 Hz)
    control_hz: float = 50.0
    publish_every: int | None = None  # None: the physics steps of one STATE_HZ tick
    camera_hz: float = 10.0
    cameras: bool = True
    image_size: int = 96
    looks: str = "none"  # sim.looks.LOOKS: per-episode lighting, paint, camera offsets (robot: mujoco)
    point_cloud: bool = False  # image messages carry scene_points too (robot: mujoco; a point-cloud perception head)
    goal: str = "default"  # the task's goal option (configs/task): default | random | a goal; else state has `goal`
    status_hz: float = 10.0
    watchdog_ms: float = 100.0
    wrench_noise: float = 0.2
    press_guard_n: float = 0.0  # N: the robot-side force-limited press (sim.press_guard; robot: mujoco); 0 = off
    auto_reset: bool = False
    limits: NodeLimits = field(default_factory=NodeLimits)
    addresses: NodeAddresses = field(default_factory=NodeAddresses)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}, expected one of {MODES}")
        if self.looks not in LOOKS:
            raise ValueError(f"looks={self.looks!r}, expected one of {LOOKS}")
        if self.robot == "mujoco":
            goal_option(self.task, self.goal)  # a bad goal fails here, in one line (a driver of your own ignores it)
        robot_factory_path(self.robot)
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed={self.seed}, expected an int in 0..{SEED_LIMIT - 1}")
        if self.physics_hz is None:
            self.physics_hz = task_physics_hz(self.task)
        if self.publish_every is None:
            self.publish_every = max(int(round(self.physics_hz / STATE_HZ)), 1)
        substeps = self.physics_hz / self.control_hz
        if substeps < 1 or abs(substeps - round(substeps)) > 1e-9:
            raise ValueError(f"physics_hz={self.physics_hz} must be a multiple of control_hz={self.control_hz}")
        if self.publish_every < 1 or round(substeps) % self.publish_every:
            raise ValueError(
                f"publish_every={self.publish_every} must divide the {round(substeps)} physics steps of a control step"
            )
        self._check_press_guard()
        for name in ("camera_hz", "status_hz", "watchdog_ms"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        lim = self.limits
        if not (lim.force_n > 0 and 0 < lim.force_release <= 1 and lim.force_filter_s >= 0 and lim.cmd_max_bytes > 0):
            raise ValueError(
                f"limits {lim} need force_n > 0, 0 < force_release <= 1, force_filter_s >= 0, cmd_max_bytes > 0"
            )

    def _check_press_guard(self) -> None:
        if not 0 <= self.press_guard_n < math.inf:
            raise ValueError(f"press_guard_n={self.press_guard_n}: expected a wrist force limit >= 0 N (0 = off)")
        if self.press_guard_n == 0:
            return
        if self.robot != "mujoco":
            raise ValueError(f"press_guard_n={self.press_guard_n}: the press guard is part of the MuJoCo scene "
                             f"(robot: mujoco), not of robot={self.robot}")
        period = guard_steps(self.physics_hz)
        if self.publish_every % period:
            raise ValueError(f"press_guard_n={self.press_guard_n}: publish_every={self.publish_every} must be a "
                             f"multiple of the guard's period of {period} physics steps ({GUARD_HZ:g} Hz)")

    @property
    def tick_hz(self) -> float:
        """Node ticks (and state/tactile/wrench messages) per second."""
        return self.physics_hz / self.publish_every

    @property
    def ticks_per_control(self) -> int:
        return round(self.physics_hz / self.control_hz) // self.publish_every


def load_config(overrides: Sequence[str] = (), path: Path = CONFIG_PATH) -> RobotNodeConfig:
    """``path`` composed with hydra overrides into a checked :class:`RobotNodeConfig` (``--help``, ``--cfg``)."""
    return compose(RobotNodeConfig, path, overrides, "robot node", "task=wipe mode=lockstep", doc=__doc__)


# --------------------------------------------------------------------------------------------- robot
def robot_factory_path(robot: str) -> str:
    """``robot`` (a name in ``ROBOTS`` or "package.module:function") -> "module:function"; a UsageError otherwise."""
    if ":" not in robot:
        return ROBOTS[choose("robot", robot, ROBOTS, "robot")]
    module, _, name = robot.partition(":")
    if not (module and all(part.isidentifier() for part in module.split(".")) and name.isidentifier()):
        raise UsageError(f"robot={robot}: expected one of {', '.join(sorted(ROBOTS))} or package.module:function")
    return robot


def make_robot(cfg: RobotNodeConfig) -> Robot:
    """The node's one way to get its robot: the factory ``cfg.robot`` names, called with the node config. A factory
    returns a :class:`sim.robot_interface.Robot` whose ``period`` is the node's tick, ``publish_every / physics_hz``
    (the node refuses anything else)."""
    module, _, name = robot_factory_path(cfg.robot).partition(":")
    try:
        factory: Callable[[RobotNodeConfig], Robot] = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"robot={cfg.robot}: cannot load {module}:{name} ({exc})") from exc
    robot = factory(cfg)
    if not isinstance(robot, Robot):
        missing = [n for n in dir(Robot) if not n.startswith("_") and not hasattr(robot, n)]
        raise TypeError(f"robot={cfg.robot}: {module}:{name} built a {type(robot).__name__} without Robot's {missing}")
    return robot


# ------------------------------------------------------------------------------------------ commands
class CommandRejected(ValueError):
    """A decoded command that must not reach the robot; ``kind`` is the counter it goes to."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind


class CommandValidator:
    """Checks a "cmd" message's arrays and clips it into the workspace: (A, 7) targets or ``CommandRejected``.

    ``low``/``high`` are (A, 7) bounds; only position and gripper width are clipped (a clipped axis-angle
    vector would be a different rotation), the rotation vector's norm must be <= 2 pi.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self.shape = low.shape
        self.low = low.astype(np.float64)
        self.high = high.astype(np.float64)
        self.low[:, 3:6] = -np.inf
        self.high[:, 3:6] = np.inf

    def check(self, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, bool]:
        """Returns (targets (A, 7) float64, whether anything was clipped)."""
        if set(arrays) != {"target"}:
            raise CommandRejected("schema", f"arrays {sorted(arrays)}, expected exactly ['target']")
        a = arrays["target"]
        if a.dtype not in COMMAND_DTYPES:
            raise CommandRejected("dtype", f"target dtype {a.dtype.str}, expected <f4 or <f8")
        if a.shape != self.shape:
            raise CommandRejected(
                "shape", f"target shape {a.shape}, expected {self.shape} (arms x [x, y, z, rx, ry, rz, grip])"
            )
        if not np.isfinite(a).all():
            raise CommandRejected("nonfinite", f"target holds NaN/inf at {np.argwhere(~np.isfinite(a)).tolist()}")
        rot_norm = np.linalg.norm(a[:, 3:6].astype(np.float64), axis=1)
        if (rot_norm > MAX_ROTVEC_NORM).any():
            raise CommandRejected("range", f"rotation vector norms {rot_norm.tolist()} exceed 2 pi")
        target = np.clip(a.astype(np.float64), self.low, self.high)
        return target, bool((target != a).any())


# ------------------------------------------------------------------------------------------- node
class _Stop(Exception):
    """Raised inside the lockstep tick source to leave the loop on a signal."""


class CameraWorker:
    """Realtime: renders (or grabs) the robot's camera frames in a thread of its own, off the physics tick.

    Two 96x96 frames take about 2.5 ms on a CPU renderer; rendered inside the 4 ms tick, every camera tick of the
    bimanual lift overran its deadline (lift, 3 episodes: 191 overruns with cameras, 31 without). MuJoCo releases
    the GIL while it renders, so a thread takes that time off the loop. The thread opens the rig itself
    (``open_cameras()``, a :class:`sim.robot_interface.Cameras`: a GL context belongs to one thread). ``submit``
    captures the state on the loop (MuJoCo: a copy into a private ``MjData``; the loop goes on stepping its own) and
    wakes the thread; ``take`` hands back the finished frames once, with the tag and sim time of the state they
    show. A request while the previous one renders is refused (the caller counts it): frames are dropped, the loop
    never waits. Lockstep renders in the tick instead, which keeps its runs deterministic.
    """

    def __init__(self, open_cameras: Callable[[], Cameras], timeout: float = 60.0) -> None:
        self._open = open_cameras
        self._cameras: Cameras | None = None
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._busy = False
        self._closing = False
        self._request: tuple[Any, float] = (None, 0.0)
        self._result: tuple[Any, float, dict[str, np.ndarray]] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="camera-render", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self.error is not None:
            self.close()
            raise RuntimeError(f"camera render thread did not start: {self.error or 'timed out'}")

    def submit(self, tag: Any, sim_time: float) -> bool:
        """Render the robot as it is now; False (nothing done) while the previous frames are still rendering."""
        if self._busy or self.error is not None or self._cameras is None:
            return False
        self._cameras.capture()
        self._request = (tag, sim_time)
        self._busy = True
        self._wake.set()
        return True

    def take(self) -> tuple[Any, float, dict[str, np.ndarray]] | None:
        """(tag, sim_time, {key: (S, S, 3) uint8}) of the newest finished render, once; None if there is none."""
        with self._lock:
            result, self._result = self._result, None
        return result

    def _run(self) -> None:
        try:
            cameras = self._open()  # its GL context (or devices) belong to this thread
        except BaseException as exc:  # no GL here: the constructor reports it
            self.error = exc
            self._ready.set()
            return
        self._cameras = cameras
        self._ready.set()
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._closing:
                    return
                tag, sim_time = self._request
                frames = cameras.frames()
                with self._lock:
                    self._result = (tag, sim_time, frames)
                self._busy = False
        except BaseException as exc:  # reported by the node's loop (submit refuses from then on)
            self.error = exc
            log.exception("camera render thread failed; no more images")
        finally:
            cameras.close()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=5.0)


class RobotNode:
    """Owns the robot (through :class:`sim.robot_interface.Robot`), the sockets and the safety state; ``run()``
    until SIGINT/SIGTERM or ``stop()``."""

    def __init__(self, cfg: RobotNodeConfig) -> None:
        self.cfg = cfg
        self.lockstep = cfg.mode == "lockstep"
        self.robot: Robot = make_robot(cfg)
        robot = self.robot
        self.n_arms, self.n_pads = robot.n_arms, len(robot.pad_names)
        self.tick_dt = cfg.publish_every / cfg.physics_hz
        if not math.isclose(robot.period, self.tick_dt, rel_tol=1e-9):
            robot.close()
            raise ValueError(
                f"robot={cfg.robot} advances {robot.period} s per call, expected the node's tick of {self.tick_dt} s "
                f"(publish_every / physics_hz = {cfg.publish_every} / {cfg.physics_hz})"
            )
        self.clock: Clock = LockstepClock(tick_source=self._await_tick) if self.lockstep else RealtimeClock()
        self.rate = RateKeeper(cfg.tick_hz, self.clock)
        self.validator = CommandValidator(robot.action_low, robot.action_high)
        self._camera_every = max(1, round(cfg.tick_hz / cfg.camera_hz))
        self._status_every = max(1, round(cfg.tick_hz / cfg.status_hz))
        self._images = cfg.cameras and bool(robot.cameras)  # a robot without cameras publishes no images
        self._cameras: Cameras | None = None  # the loop's own rig: the start frame, and every frame in lockstep
        tau = cfg.limits.force_filter_s
        self._force_alpha = 1.0 - math.exp(-self.tick_dt / tau) if tau > 0 else 1.0
        self._reading: Reading | None = None  # the robot's newest reading (its buffers, refilled every tick)
        self._tactile_meta = {"pads": ",".join(robot.pad_names)}
        # Safety and bookkeeping state.
        self.counts: Counter[str] = Counter()
        self.cmd_rejects: Counter[str] = Counter()
        self.hold_reason: str | None = "no_command"
        self.last_hold_latency_ms: float | None = None
        self._last_cmd: np.ndarray | None = None
        self._last_cmd_t: float | None = None
        self._new_cmd = False
        self._force_lp = np.zeros(self.n_arms)
        self._force_active = False
        self._ticks = 0
        self._episode_ticks = 0  # ticks since the reset (``applied`` meta tick)
        self.camera_worker: CameraWorker | None = None
        self._episode = -1
        self._seed = cfg.seed
        self._episode_goal: object = None
        self._episode_over = False
        self._reset_pending: int | None = None
        self._latched = False  # a "hold" request: hold and refuse commands until the node exits
        self._stop = False
        # Lockstep tick source state.
        self._pending_tick: Request | None = None
        self._ticks_left = 0
        self._tick_cmd_accepted: bool | None = None
        self._n_control_ticks = 0
        self._done = (False, False)
        # Sockets last: a failed bind leaves nothing half-open behind.
        self.pub: Publisher | None = None
        self.cmd: Subscriber | None = None
        self.server: Server | None = None
        try:
            self.pub = Publisher(cfg.addresses.pub, clock=self.clock, copy=True)
            self.cmd = Subscriber(
                cfg.addresses.cmd,
                topics=("cmd", "reset", "hold"),
                bind=True,
                max_frame_bytes=cfg.limits.cmd_max_bytes,
            )
            if self.lockstep:
                self.server = Server(cfg.addresses.tick, clock=self.clock, max_frame_bytes=cfg.limits.cmd_max_bytes)
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------------------------- lifecycle
    def ready_record(self) -> dict[str, Any]:
        return {
            "event": "ready",
            "mode": self.cfg.mode,
            "task": self.cfg.task,
            "pid": os.getpid(),
            "pub": self.pub.address,
            "cmd": self.cmd.address,
            "tick": self.server.address if self.server else None,
            "arms": self.n_arms,
            "pads": self.n_pads,
            "tick_hz": self.cfg.tick_hz,
        }

    def stop(self, *_: object) -> None:
        """Ask the loop to end after the current tick (signal-handler safe: only sets a flag)."""
        self._stop = True

    def run(self) -> None:
        """Reset, then tick at ``tick_hz`` (wall clock or lockstep) until ``stop()``."""
        self._reset_episode(self.cfg.seed)
        if self._images:
            self._cameras = self.robot.open_cameras(self.cfg.image_size)
            self._publish_images()  # episode 0's reset frame; builds the renderers (tens of ms) before the loop
            if not self.lockstep:
                size = self.cfg.image_size
                self.camera_worker = CameraWorker(lambda: self.robot.open_cameras(size))
        self.rate.reset()
        try:
            while not self._stop:
                self.rate.sleep()
                self._tick()
        except _Stop:
            pass

    def close(self) -> None:
        if self.camera_worker is not None:
            self.camera_worker.close()
        if self._cameras is not None:
            self._cameras.close()
            self._cameras = None
        for sock in (self.pub, self.cmd, self.server):
            if sock is not None:
                sock.close()
        self.robot.close()

    def summary(self) -> dict[str, Any]:
        stats = self.rate.stats()
        return {
            "event": "exit",
            "ticks": self._ticks,
            "sim_time": self.robot.time,
            "mean_hz": None if math.isnan(stats.mean_hz) else round(stats.mean_hz, 2),
            "overruns": stats.overruns,
            "missed": stats.missed,
            "rejects": dict(self.rejects()),
            **dict(self.counts),
            "last_hold_latency_ms": self.last_hold_latency_ms,
        }

    def rejects(self) -> Counter[str]:
        """Every refused command or request by kind: undecodable (bus kinds) and invalid (node kinds)."""
        total = Counter(self.cmd.rejects) + self.cmd_rejects
        if self.server is not None:
            total += self.server.rejects
        return total

    # ------------------------------------------------------------------------------- one tick
    def _tick(self) -> None:
        if self._reset_pending is not None:
            self._reset_episode(self._reset_pending)
        now = self.clock.now()
        self._drain_commands(now)
        self._update_safety(now)
        self._advance()
        if self._images and self.camera_worker is None and self._episode_ticks % self._camera_every == 0:
            self._publish_images()  # lockstep: rendered in the tick and sent before its reading (see _publish_images)
        self._publish_reading()
        self._ticks += 1
        if self.camera_worker is not None:
            self._cameras_tick()
        if self._ticks % self._status_every == 0:
            self._publish_status()

    def _drain_commands(self, now: float) -> None:
        """Take every queued cmd/reset message; the newest valid command wins."""
        for _ in range(MAX_DRAIN):
            msg = self.cmd.recv(timeout=0)
            if msg is None:
                return
            if msg.topic == "cmd":
                self._accept_command(msg.arrays, now)
            elif msg.topic == "reset":
                seed = self._seed_from(msg)
                if seed is not None:
                    self._reset_pending = seed
            elif msg.topic == "hold":
                self._latch()
            else:  # "cmdX..." passes the prefix filter
                self._reject("topic", f"topic {msg.topic!r}, expected 'cmd', 'reset' or 'hold'")

    def _accept_command(self, arrays: dict[str, np.ndarray], now: float) -> bool:
        if self._latched:
            self._reject("latched", "the node holds on a supervisor's request (latched until it exits)")
            return False
        try:
            target, clipped = self.validator.check(arrays)
        except CommandRejected as exc:
            self._reject(exc.kind, str(exc))
            return False
        self.counts["accepted"] += 1
        self.counts["clipped"] += clipped
        self._last_cmd, self._last_cmd_t, self._new_cmd = target, now, True
        return True

    def _latch(self) -> None:
        """Hold from the next tick on and refuse every later command: the run is being stopped."""
        self._latched = True
        self.counts["latch_requests"] += 1

    def _reject(self, kind: str, reason: str) -> None:
        if self.cmd_rejects[kind] == 0:
            log.warning("rejected a command (%s); further %r rejects are only counted", reason, kind)
        self.cmd_rejects[kind] += 1

    def _update_safety(self, now: float) -> None:
        """Decide hold or follow for this tick; hold targets are set once, when a hold begins."""
        lim = self.cfg.limits
        force = float(self._force_lp.max())
        if self._force_active:
            self._force_active = force > lim.force_release * lim.force_n
        elif force > lim.force_n:
            self._force_active = True
        if self._latched:
            reason = "latched"
        elif self._force_active:
            reason = "force_limit"
        elif self._last_cmd_t is None:
            reason = "no_command"
        elif now - self._last_cmd_t > self.cfg.watchdog_ms * 1e-3:
            reason = "watchdog"
        else:
            reason = None
        previous, self.hold_reason = self.hold_reason, reason
        if reason is None:
            if self._new_cmd or previous is not None:
                self.robot.apply(self._last_cmd)
                self._publish_applied(self._last_cmd)
        elif previous is None:
            self._publish_applied(self.robot.hold())
        self._new_cmd = False
        if reason != previous:
            self._on_hold_change(previous, reason, now, force)

    def _on_hold_change(self, previous: str | None, reason: str | None, now: float, force: float) -> None:
        age_ms = None if self._last_cmd_t is None else round((now - self._last_cmd_t) * 1e3, 3)
        if reason == "watchdog":
            self.counts["watchdog_trips"] += 1
            self.last_hold_latency_ms = age_ms
        elif reason == "force_limit":
            self.counts["force_holds"] += 1
        self.pub.publish(
            "watchdog",
            meta={
                "engaged": reason is not None,
                "reason": reason or previous,
                "cmd_age_ms": age_ms,
                "force_n": round(force, 3),
                "sim_time": self.robot.time,
            },
            stamp=now,
        )
        self._publish_status()

    def _publish_applied(self, target: np.ndarray) -> None:
        """Publish the (A, 7) target the robot just took as ``applied``, so a recording holds what the robot actually
        did, at the tick it did it."""
        self.pub.publish(
            "applied",
            {"applied_target": np.asarray(target, np.float64).reshape(self.n_arms, TARGET_DIM)},
            {"sim_time": self.robot.time, "tick": self._episode_ticks, "reason": self.hold_reason},
        )

    def _advance(self) -> None:
        """One control period of the robot, then its reading; the force limit low-passes the wrist force."""
        scored = self.robot.advance()
        self._episode_ticks += 1
        if scored is not None:
            self._task_step(scored)
        self._reading = self.robot.read()
        force = np.linalg.norm(self._reading.wrench["wrench"][:, :3], axis=1)
        self._force_lp += self._force_alpha * (force - self._force_lp)

    def _task_step(self, scored: TaskStep) -> None:
        """The task scored a control step (50 Hz, as in evaluation): the episode ends (once) on its verdict."""
        self._n_control_ticks += 1
        terminated, truncated = scored.terminated, scored.truncated
        self._done = (terminated, truncated)
        if (terminated or truncated) and not self._episode_over:
            self._episode_over = True
            info = self.robot.info()
            self.pub.publish(
                "episode",
                meta={"event": "end", "episode": self._episode, "seed": self._seed, "terminated": terminated,
                      "truncated": truncated, **_scalars(info)},
            )
            if self.cfg.auto_reset:
                self._reset_pending = (self._seed + 1) % SEED_LIMIT

    def _publish_reading(self) -> None:
        r = self._reading
        stamp = self.clock.now()
        meta = {"sim_time": self.robot.time}
        self.pub.publish("state", r.state, meta, stamp=stamp)
        self.pub.publish("tactile", r.tactile, {**meta, **self._tactile_meta}, stamp=stamp)
        self.pub.publish("wrench", r.wrench, meta, stamp=stamp)

    def _publish_images(self) -> None:
        """Render the robot as it is now and publish it (lockstep, and the start frame). Frames are due at the reset
        and every camera period of the episode after it, the frames a recording holds from the episode's start; in
        a tick they go out before that tick's reading, so a subscriber that reads a tick's reading already has its
        frame (the slow node holds, per observation, the newest frame at or before it, as in training)."""
        self._cameras.capture()
        self.pub.publish("image", self._cameras.frames(), {"sim_time": self.robot.time})

    def _cameras_tick(self) -> None:
        """Realtime: publish what the render thread finished (frames of an earlier episode are dropped) and hand it
        the state every camera period of the episode."""
        worker = self.camera_worker
        done = worker.take()
        if done is not None and done[0] == self._episode:
            self.pub.publish("image", done[2], {"sim_time": done[1]})
        if self._episode_ticks % self._camera_every == 0:
            self._request_frame()

    def _request_frame(self) -> None:
        if not self.camera_worker.submit(self._episode, self.robot.time):
            self.counts["camera_frames_dropped"] += 1

    def _publish_status(self) -> None:
        stats = self.rate.stats()
        meta: dict[str, MetaValue] = {
            "held": self.hold_reason is not None,
            "reason": self.hold_reason,
            "sim_time": self.robot.time,
            "ticks": self._ticks,
            "episode": self._episode,
            "seed": self._seed,
            "overruns": stats.overruns,
            "missed": stats.missed,
            "last_hold_latency_ms": self.last_hold_latency_ms,
            "force_n": round(float(self._force_lp.max()), 3),
        }
        meta.update(self.counts)
        rejects = self.rejects()
        meta["rejects"] = sum(rejects.values())
        meta.update({f"rej_{kind}": n for kind, n in rejects.items()})
        self.pub.publish("status", meta=meta)

    def _reset_episode(self, seed: int) -> None:
        self._reset_pending = None
        self._seed = seed
        self._episode += 1
        info = self.robot.reset(seed)  # holds the start pose
        self._episode_goal = info.get("goal")  # the task's goal for the episode (a lockstep reset's reply names it)
        self._episode_ticks = 0
        self._episode_over = False
        self._done = (False, False)
        self._last_cmd = self._last_cmd_t = None
        self._new_cmd = False
        self._force_lp[:] = 0.0
        self._force_active = False
        self.hold_reason = "no_command"
        self.pub.publish(
            "episode", meta={"event": "reset", "episode": self._episode, "seed": seed, **_scalars(info)}
        )
        if self.camera_worker is not None:  # the episode's first frame shows the reset (a policy's step 0 holds it)
            self._request_frame()
        elif self._cameras is not None:
            self._publish_images()

    def _seed_from(self, msg: Message) -> int | None:
        """A reset's seed: meta "seed" if in range, the last seed + 1 (wrapping) without one; None, counted as
        ``rej_seed``, for anything else: an unbounded seed would overflow the episode header at seed + 1."""
        seed = msg.meta.get("seed")
        if seed is None:
            return (self._seed + 1) % SEED_LIMIT
        if type(seed) is int and 0 <= seed < SEED_LIMIT:
            return seed
        self._reject("seed", f"reset seed {seed!r:.40}, expected an int in 0..{SEED_LIMIT - 1} or none")
        return None

    # ------------------------------------------------------------------------------- lockstep
    def _await_tick(self) -> None:
        """``LockstepClock`` tick source: one node tick of time per call; a coordinator request per control step."""
        if self._ticks_left == 0:
            if self._pending_tick is not None:
                self._answer_tick(self._pending_tick)
                self._pending_tick = None
            self._pending_tick = self._serve_until_tick()
            self._ticks_left = self._pending_tick.message.meta.get("node_ticks") or self.cfg.ticks_per_control
        self._ticks_left -= 1
        self.clock.advance(self.tick_dt)

    def _serve_until_tick(self) -> Request:
        """Answer ping/reset requests until a tick arrives (or a signal asks us to stop)."""
        while True:
            if self._stop:
                raise _Stop
            req = self.server.recv(timeout=0.1)
            if req is None:
                continue
            topic = req.message.topic
            if topic == "tick":
                n = req.message.meta.get("node_ticks")
                if n is not None and not (type(n) is int and 1 <= n <= self.cfg.ticks_per_control):
                    reason = f"node_ticks={n!r}, expected an int in 1..{self.cfg.ticks_per_control}"
                    self._reject("node_ticks", reason)
                    self.server.reply(req, "error", meta={"reason": reason})
                    continue
                self._tick_cmd_accepted = None
                if req.message.arrays:
                    self._tick_cmd_accepted = self._accept_command(dict(req.message.arrays), self.clock.now())
                return req
            if topic == "hold":
                self._latch()
                self.server.reply(req, "hold", meta={"accepted": self.counts["accepted"]})
            elif topic == "reset":
                seed = self._seed_from(req.message)
                if seed is None:
                    reason = f"reset seed must be an int in 0..{SEED_LIMIT - 1}"
                    self.server.reply(req, "error", meta={"reason": reason})
                    continue
                self._reset_episode(seed)
                goal = {"goal": str(self._episode_goal)} if self.cfg.goal != "default" else {}
                self.server.reply(req, "reset", meta={"episode": self._episode, "seed": self._seed, **goal})
            elif topic == "ping":
                topic = req.message.meta.get("topic", "state")
                subscribed = isinstance(topic, str) and self.pub.wait_for_subscriber(topic, timeout=0)
                self.server.reply(req, "pong", meta={"subscribed": subscribed})
            else:
                self._reject("topic", f"request topic {topic!r}, expected tick, reset, hold or ping")
                self.server.reply(req, "error", meta={"reason": f"unknown request topic {topic!r}"})

    def _answer_tick(self, req: Request) -> None:
        info = self.robot.info()
        self.server.reply(
            req,
            "tick",
            self._reading.state,
            {
                "tick": self._n_control_ticks,
                "sim_time": self.robot.time,
                "state_seq": self._ticks - 1,
                "held": self.hold_reason is not None,
                "reason": self.hold_reason,
                "cmd_accepted": self._tick_cmd_accepted,
                "terminated": self._done[0],
                "truncated": self._done[1],
                "success": bool(info["success"]),
                "score": float(info["score"]),
            },
        )


def hold_command(state: Message) -> np.ndarray:
    """(A, 7) ``command`` target that keeps every arm where a ``state`` message says it is (pose and grip)."""
    pos, quat, width = state.arrays["tcp_pos"], state.arrays["tcp_quat"], state.arrays["gripper_width"]
    out = np.zeros((len(pos), 7))
    for i in range(len(pos)):
        out[i, 3:6] = quat_to_rotvec(quat[i])
        out[i, :3], out[i, 6] = pos[i], width[i]
    return out


def _scalars(info: dict[str, Any]) -> dict[str, MetaValue]:
    """The bus-safe (scalar) part of a task info dict."""
    return {k: v for k, v in info.items() if v is None or isinstance(v, (bool, int, float, str))}


@command("sim.node")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = load_config(node_args(argv))  # before logging: a bad argument is the only line printed
    log_to_stderr()
    node = RobotNode(cfg)

    def _summary(_: object) -> dict[str, Any]:
        summary = node.summary()
        log.info("robot node stopped; rejects by kind %s; counters %s", summary["rejects"], json.dumps(summary))
        return summary

    return serve(node, node.ready_record, _summary)


if __name__ == "__main__":
    sys.exit(main())
