"""Pinhole camera helpers: depth images to point clouds.

Point clouds are plain ``(N, 3) float64`` arrays in the world frame, the layout open3d ingests
directly (``open3d.geometry.PointCloud(open3d.utility.Vector3dVector(points))``), so open3d stays an
optional viewer dependency.
"""

from __future__ import annotations

import numpy as np


def intrinsics_from_fovy(fovy_deg: float, width: int, height: int) -> np.ndarray:
    """(3, 3) pinhole matrix for a vertical field of view in degrees (square pixels, centred)."""
    if not 0 < fovy_deg < 180:
        raise ValueError(f"fovy must be in (0, 180) degrees, got {fovy_deg}")
    f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


def depth_to_pointcloud(
    depth: np.ndarray,
    intrinsics: np.ndarray,
    cam_pos: np.ndarray,
    cam_rot: np.ndarray,
    max_depth: float = 5.0,
    stride: int = 1,
) -> np.ndarray:
    """Back-project a metric depth image (H, W) to world points (N, 3).

    ``cam_rot`` is the camera-to-world rotation in MuJoCo's convention (the camera looks along its
    -z axis, +y up, +x right). Pixels at or beyond ``max_depth`` (background) are dropped.
    """
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    h, w = depth.shape
    v, u = np.mgrid[0:h:stride, 0:w:stride]
    z = depth[::stride, ::stride]
    keep = (z > 0) & (z < max_depth) & np.isfinite(z)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    x_cam = (u[keep] - cx) / fx * z[keep]
    y_cam = -(v[keep] - cy) / fy * z[keep]  # image rows grow downward, camera +y is up
    pts_cam = np.stack((x_cam, y_cam, -z[keep]), axis=1)
    return pts_cam @ np.asarray(cam_rot).T + np.asarray(cam_pos)
