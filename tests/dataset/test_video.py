"""Scene video files (dataset.video): what rdp.run writes and grounding.run reads, whole or not at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataset.video import VideoError, is_scene_video, read_scene_video, write_scene_video


def test_round_trip_and_grounding_reads_it(tmp_path: Path) -> None:
    from grounding.ground import load_video

    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(4)]
    path = write_scene_video(tmp_path / "episode0.npz", frames, [0.1, 0.2, 0.3, 0.4], duration=0.5, task="peel",
                             seed=3)
    f, t, meta = read_scene_video(path)
    assert f.shape == (4, 8, 8, 3) and t.tolist() == [0.1, 0.2, 0.3, 0.4]
    assert meta["duration"] == 0.5 and meta["task"] == "peel" and meta["seed"] == 3 and is_scene_video(path)
    assert not list(tmp_path.glob(".*tmp*"))
    video = load_video(path)
    assert video.source == "scene video" and video.times[0] == 0.0 and video.duration == pytest.approx(0.4)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="expected"):
        write_scene_video(tmp_path / "v.npz", [np.zeros((8, 8), np.uint8)], [0.0])
    (tmp_path / "junk.npz").write_bytes(b"junk")
    assert not is_scene_video(tmp_path / "junk.npz")
    with pytest.raises(VideoError, match="not a readable scene video"):
        read_scene_video(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", frames=np.zeros((2, 8, 8, 3), np.uint8), times=np.zeros(2),
             meta=np.array('{"format": "else"}'))
    assert not is_scene_video(tmp_path / "other.npz")
    with pytest.raises(VideoError, match="not a scene video"):
        read_scene_video(tmp_path / "other.npz")
    write_scene_video(tmp_path / "still.npz", [np.zeros((8, 8, 3), np.uint8)] * 2, [0.0, 0.0])
    with pytest.raises(VideoError, match="rising"):
        read_scene_video(tmp_path / "still.npz")
