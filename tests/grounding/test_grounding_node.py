"""The grounding process on the bus: it keeps the scene video of the running and the last episode from a robot's
image stream and answers instructions about it; bad requests and hostile messages get an answer or are counted,
and never end it. The model is the shipped checkpoint (what it grounds is measured in docs/results.md)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from bus.cli import UsageError
from bus.process import Child
from bus.transport import Client, Publisher
from grounding.ground import shipped_run
from grounding.node import EpisodeVideo, GroundingNode, GroundingNodeConfig, ask

TIMEOUT = 60.0


def test_episode_video_thins_to_the_frame_rate_and_caps_its_length() -> None:
    video = EpisodeVideo(3, frame_hz=5.0, max_frames=3)
    kept = [video.add(np.full((4, 4, 3), i, np.uint8), t) for i, t in enumerate([0.0, 0.1, 0.2, 0.4, 0.6, 0.8])]
    assert kept == [True, False, True, True, True, True]
    frames, times = video.arrays()
    assert len(video) == 3 and video.dropped == 2 and list(frames[:, 0, 0, 0]) == [3, 4, 5]
    assert times.tolist() == pytest.approx([0.0, 0.2, 0.4])


def test_config_needs_the_robot_and_defaults_to_the_shipped_model() -> None:
    with pytest.raises(UsageError, match="robot_pub= required"):
        GroundingNodeConfig()
    assert GroundingNodeConfig(robot_pub="tcp://127.0.0.1:1").run == str(shipped_run())
    with pytest.raises(UsageError, match="needs the instruction"):
        GroundingNodeConfig(ask_address="tcp://127.0.0.1:1")


def _frames(pub: Publisher, n: int, start: float = 0.0, value: int = 100) -> None:
    for k in range(n):
        pub.publish("image", {"scene_rgb": np.full((96, 96, 3), value + k, np.uint8),
                              "wrist_rgb": np.zeros((96, 96, 3), np.uint8)}, {"sim_time": start + 0.125 * k})


@pytest.mark.timeout(180)
def test_node_grounds_the_last_episode_and_survives_bad_requests(tmp_path: Path) -> None:
    with Publisher("tcp://127.0.0.1:*", bind=True) as pub:
        node = Child("grounding", "grounding.node", [f"robot_pub={pub.address}", "stats_s=0.2"],
                     tmp_path / "grounding.log")
        try:
            address = node.wait_ready(timeout=TIMEOUT)["ask"]
            assert address.startswith("tcp://127.0.0.1:")
            pub.wait_for_subscriber("episode", timeout=10.0)
            with pytest.raises(UsageError, match="no last episode video yet"):
                ask(address, "wipe again", timeout_s=10.0)
            pub.publish("episode", meta={"event": "reset", "episode": 1})
            _frames(pub, 20)
            pub.publish("image", {"scene_rgb": np.zeros((96, 96), np.uint8)}, {"sim_time": 5.0})  # no channels
            pub.publish("image", {"scene_rgb": np.zeros((96, 96, 3), np.float32)}, {"sim_time": 5.0})
            pub.publish("image", {"scene_rgb": np.zeros((96, 96, 3), np.uint8)}, {"sim_time": "soon"})
            pub.publish("episode", meta={"event": "end", "episode": 1})
            pub.publish("episode", meta={"event": "reset", "episode": 2})
            _frames(pub, 3, value=7)
            time.sleep(0.5)
            answer = ask(address, "wipe again, only the left half", timeout_s=30.0)
            assert answer["episode"] == 1 and answer["frames"] == 20 and answer["video"] == "last"
            assert answer["task"] in ("wipe", "peel", "lift") and 0.0 <= answer["confidence"] <= 1.0
            assert answer["video_s"] == pytest.approx(19 * 0.125) and "fields" in answer
            current = ask(address, "lift it higher", video="current", timeout_s=30.0)
            assert current["episode"] == 2 and current["frames"] == 3
            for meta, why in (({"instruction": ""}, "no instruction"), ({"instruction": 3}, "no instruction"),
                              ({"instruction": "x" * 301}, "at most 300"),
                              ({"instruction": "again", "video": "yesterday"}, "choose one of last, current"),
                              ({"instruction": "again", "execute": "yes"}, "true or false")):
                with Client(address) as c:
                    c.send("ground", meta=meta)
                    reply = c.recv(timeout=30.0)
                assert reply.topic == "error" and why in reply.meta["error"]
            with Client(address) as c:
                c.send("shutdown")
                assert c.recv(timeout=30.0).topic == "error"
                c.send("stop")  # no run to stop
                reply = c.recv(timeout=30.0)
                assert reply.topic == "error" and "nothing carried out yet" in reply.meta["error"]
                c.socket.send_multipart([b"12345678", b"garbage"])  # a malformed request: dropped, counted
            assert node.alive()
            assert ask(address, "peel the strip again", timeout_s=30.0)["episode"] == 1
        finally:
            code = node.stop(timeout=10.0)
        assert code == 0
        exit_record = node.last
        assert exit_record is not None and exit_record["event"] == "exit" and exit_record["answered"] == 3
        assert exit_record["rejects"]["rej_image"] == 3 and exit_record["rejects"]["rej_request"] == 8


def test_answer_in_process_refuses_unknown_topics() -> None:
    cfg = GroundingNodeConfig(robot_pub="tcp://127.0.0.1:*")
    node = GroundingNode.__new__(GroundingNode)  # the request logic only: no sockets, no model
    node.cfg, node.last, node.current = cfg, None, EpisodeVideo(None, 8.0, 10)
    from collections import Counter

    from bus.message import Message

    node.counts = Counter()
    topic, meta = node.answer(Message("hello", 0.0, 0, {}, {}))
    assert topic == "error" and "unknown request" in meta["error"] and node.counts["rej_request"] == 1
