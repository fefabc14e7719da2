"""GelSight-like marker fields from rigid-body contact.

A simulated pad is a rectangle of gel with a grid of markers (``MARKER_GRID``, 7 x 9). Each contact the physics engine
reports on the pad (position in the pad frame, normal force, signed shear force) is turned into:

* a contact **footprint**: a Hertz-like cap ``delta - r^2 / (2 R)`` whose indentation ``delta``
  grows as ``(F_n / k)^(2/3)``; the union of caps is the normal-depth map;
* **pressure and shear traction** spread over that footprint (each contact's forces over its own cap);
* **marker displacement** from a small elastic solve on the marker grid: a discrete Poisson problem
  with the gel bonded at the frame (Dirichlet boundary) driven by the shear traction, plus the
  outward dilation of a press (minus the gradient of the smoothed pressure). The solve is a
  precomputed linear map, so one reading costs a few small matrix products.

Markers move in the direction of the shear force the object exerts on the gel, as in a real pad.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sensors.types import MARKER_COLS, MARKER_ROWS, MarkerField


@dataclass(frozen=True)
class GelPadSpec:
    """Geometry and material of one pad (SI units)."""

    half_size: tuple[float, float] = (0.012, 0.009)  # pad half extent along its x (cols) and y (rows)
    rows: int = MARKER_ROWS
    cols: int = MARKER_COLS
    depth_shape: tuple[int, int] = (14, 18)
    hertz_k: float = 2.0e5  # N / m^1.5: indentation delta = (F_n / k)^(2/3)
    counter_radius: float = 0.02  # m, effective radius of the touching surface (spreads the cap)
    shear_compliance: float = 8.0e-5  # m per N of shear traction at a marker (Poisson solve scale)
    dilation: float = 7.5e-5  # m per N of smoothed pressure gradient
    max_indentation: float = 0.004  # m, the gel is this thick


def _poisson_green(rows: int, cols: int) -> np.ndarray:
    """Inverse of the 5-point Laplacian on the marker grid, gel bonded at its border.

    Returns G (N, N), N = rows*cols, so that ``u = G @ t`` solves ``-lap(u) = t`` with u = 0 outside.
    """
    n = rows * cols
    lap = np.zeros((n, n))
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            lap[i, i] = 4.0
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < rows and 0 <= cc < cols:
                    lap[i, rr * cols + cc] = -1.0
    return np.linalg.inv(lap)


def _gradient_ops(rows: int, cols: int, hx: float, hy: float) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference d/dx and d/dy on the grid (one-sided at the border)."""
    n = rows * cols
    dx = np.zeros((n, n))
    dy = np.zeros((n, n))
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            c0, c1 = max(c - 1, 0), min(c + 1, cols - 1)
            r0, r1 = max(r - 1, 0), min(r + 1, rows - 1)
            dx[i, r * cols + c1] += 1.0 / ((c1 - c0) * hx)
            dx[i, r * cols + c0] -= 1.0 / ((c1 - c0) * hx)
            dy[i, r1 * cols + c] += 1.0 / ((r1 - r0) * hy)
            dy[i, r0 * cols + c] -= 1.0 / ((r1 - r0) * hy)
    return dx, dy


class GelPad:
    """Turns the contacts on one pad into a :class:`MarkerField` (reuses its buffers)."""

    def __init__(self, spec: GelPadSpec | None = None):
        self.spec = s = spec or GelPadSpec()
        hx, hy = s.half_size
        xs = np.linspace(-hx, hx, s.cols + 2)[1:-1]
        ys = np.linspace(-hy, hy, s.rows + 2)[1:-1]
        gx, gy = np.meshgrid(xs, ys)  # (R, C)
        self.rest = np.stack((gx, gy), axis=-1)  # (R, C, 2)
        self._mxy = self.rest.reshape(-1, 2)  # (N, 2)
        dh, dw = s.depth_shape
        dxs = np.linspace(-hx, hx, dw)
        dys = np.linspace(-hy, hy, dh)
        ex, ey = np.meshgrid(dxs, dys)
        self._dxy = np.stack((ex.ravel(), ey.ravel()), axis=-1)  # (H*W, 2)
        green = _poisson_green(s.rows, s.cols)
        ddx, ddy = _gradient_ops(s.rows, s.cols, xs[1] - xs[0], ys[1] - ys[0])
        # Scale so that a unit traction at one marker gives shear_compliance of displacement there.
        self._shear = green * (s.shear_compliance / green.max())
        smooth = green / green.max()
        self._dil_x = -s.dilation * (ddx @ smooth) * (xs[1] - xs[0])
        self._dil_y = -s.dilation * (ddy @ smooth) * (ys[1] - ys[0])

    def empty(self, stamp: float = 0.0) -> MarkerField:
        return MarkerField(
            rest=self.rest,
            offset=np.zeros_like(self.rest),
            depth=np.zeros(self.spec.depth_shape),
            stamp=stamp,
        )

    def _caps(self, xy: np.ndarray, delta: np.ndarray, pts: np.ndarray) -> np.ndarray:
        """(K, P) Hertz caps of K contacts evaluated at P points."""
        r2 = ((pts[None, :, :] - xy[:, None, :]) ** 2).sum(-1)
        return np.maximum(delta[:, None] - r2 / (2.0 * self.spec.counter_radius), 0.0)

    def read(
        self, xy: np.ndarray, force: np.ndarray, stamp: float = 0.0, slip: np.ndarray | None = None
    ) -> MarkerField:
        """Marker field from K contacts.

        Args:
            xy: (K, 2) contact points in the pad frame (m).
            force: (K, 3) force of the object on the pad in the pad frame: (shear x, shear y, normal >= 0).
            slip: (K, 2) sliding velocity of the object over the pad at each contact (m/s), optional.
        """
        s = self.spec
        keep = force[:, 2] > 1e-6
        if not np.any(keep):
            return self.empty(stamp)
        xy, force = xy[keep], force[keep]
        mean_slip = np.zeros(2) if slip is None else force[:, 2] @ slip[keep] / force[:, 2].sum()
        delta = np.minimum((force[:, 2] / s.hertz_k) ** (2.0 / 3.0), s.max_indentation)
        caps_m = self._caps(xy, delta, self._mxy)  # (K, N)
        norm = caps_m.sum(axis=1, keepdims=True)
        # A contact outside the marker grid still loads the gel: fall back to its nearest marker.
        far = norm[:, 0] <= 0
        if np.any(far):
            nearest = ((self._mxy[None] - xy[far][:, None]) ** 2).sum(-1).argmin(axis=1)
            caps_m[np.flatnonzero(far), nearest] = 1.0
            norm = caps_m.sum(axis=1, keepdims=True)
        w = caps_m / norm
        pressure = force[:, 2] @ w  # (N,)
        tx = force[:, 0] @ w
        ty = force[:, 1] @ w
        ux = self._shear @ tx + self._dil_x @ pressure
        uy = self._shear @ ty + self._dil_y @ pressure
        depth = self._caps(xy, delta, self._dxy).max(axis=0).reshape(s.depth_shape)
        offset = np.stack((ux, uy), axis=-1).reshape(self.rest.shape)
        return MarkerField(
            rest=self.rest,
            offset=offset,
            depth=depth,
            normal_force=float(force[:, 2].sum()),
            shear_force=force[:, :2].sum(axis=0),
            slip=mean_slip,
            stamp=stamp,
        )
