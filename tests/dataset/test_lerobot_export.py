"""``export --format lerobot``: the LeRobotDataset v3.0 layout, read back by our schema reader (``lerobot_schema``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lerobot_schema import check_delta_timestamps, read_lerobot

from dataset.cli import main
from dataset.lerobot import TRAINING_RATE_HZ
from dataset.recorder import EpisodeRecorder

CONTROL_HZ, CAMERA_HZ = 50, 10
IMAGE_HW = (32, 48)


def brightness(i: int) -> int:
    """Camera sample i is a flat image of this grey level: a decoded frame says which sample was held."""
    return 20 + 17 * (i % 12)


def record(root: Path, seconds: float, task: str = "wipe", cameras: bool = True, pads: int = 2,
           rdp_streams: bool = False, outcome: bool = False, depth: bool = False) -> None:
    """One episode: ramps at 50 Hz (value = sample index), flat grey images at 10 Hz; ``robot_held`` a uint8
    scalar stream; with ``rdp_streams`` also ``tcp_quat`` and ``tactile_emb``; with ``outcome`` a one-sample
    ``outcome_score`` at the end (as ``teleop.collect`` wrote it); with ``depth`` a one-channel image stream."""
    rec = EpisodeRecorder(root, flush_interval_s=0.25)
    rec.begin({"task": task, "seed": 3})
    n = int(round(seconds * CONTROL_HZ)) + 1
    for i in range(n):
        t = round(i / CONTROL_HZ, 6)
        rec.append("tcp_pos", t, np.full((1, 3), i, np.float32))
        rec.append("gripper_width", t, np.full(1, 0.01 * i, np.float32))
        rec.append("wrench", t, np.full((1, 6), -i, np.float32))
        rec.append("marker_offset", t, np.full((pads, 7, 9, 2), 1e-5 * i, np.float32))
        rec.append("robot_held", t, np.uint8(i % 3 == 0))
        rec.append("action", t, np.full(7, i, np.float32))
        if rdp_streams:
            rec.append("tcp_quat", t, np.array([[0.0, 1.0, 0.0, 0.0]], np.float32))
            rec.append("tactile_emb", t, np.full((pads, 15), 0.1 * i, np.float32))
        if cameras and i % (CONTROL_HZ // CAMERA_HZ) == 0:
            rec.append("scene_rgb", t, np.full((*IMAGE_HW, 3), brightness(i // 5), np.uint8))
            if depth:
                rec.append("depth", t, np.zeros((*IMAGE_HW, 1), np.uint8))
    if outcome:
        rec.append("outcome_score", round(n / CONTROL_HZ, 6), np.float64(0.75))
    rec.commit(success=True)


def export(capsys: pytest.CaptureFixture[str], src: Path, out: Path, *extra: str) -> dict:
    code = main(["export", str(src), "format=lerobot", f"out={out}", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) != 0
    return capsys.readouterr().err


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    record(root, 1.0)
    record(root, 1.4)
    return root


@pytest.mark.parametrize("fps", [None, 10])
def test_export_follows_the_v3_schema(dataset: Path, tmp_path: Path, capsys, fps: int | None) -> None:
    out = tmp_path / f"lerobot{fps}"
    summary = export(capsys, dataset, out, *([f"fps={fps}"] if fps else []))
    fps = fps or TRAINING_RATE_HZ
    view = read_lerobot(out)  # every schema rule, see lerobot_schema
    assert view.fps == fps == summary["fps"] and view.tasks == {"wipe": 0}
    assert [e["length"] for e in view.episodes] == [int(1.0 * fps) + 1, int(1.4 * fps) + 1]
    step = CONTROL_HZ // fps  # source samples per frame
    for k, ep in enumerate(view.episodes):
        rows = view.rows(k)
        assert ep["tasks"] == ["wipe"] and ep["slowfast/source"] == f"episode_{k:06d}"
        held = np.arange(ep["length"]) * step  # source sample held at each frame
        np.testing.assert_array_equal(view.data["action"][rows][:, 0], held)
        np.testing.assert_array_equal(view.data["observation.state"][rows][:, :3], np.repeat(held[:, None], 3, 1))
        np.testing.assert_array_equal(view.data["observation.robot_held"][rows], (held % 3 == 0).astype(np.float32))
        frames = view.episode_frames("observation.images.scene_rgb", k)
        for j in range(ep["length"]):
            sample = (j * step) // (CONTROL_HZ // CAMERA_HZ)  # camera sample held at frame j
            assert abs(frames[j].mean() - brightness(sample)) < 4, (k, j)

    features = view.info["features"]
    assert features["observation.state"]["shape"] == [4]  # tcp_pos (3) + gripper_width (1)
    assert features["observation.marker_offset"]["names"] == {"shape": [2, 7, 9, 2]}
    assert features["observation.robot_held"]["shape"] == [1]
    assert features["observation.images.scene_rgb"]["shape"] == [*IMAGE_HW, 3]
    assert summary["held_streams"] == ({"scene_rgb": 10.0} if fps > CAMERA_HZ else {})


def test_one_wide_streams_are_scalar_columns(dataset: Path, tmp_path: Path, capsys) -> None:
    """LeRobot reads a shape-[1] feature as ``datasets.Value``: a list column of one value fails to load."""
    export(capsys, dataset, tmp_path / "out", "state=[tcp_pos]")
    schema = pq.read_schema(tmp_path / "out" / "data" / "chunk-000" / "file-000.parquet")
    for name in ("observation.gripper_width", "observation.robot_held", "timestamp", "index"):
        assert pa.types.is_primitive(schema.field(name).type), (name, schema.field(name).type)
    assert schema.field("observation.state").type == pa.list_(pa.float32(), 3)
    view = read_lerobot(tmp_path / "out")
    assert view.data["observation.gripper_width"].shape == (view.info["total_frames"],)
    np.testing.assert_allclose(view.data["observation.gripper_width"][view.rows(1)],
                               0.01 * np.arange(view.episodes[1]["length"]) * 2, rtol=1e-6)


def test_episode_and_dataset_stats(dataset: Path, tmp_path: Path, capsys) -> None:
    export(capsys, dataset, tmp_path / "out")
    view = read_lerobot(tmp_path / "out")
    quantiles = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
    for k, stats in enumerate(view.episode_stats):
        for name, values in view.data.items():
            v = values[view.rows(k)].reshape(view.episodes[k]["length"], -1).astype(np.float64)
            for stat, expected in {"min": v.min(0), "max": v.max(0), "mean": v.mean(0), "std": v.std(0),
                                   **{q: np.quantile(v, p, axis=0) for q, p in quantiles.items()}}.items():
                np.testing.assert_allclose(stats[name][stat], expected, rtol=1e-6, atol=1e-9, err_msg=f"{name}/{stat}")
        frames = view.episode_frames("observation.images.scene_rgb", k) / 255.0
        np.testing.assert_allclose(stats["observation.images.scene_rgb"]["mean"][:, 0, 0], frames.mean((0, 1, 2)),
                                   atol=2 / 255)
    for name, values in view.data.items():  # pooled mean and std are exact; quantiles are count-weighted means
        v = values.reshape(len(values), -1).astype(np.float64)
        counts = np.array([s[name]["count"][0] for s in view.episode_stats], np.float64)
        np.testing.assert_allclose(view.stats[name]["mean"], v.mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(view.stats[name]["std"], v.std(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(view.stats[name]["min"], v.min(0))
        assert view.stats[name]["count"][0] == len(v)
        pooled = sum(c * s[name]["q50"] for c, s in zip(counts, view.episode_stats, strict=True)) / counts.sum()
        np.testing.assert_allclose(view.stats[name]["q50"], pooled, rtol=1e-9)


def test_default_fps_is_the_training_rate_so_training_deltas_pass(dataset: Path, tmp_path: Path, capsys) -> None:
    import dataclasses

    import yaml

    from rdp.train import TrainConfig

    train_yaml = yaml.safe_load((Path(__file__).parents[2] / "configs" / "train.yaml").read_text())
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}["rate_hz"]
    assert TRAINING_RATE_HZ == default == train_yaml["rate_hz"]
    summary = export(capsys, dataset, tmp_path / "out")
    assert summary["fps"] == TRAINING_RATE_HZ
    horizon, obs_steps = train_yaml["horizon"], train_yaml["obs_steps"]
    deltas = {"action": [k / TRAINING_RATE_HZ for k in range(horizon)],
              "observation.state": [-k / TRAINING_RATE_HZ for k in reversed(range(obs_steps))]}
    assert check_delta_timestamps(deltas, summary["fps"])["action"] == list(range(horizon))
    with pytest.raises(ValueError, match="not multiples"):  # what a measured 101 Hz rate made of the same deltas
        check_delta_timestamps(deltas, 101)


def test_streams_option_and_one_sample_streams(tmp_path: Path, capsys) -> None:
    root = tmp_path / "demo"
    record(root, 0.6, outcome=True, depth=True)
    summary = export(capsys, root, tmp_path / "all")
    assert set(summary["skipped_streams"]) == {"outcome_score", "depth"}
    assert "observation.outcome_score" not in summary["features"] and "observation.depth" not in summary["features"]
    summary = export(capsys, root, tmp_path / "some", "streams=[wrench,scene_rgb]")
    assert set(summary["features"]) == {"observation.state", "action", "observation.wrench",
                                        "observation.images.scene_rgb", "timestamp", "frame_index",
                                        "episode_index", "index", "task_index"}
    read_lerobot(tmp_path / "some")
    base = ["export", str(root), "format=lerobot"]
    assert "1 sample(s)" in refused(capsys, *base, "out=" + str(tmp_path / "o1"), "streams=[outcome_score]")
    assert "only RGB" in refused(capsys, *base, "out=" + str(tmp_path / "o4"), "streams=[depth]")
    assert "not recorded" in refused(capsys, *base, "out=" + str(tmp_path / "o2"), "streams=[joystick]")
    assert "not recorded" in refused(capsys, *base, "out=" + str(tmp_path / "o3"), "state=[tcp_quat]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all", "demo", "some"]


def test_export_without_cameras_has_no_videos(tmp_path: Path, capsys) -> None:
    record(tmp_path / "d", 0.5, cameras=False)
    summary = export(capsys, tmp_path / "d", tmp_path / "out")
    info = read_lerobot(tmp_path / "out").info
    assert info["video_path"] is None and not (tmp_path / "out" / "videos").exists()
    assert summary["total_frames"] == 13 and "observation.images.scene_rgb" not in info["features"]


def test_export_refusals_leave_nothing_behind(dataset: Path, tmp_path: Path, capsys) -> None:
    base = ["export", str(dataset), "format=lerobot"]
    (tmp_path / "taken").mkdir()
    assert "already exists" in refused(capsys, *base, "out=" + str(tmp_path / "taken"))
    assert "not recorded" in refused(capsys, *base, "out=" + str(tmp_path / "o1"), "action=joystick")
    assert "positive integer" in refused(capsys, *base, "out=" + str(tmp_path / "o2"), "fps=0")
    record(dataset, 0.5, pads=3)  # a third episode with another tactile shape
    assert "first episode's" in refused(capsys, *base, "out=" + str(tmp_path / "o3"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "taken"]  # no partial exports
