"""The force-limited press: a retraction along each tool axis while the wrist presses harder than a limit.

One implementation for every place that limits a press: the teleop node's assist (``teleop.node``, ``assist.*``),
and the robot-side guard that any command source gets (``ContactRichEnv(press_guard_n=...)``, so ``sim.eval``, the
robot node and ``rdp.run``). ``TASK_PRESS_LIMIT_N`` is the one table of per-task limits that teleoperated collection
(``teleop.collect press_limit_n``) and ``sim.eval guard=true`` read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bus.cli import UsageError
from spatial.rotations import quat_to_mat

# N, the press limit per task: half-way to, or just under, each task's failure force (wipe 40, peel 30, lift 60 N).
TASK_PRESS_LIMIT_N: dict[str, float] = {"wipe": 20.0, "peel": 15.0, "lift": 45.0}
GUARD_HZ = 250.0  # the guard's update rate in the env: the robot node's default tick (sim.node STATE_HZ)


def task_press_limit(task: str) -> float:
    """The press limit (N) of ``task`` from ``TASK_PRESS_LIMIT_N``; a task without one is a one-line
    :class:`bus.cli.UsageError`."""
    if task not in TASK_PRESS_LIMIT_N:
        raise UsageError(f"task {task!r} has no press limit; sim.press_guard.TASK_PRESS_LIMIT_N has "
                         f"{', '.join(sorted(TASK_PRESS_LIMIT_N))}")
    return TASK_PRESS_LIMIT_N[task]


def guard_steps(physics_hz: float) -> int:
    """Physics steps per guard update: the nearest whole number to ``physics_hz / GUARD_HZ`` (500 Hz -> 2)."""
    return max(int(round(physics_hz / GUARD_HZ)), 1)


@dataclass
class PressGuardConfig:
    """Force-limited press (off while ``press_force_n`` is 0); :class:`PressGuard` says how it acts."""

    press_force_n: float = 0.0
    gain: float = 0.004
    p_gain: float = 0.0
    stiffness: float = 1200.0
    max_retract_m: float = 0.03

    def __post_init__(self) -> None:
        values = (self.press_force_n, self.gain, self.p_gain, self.max_retract_m, self.stiffness)
        if not all(math.isfinite(v) for v in values) or min(values[:4]) < 0 or not self.stiffness > 0:
            raise ValueError(f"press guard {self}: press_force_n, gain, p_gain, max_retract_m must be finite and "
                             ">= 0, stiffness > 0")


class PressGuard:
    """Backs each arm's target off along its tool axis while the wrist feels more than ``press_force_n``.

    An operator who sees the force arrow reacts in 50-150 ms, a policy at its control step; a stiff contact that a
    moving surface pushes into builds 40 N in less. The guard hears the wrench at the robot's rate, so it caps the
    press where they cannot: per arm a retraction r >= 0 along the tool z axis (the pad normal, the axis the
    wrench's -F_z is measured on) grows at ``gain`` m/s per newton over the limit and relaxes at the same rate below
    it, plus ``p_gain * (F - limit) / stiffness`` while over (0 by default: on the stiff contact a proportional
    retraction turned each impact spike into a bounce). It only ever presses less than commanded, never more. Off
    (``press_force_n`` = 0) it is the identity.
    """

    def __init__(self, cfg: PressGuardConfig) -> None:
        self.cfg = cfg
        self.retract = np.zeros(0)  # (A,) integral part, m
        self.extra = np.zeros(0)  # (A,) proportional part, m
        self.axis = np.zeros((0, 3))  # (A, 3) tool z axes in the world, from the newest state
        self._t = math.nan

    @property
    def enabled(self) -> bool:
        return self.cfg.press_force_n > 0

    def reset(self, n_arms: int) -> None:
        self.retract, self.extra = np.zeros(n_arms), np.zeros(n_arms)
        self.axis = np.tile([0.0, 0.0, 1.0], (n_arms, 1))
        self._t = math.nan

    def on_state(self, tcp_quat: np.ndarray) -> None:
        """The newest (A, 4) [w, x, y, z] TCP orientations: the tool axes the retraction runs along."""
        self.axis = np.stack([quat_to_mat(q)[:, 2] for q in tcp_quat])

    def on_wrench(self, wrench: np.ndarray, sim_time: float) -> None:
        """One wrench sample (A, 6) [F, T] in the TCP frame at ``sim_time``."""
        if not self.enabled or wrench.shape[0] != self.retract.shape[0]:
            return
        dt = sim_time - self._t if 0.0 < sim_time - self._t < 0.1 else 0.0
        self._t = sim_time
        over = np.maximum(-wrench[:, 2], 0.0) - self.cfg.press_force_n
        cap = self.cfg.max_retract_m
        self.retract = np.clip(self.retract + self.cfg.gain * over * dt, 0.0, cap)
        self.extra = np.minimum(self.cfg.p_gain * np.maximum(over, 0.0) / self.cfg.stiffness, cap)

    def retraction(self) -> float:
        """The largest retraction over the arms now (m); 0 when off."""
        return float(np.minimum(self.retract + self.extra, self.cfg.max_retract_m).max(initial=0.0))

    def apply(self, target: np.ndarray) -> np.ndarray:
        """(A, 7) commands -> the same with each position backed off by its arm's retraction."""
        if not self.enabled or target.shape[0] != self.retract.shape[0]:
            return target
        r = np.minimum(self.retract + self.extra, self.cfg.max_retract_m)
        out = target.copy()
        out[:, :3] -= self.axis * r[:, None]
        return out
