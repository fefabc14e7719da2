"""The collect recorder process's episode bookkeeping, fed bus messages directly (no processes): every stream's
stamps lie inside its own episode, the outcome goes to the metadata, and older recordings still read."""

from __future__ import annotations

import numpy as np
import pytest

from bus.message import Message
from dataset.format import build_training_set, list_episodes, load_stream, read_meta, series_streams
from dataset.recorder import EpisodeRecorder
from teleop.collect import RecorderNode
from teleop.replay import recorded_outcome


def _msg(topic: str, meta: dict, arrays: dict | None = None, seq: int = 0) -> Message:
    return Message(topic=topic, stamp=0.0, seq=seq, arrays=arrays or {}, meta=meta)


class _Feed:
    """Robot and teleop messages in the order the two sockets deliver them, with per-topic sequence numbers."""

    def __init__(self, node: RecorderNode) -> None:
        self.node, self.seq = node, {}

    def robot(self, topic: str, meta: dict, arrays: dict | None = None) -> None:
        self.seq[topic] = self.seq.get(topic, -1) + 1
        self.node._on_robot(_msg(topic, meta, arrays, self.seq[topic]))

    def state(self, t: float) -> None:
        self.robot("state", {"sim_time": t}, {"tcp_pos": np.full((1, 3), t)})

    def status(self, episode: int, t: float, engaged: int, event: str | None = None) -> None:
        self.node._on_teleop(_msg("teleop", {"episode": episode, "sim_time": t, "event": event},
                                  {"engaged": np.array([engaged], np.uint8)}))

    def command(self, episode: int, t: float) -> None:
        self.node._on_teleop(_msg("command", {"episode": episode, "sim_time": t}, {"target": np.zeros((1, 7))}))


def _episode(feed: _Feed, episode: int, seed: int, t_end: float, stale_t: float | None) -> None:
    feed.robot("episode", {"event": "reset", "episode": episode, "seed": seed, "task": "wipe"})
    if stale_t is not None:  # the node hears the reset before any state of the new episode: its stamps are old
        feed.status(episode, stale_t, 0, event="reset")
        feed.status(episode, stale_t, 0)
        feed.command(episode, stale_t + 0.004)
        feed.status(episode, 0.0, 0)  # its periodic status before the new episode's first state: no clock yet
    for k in range(1, round(t_end / 0.004) + 1):
        t = round(k * 0.004, 6)
        feed.state(t)
        if k % 25 == 0:
            feed.status(episode, t, int(t > 0.2))
        if t > 0.2:
            feed.command(episode, round(t + 0.004, 6))
    feed.robot("episode", {"event": "end", "episode": episode, "seed": seed, "success": True, "score": 0.75,
                           "failure": None, "time": t_end, "terminated": True})


def test_second_episode_streams_stay_on_their_own_clock_and_the_outcome_is_metadata(tmp_path):
    node = RecorderNode("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", str(tmp_path / "d"), task="wipe")
    try:
        feed = _Feed(node)
        for k in range(10):  # the robot ran before the first reset (collect's start-up)
            feed.state(round(0.004 * (k + 1), 6))
        _episode(feed, 1, 0, 3.0, stale_t=0.04)
        _episode(feed, 2, 1, 2.0, stale_t=3.0)  # the last episode's clock, longer than this one
    finally:
        node.close()
    episodes = list_episodes(tmp_path / "d")
    assert len(episodes) == 2
    for ep, t_end in zip(episodes, (3.0, 2.0), strict=True):
        meta = read_meta(ep)
        assert "outcome_score" not in meta["streams"]
        assert meta["outcome"]["score"] == 0.75 and meta["outcome"]["sim_time"] == t_end and meta["success"] is True
        assert meta["outcome"]["stale_clutch"] == 3 and meta["outcome"]["stale_action"] == 1
        for name, spec in meta["streams"].items():
            assert 0.0 < spec["t_first"] <= spec["t_last"] <= t_end + 0.004 + 1e-9, (ep.name, name, spec)
        t, engaged = load_stream(ep, "clutch", meta)
        assert t[0] == pytest.approx(0.1) and engaged[-1, 0] == 1  # from the episode's own first status on
    assert recorded_outcome(episodes[1], read_meta(episodes[1])) == (True, 0.75, 2.0)
    built = build_training_set(tmp_path / "d", 25.0, tmp_path / "built", streams=["tcp_pos", "action"])
    assert [e["num_steps"] for e in built["episodes"]] == [pytest.approx(70, abs=2), pytest.approx(45, abs=2)]


def test_recordings_with_a_one_sample_outcome_stream_still_read_and_build(tmp_path):
    """Before the outcome moved to the metadata, collect appended it as a one-sample ``outcome_score`` stream: it
    has no span, so resampling every stream onto the common span found none ("episode of zero length")."""
    rec = EpisodeRecorder(tmp_path / "old")
    rec.begin({"task": "wipe", "seed": 0})
    for k in range(1, 101):
        rec.append("tcp_pos", k * 0.004, np.full(3, k * 0.004))
        rec.append("action", k * 0.004 + 0.001, np.zeros(7, np.float32))
    rec.append("outcome_score", 0.4, np.float64(0.5))
    ep = rec.commit(success=False)
    meta = read_meta(ep)
    assert series_streams(meta) == ["action", "tcp_pos"]
    assert recorded_outcome(ep, meta) == (False, 0.5, 0.4)
    built = build_training_set(tmp_path / "old", 25.0, tmp_path / "built")
    assert sorted(built["streams"]) == ["action", "tcp_pos"] and built["episodes"][0]["num_steps"] == 10


def test_a_point_cloud_collection_needs_the_cameras():
    from teleop.collect import load_config

    assert load_config(["out=d", "point_cloud=true"]).point_cloud is True
    with pytest.raises(ValueError, match="point_cloud=true needs cameras=true"):
        load_config(["out=d", "point_cloud=true", "cameras=false"])
