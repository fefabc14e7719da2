"""Rotation conversions on batches of any leading shape (...): rotation vectors, matrices, unit quaternions
(w, x, y, z; MuJoCo's order) and the continuous 6-D representation (the first two matrix columns, Zhou et al. 2019).
Shared by the features computed from recorded and live poses (``dataset.features``) and the policy's action
representation (``rdp.data``)."""

from __future__ import annotations

import math

import numpy as np


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


SMALL_BATCH = 8  # up to this many rotations, the conversions loop over MuJoCo's C routines (the fast loop's case:
# one per arm; vectorised numpy on a handful of 3x3 matrices costs tens of microseconds in call overhead)


def _small(batch_shape: tuple[int, ...]) -> bool:
    return math.prod(batch_shape) <= SMALL_BATCH


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 4) unit quaternions (w, x, y, z), w >= 0; Shepperd's method (stable at every angle)."""
    m = np.asarray(m, dtype=np.float64)
    if _small(m.shape[:-2]):
        import mujoco  # here, not at the top: sim sets MUJOCO_GL before the first import of mujoco

        flat = np.ascontiguousarray(m).reshape(-1, 9)
        q = np.empty((len(flat), 4))
        for i in range(len(flat)):
            mujoco.mju_mat2Quat(q[i], flat[i])
        q[q[:, 0] < 0] *= -1.0
        return q.reshape(*m.shape[:-2], 4)
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
        import mujoco

        flat = q.reshape(-1, 4)
        flat = flat / np.linalg.norm(flat, axis=-1, keepdims=True)
        m = np.empty((len(flat), 9))
        for i in range(len(flat)):
            mujoco.mju_quat2Mat(m[i], flat[i])
        return m.reshape(*q.shape[:-1], 3, 3)
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
