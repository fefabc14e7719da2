"""teleop.record_expert: expert demos recorded at native rates, with sim-time stamps and episode outcome."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dataset.format import list_episodes, load_stream, read_meta
from sensors.embedding import TactileEmbedding
from teleop.record_expert import RecordConfig, main, parse_overrides, record_expert_episodes


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demos") / "wipe"
    rows = record_expert_episodes(RecordConfig(task="wipe", episodes=2, seed=5, out=str(out), cameras=True,
                                               max_steps=30, progress=False))
    return out, rows


def test_every_episode_is_committed_with_task_seed_outcome_and_perturbation(recorded) -> None:
    out, rows = recorded
    episodes = list_episodes(out)
    assert [e.name for e in episodes] == ["episode_000000", "episode_000001"]
    for ep, row, seed in zip(episodes, rows, (5, 6), strict=True):
        meta = read_meta(ep)
        assert (meta["task"], meta["seed"]) == ("wipe", seed)
        assert meta["success"] is None and row["success"] is False  # 30 steps cannot finish a wipe: no outcome
        assert meta["user"]["perturbation"] in ("raise", "lower")
        assert meta["user"]["expert"] == "force_aware"
        assert row["steps"] == 30


def test_streams_keep_their_native_rates_and_shapes(recorded) -> None:
    out, _ = recorded
    ep = list_episodes(out)[0]
    meta = read_meta(ep)
    expected = {"tcp_pos": (1, 3), "tcp_quat": (1, 4), "joint_pos": (1, 7), "gripper_width": (1,), "wrench": (1, 6),
                "marker_offset": (3, 7, 9, 2), "action": (7,), "scene": (6,),
                "scene_rgb": (96, 96, 3), "wrist_rgb": (96, 96, 3)}
    assert {k: tuple(v["shape"]) for k, v in meta["streams"].items()} == expected
    for name in expected:
        rate = meta["streams"][name]["rate_hz"]
        assert rate == pytest.approx(10.0 if name.endswith("_rgb") else 50.0), name
    t, _ = load_stream(ep, "action", meta)
    np.testing.assert_array_equal(t, np.round(np.arange(30) * 0.02, 6))  # sim time, exact multiples of 20 ms
    t_cam, rgb = load_stream(ep, "scene_rgb", meta)
    np.testing.assert_array_equal(t_cam, t[::5])
    assert rgb.dtype == np.uint8 and rgb.std() > 0


def test_the_recording_holds_raw_streams_and_its_features_come_from_them(recorded) -> None:
    """No derived stream is recorded: training computes the tactile embedding from the marker field at load, with
    the function the running policy uses (``dataset.features``)."""
    from rdp.data import load_episodes

    out, _ = recorded
    ep = list_episodes(out)[1]
    assert "tactile_emb" not in read_meta(ep)["streams"]
    _, offsets = load_stream(ep, "marker_offset")
    episodes = load_episodes(out, 25.0)
    second = episodes.features["tactile"][episodes.starts[1]:]
    expected = TactileEmbedding.load("default").encode(offsets[::2]).reshape(len(second), -1)
    np.testing.assert_allclose(second, expected, rtol=1e-5, atol=1e-5)


def test_command_line_parses_overrides_and_prints_json(tmp_path, capsys) -> None:
    out = tmp_path / "lift"
    assert main(["task=lift", "episodes=1", "seed=0", f"out={out}", "max_steps=5", "progress=false"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == "lift" and len(summary["episodes"]) == 1
    meta = read_meta(list_episodes(out)[0])
    assert tuple(meta["streams"]["action"]["shape"]) == (14,)  # two arms
    assert tuple(meta["streams"]["marker_offset"]["shape"]) == (6, 7, 9, 2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["episodes=2"], "out=DIR is required"), (["out=x", "episodes=two"], "episodes=two: expected an integer"),
     (["out=x", "cameras=yes"], "cameras=yes: expected true or false"), (["out=x", "speed=3"], "no such key"),
     (["out=x", "episodes=0"], "episodes must be >= 1")],
)
def test_bad_arguments_name_themselves(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_overrides(argv)
    assert main(argv) == 2
