"""Marker-tracking accuracy and speed of ``sensors.gelsight`` on synthetic frames with known motion.

Renders a reference and ``frames`` frames of random smooth marker motion (translation, rotation,
dilation about a random point, plus a smooth random field; up to ~6 px) at 320 x 240 with Gaussian noise,
tracks them, and compares with the rendered ground truth. Only ``MarkerTracker.update`` is timed.
The last stdout line is the JSON object also written to ``benchmarks/results/gelsight_tracking.json``.

    python -m benchmarks.gelsight_tracking [frames=200] [noise=3] [seed=0] [threads=1] [out=FILE]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from benchmarks.report import publish
from bus.cli import UsageError, command
from bus.config import compose
from sensors.gelsight import MarkerTracker, grid_centres, render_synthetic_gel
from sensors.types import MARKER_GRID

SHAPE = (240, 320)  # (H, W)


@dataclass
class TrackingConfig:
    """``configs/benchmarks/gelsight_tracking.yaml``."""

    frames: int = 200
    noise: float = 3.0  # Gaussian noise sigma, grey levels
    seed: int = 0
    threads: int = 1  # OpenCV threads (1: comparable timings)
    out: str = "benchmarks/results/gelsight_tracking.json"

    def __post_init__(self) -> None:
        if self.frames < 1 or self.threads < 1:
            raise UsageError(f"frames={self.frames} and threads={self.threads} must be >= 1")


def smooth_signal(rng: np.random.Generator, frames: int, amplitude: float) -> np.ndarray:
    """(frames,) sum of three slow sinusoids that start at 0: a motion with no jumps, peak ~amplitude."""
    t = np.arange(1, frames + 1)
    periods = rng.uniform(40.0, 160.0, 3)
    weights = rng.uniform(0.2, 1.0, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    wave = (weights[:, None] * (np.sin(2 * np.pi * t / periods[:, None] + phases[:, None])
                                - np.sin(phases[:, None]))).sum(0)
    return amplitude * wave / weights.sum()


def motion_sequence(rng: np.random.Generator, rest: np.ndarray, frames: int) -> np.ndarray:
    """(frames, R, C, 2) ground-truth offsets in pixels."""
    centre = np.array([SHAPE[1] / 2, SHAPE[0] / 2]) + rng.uniform(-40, 40, 2)
    rel = rest - centre
    tx, ty = smooth_signal(rng, frames, 3.0), smooth_signal(rng, frames, 3.0)
    angle = smooth_signal(rng, frames, np.radians(2.0))
    dilation = smooth_signal(rng, frames, 0.02)
    # Smooth random field: low-frequency modes over the grid, each with its own time course.
    u = rel / np.array([SHAPE[1], SHAPE[0]])
    modes = [np.sin(np.pi * (a * u[..., 0] + b * u[..., 1])) for a, b in ((1, 0), (0, 1), (1, 1), (2, 1))]
    offsets = np.empty((frames, *rest.shape))
    for k in range(frames):
        c, s = np.cos(angle[k]), np.sin(angle[k])
        rotated = np.stack([c * rel[..., 0] - s * rel[..., 1], s * rel[..., 0] + c * rel[..., 1]], -1)
        offsets[k] = rotated - rel + dilation[k] * rel + [tx[k], ty[k]]
    for mode in modes:
        for axis in range(2):
            offsets[..., axis] += smooth_signal(rng, frames, 1.0)[:, None, None] * mode
    return offsets


def run(frames: int, noise: float, seed: int) -> dict[str, float | int | str]:
    rng = np.random.default_rng(seed)
    rest = grid_centres(SHAPE) + rng.uniform(-0.5, 0.5, (*MARKER_GRID, 2))
    truth = motion_sequence(rng, rest, frames)
    tracker = MarkerTracker(render_synthetic_gel(SHAPE, rest, noise=noise, rng=rng))
    errors, valid, ms = [], [], []
    for k in range(frames):
        frame = render_synthetic_gel(SHAPE, rest, truth[k], noise=noise, rng=rng)
        t0 = time.perf_counter()
        field = tracker.update(frame)
        ms.append(1e3 * (time.perf_counter() - t0))
        errors.append(np.linalg.norm(field.offset - truth[k], axis=-1))
        valid.append(tracker.valid)
    err, ok, ms_arr = np.array(errors), np.array(valid), np.array(ms)
    step = np.linalg.norm(np.diff(truth, axis=0), axis=-1)
    return {
        "frames": frames,
        "image": f"{SHAPE[1]}x{SHAPE[0]}",
        "grid": "x".join(map(str, MARKER_GRID)),
        "noise_sigma_grey": noise,
        "seed": seed,
        "max_true_offset_px": round(float(np.linalg.norm(truth, axis=-1).max()), 3),
        "max_true_step_px": round(float(step.max()), 3),
        "mean_error_px": round(float(err[ok].mean()), 4),
        "p99_error_px": round(float(np.percentile(err[ok], 99)), 4),
        "max_error_px": round(float(err[ok].max()), 4),
        "max_error_incl_invalid_px": round(float(err.max()), 4),
        "valid_fraction": round(float(ok.mean()), 4),
        "ms_per_frame_mean": round(float(ms_arr.mean()), 3),
        "ms_per_frame_p99": round(float(np.percentile(ms_arr, 99)), 3),
        "opencv_threads": cv2.getNumThreads(),
    }


@command("benchmarks.gelsight_tracking")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = compose(TrackingConfig, "benchmarks/gelsight_tracking", list(sys.argv[1:] if argv is None else argv),
                  "gelsight_tracking", "frames=50 noise=3")
    cv2.setNumThreads(cfg.threads)
    result = run(cfg.frames, cfg.noise, cfg.seed)
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    publish(result, Path(cfg.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
