"""Real-device tactile path of a GelSight-Mini-style pad: USB camera -> marker tracking -> ``MarkerField``.

The gel carries a grid of dark dots on a bright, lit background. The pipeline per frame is:

1. **darkness map** ``D = 1 - I / B`` where ``I`` is the grey image and ``B`` its background, estimated by a
   grey closing (the dots are narrower than the kernel, so the closing erases them) plus a blur. Dividing
   by ``B`` instead of subtracting removes the illumination gradient of the LEDs, so a dot's weight profile
   stays symmetric and its centroid unbiased.
2. **candidates**: connected components of ``D > threshold`` (the threshold is fixed at half the dot
   contrast of the reference frame).
3. **nearest-neighbour tracking**: each marker takes the nearest candidate within ``max_jump`` pixels of its
   previous position (one candidate per marker, the closer marker wins a tie).
4. **sub-pixel refinement**: a few iterations of the darkness-weighted centroid in a disc around the
   estimate (all markers at once, vectorised).
5. **validity**: a marker whose dot is missing, merged or partly hidden (mass far from its reference mass)
   keeps its last position and is flagged in ``valid``.

Pixel convention: pixel ``(i, j)`` has its centre at ``x = j, y = i``; positions are ``(x, y)`` with ``x``
along the columns, as the ``offset[..., 0]`` of the simulated pads.

Forces: a camera alone cannot measure force without a per-sensor calibration, so ``normal_force`` is NaN
and ``shear_force`` is zero. ``depth`` is an uncalibrated *proxy* (relative change of the background
brightness, see ``MarkerTracker.depth_proxy``), not metres.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import cv2
import numpy as np

from bus.cli import command
from bus.config import compose
from sensors.types import MARKER_COLS, MARKER_ROWS, MarkerField


@dataclass(frozen=True)
class MarkerTrackerConfig:
    """Tracker settings; every ``None`` is derived from the reference frame."""

    rows: int = MARKER_ROWS
    cols: int = MARKER_COLS
    max_jump_px: float | None = None  # largest motion of a marker between frames; default 0.4 x spacing
    background_kernel_px: int | None = None  # closing kernel (> dot diameter); default ~0.8 x grid spacing
    refine_iterations: int = 3
    mass_range: tuple[float, float] = (0.5, 1.6)  # accepted mass / reference mass of a tracked dot
    depth_shape: tuple[int, int] = (14, 18)  # (H, W) of the depth proxy, as the simulated pads
    depth_gain: float = 1.0  # proxy -> depth; 1.0 leaves the unitless proxy until a calibration exists

    def __post_init__(self) -> None:
        if self.rows < 2 or self.cols < 2:
            raise ValueError(f"marker grid must be at least 2 x 2, got {self.rows} x {self.cols}")
        if self.refine_iterations < 1:
            raise ValueError(f"refine_iterations must be >= 1, got {self.refine_iterations}")


def order_into_grid(points: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Order unordered marker centres ``(N, 2)`` into a ``(rows, cols, 2)`` grid, row 0 on top, col 0 left.

    The grid may be rotated by a small angle (well under 45 degrees): the angle is estimated from the
    nearest-neighbour vectors (folded modulo 90 degrees), the points are de-rotated, cut into rows by
    their y, and each row is sorted by x. Raises ValueError when the rows are not separable.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (rows * cols, 2):
        raise ValueError(f"expected {rows * cols} points of shape ({rows * cols}, 2), got {points.shape}")
    diff = points[:, None, :] - points[None, :, :]
    dist = np.hypot(diff[..., 0], diff[..., 1])
    np.fill_diagonal(dist, np.inf)
    nn = diff[np.arange(len(points)), dist.argmin(axis=1)]
    theta4 = 4.0 * np.arctan2(nn[:, 1], nn[:, 0])  # a square lattice is 4-fold symmetric
    angle = 0.25 * math.atan2(np.sin(theta4).sum(), np.cos(theta4).sum())
    c, s = math.cos(angle), math.sin(angle)
    centre = points.mean(axis=0)
    local = (points - centre) @ np.array([[c, -s], [s, c]])  # rotate by -angle
    by_y = np.argsort(local[:, 1], kind="stable").reshape(rows, cols)
    ys = local[by_y, 1]
    if rows > 1:
        gap = ys[1:].min(axis=1) - ys[:-1].max(axis=1)
        spread = (ys.max(axis=1) - ys.min(axis=1)).max()
        if gap.min() <= spread:
            raise ValueError(
                f"markers do not form {rows} separable rows (smallest row gap {gap.min():.2f} px, "
                f"largest in-row spread {spread:.2f} px); is the grid rotated by more than ~20 degrees?"
            )
    by_x = np.argsort(local[by_y, 0], axis=1, kind="stable")
    order = np.take_along_axis(by_y, by_x, axis=1)
    return points[order]


class MarkerTracker:
    """Detects the marker grid on a reference frame and tracks every marker on later frames.

    ``update(frame)`` returns a ``MarkerField`` in pixels; ``valid`` (R, C) tells which markers were found
    on the last frame (an invalid marker keeps its last known position).
    """

    def __init__(self, reference: np.ndarray, config: MarkerTrackerConfig | None = None) -> None:
        self.config = config or MarkerTrackerConfig()
        cfg = self.config
        reference = np.asarray(reference)
        if reference.dtype != np.uint8 or not (reference.ndim == 2 or reference.shape[2:] == (3,)):
            raise ValueError(
                f"reference frame must be a uint8 (H, W) or (H, W, 3) image, "
                f"got dtype {reference.dtype} shape {reference.shape}"
            )
        self.frame_shape: tuple[int, ...] = reference.shape
        h, w = reference.shape[:2]
        spacing_guess = min(w / (cfg.cols + 1), h / (cfg.rows + 1))
        k = cfg.background_kernel_px or int(0.8 * spacing_guess)
        k += 1 - k % 2
        self._kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
        self._blur = k
        self._grey = np.empty((h, w), np.uint8)
        self._bg_u8 = np.empty((h, w), np.uint8)
        self._bg = np.empty((h, w), np.float32)
        self._dark = np.empty((h, w), np.float32)

        dark_ref = self._darkness(reference)
        self._bg_ref = self._bg.copy()
        self.threshold = 0.5 * float(np.percentile(dark_ref, 99.5))
        seeds, areas = self._blobs(dark_ref, min_area=0.0)
        keep = areas >= 0.2 * np.median(areas) if len(areas) else np.zeros(0, bool)
        seeds, areas = seeds[keep], areas[keep]
        n_expected = cfg.rows * cfg.cols
        if len(seeds) != n_expected:
            raise ValueError(
                f"expected {n_expected} markers ({cfg.rows} x {cfg.cols} grid) in the reference frame, "
                f"found {len(seeds)}"
            )
        self.ref_area = float(np.median(areas))
        grid = order_into_grid(seeds, cfg.rows, cfg.cols).reshape(-1, 2)
        nn = np.diff(grid.reshape(cfg.rows, cfg.cols, 2), axis=1)
        self.spacing = float(np.median(np.hypot(nn[..., 0], nn[..., 1])))
        self.max_jump = cfg.max_jump_px if cfg.max_jump_px is not None else 0.4 * self.spacing
        radius = math.sqrt(self.ref_area / math.pi)  # radius of the thresholded dot, about its half-darkness
        self._window = min(radius + 3.0, 0.45 * self.spacing)
        self._floor = 0.3 * self.threshold  # ignore the faint positive bias of D outside dots
        half = int(math.ceil(self._window)) + 1
        dy, dx = np.mgrid[-half : half + 1, -half : half + 1]
        self._dx = dx.reshape(1, -1)
        self._dy = dy.reshape(1, -1)

        pos, mass = self._refine(dark_ref, grid)
        if not np.all(mass > 0):
            raise ValueError("a reference marker has no darkness mass; the reference frame is unusable")
        self._ref_mass = mass
        self._rest = pos.reshape(cfg.rows, cfg.cols, 2)
        self._pos = pos.copy()
        self._valid = np.ones(n_expected, bool)

    @property
    def rest(self) -> np.ndarray:
        """(R, C, 2) marker centres on the reference frame, pixels (x, y)."""
        return self._rest.copy()

    @property
    def valid(self) -> np.ndarray:
        """(R, C) True where the marker was found on the last frame."""
        return self._valid.reshape(self.config.rows, self.config.cols).copy()

    def update(self, frame: np.ndarray, stamp: float | None = None) -> MarkerField:
        """Track all markers on ``frame`` (same shape and dtype as the reference) and return the field."""
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape or frame.dtype != np.uint8:
            raise ValueError(
                f"frame has shape {frame.shape} dtype {frame.dtype}, "
                f"expected the reference shape {self.frame_shape} dtype uint8"
            )
        dark = self._darkness(frame)
        seeds, areas = self._blobs(dark, min_area=0.2 * self.ref_area)
        seeds = seeds[areas <= 2.5 * self.ref_area]  # larger blobs are merged dots: no single centre
        found = self._match(seeds)
        start = self._pos.copy()
        start[found >= 0] = seeds[found[found >= 0]]
        pos, mass = self._refine(dark, start)
        lo, hi = self.config.mass_range
        moved = np.hypot(*(pos - self._pos).T)
        ok = (found >= 0) & (mass >= lo * self._ref_mass) & (mass <= hi * self._ref_mass)
        ok &= moved <= self.max_jump
        self._pos[ok] = pos[ok]
        self._valid = ok
        rest = self._rest
        offset = self._pos.reshape(rest.shape) - rest
        return MarkerField(
            rest=rest.copy(),
            offset=offset,
            depth=self.depth_proxy(),
            normal_force=math.nan,
            shear_force=np.zeros(2),
            stamp=time.monotonic() if stamp is None else stamp,
            unit="px",
        )

    def depth_proxy(self) -> np.ndarray:
        """(H, W) coarse indentation proxy of the last frame: |B - B_ref| / B_ref, area-averaged.

        The lit gel changes shade where it is pressed, so the relative change of the dot-free background
        brightness rises where something touches. It is unitless (times ``depth_gain``), not metres: turning
        it into depth needs a photometric-stereo calibration of the sensor.
        """
        rel = np.abs(self._bg - self._bg_ref) / np.maximum(self._bg_ref, 1.0)
        dh, dw = self.config.depth_shape
        return self.config.depth_gain * cv2.resize(rel, (dw, dh), interpolation=cv2.INTER_AREA).astype(
            np.float64
        )

    def _darkness(self, frame: np.ndarray) -> np.ndarray:
        """(H, W) float32 darkness 1 - I / B in [0, 1]; also leaves the background in ``self._bg``."""
        if frame.ndim == 3:
            cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY, dst=self._grey)
        else:
            self._grey[...] = frame
        cv2.morphologyEx(self._grey, cv2.MORPH_CLOSE, self._kernel, dst=self._bg_u8)
        self._bg[...] = self._bg_u8
        cv2.blur(self._bg, (self._blur, self._blur), dst=self._bg)
        np.maximum(self._bg, 1.0, out=self._bg)
        dark = self._dark
        dark[...] = self._grey
        np.divide(dark, self._bg, out=dark)
        np.subtract(1.0, dark, out=dark)
        np.clip(dark, 0.0, 1.0, out=dark)
        return dark

    def _blobs(self, dark: np.ndarray, min_area: float) -> tuple[np.ndarray, np.ndarray]:
        """Centroids (N, 2) and areas (N,) of the connected dark regions."""
        mask = (dark > self.threshold).astype(np.uint8)
        n, _, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        areas = stats[1:n, cv2.CC_STAT_AREA].astype(np.float64)
        keep = areas >= min_area
        return centroids[1:n][keep], areas[keep]

    def _match(self, seeds: np.ndarray) -> np.ndarray:
        """(N,) index of the seed each marker takes, -1 if none within ``max_jump`` (one seed per marker)."""
        n = len(self._pos)
        if len(seeds) == 0:
            return np.full(n, -1)
        d = np.hypot(*(self._pos[:, None, :] - seeds[None, :, :]).transpose(2, 0, 1))
        best = d.argmin(axis=1)
        best_d = d[np.arange(n), best]
        best[best_d > self.max_jump] = -1
        # A seed claimed by several markers goes to the closest one; the others are lost this frame.
        for s in np.unique(best[best >= 0]):
            claim = np.flatnonzero(best == s)
            if len(claim) > 1:
                best[claim[claim != claim[best_d[claim].argmin()]]] = -1
        return best

    def _refine(self, dark: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Darkness-weighted centroids in a disc around each ``pos`` (N, 2); returns (positions, masses)."""
        h, w = dark.shape
        pos = pos.astype(np.float64).copy()
        mass = np.zeros(len(pos))
        for _ in range(self.config.refine_iterations):
            ix = np.rint(pos[:, :1]).astype(np.int64) + self._dx  # (N, K*K)
            iy = np.rint(pos[:, 1:]).astype(np.int64) + self._dy
            inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
            rx, ry = ix - pos[:, :1], iy - pos[:, 1:]
            disc = inside & (rx * rx + ry * ry <= self._window**2)
            wgt = dark[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)] - self._floor
            wgt = np.where(disc, np.maximum(wgt, 0.0), 0.0)
            mass = wgt.sum(axis=1)
            has = mass > 0
            pos[has, 0] += (wgt[has] * rx[has]).sum(axis=1) / mass[has]
            pos[has, 1] += (wgt[has] * ry[has]).sum(axis=1) / mass[has]
        return pos, mass


@dataclass(frozen=True)
class GelSightCameraConfig:
    """Which camera and at what resolution; frames of another size are resized to it."""

    device: int | str = 0
    width: int = 320
    height: int = 240
    tracker: MarkerTrackerConfig = MarkerTrackerConfig()


class GelSightCamera:
    """A GelSight-Mini-style sensor read through ``cv2.VideoCapture`` (index, /dev/videoN or a file).

    The first frame read by ``read_marker_field`` becomes the tracker's reference, so start it with nothing
    touching the gel; ``reset_reference`` takes a new one.
    """

    def __init__(self, config: GelSightCameraConfig | None = None) -> None:
        self.config = config or GelSightCameraConfig()
        self._cap: cv2.VideoCapture | None = None
        self.tracker: MarkerTracker | None = None

    def open(self) -> None:
        cfg = self.config
        cap = cv2.VideoCapture(cfg.device)
        if not cap.isOpened():
            cap.release()
            raise RuntimeError(f"cannot open GelSight camera {cfg.device!r}")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        self._cap = cap

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> GelSightCamera:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def read(self) -> np.ndarray:
        """One BGR uint8 frame of (height, width, 3)."""
        if self._cap is None:
            raise RuntimeError(f"GelSight camera {self.config.device!r} is not open; use open() or `with`")
        ok, frame = self._cap.read()
        if not ok or frame is None:
            raise RuntimeError(f"failed to read a frame from GelSight camera {self.config.device!r}")
        size = (self.config.width, self.config.height)
        if (frame.shape[1], frame.shape[0]) != size:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        return frame

    def reset_reference(self) -> None:
        """Make the next frame the rest state of the gel (call it when nothing touches the pad)."""
        self.tracker = None

    def read_marker_field(self) -> MarkerField:
        """Read one frame and track it; the first frame (or the first after a reset) is the reference."""
        frame = self.read()
        if self.tracker is None:
            self.tracker = MarkerTracker(frame, self.config.tracker)
        return self.tracker.update(frame)


def render_synthetic_gel(
    shape: tuple[int, int],
    rest_centres: np.ndarray,
    offsets: np.ndarray | None = None,
    radius: float = 4.0,
    noise: float = 0.0,
    rng: np.random.Generator | None = None,
    *,
    darkness: float = 0.75,
    edge_px: float = 0.7,
    gradient: float = 0.12,
    texture: float = 0.03,
    shading: np.ndarray | None = None,
    visible: np.ndarray | None = None,
) -> np.ndarray:
    """Render a GelSight-like BGR uint8 image with dots at the known sub-pixel centres ``rest + offsets``.

    Lets the tracker be tested against ground truth. The background is bright and tinted, with a linear
    illumination gradient (``gradient``, relative), smooth texture (``texture``, relative) and an optional
    (H, W) relative ``shading`` change (contact). Dots are soft discs: transmission
    ``1 - darkness * 0.5 * (1 - tanh((d - radius) / edge_px))``, which anti-aliases the edge over ~2 px.
    ``noise`` is the Gaussian noise sigma in grey levels. ``visible`` (R, C) False hides a marker.

    Shapes: ``shape`` = (H, W); ``rest_centres`` and ``offsets`` (R, C, 2) pixels (x, y).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    h, w = shape
    centres = np.asarray(rest_centres, np.float64).reshape(-1, 2)
    if offsets is not None:
        centres = centres + np.asarray(offsets, np.float64).reshape(-1, 2)
    show = np.ones(len(centres), bool) if visible is None else np.asarray(visible, bool).reshape(-1)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    illum = 1.0 + gradient * ((xx / w - 0.5) + 0.5 * (yy / h - 0.5))
    if texture > 0:
        coarse = rng.standard_normal((max(h // 16, 2), max(w // 16, 2)))
        illum += texture * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    if shading is not None:
        illum += shading
    transmission = np.ones((h, w))
    reach = int(math.ceil(radius + 6.0 * edge_px)) + 1
    for (cx, cy), on in zip(centres, show, strict=True):
        if not on:
            continue
        x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, w)
        y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        d = np.hypot(xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy)
        transmission[y0:y1, x0:x1] *= 1.0 - darkness * 0.5 * (1.0 - np.tanh((d - radius) / edge_px))
    tint = np.array([205.0, 195.0, 215.0])  # BGR: the LEDs give the gel a faint colour
    img = (illum * transmission)[..., None] * tint
    if noise > 0:
        img += rng.normal(0.0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def grid_centres(
    shape: tuple[int, int], rows: int = MARKER_ROWS, cols: int = MARKER_COLS, angle_deg: float = 0.0
) -> np.ndarray:
    """(R, C, 2) evenly spaced marker centres filling ``shape`` = (H, W), rotated about the image centre."""
    h, w = shape
    spacing = min(w / (cols + 1), h / (rows + 1))
    gx = (np.arange(cols) - (cols - 1) / 2) * spacing
    gy = (np.arange(rows) - (rows - 1) / 2) * spacing
    x, y = np.meshgrid(gx, gy)
    a = math.radians(angle_deg)
    xr = math.cos(a) * x - math.sin(a) * y + (w - 1) / 2
    yr = math.sin(a) * x + math.cos(a) * y + (h - 1) / 2
    return np.stack([xr, yr], axis=-1)


@dataclass
class GelSightCliConfig:
    """``configs/gelsight/camera.yaml``: the camera ``python -m sensors.gelsight`` reads."""

    device: str = "0"
    width: int = 320
    height: int = 240
    frames: int = 0


@command("sensors.gelsight")
def main(argv: Sequence[str] | None = None) -> int:
    """Print the marker offsets of every frame (``python -m sensors.gelsight device=0 frames=100``)."""
    args = compose(GelSightCliConfig, "gelsight/camera", list(sys.argv[1:] if argv is None else argv),
                   "gelsight camera", "device=0 frames=100")
    device: int | str = int(args.device) if args.device.isdigit() else args.device
    cfg = GelSightCameraConfig(device=device, width=args.width, height=args.height)
    with GelSightCamera(cfg) as cam:
        n = 0
        while args.frames <= 0 or n < args.frames:
            field = cam.read_marker_field()
            assert cam.tracker is not None
            mag = np.hypot(field.offset[..., 0], field.offset[..., 1])
            print(
                f"t={field.stamp:.3f} valid={int(cam.tracker.valid.sum())}/{mag.size} "
                f"mean|offset|={mag.mean():.2f}px max={mag.max():.2f}px "
                f"mean offset=({field.offset[..., 0].mean():+.2f}, {field.offset[..., 1].mean():+.2f})px"
            )
            n += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
