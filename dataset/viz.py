"""A video of one recorded episode: camera views, tactile marker arrows per pad and a wrist-force plot.

``python -m dataset viz DIR [--episode K] [--out FILE.mp4] [--fps 25]`` calls ``render_episode``.

Layout of a frame (top to bottom)::

    [ camera 1 | camera 2 | ... ]         every uint8 (H, W, 3) stream, upscaled; absent without cameras
    [ pad 0 | pad 1 | ... ]               marker grid of each pad, arrows = marker offsets (``marker_offset``)
    [ |F| over the whole episode   | ]    wrist force magnitude per arm (``wrench``), cursor at the frame's time

Every stream is shown at the video's time by zero-order hold (its latest sample not after that time), the same
rule ``build`` uses, so the video shows what a policy would have seen. Arrows share one scale per episode (the
largest offset spans most of a grid cell), written in the pad panel, so pads and frames compare directly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np

from dataset.format import DatasetError, load_stream, read_meta

TACTILE_STREAM = "marker_offset"
WRENCH_STREAM = "wrench"
CAMERA_SIDE = 288  # pixels per camera view after upscaling
PAD_CELL = 22  # pixels between markers in a pad panel
PLOT_HEIGHT = 170
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
ARROW = (60, 200, 255)  # RGB
ARM_COLOURS = ((255, 120, 80), (120, 200, 255), (160, 255, 120), (255, 220, 100))


@dataclass
class EpisodeStreams:
    """What the video shows, each stream at its native rate: ``(t (n,), values (n, ...))``."""

    cameras: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (t, (n, H, W, 3) uint8)
    tactile: tuple[np.ndarray, np.ndarray] | None  # (t, (n, P, R, C, 2))
    wrench: tuple[np.ndarray, np.ndarray] | None  # (t, (n, A, 6))


def camera_streams(meta: dict) -> list[str]:
    """Streams that hold RGB images: uint8 of shape (H, W, 3)."""
    return sorted(n for n, s in meta["streams"].items() if s["dtype"] == "|u1" and len(s["shape"]) == 3
                  and s["shape"][2] == 3)


def load_episode_streams(episode: Path, meta: dict) -> EpisodeStreams:
    cameras = {n: load_stream(episode, n, meta) for n in camera_streams(meta)}
    tactile = wrench = None
    if TACTILE_STREAM in meta["streams"]:
        t, v = load_stream(episode, TACTILE_STREAM, meta)
        if v.ndim == 4:  # one pad without a pad axis
            v = v[:, None]
        if v.ndim != 5 or v.shape[-1] != 2:
            raise DatasetError(f"{episode}: {TACTILE_STREAM} has shape {v.shape[1:]}, expected (P, R, C, 2)")
        tactile = (t, v.astype(np.float32))
    if WRENCH_STREAM in meta["streams"]:
        t, v = load_stream(episode, WRENCH_STREAM, meta)
        v = v.reshape(v.shape[0], -1, 6) if v.shape[-1] == 6 else None
        if v is None:
            raise DatasetError(f"{episode}: {WRENCH_STREAM} must end in 6 values (force, torque) per arm")
        wrench = (t, v.astype(np.float32))
    if not cameras and tactile is None and wrench is None:
        raise DatasetError(
            f"{episode}: nothing to show: no camera stream (uint8 H x W x 3), no {TACTILE_STREAM!r},"
            f" no {WRENCH_STREAM!r}"
        )
    return EpisodeStreams(cameras, tactile, wrench)


def render_episode(root: Path, episode: int = 0, out: Path | None = None, fps: float = 25.0) -> dict:
    """Write the video of episode number ``episode`` (its position among committed episodes); returns a summary."""
    from dataset.format import list_episodes

    if not (fps > 0 and math.isfinite(fps)):
        raise DatasetError(f"--fps must be a positive number, got {fps}")
    episodes = list_episodes(Path(root))
    if not episodes:
        raise DatasetError(f"{root}: no committed episodes")
    if not 0 <= episode < len(episodes):
        raise DatasetError(f"--episode {episode}: {root} has episodes 0..{len(episodes) - 1}")
    path = episodes[episode]
    meta = read_meta(path)
    streams = load_episode_streams(path, meta)
    firsts = [s[0][0] for s in _all(streams) if s[0].size]
    lasts = [s[0][-1] for s in _all(streams) if s[0].size]
    t0, t1 = min(firsts), max(lasts)
    times = t0 + np.arange(int(math.floor((t1 - t0) * fps)) + 1) / fps
    out = Path(out) if out is not None else Path(root) / f"{path.name}.mp4"
    canvas = Canvas(streams, t0, t1, title=f"{meta.get('task')} | {path.name} | seed {meta.get('seed')}"
                    f" | success {meta.get('success')}")
    tmp = out.with_name(f".{out.name}.writing.mp4")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=7,
                                ffmpeg_log_level="error", pixelformat="yuv420p") as writer:
            for t in times:
                writer.append_data(canvas.draw(float(t)))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"out": str(out), "frames": int(times.size), "episode": path.name, "fps": fps,
            "seconds": float(t1 - t0), "cameras": sorted(streams.cameras), "size": list(canvas.size)}


def _all(streams: EpisodeStreams) -> list[tuple[np.ndarray, np.ndarray]]:
    return [*streams.cameras.values(), *(s for s in (streams.tactile, streams.wrench) if s is not None)]


def _held(t: np.ndarray, now: float) -> int:
    """Index of the latest sample not after ``now`` (the first sample before the stream starts)."""
    return max(int(np.searchsorted(t, now, side="right")) - 1, 0)


class Canvas:
    """Draws frames of one episode into a reused RGB buffer; static parts (grid, force curve) drawn once."""

    def __init__(self, streams: EpisodeStreams, t0: float, t1: float, title: str) -> None:
        self.streams, self.t0, self.t1 = streams, t0, t1
        n_cams = len(streams.cameras)
        pads = streams.tactile[1].shape[1] if streams.tactile is not None else 0
        rows, cols = streams.tactile[1].shape[2:4] if streams.tactile is not None else (0, 0)
        self.pad_w, self.pad_h = (cols + 1) * PAD_CELL, (rows + 1) * PAD_CELL + 18
        width = max(n_cams * CAMERA_SIDE, pads * self.pad_w, 480)
        self.cam_y, self.pad_y = 28, 28 + (CAMERA_SIDE if n_cams else 0)
        self.plot_y = self.pad_y + (self.pad_h if pads else 0)
        height = self.plot_y + (PLOT_HEIGHT if streams.wrench is not None else 0)
        height += height % 2
        width += width % 2
        self.size = (height, width)
        self.static = np.full((height, width, 3), BACKGROUND, np.uint8)
        self.frame = np.empty_like(self.static)
        cv2.putText(self.static, title, (8, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, TEXT, 1, cv2.LINE_AA)
        if streams.tactile is not None:
            peak = float(np.abs(streams.tactile[1]).max()) or 1.0
            self.arrow_scale = 0.9 * PAD_CELL / peak  # pixels per unit of offset
            self._draw_pad_frames(pads, rows, cols, peak)
        if streams.wrench is not None:
            self._draw_force_curve(width)

    def _draw_pad_frames(self, pads: int, rows: int, cols: int, peak: float) -> None:
        for p in range(pads):
            x0 = p * self.pad_w
            cv2.rectangle(self.static, (x0 + 4, self.pad_y + 4), (x0 + self.pad_w - 4, self.pad_y + self.pad_h - 4),
                          (70, 70, 70), 1)
            label = f"pad {p}" + (f"   arrow of one cell = {peak * 0.9:.2g}" if p == 0 else "")
            cv2.putText(self.static, label, (x0 + 8, self.pad_y + self.pad_h - 8), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, TEXT, 1, cv2.LINE_AA)
        grid = np.stack(np.meshgrid(np.arange(cols), np.arange(rows)), axis=-1)  # (R, C, 2) as (x, y)
        self.marker_rest = (grid + 1) * PAD_CELL  # pixel offset inside a pad panel

    def _draw_force_curve(self, width: int) -> None:
        t, w = self.streams.wrench
        force = np.linalg.norm(w[:, :, :3], axis=-1)  # (n, A) newtons
        top = float(force.max()) or 1.0
        x0, x1, y0, y1 = 48, width - 10, self.plot_y + 12, self.plot_y + PLOT_HEIGHT - 22
        self.plot_box = (x0, x1, y0, y1)
        cv2.rectangle(self.static, (x0, y0), (x1, y1), (90, 90, 90), 1)
        for frac in (0.0, 0.5, 1.0):
            y = int(y1 - frac * (y1 - y0))
            cv2.putText(self.static, f"{top * frac:.0f}", (6, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, TEXT, 1)
        cv2.putText(self.static, "|F| wrist, N", (x0 + 4, y0 + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, TEXT, 1)
        span = max(self.t1 - self.t0, 1e-9)
        xs = x0 + (t - self.t0) / span * (x1 - x0)
        for arm in range(force.shape[1]):
            ys = y1 - force[:, arm] / top * (y1 - y0)
            pts = np.stack([xs, ys], axis=1).round().astype(np.int32)
            cv2.polylines(self.static, [pts], False, ARM_COLOURS[arm % len(ARM_COLOURS)], 1, cv2.LINE_AA)
        cv2.putText(self.static, f"{self.t0:.1f} s", (x0, y1 + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.35, TEXT, 1)
        cv2.putText(self.static, f"{self.t1:.1f} s", (x1 - 40, y1 + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.35, TEXT, 1)

    def draw(self, now: float) -> np.ndarray:
        """The frame at time ``now`` (recording clock, seconds); returns the reused buffer."""
        frame = self.frame
        np.copyto(frame, self.static)
        for i, (t, images) in enumerate(self.streams.cameras.values()):
            view = cv2.resize(images[_held(t, now)], (CAMERA_SIDE, CAMERA_SIDE), interpolation=cv2.INTER_NEAREST)
            frame[self.cam_y:self.cam_y + CAMERA_SIDE, i * CAMERA_SIDE:(i + 1) * CAMERA_SIDE] = view
        if self.streams.tactile is not None:
            t, offsets = self.streams.tactile
            field = offsets[_held(t, now)]  # (P, R, C, 2)
            for p in range(field.shape[0]):
                origin = np.array([p * self.pad_w, self.pad_y])
                start = self.marker_rest + origin
                end = start + field[p] * self.arrow_scale
                for (sx, sy), (ex, ey) in zip(start.reshape(-1, 2), end.reshape(-1, 2), strict=True):
                    cv2.circle(frame, (int(sx), int(sy)), 2, (150, 150, 150), -1)
                    if abs(ex - sx) + abs(ey - sy) >= 1.0:
                        cv2.arrowedLine(frame, (int(sx), int(sy)), (int(round(ex)), int(round(ey))), ARROW, 1,
                                        cv2.LINE_AA, tipLength=0.3)
        if self.streams.wrench is not None:
            x0, x1, y0, y1 = self.plot_box
            x = int(round(x0 + (now - self.t0) / max(self.t1 - self.t0, 1e-9) * (x1 - x0)))
            cv2.line(frame, (x, y0), (x, y1), (255, 255, 255), 1)
            t, w = self.streams.wrench
            force = np.linalg.norm(w[_held(t, now), :, :3], axis=-1)
            label = "  ".join(f"arm {a}: {f:5.1f} N" for a, f in enumerate(force))
            cv2.putText(frame, label, (x0 + 110, y0 + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, TEXT, 1, cv2.LINE_AA)
        cv2.putText(frame, f"t = {now - self.t0:6.2f} s", (self.size[1] - 110, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    TEXT, 1, cv2.LINE_AA)
        return frame
