"""sensors.camera_node: a video file published as the robot node's image messages; end of file, loop, bad sources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bus.cli import UsageError
from bus.process import Child
from bus.transport import Subscriber
from sensors.camera_node import CameraNode, CameraNodeConfig, SourceFailed, square_rgb
from sim.node import load_config

ROOT = Path(__file__).resolve().parents[2]
W, H = 64, 48
BGR_CENTRE = (40, 200, 30)  # the centre square of every frame (BGR); RGB (30, 200, 40)
BGR_SIDES = (255, 0, 255)  # the side bands a centre crop removes


def _frame() -> np.ndarray:
    """(H, W, 3) BGR: magenta side bands around a green centre square (what the node must keep)."""
    frame = np.empty((H, W, 3), np.uint8)
    frame[:] = BGR_SIDES
    left = (W - H) // 2
    frame[:, left:left + H] = BGR_CENTRE
    return frame


def _video(path: Path, frames: int, fps: float = 20.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi here"
    for _ in range(frames):
        writer.write(_frame())
    writer.release()
    return path


def _node(tmp_path: Path, source: Path | str, *extra: str) -> Child:
    args = [f"source={source}", "camera=wrist", "size=96", "rate_hz=40", "pub=tcp://127.0.0.1:*", *extra]
    return Child("camera", "sensors.camera_node", args, tmp_path / "camera.log",
                 env={"PYTHONPATH": str(ROOT)})


def _receive(address: str, want: int, timeout: float) -> list:
    got = []
    with Subscriber(address, topics=("image",), hwm=1000) as sub:
        while len(got) < want and (msg := sub.recv(timeout=timeout)) is not None:
            got.append(msg)
    return got


def test_centre_crop_resize_and_rgb() -> None:
    image = square_rgb(_frame(), 96)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    assert (image == BGR_CENTRE[::-1]).all()  # no side band survives, channels in RGB order


def test_file_is_published_like_the_sim_cameras_and_ends_cleanly(tmp_path: Path) -> None:
    video = _video(tmp_path / "clip.avi", frames=20)  # 1 s at 20 fps
    child = _node(tmp_path, video)
    try:
        ready = child.wait_ready(30.0)
        assert ready["pub"].startswith("tcp://127.0.0.1:") and ready["key"] == "wrist_rgb"
        got = _receive(ready["pub"], want=8, timeout=5.0)
        exit_record = child.wait_event("exit", 10.0)
    finally:
        code = child.stop(timeout=10.0, grace=5.0)
    assert code == 0, child.tail()
    assert exit_record["reason"] == "end_of_file" and exit_record["published"] >= len(got)
    assert len(got) >= 8
    sim_size = load_config([]).image_size  # what the robot node publishes: {scene_rgb, wrist_rgb} (S, S, 3) u1
    for msg in got:
        assert set(msg.arrays) == {"wrist_rgb"}
        image = msg.arrays["wrist_rgb"]
        assert image.shape == (sim_size, sim_size, 3) and image.dtype == np.uint8
        assert np.abs(image.astype(int) - BGR_CENTRE[::-1]).max() <= 12  # MJPG is lossy; magenta would be far
        assert msg.meta["camera"] == "wrist" and isinstance(msg.meta["sim_time"], float)
    stamps = [m.stamp for m in got]
    frames = [m.meta["frame"] for m in got]
    assert stamps == sorted(stamps) and frames == sorted(set(frames)) and max(frames) < 20


def test_loop_rewinds_the_file_until_stopped(tmp_path: Path) -> None:
    video = _video(tmp_path / "short.avi", frames=5)  # 0.25 s at 20 fps
    child = _node(tmp_path, video, "loop=true")
    try:
        got = _receive(child.wait_ready(30.0)["pub"], want=12, timeout=5.0)
        assert child.alive()
    finally:
        code = child.stop(timeout=10.0)
    assert code == 0 and len(got) == 12
    assert child.last is not None and child.last["reason"] == "stopped" and child.last["rewinds"] >= 1


@pytest.mark.parametrize("source", ["missing.avi", "not_a_video.avi"])
def test_a_source_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path, source: str) -> None:
    (tmp_path / "not_a_video.avi").write_text("no frames here\n")
    proc = subprocess.run([sys.executable, "-m", "sensors.camera_node", f"source={tmp_path / source}"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"source={tmp_path / source}" in lines[0], proc.stderr


class _DyingCamera:
    """A device that delivers two frames, then nothing (``read()`` fails), as an unplugged USB camera does."""

    def __init__(self) -> None:
        self.reads = 0
        self.released = False

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.reads += 1
        return (True, _frame()) if self.reads <= 2 else (False, None)

    def set(self, prop: int, value: float) -> bool:
        return False

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_WIDTH: W, cv2.CAP_PROP_FRAME_HEIGHT: H}.get(prop, 0.0)

    def release(self) -> None:
        self.released = True


def test_a_camera_that_stops_is_retried_then_fails(caplog: pytest.LogCaptureFixture) -> None:
    cfg = CameraNodeConfig(source="0", rate_hz=50.0, read_retries=3, retry_wait_s=0.01)
    camera = _DyingCamera()
    node = CameraNode(cfg, capture=camera)
    node.ready_record()
    try:
        with pytest.raises(SourceFailed, match="source=0: the camera stopped delivering frames"):
            node.run()
    finally:
        node.close()
    summary = node.summary(None)
    assert camera.reads == 2 + 1 + 3 and camera.released
    assert summary["reason"] == "source_failed" and summary["read_failures"] == 4
    assert sum("retry" in r.getMessage() for r in caplog.records) == 3


def test_bad_config_values_name_the_key() -> None:
    with pytest.raises(ValueError, match="camera=left"):
        CameraNodeConfig(camera="left")
    with pytest.raises(UsageError, match="no such file"):
        CameraNode(CameraNodeConfig(source="/no/such/clip.avi"))
