"""A real camera on the bus: frames from OpenCV published as the robot node publishes its rendered ones.

    python -m sensors.camera_node source=0 camera=wrist                  # the first video device
    python -m sensors.camera_node source=clip.mp4 camera=scene loop=true 'pub=tcp://127.0.0.1:*'

Why: the policies read ``image`` messages (``scene_rgb`` / ``wrist_rgb``, (S, S, 3) uint8 RGB); this node
publishes the same array, in the same layout, from a real camera, so a real camera can stand in for the
simulator's render. One node per camera, on its own address: the robot node sends both cameras in one message
on its publisher, so a consumer of real cameras subscribes to each camera node (the runtime's nodes do not read
images yet).

Published (``bus.transport.Publisher``, binds ``pub``; loopback only unless ``allow_remote``)::

    image     <camera>_rgb (S, S, 3) u1 RGB, S = ``size``: the source frame centre-cropped to a square, resized
              (area filter) and turned from OpenCV's BGR to RGB -- the sim's layout. Header stamp: the
              ``time.monotonic`` at which ``read()`` returned the frame. Meta ``sim_time`` (seconds since the
              node opened the source, on that clock), ``camera`` (wrist | scene), ``frame`` (the frame's index
              in the source, counted from 0 since the node started)                          rate_hz

Latest frame only: a reader thread takes frames as the source delivers them (a device at its own rate, a video
file paced at its own fps) and keeps the newest; each tick publishes it if it is new, so a slow reader drops
frames instead of queueing stale ones. A file ends the node cleanly at its end (``loop=false``) or rewinds. A
device whose ``read()`` fails is retried ``read_retries`` times; then, or when no frame arrives for ``stall_s``,
the node ends with exit code 1 and one line naming the source. A source that cannot be opened: one line, exit 2.

Config: ``configs/camera_node/default.yaml`` -> :class:`CameraNodeConfig`. Stdout: the JSON ready record (with
the bound address) first, the exit record with the counters last (:func:`bus.node.serve`).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from bus.cli import CommandError, UsageError, command
from bus.clock import RateKeeper
from bus.config import compose
from bus.node import log_to_stderr, node_args, serve
from bus.transport import Publisher

log = logging.getLogger("sensors.camera_node")

CAMERAS = ("wrist", "scene")  # image keys <camera>_rgb, as the robot node names them
IMAGE_TOPIC = "image"


@dataclass
class CameraNodeConfig:
    """The camera node's settings; ``configs/camera_node/default.yaml`` says what each key means."""

    source: str = "0"
    camera: str = "wrist"
    size: int = 96
    rate_hz: float = 10.0
    loop: bool = False
    read_retries: int = 5
    retry_wait_s: float = 0.2
    stall_s: float = 5.0
    pub: str = "tcp://127.0.0.1:*"
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if self.camera not in CAMERAS:
            raise ValueError(f"camera={self.camera}: expected one of {', '.join(CAMERAS)}")
        if not self.source:
            raise ValueError("source=: expected a device index (0, 1, ...) or a video file path")
        if self.size < 8:
            raise ValueError(f"size={self.size}: expected an image side of at least 8 pixels")
        for key in ("rate_hz", "stall_s"):
            if not (getattr(self, key) > 0 and math.isfinite(getattr(self, key))):
                raise ValueError(f"{key}={getattr(self, key)}: expected a positive number")
        if self.read_retries < 0 or self.retry_wait_s < 0:
            raise ValueError(f"read_retries={self.read_retries}, retry_wait_s={self.retry_wait_s}: expected >= 0")

    @property
    def image_key(self) -> str:
        return f"{self.camera}_rgb"

    @property
    def device(self) -> int | None:
        """The device index when ``source`` is an integer, else None (a file path)."""
        return int(self.source) if self.source.strip().lstrip("-").isdigit() else None


class Capture(Protocol):
    """What the node uses of ``cv2.VideoCapture`` (a test passes a stand-in for a camera that fails)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def set(self, prop: int, value: float) -> bool: ...

    def get(self, prop: int) -> float: ...

    def release(self) -> None: ...


class SourceFailed(CommandError):
    """The source stopped delivering frames (exit 1)."""


def square_rgb(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) BGR uint8 -> (size, size, 3) RGB uint8: the centred square crop resized, as the policies see it."""
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = frame[top:top + side, left:left + side]
    interp = cv2.INTER_AREA if side >= size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.cvtColor(cv2.resize(crop, (size, size), interpolation=interp), cv2.COLOR_BGR2RGB))


def open_source(cfg: CameraNodeConfig) -> cv2.VideoCapture:
    """The opened capture, or a one-line :class:`UsageError` naming ``source`` and what it should be."""
    device = cfg.device
    if device is None and not Path(cfg.source).is_file():
        raise UsageError(f"source={cfg.source}: no such file; expected a device index (0, 1, ...) or a video file")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # quiet: FFmpeg's own lines would precede ours
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our one line says it, not OpenCV's warnings
    try:
        cap = cv2.VideoCapture(device if device is not None else cfg.source)
        opened = cap.isOpened()
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not opened:
        cap.release()
        what = f"no video device {device}" if device is not None else "not a video file OpenCV can read"
        raise UsageError(f"source={cfg.source}: cannot open it ({what}); expected a device index (0, 1, ...) "
                         "or a readable video file")
    return cap


class FrameReader:
    """Reads the source in a thread of its own and keeps only the newest frame.

    A device's ``read()`` blocks until its next frame, so reading on the publishing loop would either stall it or
    (reading less often than the device delivers) hand out frames from the driver's queue, old ones first. A file
    is paced at its own fps (``file_fps``), so it plays as a camera would; a failed ``read()`` on a file is its end.
    """

    def __init__(self, capture: Capture, *, is_file: bool, loop: bool, retries: int, retry_wait_s: float,
                 file_fps: float, source: str) -> None:
        self._cap = capture
        self._is_file, self._loop = is_file, loop
        self._retries, self._retry_wait_s = retries, retry_wait_s
        self._period = 1.0 / file_fps
        self._source = source
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._latest: tuple[np.ndarray, float, int] | None = None
        self.frames_read = 0
        self.read_failures = 0
        self.rewinds = 0
        self.ended = False  # a file reached its end (loop=false)
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="camera-read", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take(self) -> tuple[np.ndarray, float, int] | None:
        """(BGR frame, monotonic stamp, frame index) of the newest frame not taken yet; None if there is none."""
        with self._lock:
            latest, self._latest = self._latest, None
        return latest

    def done(self) -> bool:
        """No frame will come any more (end of file or an error); a last one may still wait in ``take``."""
        return self.ended or self.error is not None

    def close(self, timeout: float = 2.0) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout)  # a device stuck in read() is left to the daemon thread

    def _run(self) -> None:
        next_due = time.monotonic()
        while not self._closing.is_set():
            if self._is_file:
                self._closing.wait(max(0.0, next_due - time.monotonic()))
                next_due = max(next_due + self._period, time.monotonic() - self._period)
            frame = self._read()
            if frame is None:
                return
            stamp = time.monotonic()
            with self._lock:
                self._latest = (frame, stamp, self.frames_read)
            self.frames_read += 1

    def _read(self) -> np.ndarray | None:
        """The next frame; None when there is none to come (``ended`` or ``error`` set, or closing)."""
        ok, frame = self._cap.read()
        if ok and frame is not None:
            return frame
        if self._is_file:
            return self._rewind() if self._loop else self._end()
        for attempt in range(1, self._retries + 1):
            self.read_failures += 1
            log.warning("source=%s: read() gave no frame; retry %d of %d in %.2f s", self._source, attempt,
                        self._retries, self._retry_wait_s)
            if self._closing.wait(self._retry_wait_s):
                return None
            ok, frame = self._cap.read()
            if ok and frame is not None:
                return frame
        self.read_failures += 1
        self.error = f"source={self._source}: the camera stopped delivering frames ({self._retries} retries failed)"
        return None

    def _rewind(self) -> np.ndarray | None:
        self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self.rewinds += 1
        ok, frame = self._cap.read()
        if ok and frame is not None:
            return frame
        self.error = f"source={self._source}: no frame after rewinding the file (empty or unreadable video)"
        return None

    def _end(self) -> None:
        self.ended = True
        return None


class CameraNode:
    """Publishes the newest frame of ``cfg.source`` as an ``image`` message at ``cfg.rate_hz``."""

    def __init__(self, cfg: CameraNodeConfig, capture: Capture | None = None) -> None:
        self.cfg = cfg
        self._cap = capture if capture is not None else open_source(cfg)
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.source_fps = fps if math.isfinite(fps) and 0 < fps < 1000 else cfg.rate_hz
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.reader = FrameReader(self._cap, is_file=cfg.device is None, loop=cfg.loop, retries=cfg.read_retries,
                                  retry_wait_s=cfg.retry_wait_s, file_fps=self.source_fps, source=cfg.source)
        try:
            self.pub = Publisher(cfg.pub, allow_remote=cfg.allow_remote, copy=True)
        except BaseException:
            self._cap.release()
            raise
        self.published = 0
        self.reason = "stopped"
        self._stop = False
        self._t0 = time.monotonic()

    def ready_record(self) -> dict[str, Any]:
        self.reader.start()
        return {"event": "ready", "pid": os.getpid(), "pub": self.pub.address, "source": self.cfg.source,
                "camera": self.cfg.camera, "key": self.cfg.image_key, "size": self.cfg.size,
                "rate_hz": self.cfg.rate_hz, "source_fps": self.source_fps, "source_width": self.width,
                "source_height": self.height}

    def stop(self, *_: object) -> None:
        """Signal-handler safe: the loop ends at its next tick."""
        self._stop = True

    def run(self) -> str:
        """Publish at ``rate_hz`` until stopped, the file ends, or the source fails (:class:`SourceFailed`)."""
        rate = RateKeeper(self.cfg.rate_hz)
        last_frame_at = time.monotonic()
        while not self._stop:
            rate.sleep()
            done = self.reader.done()  # read before take: a last frame set before the end is not lost
            latest = self.reader.take()
            if latest is not None:
                self._publish(*latest)
                last_frame_at = time.monotonic()
            elif self.reader.error is not None:
                raise SourceFailed(self.reader.error)
            elif done:
                self.reason = "end_of_file"
                break
            elif time.monotonic() - last_frame_at > self.cfg.stall_s:
                raise SourceFailed(f"source={self.cfg.source}: no frame for {self.cfg.stall_s:g} s (stall_s); "
                                   "is the camera still connected?")
        return self.reason

    def _publish(self, frame: np.ndarray, stamp: float, index: int) -> None:
        image = square_rgb(frame, self.cfg.size)
        meta = {"sim_time": stamp - self._t0, "camera": self.cfg.camera, "frame": index}
        self.pub.publish(IMAGE_TOPIC, {self.cfg.image_key: image}, meta, stamp=stamp)
        self.published += 1

    def close(self) -> None:
        self.reader.close()
        self._cap.release()
        self.pub.close()

    def summary(self, result: object) -> dict[str, Any]:
        if result is None and self.reader.error is not None:
            self.reason = "source_failed"
        read = self.reader.frames_read
        return {"event": "exit", "reason": self.reason, "published": self.published, "frames_read": read,
                "frames_dropped": max(0, read - self.published), "read_failures": self.reader.read_failures,
                "rewinds": self.reader.rewinds}


@command("sensors.camera_node")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = compose(CameraNodeConfig, "camera_node/default", node_args(argv), "camera node",
                  "source=0 camera=wrist size=96")
    node = CameraNode(cfg)  # before logging: a source that cannot be opened is the only line printed
    log_to_stderr()

    def _summary(result: object) -> dict[str, Any]:
        summary = node.summary(result)
        log.info("camera node stopped: %s", summary)
        return summary

    return serve(node, node.ready_record, _summary)


if __name__ == "__main__":
    sys.exit(main())
