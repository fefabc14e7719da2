"""spatial.rotations: the one-rotation functions equal MuJoCo's C routines bit for bit (the controller's commands
were computed with them, and a hash of every command checks refactors), the batch paths agree with each other, and
the package stays numpy-only."""

from __future__ import annotations

import ast
from pathlib import Path

import mujoco
import numpy as np
import pytest

from spatial.rotations import (
    SMALL_BATCH,
    mat_to_rotvec,
    matrix_to_quat,
    quat_to_matrix,
    quat_to_rotvec,
    rot6d_to_matrix,
    rotation_error,
    rotvec_to_mat,
)


def _mj_rotvec_to_mat(rv: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(rv)
    q = np.array([1.0, 0.0, 0.0, 0.0])
    if n >= 1e-12:
        mujoco.mju_axisAngle2Quat(q, rv / n, float(n))
    m = np.zeros(9)
    mujoco.mju_quat2Mat(m, q)
    return m.reshape(3, 3)


def _mj_mat_to_rotvec(m: np.ndarray) -> np.ndarray:
    q, v = np.zeros(4), np.zeros(3)
    mujoco.mju_mat2Quat(q, m.reshape(-1))
    mujoco.mju_quat2Vel(v, q, 1.0)
    return v


def _rotvecs(rng: np.random.Generator, n: int) -> np.ndarray:
    """Directions times angles from tiny to past 2 pi, ~pi (a tool pointing down) over-represented."""
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.concatenate([10.0 ** rng.uniform(-11, 0, n // 4), rng.uniform(0, 7, n // 4),
                            np.pi - 10.0 ** rng.uniform(-9, -1, n - n // 2)])
    return axis * rng.permutation(angle)[:, None]


def test_one_rotation_functions_equal_mujocos_routines_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    rvs = _rotvecs(rng, 4000)
    for rv in [*rvs, *rvs[:500].astype(np.float32), np.zeros(3), np.array([1e-13, 0, 0]), np.array([np.pi, 0, 0])]:
        assert rotvec_to_mat(rv).tobytes() == _mj_rotvec_to_mat(rv).tobytes(), rv
    mats = [_mj_rotvec_to_mat(rv) for rv in rvs]
    mats += [m + rng.normal(scale=1e-9, size=(3, 3)) for m in mats[:500]]  # off-orthonormal: normalised quaternion
    mats += [np.eye(3), -np.eye(3), np.zeros((3, 3)), *(np.diag(d) for d in np.eye(3) * 2 - 1)]  # half-turns
    for m in mats:
        assert mat_to_rotvec(m).tobytes() == _mj_mat_to_rotvec(m).tobytes(), m
        q = np.zeros(4)
        mujoco.mju_mat2Quat(q, m.reshape(-1))
        assert matrix_to_quat(m).tobytes() == (q if q[0] >= 0 else -q).tobytes(), m
    for a, b in zip(mats[:1000], mats[1000:2000], strict=True):
        assert rotation_error(a, b).tobytes() == _mj_mat_to_rotvec(a @ b.T).tobytes()
    for q in [*rng.normal(size=(2000, 4)), np.array([1.0, 0, 0, 0]), np.array([-1.0, 0, 0, 0])]:
        v = np.zeros(3)
        mujoco.mju_quat2Vel(v, q, 1.0)
        assert quat_to_rotvec(q).tobytes() == v.tobytes(), q
    for q in rng.normal(size=(2000, 4)):
        m = np.zeros(9)
        mujoco.mju_quat2Mat(m, q / np.linalg.norm(q[None], axis=-1)[0])
        assert quat_to_matrix(q).tobytes() == m.reshape(3, 3).tobytes(), q


def test_non_rotations_give_nan_not_an_exception() -> None:
    """C's sin(inf) and NaN arithmetic give NaN; Python's math raises on some of them."""
    assert np.isnan(rotvec_to_mat(np.array([np.inf, 0.0, 0.0]))).all()
    assert np.isnan(rotvec_to_mat(np.array([np.nan, 0.0, 0.0]))).all()
    assert np.isnan(mat_to_rotvec(np.full((3, 3), np.nan))).all()
    assert np.isnan(mat_to_rotvec(np.diag([np.inf, 1.0, 1.0]))).all()


def test_small_batch_rotation_paths_equal_the_vectorised_ones() -> None:
    """Up to SMALL_BATCH rotations go through plain floats (the fast loop's case); the results equal the vectorised
    numpy path's, degenerate inputs and the w = 0 sign choice included."""
    rng = np.random.default_rng(3)
    n = 20 * SMALL_BATCH  # vectorised in one call, then one at a time
    q = rng.normal(size=(n, 4))
    q[:20, 0] = 0.0  # half-turns
    q[20:40, 1:] *= 1e-9  # near identity
    r6 = rng.normal(size=(n, 6))
    r6[:10, 3:] = 2.0 * r6[:10, :3]  # second column parallel to the first
    r6[10:20, :3] = 0.0
    m = quat_to_matrix(q)
    for batched, one in ((m, lambda i: quat_to_matrix(q[i])), (matrix_to_quat(m), lambda i: matrix_to_quat(m[i])),
                         (rot6d_to_matrix(r6), lambda i: rot6d_to_matrix(r6[i]))):
        np.testing.assert_allclose(np.stack([one(i) for i in range(n)]), batched, atol=1e-14)
    np.testing.assert_allclose(quat_to_matrix(q[:SMALL_BATCH]), m[:SMALL_BATCH], atol=1e-14)  # a small batch


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "spatial").glob("*.py")),
                         ids=lambda p: p.name)
def test_spatial_imports_numpy_and_math_only(path: Path) -> None:
    """The bottom layer: every package may import it, so it imports nothing but numpy and the standard maths."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "math", "numpy"}, imported
