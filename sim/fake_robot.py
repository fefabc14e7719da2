"""A stand-in for a real arm: what a hardware driver under the robot node looks like, without MuJoCo or hardware.

    python -m sim.node robot=fake        # the robot node on a wall-clock fake arm

:class:`LagArm` is one Cartesian arm whose TCP follows its target as a first-order lag (time constant ``tau``)
in wall-clock time: each ``advance`` integrates the time that really passed since the previous one, as a driver
takes the newest state its arm reports (the node's rate keeper does the waiting). Its fake wrist force sensor
feels a virtual table at ``surface_z``: a spring of ``stiffness`` N/m pushes back on a TCP below it, so commanding
the tool into the table trips the node's force-limit hold like a real collision would. It has no joints (joint
arrays stay zero), no tactile pads, no cameras and scores no task.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from sensors.tactile import GelPadSpec
from sim.robot_interface import TARGET_DIM, Cameras, Reading, TaskStep
from spatial.rotations import matrix_to_quat, rotvec_to_mat

if TYPE_CHECKING:
    from sim.node import RobotNodeConfig

HOME = np.array([0.45, 0.0, 0.30, math.pi, 0.0, 0.0, 0.04])  # TCP above the table, tool pointing down, half open
WORKSPACE_LOW = np.array([[0.2, -0.4, 0.0, -math.pi, -math.pi, -math.pi, 0.0]])
WORKSPACE_HIGH = np.array([[0.8, 0.4, 0.6, math.pi, math.pi, math.pi, 0.08]])
SCENE_DIM = 6


class LagArm:
    """A one-arm :class:`~sim.robot_interface.Robot` running in wall-clock time (see the module docstring).

    Args:
        period: seconds per node tick (the node checks it against its own).
        tau: time constant of the TCP and gripper lag, s.
        surface_z: height of the virtual table the force sensor feels, m (world).
        stiffness: the table's spring constant, N/m.
        wrench_noise: standard deviation of the force sensor's noise, N (seeded by ``reset``).
        clock: wall clock, seconds (``time.monotonic``; a test may pass its own).
    """

    def __init__(
        self,
        period: float,
        tau: float = 0.05,
        surface_z: float = 0.10,
        stiffness: float = 5000.0,
        wrench_noise: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (period > 0 and tau > 0 and stiffness > 0 and wrench_noise >= 0):
            raise ValueError(
                f"period={period}, tau={tau}, stiffness={stiffness}, wrench_noise={wrench_noise}: expected "
                "period, tau, stiffness > 0 and wrench_noise >= 0"
            )
        self._period, self.tau, self.surface_z, self.stiffness = period, tau, surface_z, stiffness
        self.wrench_noise = wrench_noise
        self._clock = clock
        self._pose = HOME.copy()  # [x, y, z, rx, ry, rz, grip] where the arm is
        self._target = HOME.copy()
        self._t0 = self._last = clock()
        self._rng = np.random.default_rng(0)
        self._reading = Reading.allocate(1, 0, SCENE_DIM, GelPadSpec().depth_shape)

    # ------------------------------------------------------------------------------ description
    n_arms = 1
    pad_names: tuple[str, ...] = ()
    cameras: Mapping[str, str] = {}

    @property
    def action_low(self) -> np.ndarray:
        return WORKSPACE_LOW

    @property
    def action_high(self) -> np.ndarray:
        return WORKSPACE_HIGH

    @property
    def period(self) -> float:
        return self._period

    @property
    def time(self) -> float:
        return self._last - self._t0

    # ------------------------------------------------------------------------------ episode
    def reset(self, seed: int) -> dict[str, Any]:
        self._pose[:] = HOME
        self._target[:] = HOME
        self._rng = np.random.default_rng(seed)
        self._t0 = self._last = self._clock()
        return self.info()

    def apply(self, target: np.ndarray) -> None:
        if target.shape != (1, TARGET_DIM):
            raise ValueError(f"target shape {target.shape}, expected (1, {TARGET_DIM})")
        self._target[:] = target[0]

    def hold(self) -> np.ndarray:
        self._target[:] = self._pose
        return self._target.reshape(1, TARGET_DIM).copy()

    def advance(self) -> TaskStep | None:
        now = self._clock()
        dt, self._last = now - self._last, now
        alpha = 1.0 - math.exp(-dt / self.tau) if dt > 0 else 0.0
        step = alpha * (self._target - self._pose)
        self._pose[:3] += step[:3]
        self._pose[3:6] = self._target[3:6]  # a stiff wrist: the orientation follows at once
        self._pose[6] += step[6]
        return None

    def read(self) -> Reading:
        s = self._reading.state
        rot = rotvec_to_mat(self._pose[3:6])
        s["tcp_pos"][0] = self._pose[:3]
        s["tcp_quat"][0] = matrix_to_quat(rot)
        s["gripper_width"][0] = self._pose[6]
        depth = max(self.surface_z - self._pose[2], 0.0)
        force_world = np.array([0.0, 0.0, self.stiffness * depth])  # the table pushes the tool up
        wrench = self._reading.wrench["wrench"]
        wrench[0, :3] = rot.T @ force_world  # in the TCP frame, as a wrist F/T sensor reports it
        wrench[0, 3:] = 0.0
        if self.wrench_noise > 0:
            wrench[0] += self._rng.normal(0.0, self.wrench_noise, 6)
        return self._reading

    def info(self) -> dict[str, Any]:
        return {"task": "none", "success": False, "score": 0.0, "failure": None, "time": self.time}

    def open_cameras(self, size: int) -> Cameras:
        raise RuntimeError("LagArm has no cameras (its cameras mapping is empty, so the node never opens them)")

    def close(self) -> None:
        pass


def from_node_config(cfg: RobotNodeConfig) -> LagArm:
    """``robot: fake`` in the robot node's config: the node's tick period and wrench noise; the rest defaults."""
    return LagArm(period=cfg.publish_every / cfg.physics_hz, wrench_noise=cfg.wrench_noise)
