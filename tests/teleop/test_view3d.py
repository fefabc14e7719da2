"""teleop.view3d: a PLY and a PNG of one recorded episode (scene points, TCP track, pad contact, force arrows)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import open3d as o3d
import pytest

from dataset.recorder import EpisodeRecorder
from teleop.view3d import ARROW_SAMPLES, CONTACT_RED, FORCE_ORANGE, main

RECORDING = Path(__file__).resolve().parents[1] / "dataset" / "recordings" / "wipe_stored_tactile_emb"


def run(argv: list[str], capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def coloured(cloud: o3d.geometry.PointCloud, rgb: tuple[float, float, float]) -> np.ndarray:
    hit = np.all(np.abs(np.asarray(cloud.colors) - rgb) <= 0.5 / 255 + 1e-9, axis=1)  # PLY keeps 8-bit colours
    return np.asarray(cloud.points)[hit]


def test_view_of_a_recorded_wipe_renders_its_scene_and_marks_contact(tmp_path: Path, capsys) -> None:
    data = tmp_path / "wipe"
    shutil.copytree(RECORDING, data)
    summary = run([str(data), "num_points=1024", "render_size=96"], capsys)
    ply, png = data / "episode_000000_3d.ply", data / "episode_000000_3d.png"
    assert summary["ply"] == str(ply) and summary["png"] == str(png)
    assert summary["scene_source"] == "sim wipe seed 0 reset" and summary["scene_points"] == 1024
    assert summary["track_samples"] == 60 and summary["finger_contact_samples"] == 0
    assert 30 < summary["contact_samples"] < 60 and summary["force_arrows"] >= 1  # the sponge presses most of it
    cloud = o3d.io.read_point_cloud(str(ply))
    expected = 1024 + 60 + summary["contact_samples"] + ARROW_SAMPLES * summary["force_arrows"]
    assert len(cloud.points) == expected and cloud.has_colors()
    contacts, arrows = coloured(cloud, CONTACT_RED), coloured(cloud, FORCE_ORANGE)
    assert len(contacts) == summary["contact_samples"] and len(arrows) == ARROW_SAMPLES * summary["force_arrows"]
    # Contact lies on the sponge's face: within the pad (2.5 cm half-size) of the TCP track.
    track = np.stack([np.load(f)["value"] for f in sorted(data.glob("episode_000000/tcp_pos.*.npz"))])
    assert np.linalg.norm(contacts[:, None] - track.reshape(-1, 3)[None], axis=-1).min(axis=1).max() < 0.036
    assert arrows[:, 2].max() > track.reshape(-1, 3)[:, 2].max()  # the vase pushes the sponge up
    image = imageio.imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.std() > 10
    assert not list(data.glob(".*writing*"))


def test_a_recorded_scene_points_stream_is_shown_instead_of_a_render(tmp_path: Path, capsys) -> None:
    rec = EpisodeRecorder(tmp_path / "d")
    rec.begin({"task": "wipe", "seed": None})  # no seed: a render is impossible, the stream must be used
    scene = np.random.default_rng(0).uniform(0.4, 0.7, (64, 3)).astype(np.float32)
    for i in range(20):
        t = i / 50
        rec.append("tcp_pos", t, np.array([[0.5 + 0.001 * i, 0.0, 0.15]], np.float32))
        rec.append("tcp_quat", t, np.array([[0.0, 1.0, 0.0, 0.0]], np.float32))  # tool face down
        rec.append("wrench", t, np.array([[0.0, 0.0, -5.0, 0, 0, 0]], np.float32))  # in the TCP frame: up in world
        if i % 5 == 0:
            rec.append("scene_points", t, scene)
    rec.commit(success=None)
    out = tmp_path / "views" / "ep.ply"
    summary = run([str(tmp_path / "d"), f"out={out}", "arrow_every=0.1"], capsys)
    assert summary["scene_source"] == "recorded scene_points (first sample)" and summary["scene_points"] == 64
    assert (summary["contact_samples"], summary["force_arrows"]) == (0, 4)  # no marker stream; 0.4 s, one per 0.1 s
    cloud = o3d.io.read_point_cloud(str(out))
    np.testing.assert_allclose(np.asarray(cloud.points)[:64], scene, atol=1e-6)
    arrows = coloured(cloud, FORCE_ORANGE).reshape(4, ARROW_SAMPLES, 3)
    np.testing.assert_allclose(arrows[:, -1] - arrows[:, 0], np.tile([0, 0, 0.025], (4, 1)), atol=1e-6)
    assert (tmp_path / "views" / "ep.png").is_file()


@pytest.mark.parametrize("args, says", [
    (["episode=3"], "episodes 0..0"),
    (["out=view.png"], "expected a .ply file"),
    (["force_scale=0"], "force_scale=0.0: expected a number > 0"),
])
def test_bad_requests_end_in_one_line(tmp_path: Path, capsys, args: list[str], says: str) -> None:
    assert main([str(RECORDING), *args]) == 2
    assert says in capsys.readouterr().err
    assert not list(RECORDING.glob("*_3d.*"))
