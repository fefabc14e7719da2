"""Pinhole camera helpers. Depth images become point clouds in :mod:`sensors.pointcloud` (through open3d)."""

from __future__ import annotations

import numpy as np


def intrinsics_from_fovy(fovy_deg: float, width: int, height: int) -> np.ndarray:
    """(3, 3) pinhole matrix for a vertical field of view in degrees (square pixels, centred)."""
    if not 0 < fovy_deg < 180:
        raise ValueError(f"fovy must be in (0, 180) degrees, got {fovy_deg}")
    f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])
