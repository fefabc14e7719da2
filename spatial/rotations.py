"""Rotation conversions, written once for the whole stack: rotation vectors (axis * angle, rad), 3x3 matrices,
quaternions (w, x, y, z; MuJoCo's order) and the continuous 6-D representation (the first two matrix columns,
Zhou et al. 2019). numpy and math only.

Two families, kept apart because the robot's commands are checked bit for bit (a hash of every command) and the
families round differently in the last bit: merging rotvec <-> matrix or quaternion -> matrix would change what
the robot is told.

* **one rotation**, for the loops that run every physics or teleop step (plain Python floats, no per-call numpy
  overhead): ``rotvec_to_mat``, ``mat_to_rotvec`` and ``rotation_error`` do MuJoCo 4's ``mju_axisAngle2Quat``,
  ``mju_quat2Mat``, ``mju_mat2Quat`` and ``mju_quat2Vel`` operation for operation (the controller, the robot
  node and the teleop node called those C routines; ``tests/spatial`` holds the port to them); ``quat_to_mat``
  and ``rotation_angle`` are the teleop mapping's closed forms.
* **batches** of any leading shape (...): ``rotvec_to_matrix`` (Rodrigues) and ``matrix_to_rotvec`` (through
  quaternions) for the policy's action representation and the fast node's hold target; ``quat_to_matrix``,
  ``matrix_to_quat``, ``matrix_to_rot6d`` and ``rot6d_to_matrix`` for the features of recorded and live poses.
  Up to ``SMALL_BATCH`` rotations (the fast loop's case) ``quat_to_matrix`` and ``matrix_to_quat`` take MuJoCo's
  arithmetic and ``rot6d_to_matrix`` plain floats; larger batches are vectorised. ``matrix_to_quat`` also
  serves single rotations (the operators' hand poses).
"""

from __future__ import annotations

import math

import numpy as np

_MINVAL = 1e-15  # MuJoCo's mjMINVAL: below this norm a quaternion or axis is replaced by the identity / x axis


# ------------------------------------------------------------------ one rotation: MuJoCo's arithmetic, in floats
def _mat_to_quat(m0, m1, m2, m3, m4, m5, m6, m7, m8) -> tuple[float, float, float, float]:
    """Row-major 3x3 -> (w, x, y, z) as ``mju_mat2Quat``: Shepperd's branch on the largest component, then
    ``mju_normalize4`` (which leaves a norm within _MINVAL of 1 alone and sums the squares pairwise)."""
    if m0 + m4 + m8 > 0:
        w = 0.5 * math.sqrt(1 + m0 + m4 + m8)
        x, y, z = 0.25 * (m7 - m5) / w, 0.25 * (m2 - m6) / w, 0.25 * (m3 - m1) / w
    elif m0 > m4 and m0 > m8:
        x = 0.5 * math.sqrt(1 + m0 - m4 - m8)
        w, y, z = 0.25 * (m7 - m5) / x, 0.25 * (m1 + m3) / x, 0.25 * (m2 + m6) / x
    elif m4 > m8:
        y = 0.5 * math.sqrt(1 - m0 + m4 - m8)
        w, x, z = 0.25 * (m2 - m6) / y, 0.25 * (m1 + m3) / y, 0.25 * (m5 + m7) / y
    else:
        z = 0.5 * math.sqrt(1 - m0 - m4 + m8)
        w, x, y = 0.25 * (m3 - m1) / z, 0.25 * (m2 + m6) / z, 0.25 * (m5 + m7) / z
    n = math.sqrt((w * w + x * x) + (y * y + z * z))
    if n < _MINVAL:
        return 1.0, 0.0, 0.0, 0.0
    if abs(n - 1) > _MINVAL:
        inv = 1 / n
        return w * inv, x * inv, y * inv, z * inv
    return w, x, y, z


def _w_positive(w, x, y, z) -> tuple[float, float, float, float]:
    """q or -q, whichever has w >= 0 (the same rotation)."""
    return (w * -1.0, x * -1.0, y * -1.0, z * -1.0) if w < 0 else (w, x, y, z)


def _quat_to_rotvec(w, x, y, z) -> tuple[float, float, float]:
    """(w, x, y, z) -> rotation vector as ``mju_quat2Vel(res, quat, 1)``: the shorter way round, angle at most pi."""
    n = math.sqrt((x * x + y * y) + z * z)
    if n < _MINVAL:
        x, y, z = 1.0, 0.0, 0.0
    else:
        inv = 1 / n
        x, y, z = x * inv, y * inv, z * inv
    angle = 2 * math.atan2(n, w)
    if angle > math.pi:
        angle -= 2 * math.pi
    return x * angle, y * angle, z * angle


def _quat_to_mat(w, x, y, z) -> tuple[float, ...]:
    """Unit (w, x, y, z) -> row-major 3x3 as ``mju_quat2Mat`` (its diagonal sums in MuJoCo 4's order)."""
    if w == 1 and x == 0 and y == 0 and z == 0:
        return 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0
    ww, wx, wy, wz = w * w, w * x, w * y, w * z
    xx, xy, xz, yy, yz, zz = x * x, x * y, x * z, y * y, y * z, z * z
    return ((ww - yy) + (xx - zz), 2 * (xy - wz), 2 * (xz + wy),
            2 * (xy + wz), (ww + yy) - (xx + zz), 2 * (yz - wx),
            2 * (xz - wy), 2 * (yz + wx), (ww - yy) - (xx - zz))


def rotvec_to_mat(rv: np.ndarray) -> np.ndarray:
    """(3,) rotation vector -> (3, 3) matrix, MuJoCo's arithmetic (the controller's targets). The norm is numpy's,
    taken in ``rv``'s own dtype, as the commands have always been computed."""
    n = np.linalg.norm(rv)
    if n < 1e-12:
        return np.eye(3)
    if n == math.inf:  # C's sin(inf) is NaN, and so is every entry; math.sin raises instead
        return np.full((3, 3), math.nan)
    ax, ay, az = (rv / n).tolist()
    half = float(n) * 0.5  # mju_axisAngle2Quat
    s = math.sin(half)
    return np.array(_quat_to_mat(math.cos(half), ax * s, ay * s, az * s)).reshape(3, 3)


def mat_to_rotvec(m: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (3,) rotation vector (angle at most pi), MuJoCo's arithmetic."""
    w, x, y, z = _mat_to_quat(*m.ravel().tolist())
    return np.array(_quat_to_rotvec(w, x, y, z))


def quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    """(4,) [w, x, y, z] -> (3,) rotation vector (angle at most pi), MuJoCo's arithmetic (``mju_quat2Vel``, dt 1)."""
    w, x, y, z = np.asarray(q, dtype=np.float64).tolist()
    return np.array(_quat_to_rotvec(w, x, y, z))


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """(3,) rotation vector that rotates ``current`` onto ``target`` (both (3, 3), world frame)."""
    return mat_to_rotvec(target @ current.T)


# ----------------------------------------------------------------------- one rotation: the teleop mapping's
def quat_to_mat(q: np.ndarray) -> np.ndarray:
    """[w, x, y, z] (any norm > 0, normalised here in its own dtype) -> (3, 3) rotation matrix, closed form."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (rad) of the rotation between two (3, 3) rotation matrices."""
    c = (np.trace(a @ b.T) - 1.0) / 2.0
    return float(math.acos(min(1.0, max(-1.0, c))))


# ------------------------------------------------------------------------------------------------- batches
SMALL_BATCH = 8  # up to this many rotations, the conversions loop over plain floats (the fast loop's case: one
# per arm; vectorised numpy on a handful of 3x3 matrices costs tens of microseconds in call overhead)


def _small(batch_shape: tuple[int, ...]) -> bool:
    return math.prod(batch_shape) <= SMALL_BATCH


def rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vectors -> (..., 3, 3) matrices (Rodrigues; exact at angle 0)."""
    rv = np.asarray(rv, dtype=np.float64)
    angle = np.linalg.norm(rv, axis=-1)[..., None, None]  # (..., 1, 1)
    k = _skew(rv)
    small = angle < 1e-8
    safe = np.where(small, 1.0, angle)
    a = np.where(small, 1.0 - angle**2 / 6.0, np.sin(safe) / safe)  # sin(t) / t
    b = np.where(small, 0.5 - angle**2 / 24.0, (1.0 - np.cos(safe)) / safe**2)  # (1 - cos t) / t^2
    return np.eye(3) + a * k + b * (k @ k)


def matrix_to_rotvec(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) rotation vectors with angle in [0, pi], via unit quaternions."""
    q = matrix_to_quat(m)  # (..., 4) w, x, y, z with w >= 0
    w = np.clip(q[..., 0], 0.0, 1.0)
    xyz = q[..., 1:]
    s = np.linalg.norm(xyz, axis=-1)
    angle = 2.0 * np.arctan2(s, w)
    scale = np.where(s < 1e-12, 2.0, angle / np.where(s < 1e-12, 1.0, s))  # 2 * asin(s) / s -> 2 as s -> 0
    return xyz * scale[..., None]


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 4) unit quaternions (w, x, y, z), w >= 0; Shepperd's method (stable at every angle).
    One rotation or a small batch takes MuJoCo's arithmetic (``mju_mat2Quat``)."""
    m = np.asarray(m, dtype=np.float64)
    if _small(m.shape[:-2]):
        rows = m.reshape(-1, 9).tolist()
        return np.array([_w_positive(*_mat_to_quat(*r)) for r in rows]).reshape(*m.shape[:-2], 4)
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = np.stack([  # 4 * q * q_k for k = w, x, y, z, each reliable when q_k is the largest component
        np.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        np.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - tr, m[..., 0, 1] + m[..., 1, 0],
                  m[..., 0, 2] + m[..., 2, 0]], -1),
        np.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - tr,
                  m[..., 1, 2] + m[..., 2, 1]], -1),
        np.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                  1 + 2 * m[..., 2, 2] - tr], -1),
    ], axis=-2)  # (..., 4 candidates, 4)
    diag = np.stack([tr, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    best = np.argmax(diag, axis=-1)[..., None, None]
    q = np.take_along_axis(cands, np.broadcast_to(best, (*cands.shape[:-2], 1, 4)), axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (w, x, y, z; MuJoCo's order) -> (..., 3, 3)."""
    q = np.asarray(q, dtype=np.float64)
    if _small(q.shape[:-1]):
        flat = q.reshape(-1, 4)
        flat = flat / np.linalg.norm(flat, axis=-1, keepdims=True)
        return np.array([_quat_to_mat(*r) for r in flat.tolist()]).reshape(*q.shape[:-1], 3, 3)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], axis=-2)


def matrix_to_rot6d(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6): first column, then second column."""
    return np.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def rot6d_to_matrix(r6: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt, so any network output maps to a proper rotation."""
    r6 = np.asarray(r6, dtype=np.float64)
    if _small(r6.shape[:-1]):
        rows = r6.reshape(-1, 6).tolist()
        m = np.empty((len(rows), 3, 3))
        for i, (a0, a1, a2, b0, b1, b2) in enumerate(rows):
            n = max(math.sqrt(a0 * a0 + a1 * a1 + a2 * a2), 1e-9)
            x0, x1, x2 = a0 / n, a1 / n, a2 / n
            d = x0 * b0 + x1 * b1 + x2 * b2
            b0, b1, b2 = b0 - d * x0, b1 - d * x1, b2 - d * x2
            n = max(math.sqrt(b0 * b0 + b1 * b1 + b2 * b2), 1e-9)
            y0, y1, y2 = b0 / n, b1 / n, b2 / n
            m[i] = ((x0, y0, x1 * y2 - x2 * y1), (x1, y1, x2 * y0 - x0 * y2), (x2, y2, x0 * y1 - x1 * y0))
        return m.reshape(*r6.shape[:-1], 3, 3)
    a, b = r6[..., :3], r6[..., 3:]
    x = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-9)
    b = b - np.sum(x * b, axis=-1, keepdims=True) * x
    y = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-9)
    return np.stack([x, y, np.cross(x, y)], axis=-1)


def _skew(v: np.ndarray) -> np.ndarray:
    z = np.zeros(v.shape[:-1])
    x, y, w = v[..., 0], v[..., 1], v[..., 2]
    return np.stack([np.stack([z, -w, y], -1), np.stack([w, z, -x], -1), np.stack([-y, x, z], -1)], -2)
