"""``import --format lerobot``: LeRobot v3.0 datasets (ours and foreign-shaped ones) into the recording format."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_lerobot_export import export, record, refused

from dataset.cli import main
from dataset.format import build_training_set, list_episodes, load_stream, load_training_episode, read_meta
from dataset.lerobot import TRAINING_RATE_HZ
from dataset.lerobot_import import RDP_TRAINING_STREAMS


def import_(capsys: pytest.CaptureFixture[str], src: Path, out: Path, *extra: str) -> dict:
    code = main(["import", "format=lerobot", str(src), str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


@pytest.fixture
def exported(tmp_path: Path, capsys) -> tuple[Path, Path]:
    """(recording, its LeRobot export at the training rate) with every stream rdp.train reads."""
    root = tmp_path / "demo"
    record(root, 1.0, rdp_streams=True)
    record(root, 1.4, rdp_streams=True)
    export(capsys, root, tmp_path / "lerobot")
    return root, tmp_path / "lerobot"


def built(root: Path, out: Path, streams: list[str] | None = None) -> tuple[dict, list[dict]]:
    summary = build_training_set(root, float(TRAINING_RATE_HZ), out, streams)
    return summary, [load_training_episode(out / e["file"]) for e in summary["episodes"]]


def test_export_then_import_gives_the_same_streams(exported: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    root, lerobot = exported
    summary = import_(capsys, lerobot, tmp_path / "back")
    assert summary["episodes"] == 2 and summary["fps"] == TRAINING_RATE_HZ and not summary["notes"]
    original, original_eps = built(root, tmp_path / "b0")
    again, again_eps = built(tmp_path / "back", tmp_path / "b1")
    assert again["streams"] == original["streams"]  # names, dtypes (uint8 robot_held too) and shapes
    for x, y in zip(original_eps, again_eps, strict=True):
        for name, spec in original["streams"].items():
            if spec["dtype"] == "|u1" and len(spec["shape"]) == 3:  # camera: H.264 is lossy
                assert np.abs(x[name].astype(float) - y[name]).mean() < 2, name
            else:
                np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    for source, copy in zip(list_episodes(root), list_episodes(tmp_path / "back"), strict=True):
        a, b = read_meta(source), read_meta(copy)
        assert (b["task"], b["seed"], b["success"]) == (a["task"], a["seed"], a["success"])
        assert b["user"]["lerobot"]["exported_from"] == source.name
        t, _ = load_stream(copy, "action")
        np.testing.assert_allclose(t, np.arange(len(t)) / TRAINING_RATE_HZ)


def test_rdp_trains_on_an_import(exported: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from rdp.data import REQUIRED_STREAMS, load_episodes, make_windows

    assert RDP_TRAINING_STREAMS == REQUIRED_STREAMS
    import_(capsys, exported[1], tmp_path / "back")
    episodes = load_episodes(tmp_path / "back", float(TRAINING_RATE_HZ))
    assert (episodes.num_arms, episodes.num_pads) == (1, 2)
    assert len(make_windows(episodes, obs_steps=2, horizon=8)) == episodes.lengths.sum()


def test_import_by_feature_names_without_our_stream_map(exported: tuple[Path, Path], tmp_path: Path,
                                                        capsys) -> None:
    """A LeRobot tool that rewrites a dataset drops meta/slowfast_streams.json: names still say which stream."""
    copy = tmp_path / "copy"
    shutil.copytree(exported[1], copy)
    (copy / "meta" / "slowfast_streams.json").unlink()
    summary = import_(capsys, copy, tmp_path / "back")
    shapes = {n: tuple(s["shape"]) for n, s in summary["streams"].items()}
    assert shapes == {"tcp_pos": (1, 3), "tcp_quat": (1, 4), "gripper_width": (1,), "action": (7,),
                      "marker_offset": (2, 7, 9, 2), "robot_held": (), "tactile_emb": (2, 15), "wrench": (1, 6),
                      "scene_rgb": (32, 48, 3)}
    ep = list_episodes(tmp_path / "back")[1]
    np.testing.assert_array_equal(load_stream(ep, "tcp_pos")[1][:, 0, 0], np.arange(36) * 2)
    assert load_stream(ep, "robot_held")[1].dtype == np.float32  # the stored dtype: the recorded one is in the map


def foreign_dataset(root: Path, *, fps: int = 30, timestamps_off: bool = False) -> Path:
    """A small v3.0 dataset as another robot's LeRobot recording would look: 'state' names that are not ours, a
    scalar reward, a text column and an ``image`` feature (PNG bytes in the parquet)."""
    lengths = [4, 3]
    n = sum(lengths)
    episode = np.repeat(np.arange(len(lengths)), lengths)
    frame = np.concatenate([np.arange(k) for k in lengths])
    images = [{"bytes": _png(np.full((8, 10, 3), 10 * i, np.uint8)), "path": None} for i in range(n)]
    data = pa.table({
        "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(2 * n, dtype=np.float32)), 2),
        "next.reward": pa.array(np.linspace(0, 1, n, dtype=np.float32)),
        "observation.images.top": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "timestamp": pa.array((frame / fps + (0.01 if timestamps_off else 0)).astype(np.float32)),
        "frame_index": pa.array(frame), "episode_index": pa.array(episode), "index": pa.array(np.arange(n)),
        "task_index": pa.array(np.zeros(n, np.int64)),
    })
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(data, root / "data" / "chunk-000" / "file-000.parquet")
    starts = np.cumsum([0, *lengths])
    rows = [{"episode_index": k, "tasks": ["pick"], "length": length, "data/chunk_index": 0, "data/file_index": 0,
             "dataset_from_index": int(starts[k]), "dataset_to_index": int(starts[k + 1]),
             "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, "stats/next.reward/min": [0.0]}
            for k, length in enumerate(lengths)]
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    scalar = {"shape": [1], "names": None}
    info = {"codebase_version": "v3.0", "fps": fps, "total_episodes": 2, "total_frames": n, "total_tasks": 1,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", "video_path": None,
            "features": {"observation.state": {"dtype": "float32", "shape": [2], "names": ["shoulder", "elbow"]},
                         "next.reward": {"dtype": "float32", **scalar},
                         "observation.images.top": {"dtype": "image", "shape": [8, 10, 3], "names": None},
                         "language_instruction": {"dtype": "string", **scalar},
                         "timestamp": {"dtype": "float32", **scalar}, "frame_index": {"dtype": "int64", **scalar},
                         "episode_index": {"dtype": "int64", **scalar}, "index": {"dtype": "int64", **scalar},
                         "task_index": {"dtype": "int64", **scalar}}}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    return root


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    imageio.imwrite(buf, image, format="png")
    return buf.getvalue()


def test_import_a_foreign_dataset_by_feature_names(tmp_path: Path, capsys) -> None:
    src = foreign_dataset(tmp_path / "foreign")
    summary = import_(capsys, src, tmp_path / "back", "require=[]")
    assert {n: tuple(s["shape"]) for n, s in summary["streams"].items()} == {
        "state": (2,), "next_reward": (1,), "top": (8, 10, 3)}
    assert "language_instruction" in summary["skipped"] and "train with rate_hz" in summary["notes"][-1]
    first, second = list_episodes(tmp_path / "back")
    np.testing.assert_array_equal(load_stream(second, "state")[1], [[8, 9], [10, 11], [12, 13]])
    np.testing.assert_array_equal(load_stream(second, "top")[1][:, 0, 0, 0], [40, 50, 60])
    t, reward = load_stream(first, "next_reward")
    np.testing.assert_allclose(t, np.arange(4) / 30)
    assert reward.shape == (4, 1) and read_meta(first)["task"] == "pick"


def test_import_refusals_name_the_problem_and_leave_nothing(tmp_path: Path, capsys) -> None:
    base = ["import", "format=lerobot"]
    src = foreign_dataset(tmp_path / "foreign")
    err = refused(capsys, *base, str(src), str(tmp_path / "o1"))
    assert "lacks streams ['action', 'gripper_width', 'marker_offset', 'tcp_pos', 'tcp_quat', 'wrench']" in err
    assert "rdp.train needs" in err and "marker field" in err and "forward kinematics" in err
    assert "['x']" in refused(capsys, *base, str(src), str(tmp_path / "o2"), "require=[state,x]")
    off = foreign_dataset(tmp_path / "off", timestamps_off=True)
    assert "is not 0 / 30" in refused(capsys, *base, str(off), str(tmp_path / "o3"), "require=[]")
    (tmp_path / "notlerobot").mkdir()
    assert "no meta/info.json" in refused(capsys, *base, str(tmp_path / "notlerobot"), str(tmp_path / "o4"))
    old = foreign_dataset(tmp_path / "old")
    info = json.loads((old / "meta" / "info.json").read_text())
    (old / "meta" / "info.json").write_text(json.dumps(info | {"codebase_version": "v2.1"}))
    assert "convert_dataset_v21_to_v30" in refused(capsys, *base, str(old), str(tmp_path / "o5"))
    assert "already exists" in refused(capsys, *base, str(src), str(old))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "notlerobot", "off", "old"]


def test_a_short_video_is_refused(exported: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(exported[1], copy)
    video = next((copy / "videos").rglob("*.mp4"))
    with imageio.get_reader(video) as reader:
        frames = [f for _, f in zip(range(20), reader.iter_data(), strict=False)]
    video.unlink()
    with imageio.get_writer(video, fps=TRAINING_RATE_HZ, codec="libx264", macro_block_size=1) as writer:
        for f in frames:
            writer.append_data(f)
    err = refused(capsys, "import", "format=lerobot", str(copy), str(tmp_path / "back"))
    assert "ends at frame 20" in err and not (tmp_path / "back").exists()
