"""``export --format lerobot``: the LeRobotDataset v3.0 layout, read back with pyarrow and imageio only."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pyarrow.parquet as pq
import pytest

from teleop.dataset import main
from teleop.recorder import EpisodeRecorder

CONTROL_HZ, CAMERA_HZ = 50, 10
IMAGE_HW = (32, 48)


def brightness(i: int) -> int:
    """Camera sample i is a flat image of this grey level: a decoded frame says which sample was held."""
    return 20 + 17 * (i % 12)


def record(root: Path, seconds: float, task: str = "wipe", cameras: bool = True, pads: int = 2) -> None:
    """One episode: ramps at 50 Hz (value = sample index), flat grey images at 10 Hz."""
    rec = EpisodeRecorder(root, flush_interval_s=0.25)
    rec.begin({"task": task, "seed": 3})
    n = int(round(seconds * CONTROL_HZ)) + 1
    for i in range(n):
        t = round(i / CONTROL_HZ, 6)
        rec.append("tcp_pos", t, np.full((1, 3), i, np.float32))
        rec.append("gripper_width", t, np.full(1, 0.01 * i, np.float32))
        rec.append("wrench", t, np.full((1, 6), -i, np.float32))
        rec.append("marker_offset", t, np.full((pads, 7, 9, 2), 1e-5 * i, np.float32))
        rec.append("action", t, np.full(7, i, np.float32))
        if cameras and i % (CONTROL_HZ // CAMERA_HZ) == 0:
            rec.append("scene_rgb", t, np.full((*IMAGE_HW, 3), brightness(i // 5), np.uint8))
    rec.commit(success=True)


def export(capsys: pytest.CaptureFixture[str], src: Path, out: Path, *extra: str) -> dict:
    code = main(["export", str(src), "--format", "lerobot", "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    record(root, 1.0)
    record(root, 1.4)
    return root


def read_video(path: Path) -> np.ndarray:
    with imageio.get_reader(path) as reader:
        return np.stack([frame for frame in reader.iter_data()])


@pytest.mark.parametrize("fps", [None, 10])
def test_export_is_self_consistent(dataset: Path, tmp_path: Path, capsys, fps: int | None) -> None:
    out = tmp_path / f"lerobot{fps}"
    summary = export(capsys, dataset, out, *(["--fps", str(fps)] if fps else []))
    fps = fps or CONTROL_HZ
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == fps == summary["fps"]
    assert (info["total_episodes"], info["total_tasks"]) == (2, 1)

    data = pq.read_table(out / info["data_path"].format(chunk_index=0, file_index=0)).to_pydict()
    episodes = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    tasks = pq.read_table(out / "meta" / "tasks.parquet")
    n = info["total_frames"]
    assert len(data["index"]) == n == sum(e["length"] for e in episodes) == summary["total_frames"]
    assert data["index"] == list(range(n))
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    assert tasks.to_pylist() == [{"task_index": 0, "task": "wipe"}]

    expected_lengths = [int(1.0 * fps) + 1, int(1.4 * fps) + 1]
    assert [e["length"] for e in episodes] == expected_lengths
    for k, ep in enumerate(episodes):
        rows = slice(ep["dataset_from_index"], ep["dataset_to_index"])
        assert ep["episode_index"] == k and ep["tasks"] == ["wipe"] and ep["slowfast/source"] == f"episode_{k:06d}"
        assert set(data["episode_index"][rows]) == {k} and data["frame_index"][rows] == list(range(ep["length"]))
        np.testing.assert_allclose(data["timestamp"][rows], np.arange(ep["length"]) / fps, atol=1e-6)
        held = np.arange(ep["length"]) * (CONTROL_HZ // fps)  # source sample held at each frame
        np.testing.assert_array_equal(np.asarray(data["action"][rows])[:, 0], held)
        state = np.asarray(data["observation.state"][rows])
        np.testing.assert_array_equal(state[:, :3], np.repeat(held[:, None], 3, axis=1))
        if k:
            assert ep["dataset_from_index"] == episodes[k - 1]["dataset_to_index"]

    for name, feature in info["features"].items():
        if feature["dtype"] == "video":
            continue
        column = np.asarray(data[name])
        assert column.shape[1:] == (tuple(feature["shape"]) if feature["shape"] != [1] else ()), name
    assert info["features"]["observation.state"]["shape"] == [4]  # tcp_pos (3) + gripper_width (1)
    assert info["features"]["observation.marker_offset"]["names"] == {"shape": [2, 7, 9, 2]}

    key = "observation.images.scene_rgb"
    feature = info["features"][key]
    assert feature["dtype"] == "video" and feature["shape"] == [*IMAGE_HW, 3] and feature["info"]["video.fps"] == fps
    frames = read_video(out / info["video_path"].format(video_key=key, chunk_index=0, file_index=0))
    assert frames.shape == (n, *IMAGE_HW, 3)
    for ep in episodes:
        first = round(ep[f"videos/{key}/from_timestamp"] * fps)
        last = round(ep[f"videos/{key}/to_timestamp"] * fps)
        assert (first, last) == (ep["dataset_from_index"], ep["dataset_to_index"])
        for j in range(ep["length"]):
            sample = (j * (CONTROL_HZ // fps)) // (CONTROL_HZ // CAMERA_HZ)  # camera sample held at frame j
            assert abs(frames[first + j].mean() - brightness(sample)) < 4, (ep["episode_index"], j)

    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert set(stats) == set(info["features"])
    assert all(s["count"] == [n] for k, s in stats.items() if k != key)
    assert np.asarray(stats[key]["mean"]).shape == (3, 1, 1)
    assert summary["held_streams"] == ({"scene_rgb": 10.0} if fps > CAMERA_HZ else {})


def test_export_without_cameras_has_no_videos(tmp_path: Path, capsys) -> None:
    record(tmp_path / "d", 0.5, cameras=False)
    summary = export(capsys, tmp_path / "d", tmp_path / "out")
    info = json.loads((tmp_path / "out" / "meta" / "info.json").read_text())
    assert info["video_path"] is None and not (tmp_path / "out" / "videos").exists()
    assert summary["total_frames"] == 26 and "observation.images.scene_rgb" not in info["features"]


def test_export_refusals_leave_nothing_behind(dataset: Path, tmp_path: Path, capsys) -> None:
    def refused(*argv: str) -> str:
        assert main(["export", *argv]) == 1
        return capsys.readouterr().err

    (tmp_path / "taken").mkdir()
    assert "already exists" in refused(str(dataset), "--format", "lerobot", "--out", str(tmp_path / "taken"))
    assert "not recorded" in refused(str(dataset), "--format", "lerobot", "--out", str(tmp_path / "o1"),
                                     "--action", "joystick")
    assert "positive integer" in refused(str(dataset), "--format", "lerobot", "--out", str(tmp_path / "o2"),
                                         "--fps", "0")
    record(dataset, 0.5, pads=3)  # a third episode with another tactile shape
    assert "first episode's" in refused(str(dataset), "--format", "lerobot", "--out", str(tmp_path / "o3"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "taken"]  # no partial exports
