"""Small kinematics helpers: inverse kinematics for resets and pose conversions."""

from __future__ import annotations

import mujoco
import numpy as np

from sim.robot import ArmIndex
from spatial.rotations import rotation_error


def solve_ik(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    arm: ArmIndex,
    pos: np.ndarray,
    rot: np.ndarray,
    q_init: np.ndarray,
    iters: int = 200,
    tol: float = 1e-5,
) -> np.ndarray:
    """Damped least-squares IK for the arm's TCP site; writes and returns the arm's qpos.

    Raises RuntimeError when the pose is out of reach, naming the residual.
    """
    jacp = np.zeros((3, model.nv))
    jacr = np.zeros((3, model.nv))
    data.qpos[arm.qpos] = q_init
    lo = model.jnt_range[[model.dof_jntid[d] for d in arm.dof], 0]
    hi = model.jnt_range[[model.dof_jntid[d] for d in arm.dof], 1]
    err = np.inf
    for _ in range(iters):
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        cur_p = data.site_xpos[arm.tcp_site]
        cur_r = data.site_xmat[arm.tcp_site].reshape(3, 3)
        e = np.concatenate((pos - cur_p, rotation_error(rot, cur_r)))
        err = float(np.linalg.norm(e))
        if err < tol:
            break
        mujoco.mj_jacSite(model, data, jacp, jacr, arm.tcp_site)
        J = np.vstack((jacp[:, arm.dof], jacr[:, arm.dof]))
        dq = J.T @ np.linalg.solve(J @ J.T + 1e-4 * np.eye(6), e)
        data.qpos[arm.qpos] = np.clip(data.qpos[arm.qpos] + dq, lo, hi)
    if err > 1e-3:
        raise RuntimeError(f"IK did not reach the pose for arm {arm.prefix!r}: residual {err:.4f}")
    return data.qpos[arm.qpos].copy()


def frame_from_z_and_x(z: np.ndarray, x_hint: np.ndarray) -> np.ndarray:
    """Rotation matrix whose z axis is ``z`` and whose x axis is as close as possible to ``x_hint``."""
    z = z / np.linalg.norm(z)
    x = x_hint - z * (x_hint @ z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack((x, y, z), axis=1)


def solve_ik_robust(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    arm: ArmIndex,
    pos: np.ndarray,
    rot: np.ndarray,
    q_init: np.ndarray,
    restarts: int = 40,
    margin: float = 0.25,
) -> np.ndarray:
    """IK from ``q_init``, then from deterministic random restarts; prefers solutions away from limits.

    A solution within ``margin`` rad of a joint limit is kept only if no better one exists, because
    the impedance controller needs room to move around the start pose.
    """
    lo = model.jnt_range[[model.dof_jntid[d] for d in arm.dof], 0]
    hi = model.jnt_range[[model.dof_jntid[d] for d in arm.dof], 1]
    rng = np.random.default_rng(0)
    found: list[np.ndarray] = []
    best, best_room = None, -np.inf
    last_error: RuntimeError | None = None
    for k in range(restarts + 1):
        start = q_init if k == 0 else rng.uniform(lo + margin, hi - margin)
        try:
            q = solve_ik(model, data, arm, pos, rot, start)
        except RuntimeError as exc:
            last_error = exc
            continue
        room = float(np.min(np.minimum(q - lo, hi - q)))
        if room >= margin:
            if k == 0:
                return q
            found.append(q)
            if len(found) >= 4:
                break
        elif room > best_room:
            best, best_room = q, room
    if found:
        # Among comfortable solutions, the one closest to the posture seed.
        best = min(found, key=lambda q: float(np.sum((q - q_init) ** 2)))
    if best is None:
        raise RuntimeError(f"no IK solution after {restarts + 1} tries: {last_error}")
    data.qpos[arm.qpos] = best
    return best
