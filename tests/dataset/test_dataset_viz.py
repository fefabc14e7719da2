"""``python -m dataset viz``: a video of one episode with cameras, tactile arrows and a force plot."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest

from dataset.cli import main
from dataset.recorder import EpisodeRecorder
from dataset.viz import CAMERA_SIDE


def record(root: Path, seconds: float, cameras: bool) -> None:
    rec = EpisodeRecorder(root, flush_interval_s=0.25)
    rec.begin({"task": "wipe", "seed": 0})
    for i in range(int(round(seconds * 50)) + 1):
        t = round(i / 50, 6)
        rec.append("wrench", t, np.array([[0, 0, 10 * np.sin(i / 10), 0, 0, 0]], np.float32))
        rec.append("marker_offset", t, np.full((3, 7, 9, 2), 1e-4 * np.sin(i / 7), np.float32))
        if cameras and i % 5 == 0:
            rec.append("scene_rgb", t, np.full((96, 96, 3), i % 255, np.uint8))
            rec.append("wrist_rgb", t, np.full((96, 96, 3), 255 - i % 255, np.uint8))
    rec.commit(success=True)


def frames_of(path: Path) -> np.ndarray:
    with imageio.get_reader(path) as reader:
        return np.stack([frame for frame in reader.iter_data()])


@pytest.mark.parametrize("cameras", [True, False])
def test_viz_writes_a_video_of_the_episode(tmp_path: Path, capsys, cameras: bool) -> None:
    record(tmp_path / "d", 0.5, cameras=False)
    record(tmp_path / "d", 2.0, cameras=cameras)
    out = tmp_path / "ep1.mp4"
    assert main(["viz", str(tmp_path / "d"), "episode=1", f"out={out}", "fps=20"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["out"] == str(out) and summary["episode"] == "episode_000001"
    assert summary["frames"] == 41  # 2 s at 20 fps, both ends included
    video = frames_of(out)
    assert video.shape[0] == summary["frames"] and list(video.shape[1:3]) == summary["size"]
    assert summary["cameras"] == (["scene_rgb", "wrist_rgb"] if cameras else [])
    wrist_view_centre = video[0, 28 + CAMERA_SIDE // 2, CAMERA_SIDE + CAMERA_SIDE // 2]  # wrist_rgb is 255 at t=0
    assert (wrist_view_centre.mean() > 200) == cameras
    assert video[:, -100:].std() > 0  # the force plot and cursor are drawn
    assert not (tmp_path / ".ep1.mp4.writing.mp4").exists()


def test_viz_refuses_a_missing_episode(tmp_path: Path, capsys) -> None:
    record(tmp_path / "d", 0.2, cameras=False)
    assert main(["viz", str(tmp_path / "d"), "episode=3"]) == 2
    assert "episodes 0..0" in capsys.readouterr().err
