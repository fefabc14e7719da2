"""Cartesian impedance (operational-space) control of one Panda, run at physics rate.

Commands are end-effector pose targets (position + rotation matrix) and a gripper width with a
maximum grip force. The controller moves an internal reference toward the target no faster than
the speed limits (so a jump in the command never becomes a jump in force), then computes

    tau = J^T Lambda (Kp e - Kd v) + N^T tau_posture + bias,   Lambda = (J M^-1 J^T)^-1

with the task force clipped to a force limit. ``e`` stacks the position error and the
axis-angle orientation error; ``N`` is the dynamically consistent null-space projector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from sim.robot import FINGER_FORCE_LIMIT, TORQUE_LIMITS, ArmIndex
from spatial.rotations import rotation_error, rotvec_to_mat


@dataclass
class ImpedanceGains:
    """Cartesian stiffness/damping and safety limits (SI units)."""

    kp_pos: float = 1200.0  # N/m
    kp_rot: float = 150.0  # N m / rad
    damping_ratio: float = 1.0
    kp_null: float = 10.0
    max_lin_speed: float = 0.25  # m/s, reference motion
    max_ang_speed: float = 1.5  # rad/s
    max_force: float = 120.0  # N, clip on the task-space force
    max_torque: float = 20.0  # N m, clip on the task-space torque
    finger_kp: float = 2000.0  # N/m on each finger
    finger_kd: float = 40.0


class CartesianImpedanceController:
    """Operational-space impedance controller for one arm.

    The hot path (``compute``) reuses its buffers; call it once per physics step.
    """

    def __init__(self, model: mujoco.MjModel, arm: ArmIndex, gains: ImpedanceGains | None = None):
        self.model = model
        self.arm = arm
        self.gains = gains or ImpedanceGains()
        self._jac = np.zeros((6, model.nv))
        if not np.array_equal(arm.dof, np.arange(arm.dof[0], arm.dof[0] + 7)):
            raise ValueError(f"arm {arm.prefix!r} dofs must be contiguous, got {arm.dof.tolist()}")
        self._dofs = slice(int(arm.dof[0]), int(arm.dof[0]) + 7)
        self._eps6 = 1e-6 * np.eye(6)
        self._e = np.zeros(6)
        self._mfull = np.zeros((model.nv, model.nv))
        self.q_posture = np.zeros(7)
        self.ref_pos = np.zeros(3)
        self.ref_rot = np.eye(3)
        self.target_pos = np.zeros(3)
        self.target_rot = np.eye(3)
        self.grip_width = 0.08
        self.grip_force = FINGER_FORCE_LIMIT
        self._rot_reached = True
        self.task_force = np.zeros(6)
        self.set_gains(self.gains)

    def set_gains(self, gains: ImpedanceGains) -> None:
        self.gains = g = gains
        self._kp = np.array([g.kp_pos] * 3 + [g.kp_rot] * 3)
        self._two_zeta_sqrt_kp = 2.0 * g.damping_ratio * np.sqrt(self._kp)
        self._kd_null = 2.0 * np.sqrt(g.kp_null)

    def reset(self, data: mujoco.MjData) -> None:
        """Hold the current pose: reference and target start where the TCP is."""
        self.ref_pos[:] = data.site_xpos[self.arm.tcp_site]
        self.ref_rot[:] = data.site_xmat[self.arm.tcp_site].reshape(3, 3)
        self.target_pos[:] = self.ref_pos
        self.target_rot[:] = self.ref_rot
        self._rot_reached = True
        self.q_posture[:] = data.qpos[self.arm.qpos]
        self.grip_width = float(data.qpos[self.arm.finger_qpos].sum())

    def set_target(self, pos: np.ndarray, rot: np.ndarray, grip_width: float, grip_force: float) -> None:
        self.target_pos[:] = pos
        if not np.array_equal(rot, self.target_rot):
            self.target_rot[:] = rot
            self._rot_reached = False
        self.grip_width = float(np.clip(grip_width, 0.0, 0.08))
        self.grip_force = float(np.clip(grip_force, 0.0, FINGER_FORCE_LIMIT))

    def _advance_reference(self, dt: float) -> None:
        g = self.gains
        d = self.target_pos - self.ref_pos
        n = math.sqrt(d @ d)
        step = g.max_lin_speed * dt
        self.ref_pos += d if n <= step else d * (step / n)
        if self._rot_reached:
            return
        e = rotation_error(self.target_rot, self.ref_rot)
        a = math.sqrt(e @ e)
        astep = g.max_ang_speed * dt
        if a <= astep:
            self.ref_rot[:] = self.target_rot
            self._rot_reached = True
        else:
            self.ref_rot[:] = rotvec_to_mat(e * (astep / a)) @ self.ref_rot

    def compute(self, data: mujoco.MjData, dt: float) -> None:
        """Write joint and finger torques for this physics step into ``data.ctrl``."""
        m, arm, g = self.model, self.arm, self.gains
        sl = self._dofs
        prev = self.ref_pos.copy()
        self._advance_reference(dt)
        v_ref = (self.ref_pos - prev) / dt
        mujoco.mj_jacSite(m, data, self._jac[:3], self._jac[3:], arm.tcp_site)
        J = self._jac[:, sl]  # (6, 7)
        mujoco.mj_fullM(m, data, self._mfull)
        M = self._mfull[sl, sl]
        Minv = np.linalg.inv(M)
        MinvJt = Minv @ J.T  # (7, 6)
        Lam = np.linalg.inv(J @ MinvJt + self._eps6)
        qd = data.qvel[sl]
        v = J @ qd
        pos = data.site_xpos[arm.tcp_site]
        rot = data.site_xmat[arm.tcp_site].reshape(3, 3)
        e = self._e
        e[:3] = self.ref_pos - pos
        e[3:] = rotation_error(self.ref_rot, rot)
        # Stiffness is exactly Kp (so a contact force follows from the commanded penetration);
        # damping is critical for the effective task-space mass on each axis.
        kd = self._two_zeta_sqrt_kp * np.sqrt(np.maximum(np.diag(Lam), 1e-3))
        v[:3] -= v_ref
        f = self._kp * e - kd * v
        f[:3] = _clip_norm(f[:3], g.max_force)
        f[3:] = _clip_norm(f[3:], g.max_torque)
        self.task_force[:] = f
        tau = J.T @ f
        # Dynamically consistent null space: keep the elbow near its posture without disturbing the TCP.
        q = data.qpos[arm.qpos]
        tau_post = M @ (g.kp_null * (self.q_posture - q) - self._kd_null * qd)
        tau += tau_post - J.T @ (Lam @ (MinvJt.T @ tau_post))
        tau += data.qfrc_bias[sl]
        data.ctrl[arm.arm_act] = np.minimum(np.maximum(tau, -TORQUE_LIMITS), TORQUE_LIMITS)
        # Gripper: each finger PD to half the width, force capped by the commanded grip force.
        fq = data.qpos[arm.finger_qpos]
        fv = data.qvel[arm.finger_dof]
        ff = g.finger_kp * (0.5 * self.grip_width - fq) - g.finger_kd * fv
        data.ctrl[arm.finger_act] = np.clip(ff, -self.grip_force, self.grip_force) + data.qfrc_bias[arm.finger_dof]


def _clip_norm(x: np.ndarray, limit: float) -> np.ndarray:
    n = math.sqrt(float(x @ x))
    return x if n <= limit else x * (limit / n)
