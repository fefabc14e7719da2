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


def test_the_episode_goal_is_in_the_meta(tmp_path) -> None:
    """A goal-conditioned recording names each episode's goal and its encoding; a plain one the default goal, and no
    encoding (its env observes none, so no policy trained on it reads one)."""
    out = tmp_path / "goals"
    rows = record_expert_episodes(RecordConfig(task="peel", goal="random", episodes=3, seed=0, out=str(out),
                                               max_steps=3, progress=False))
    for ep, row in zip(list_episodes(out), rows, strict=True):
        user = read_meta(ep)["user"]
        assert user["goal_option"] == "random" and user["goal"] == row["goal"]
        assert user["goal"] in ("default", "left", "right") and len(user["goal_vector"]) == 5
        assert "goal" not in read_meta(ep)["streams"]  # the meta holds it, once
    plain = record_expert_episodes(RecordConfig(task="peel", episodes=1, seed=0, out=str(tmp_path / "plain"),
                                                max_steps=3, progress=False))
    user = read_meta(list_episodes(tmp_path / "plain")[0])["user"]
    assert (user["goal_option"], user["goal"], plain[0]["goal"]) == ("default", "default", "default")
    assert "goal_vector" not in user


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["episodes=2"], "out=DIR is required"), (["out=x", "episodes=two"], "episodes=two: expected an integer"),
     (["out=x", "cameras=maybe"], "cameras=maybe: expected true or false"),
     (["out=x", "speed=3"], "speed=3: no such record_expert config key"),
     (["out=x", "episodes=0"], "episodes must be >= 1"), (["out=x", "jobs=0"], "jobs=0: expected an integer >= 1"),
     (["out=x", "launcher=slurm"], "launcher=slurm: no such launcher; choose one of local, ray"),
     (["out=x", "task=lift", "goal=left"], "goal=left: no such lift goal value 'left'; choose default, random")],
)
def test_bad_arguments_name_themselves(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_overrides(argv)
    assert main(argv) == 2


def _streams(out) -> list[dict]:
    """Every episode's meta (what the run decided) and streams (times and values), in episode order."""
    episodes = []
    for ep in list_episodes(out):
        meta = read_meta(ep)
        episodes.append({"name": ep.name, **{k: meta[k] for k in ("task", "seed", "success", "user")},
                         **{name: load_stream(ep, name, meta) for name in meta["streams"]}})
    return episodes


def test_jobs_records_seed_shards_and_merges_them_into_the_sequential_recording(tmp_path, capsys) -> None:
    """Three episodes as shards of seeds 5-6 and 7, each its own process, merged into one recording: the episodes of
    the sequential run, in seed order, with equal streams; the shard folders are gone."""
    common = dict(task="wipe", episodes=3, seed=5, max_steps=20, progress=False)
    rows_one = record_expert_episodes(RecordConfig(out=str(tmp_path / "one"), **common))
    rows_two = record_expert_episodes(RecordConfig(out=str(tmp_path / "two"), jobs=2, **common))
    assert rows_two == rows_one
    one, two = _streams(tmp_path / "one"), _streams(tmp_path / "two")
    assert [e["seed"] for e in two] == [5, 6, 7] and [e["name"] for e in two] == [e["name"] for e in one]
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], tuple):  # (t, values) of a stream
                np.testing.assert_array_equal(a[key][0], b[key][0])
                np.testing.assert_array_equal(a[key][1], b[key][1])
            else:
                assert a[key] == b[key], key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert "seeds 5-6 ok in" in capsys.readouterr().err


def test_a_sharded_recording_is_never_added_to_an_existing_one(tmp_path) -> None:
    out = tmp_path / "demos"
    (out / "episode_000000").mkdir(parents=True)
    with pytest.raises(ValueError, match="already exists and is not empty"):
        record_expert_episodes(RecordConfig(task="wipe", episodes=2, seed=0, out=str(out), jobs=2, progress=False))
    assert [p.name for p in out.iterdir()] == ["episode_000000"]
