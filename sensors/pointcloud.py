"""Depth images to fixed-size point clouds, through open3d: the observation a 3-D policy (DP3, Ze et al. 2024) reads.

One path for every cloud of the project::

    depth (H, W) + intrinsics + camera pose  --camera_cloud-->  open3d PointCloud, world frame (N points)
        --WorkspaceSampler.sample-->  crop to the workspace box  ->  voxel_down_sample  ->  exactly n points

Glossary: ``N`` points before sampling, ``n = PointCloudConfig.num_points`` after, ``D = 3`` (xyz) or ``6``
(xyz + rgb in [0, 1], ``colors=True``). Output: ``(n, D) float32``.

The fixed count: more than ``n`` points after the voxel grid -> ``farthest_point_down_sample`` (spreads the points
over the whole crop; it starts from the first point, so a cloud gives the same sample every time); fewer -> the
points repeated in order (``0, 1, .., m-1, 0, 1, ..``), deterministic and harmless to max-pooling encoders (a
repeated point changes no maximum). An empty crop raises :class:`EmptyCloudError`: every scene of the project keeps
its work surface or object inside the box, so nothing in it means a wrong box, a wrong camera pose or a blank
depth image, and a zero cloud passed on silently would teach a policy on nothing.

open3d costs about a second to import, so :mod:`sim.env` imports this module only when a cloud is asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import open3d as o3d

Vec3 = tuple[float, float, float]
# MuJoCo's camera looks along its -z with +y up; open3d's (OpenCV's) looks along +z with +y down.
_MUJOCO_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


class EmptyCloudError(ValueError):
    """No point of the cloud lies inside the workspace box."""


@dataclass(frozen=True)
class PointCloudConfig:
    """What a fixed-size cloud keeps: the world-frame box, the voxel grid and the point count."""

    box_min: Vec3  # world frame, m: the corner of the workspace box with the smallest x, y, z
    box_max: Vec3
    num_points: int = 512  # n, DP3's count for simulated tasks
    voxel_size: float = 0.005  # m, edge of the voxel grid that evens out the density; 0 keeps every point
    max_depth: float = 3.0  # m, pixels at or beyond this depth (background, the far plane) are dropped
    colors: bool = False  # (n, 6) xyz + rgb in [0, 1] instead of (n, 3) xyz

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.box_min, float), np.asarray(self.box_max, float)
        if lo.shape != (3,) or hi.shape != (3,) or not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError(f"box_min={self.box_min}, box_max={self.box_max}: expected two finite (x, y, z) corners")
        if not (lo < hi).all():
            raise ValueError(f"box_min={self.box_min} must be below box_max={self.box_max} on every axis")
        if not (type(self.num_points) is int and self.num_points >= 1):
            raise ValueError(f"num_points={self.num_points!r}: expected an integer >= 1")
        if not (math.isfinite(self.voxel_size) and self.voxel_size >= 0):
            raise ValueError(f"voxel_size={self.voxel_size}: expected a length >= 0 (m; 0 keeps every point)")
        if not (math.isfinite(self.max_depth) and self.max_depth > 0):
            raise ValueError(f"max_depth={self.max_depth}: expected a depth > 0 (m)")

    @property
    def point_dim(self) -> int:
        """D: 3 (xyz) or 6 (xyz + rgb)."""
        return 6 if self.colors else 3


def camera_cloud(
    depth: np.ndarray,
    intrinsics: np.ndarray,
    cam_pos: np.ndarray,
    cam_rot: np.ndarray,
    max_depth: float = 3.0,
    rgb: np.ndarray | None = None,
    stride: int = 1,
) -> o3d.geometry.PointCloud:
    """World-frame open3d cloud of a metric depth image (H, W), with the colours of ``rgb`` (H, W, 3) uint8 if given.

    ``intrinsics``: (3, 3) pinhole matrix (``sensors.camera.intrinsics_from_fovy``); ``cam_pos`` (3,) and
    ``cam_rot`` (3, 3) the camera-to-world pose in MuJoCo's convention (looks along -z, +y up). Pixels with depth
    <= 0, non-finite, or >= ``max_depth`` are dropped; ``stride`` keeps every stride-th pixel in both directions.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    if stride < 1:
        raise ValueError(f"stride={stride}: expected an integer >= 1")
    h, w = depth.shape
    k = np.asarray(intrinsics, dtype=np.float64)
    intr = o3d.camera.PinholeCameraIntrinsic(w, h, k[0, 0], k[1, 1], k[0, 2], k[1, 2])
    rot_cw = _MUJOCO_TO_OPENCV @ np.asarray(cam_rot, dtype=np.float64).T  # world -> OpenCV camera axes
    extrinsic = np.eye(4)
    extrinsic[:3, :3] = rot_cw
    extrinsic[:3, 3] = -rot_cw @ np.asarray(cam_pos, dtype=np.float64)
    z = np.ascontiguousarray(depth, dtype=np.float32)
    z = np.where(np.isfinite(z), z, 0.0).astype(np.float32)  # open3d drops depth 0, not NaN
    if rgb is None:
        return o3d.geometry.PointCloud.create_from_depth_image(
            o3d.geometry.Image(z), intr, extrinsic, depth_scale=1.0, depth_trunc=max_depth, stride=stride
        )
    rgb = np.asarray(rgb)
    if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be ({h}, {w}, 3) uint8 like the depth image, got {rgb.dtype} {rgb.shape}")
    if stride != 1:
        raise ValueError("stride > 1 is for depth-only clouds; render the RGB image at the reduced size instead")
    rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
        o3d.geometry.Image(np.ascontiguousarray(rgb)), o3d.geometry.Image(z),
        depth_scale=1.0, depth_trunc=max_depth, convert_rgb_to_intensity=False,
    )
    return o3d.geometry.PointCloud.create_from_rgbd_image(rgbd, intr, extrinsic)


def points_cloud(points: np.ndarray, colors: np.ndarray | None = None) -> o3d.geometry.PointCloud:
    """open3d cloud of (N, 3) world points, with (N, 3) colours in [0, 1] if given."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got shape {pts.shape}")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    if colors is not None:
        col = np.asarray(colors, dtype=np.float64)
        if col.shape != pts.shape:
            raise ValueError(f"colors must be (N, 3) like the points {pts.shape}, got shape {col.shape}")
        cloud.colors = o3d.utility.Vector3dVector(col)
    return cloud


class WorkspaceSampler:
    """Crop -> voxel grid -> exactly ``num_points`` points: (n, D) float32, the same every time for one input."""

    def __init__(self, cfg: PointCloudConfig) -> None:
        self.cfg = cfg
        self.box = o3d.geometry.AxisAlignedBoundingBox(np.asarray(cfg.box_min, float), np.asarray(cfg.box_max, float))

    def sample(self, cloud: o3d.geometry.PointCloud) -> np.ndarray:
        """(n, D) float32 from an open3d cloud (which needs colours when ``colors=True``)."""
        cfg = self.cfg
        if cfg.colors and not cloud.has_colors():
            raise ValueError("PointCloudConfig.colors=True, but the cloud has no colours: pass the RGB image")
        cropped = cloud.crop(self.box)
        if cfg.voxel_size > 0 and not cropped.is_empty():
            cropped = cropped.voxel_down_sample(cfg.voxel_size)
        m = len(cropped.points)
        if m == 0:
            raise EmptyCloudError(
                f"none of the {len(cloud.points)} points lies in the workspace box {cfg.box_min}..{cfg.box_max} "
                "(world frame, m): check the box and the camera pose"
            )
        if m > cfg.num_points:
            cropped = cropped.farthest_point_down_sample(cfg.num_points)
        xyz = np.asarray(cropped.points)
        out = np.hstack((xyz, np.asarray(cropped.colors))) if cfg.colors else xyz
        if m < cfg.num_points:
            out = out[np.arange(cfg.num_points) % m]
        return out.astype(np.float32)

    def from_depth(
        self,
        depth: np.ndarray,
        intrinsics: np.ndarray,
        cam_pos: np.ndarray,
        cam_rot: np.ndarray,
        rgb: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n, D) float32 from a metric depth image and its camera (see :func:`camera_cloud`)."""
        if self.cfg.colors and rgb is None:
            raise ValueError("PointCloudConfig.colors=True needs the RGB image (rgb=...) next to the depth image")
        return self.sample(camera_cloud(depth, intrinsics, cam_pos, cam_rot, self.cfg.max_depth,
                                        rgb if self.cfg.colors else None))

    def from_points(self, points: np.ndarray, colors: np.ndarray | None = None) -> np.ndarray:
        """(n, D) float32 from (N, 3) world points (and (N, 3) colours in [0, 1] when ``colors=True``)."""
        if self.cfg.colors and colors is None:
            raise ValueError("PointCloudConfig.colors=True needs per-point colours (colors=...)")
        return self.sample(points_cloud(points, colors if self.cfg.colors else None))
