"""What the robot node needs from a robot: the :class:`Robot` protocol a simulator or a hardware driver implements.

The robot node (``sim.node``) owns everything around the robot -- sockets, command validation, safety (force
limit, watchdog, latched hold), clocks, lockstep ticks, cameras off the loop, status -- and talks to the robot
only through this protocol. Two implementations ship: :class:`sim.mujoco_robot.MujocoRobot` (the MuJoCo scene,
stepped by the same code as ``ContactRichEnv.step``) and :class:`sim.fake_robot.LagArm` (a wall-clock arm
without MuJoCo: a first-order lag and a fake force sensor). The node builds one through
``sim.node.make_robot`` from its config key ``robot``; a real arm's driver plugs in there (``docs/usage.md``,
"Driving a real arm").

One node tick, in order: ``apply(target)`` or ``hold()`` when the safety logic changes the target, ``advance()``,
``read()``; the node publishes the reading and low-passes its wrist force for the force limit. Shapes: A arms,
P tactile pads, (R, C) = ``sensors.types.MARKER_GRID``, (H, W) a pad's depth map, S the scene vector.

Targets, per arm: ``[x, y, z, rx, ry, rz, grip]`` -- TCP position (m, world), TCP orientation as an axis-angle
vector (rad, world, norm <= 2 pi), gripper width (m); float64 (A, 7). A robot gets them already validated and
clipped to ``action_low`` .. ``action_high`` (position and width; rotation vectors are checked by norm only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sensors.types import MARKER_GRID

TARGET_DIM = 7  # per arm: [x, y, z, rx, ry, rz, grip]


@dataclass
class Reading:
    """One tick's sensor reading, laid out as the node publishes it (one dict per topic).

    state:   tcp_pos (A, 3) f8 world m; tcp_quat (A, 4) f8 [w, x, y, z]; joint_pos, joint_vel (A, 7) f8;
             gripper_width (A,) f8; scene (S,) f4 (the task's one-shot localisation at reset; constant per episode);
             goal (G,) f4 only for a robot given a goal per episode (the task's ``Goal.vector``; constant per episode)
    tactile: marker_offset (P, R, C, 2) f4; marker_depth (P, H, W) f4; marker_slip (P, 2) f4
    wrench:  wrench (A, 6) f8, [F, T] in each TCP frame (N, N m)

    A robot allocates one with :meth:`allocate` and fills it in place on every ``read``, so the loop allocates
    nothing; the arrays are valid until the next ``read``.
    """

    state: dict[str, np.ndarray]
    tactile: dict[str, np.ndarray]
    wrench: dict[str, np.ndarray]

    @classmethod
    def allocate(cls, n_arms: int, n_pads: int, scene_dim: int, depth_shape: tuple[int, int],
                 goal_dim: int = 0) -> Reading:
        """Zeroed buffers with the published shapes and dtypes (``goal_dim`` 0: no ``goal``)."""
        a, p = n_arms, n_pads
        reading = cls(
            state={
                "tcp_pos": np.zeros((a, 3)),
                "tcp_quat": np.zeros((a, 4)),
                "joint_pos": np.zeros((a, 7)),
                "joint_vel": np.zeros((a, 7)),
                "gripper_width": np.zeros(a),
                "scene": np.zeros(scene_dim, np.float32),
            },
            tactile={
                "marker_offset": np.zeros((p, *MARKER_GRID, 2), np.float32),
                "marker_depth": np.zeros((p, *depth_shape), np.float32),
                "marker_slip": np.zeros((p, 2), np.float32),
            },
            wrench={"wrench": np.zeros((a, 6))},
        )
        if goal_dim:
            reading.state["goal"] = np.zeros(goal_dim, np.float32)
        return reading


@dataclass(frozen=True)
class TaskStep:
    """The task's verdict after one of its scoring (control) steps: ``reward`` of that step, and whether the
    episode ``terminated`` (success or failure) or was ``truncated`` (time limit, not terminated)."""

    reward: float
    terminated: bool
    truncated: bool


class Cameras(Protocol):
    """A robot's cameras as one rig. ``capture`` runs on the control loop and must be cheap (fix the state the
    next frames show: a copy of the sim state, a hardware trigger or timestamp); ``frames`` may be slow and runs on
    the thread that opened the rig (the realtime node's render thread). The node never calls both at once."""

    def capture(self) -> None:
        """Fix what the next ``frames`` shows, now."""

    def frames(self) -> dict[str, np.ndarray]:
        """{image key: (S, S, 3) uint8 RGB} of the last ``capture``, one entry per key of ``Robot.cameras``."""
        ...

    def close(self) -> None:
        """Release the renderer or devices (from the thread that opened the rig)."""


@runtime_checkable
class Robot(Protocol):
    """The robot under the node: one control period per node tick.

    Contract: ``reset`` before anything else; then per tick ``apply``/``hold`` (only when the target changes),
    ``advance`` once, ``read`` once. Nothing here may block longer than a small part of ``period``: the node's
    rate keeper paces the loop (realtime) or the lockstep coordinator does; a hardware driver's ``advance`` does
    the arm's per-period I/O (send the target, take its newest state) rather than sleeping a period itself.
    Errors a driver cannot recover from (lost connection, arm fault) are raised: the node stops, and the arm's
    own safety (its controller's watchdog) must then hold it.

    A real arm plugs in as a class with these members plus a module-level factory
    ``from_node_config(cfg: sim.node.RobotNodeConfig) -> Robot``, named in the node's config:
    ``python -m sim.node robot=my_driver.arm:from_node_config``. :class:`sim.fake_robot.LagArm` is the smallest
    complete example.
    """

    @property
    def n_arms(self) -> int:
        """A: arms, each commanded by one row of the (A, 7) target."""
        ...

    @property
    def pad_names(self) -> tuple[str, ...]:
        """The P tactile pads in the order of the tactile arrays (published as meta ``pads``); may be empty."""
        ...

    @property
    def cameras(self) -> Mapping[str, str]:
        """{image key (published array name, e.g. ``scene_rgb``): camera name}; empty: the robot has none."""
        ...

    @property
    def action_low(self) -> np.ndarray:
        """(A, 7) lower bounds of a target: the workspace the node's validator clips positions and width to."""
        ...

    @property
    def action_high(self) -> np.ndarray:
        """(A, 7) upper bounds of a target (see ``action_low``)."""
        ...

    @property
    def period(self) -> float:
        """Seconds of robot time one ``advance`` covers: the node's tick period (it checks they agree)."""
        ...

    @property
    def time(self) -> float:
        """Robot time since the last ``reset``, seconds (sim time; a driver's clock since its reset). Stamped on
        every message as meta ``sim_time``."""
        ...

    def reset(self, seed: int) -> dict[str, Any]:
        """Start an episode with ``seed`` (0 .. 2**32 - 1) and hold the start pose; returns the episode info
        (see ``info``). A real arm moves to its start pose here (blocking until it is there)."""
        ...

    def apply(self, target: np.ndarray) -> None:
        """Follow ``target`` (A, 7) float64, validated and clipped, from now until the next ``apply``/``hold``."""

    def hold(self) -> np.ndarray:
        """Hold every arm where it is now (pose and grip): the node's safety hold. Returns the (A, 7) target it
        holds, which the node publishes as ``applied``."""
        ...

    def advance(self) -> TaskStep | None:
        """Run one control period: ``period`` seconds of physics (simulator) or of the arm's own servo loop
        (hardware). Returns the task's verdict when the period completed one of the task's scoring steps, else
        None (always None for a robot that scores no task)."""
        ...

    def read(self) -> Reading:
        """The sensors now, in the published layout (:class:`Reading`; the same object on every call)."""
        ...

    def info(self) -> dict[str, Any]:
        """The episode's outcome so far: at least ``success`` (bool) and ``score`` (float); every scalar entry is
        published with the ``episode`` events."""
        ...

    def open_cameras(self, size: int) -> Cameras:
        """A camera rig rendering or grabbing (size, size, 3) frames of ``cameras``; opened on the thread that
        will call its ``frames`` (a GL context belongs to one thread)."""
        ...

    def close(self) -> None:
        """Release the simulator or the connection to the arm."""
