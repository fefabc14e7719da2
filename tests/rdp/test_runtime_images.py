"""Image policies through the runtime: the slow node holds the robot's camera frames the way training held them,
lockstep runs with them repeat, nodes whose policy reads no cameras carry no image traffic, the launcher starts the
robot's cameras at the policy's rate and size, and a robot that sends no frames ends the slow node in one line.
Weights are a seconds-long tiny vision run (wrist camera, 16x16), so only the plumbing is under test."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_runtime import stopped_children
from test_runtime_units import make_tiny_run

from bus.cli import UsageError
from bus.message import Message
from bus.transport import Publisher, Server, Subscriber
from rdp.checkpoint import load_run_info
from rdp.data import resize_images
from rdp.runtime.config import load_config
from rdp.runtime.process import ROOT, Child, robot_node_args

TIMEOUT = 60.0
LAUNCH_TIMEOUT = 240  # one rdp.run: minutes on a loaded 2-core machine
RUN_JSON = {"image_keys": ["wrist_rgb"], "image_size": 16, "camera_size": {"wrist_rgb": [96, 96]},
            "image_hz": {"wrist_rgb": 10.0}}


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("vision_ckpt"), cameras=True)




def _frame(seq: int, sim_time: float, value: int = 0, shape: tuple[int, ...] = (96, 96, 3)) -> Message:
    """An ``image`` message as the robot node sends it."""
    arrays = {"scene_rgb": np.zeros((96, 96, 3), np.uint8), "wrist_rgb": np.full(shape, value, np.uint8)}
    return Message("image", 0.0, seq, arrays, {"sim_time": sim_time})


# ----------------------------------------------------------------------------------------------- units


def test_held_frame_is_the_newest_at_or_before_the_step_and_never_too_old() -> None:
    from rdp.runtime.slow import HeldFrame

    counts: Counter[str] = Counter()
    held = HeldFrame(RUN_JSON, 0.25, counts)
    assert held.at(0.004)[0] is None and counts["awaiting_image"] == 1
    assert held.problem == "no image message received at all"
    held.offer(_frame(0, 0.0, 10))  # the reset frame
    frames, age = held.at(0.004)
    assert age == pytest.approx(0.004) and list(frames) == ["wrist_rgb"]
    np.testing.assert_array_equal(frames["wrist_rgb"], resize_images(np.full((96, 96, 3), 10, np.uint8), 16))
    again, age = held.at(0.04)
    assert again is frames and age == pytest.approx(0.04)  # held (resized once), not re-read
    held.offer(_frame(1, 0.1, 20))
    held.offer(_frame(3, 0.2, 30))  # 1 superseded before any step held it, 2 lost on the way (seq gap)
    assert counts["images"] == 3 and counts["images_dropped"] == 2
    frames, age = held.at(0.2)
    assert frames["wrist_rgb"][0, 0, 0] == 30 and age == 0.0
    assert held.at(0.5)[0] is None and counts["rej_image_age"] == 1  # 300 ms old
    assert "300 ms old" in held.problem and "slow.max_image_age_s=0.25" in held.problem
    held.clear()  # a new episode: the last one's frame is not held
    assert held.at(0.004)[0] is None and counts["awaiting_image"] == 2
    held.offer(_frame(4, 0.0, shape=(64, 64, 3)))
    assert held.at(0.004)[0] is None and counts["rej_image"] == 1
    assert "wrist_rgb frames are uint8 (64, 64, 3), the policy was trained on uint8 (96, 96, 3)" in held.problem
    with pytest.raises(UsageError, match=r"slow.max_image_age_s=0.05 is below one camera period .*0.1 s at 10 Hz"):
        HeldFrame(RUN_JSON, 0.05, counts)


def test_robot_settings_follow_the_policy(tiny_run: Path, vision_run: Path, capsys: pytest.CaptureFixture) -> None:
    """Cameras on at the image policy's recorded rate and frame size; for a low-dim policy only for the video; a
    setting that would feed an image policy other frames than training is refused in one line, before any node."""
    from rdp.run import main, robot_settings

    vision, lowdim = load_run_info(vision_run), load_run_info(tiny_run)
    assert robot_settings(load_config([f"checkpoint={vision_run}", "video=false"]), vision) == {
        "watchdog_ms": 50.0, "cameras": True, "camera_hz": 10.0, "image_size": 96}
    assert robot_settings(load_config([f"checkpoint={tiny_run}"]), lowdim)["cameras"] is True  # the video's
    assert robot_settings(load_config([f"checkpoint={tiny_run}", "video=false"]), lowdim)["cameras"] is False
    for bad, match in (("robot.cameras=false", "robot.cameras=false would send it none"),
                       ("robot.camera_hz=25", "robot.camera_hz=25: .* at 10 Hz"),
                       ("robot.image_size=64", "robot.image_size=64: .* as 96x96 frames")):
        with pytest.raises(UsageError, match=match):
            robot_settings(load_config([f"checkpoint={vision_run}", bad]), vision)
    assert main([f"checkpoint={vision_run}", "robot.cameras=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rdp.run: error: ") and "robot.cameras=false" in err[0]


def test_only_a_slow_node_whose_policy_reads_cameras_subscribes_to_images(tiny_run: Path, vision_run: Path) -> None:
    """The fast node never subscribes to ``image`` (not even for an image policy), nor does the slow node of a
    low-dim policy; the slow node of an image policy does."""
    from rdp.runtime.fast import FastNode
    from rdp.runtime.slow import SlowNode

    def subscribes_to_images(make, run: Path) -> bool:
        with Publisher("tcp://127.0.0.1:*") as robot_pub, \
                Subscriber("tcp://127.0.0.1:*", topics=("chunk",), bind=True) as chunks, \
                Subscriber("tcp://127.0.0.1:*", topics=("cmd",), bind=True) as robot_cmd, \
                Server("tcp://127.0.0.1:*") as robot_tick:
            chunk = [f"addresses.chunk={chunks.address}"] if make is SlowNode else []  # the fast node binds its own
            node = make(load_config([
                f"checkpoint={run}", "mode=lockstep", f"addresses.obs={robot_pub.address}", *chunk,
                f"addresses.robot_pub={robot_pub.address}", f"addresses.robot_cmd={robot_cmd.address}",
                f"addresses.robot_tick={robot_tick.address}"]))
            try:
                assert robot_pub.wait_for_subscriber("tactile", timeout=TIMEOUT)  # it is connected
                return robot_pub.wait_for_subscriber("image", timeout=0.5)
            finally:
                node.close()

    assert not subscribes_to_images(FastNode, vision_run)
    assert not subscribes_to_images(SlowNode, tiny_run)
    assert subscribes_to_images(SlowNode, vision_run)


# ----------------------------------------------------------------------------------------------- processes


def _launch(run: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "rdp.run", f"checkpoint={run}", "slow.replan_every=4", "stats_hz=20",
           "fast.start_timeout_s=30", "mode=lockstep", "max_episode_s=0.6", f"out={out}", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(2 * LAUNCH_TIMEOUT + 60)
def test_lockstep_vision_run_plans_on_the_training_frames_and_repeats(vision_run: Path, tmp_path: Path) -> None:
    a = _launch(vision_run, tmp_path / "a")
    b = _launch(vision_run, tmp_path / "b")
    assert a["error"] is None and a["episodes"] == 1 and a["exit_codes"] == {"fast": 0, "slow": 0, "robot": 0}
    assert a["fast"]["chunks"] == 4 and a["fast"]["cmd_digest"] == b["fast"]["cmd_digest"]
    # Plans at steps 0, 4, 8, 12 (0.004, 0.16, 0.32, 0.48 s) hold the 10 Hz frames of 0, 0.1, 0.3, 0.4 s, the ones
    # training held at those steps: 4, 60, 20 and 80 ms old.
    ages = a["slow"]["image_age_ms"]
    assert a["slow"]["plans"] == ages["n"] == 4 and ages["p50"] == 40.0 and ages["max"] == 80.0
    assert ages == b["slow"]["image_age_ms"]
    detail = json.loads((tmp_path / "a" / "results.json").read_text())
    slow = detail["loop"]["slow"]
    assert not any(k.startswith("rej_image") for k in slow) and slow["images"] >= 6
    assert (tmp_path / "a" / "episode0.mp4").is_file()
    from dataset.video import read_scene_video

    frames, times, meta = read_scene_video(tmp_path / "a" / "episode0.npz")  # what grounding.run video= reads
    assert len(frames) >= 6 and times[0] == 0.0 and meta["task"] == "wipe" and meta["duration"] >= times[-1]


@pytest.mark.timeout(180)
def test_slow_node_without_camera_frames_exits_in_one_line(vision_run: Path, tmp_path: Path) -> None:
    """A robot node started without cameras: the image policy's slow node waits image_timeout_s for a frame, then
    ends with exit 2 (which the launcher does not restart) and one line saying what is missing and how to fix it."""
    with stopped_children() as children, Subscriber("tcp://127.0.0.1:*", topics=("chunk",), bind=True) as chunks:
        robot = Child("robot", "sim.node", robot_node_args("wipe", "realtime", 0, False, {"cameras": False}),
                      tmp_path / "robot.log")
        children["robot"] = robot
        pub = robot.wait_ready(timeout=TIMEOUT)["pub"]
        slow = Child("slow", "rdp.runtime.slow", [f"checkpoint={vision_run}", f"addresses.obs={pub}",
                                                  f"addresses.chunk={chunks.address}", "slow.image_timeout_s=1"],
                     tmp_path / "slow.log")
        children["slow"] = slow
        slow.wait_ready(timeout=TIMEOUT)
        assert slow.proc.wait(timeout=TIMEOUT) == 2
        exit_record = slow.wait_event("exit", timeout=5.0)
        assert exit_record["awaiting_image"] >= 1 and exit_record["plans"] == 0
        lines = slow.tail().strip().splitlines()
        assert lines[-1].startswith("rdp.runtime.slow: error: no usable camera frame for 1 s of episode ")
        assert "(no image message received at all)" in lines[-1] and "cameras=true camera_hz=10 image_size=96" \
            in lines[-1]
        assert children["robot"].alive()


@pytest.mark.timeout(240)
def test_realtime_vision_stack_plans_on_fresh_frames(vision_run: Path, tmp_path: Path) -> None:
    """Realtime: the robot's render thread sends the frames (one at the reset); the slow node plans on them, each
    plan's frame no older than slow.max_image_age_s, and the fast node drives the robot from those chunks."""
    args = [f"checkpoint={vision_run}", "slow.replan_every=4", "stats_hz=20", "fast.start_timeout_s=30",
            "episodes=1", "perturb=false", "max_episode_s=1.0"]
    with stopped_children() as children:
        robot = Child("robot", "sim.node", robot_node_args("wipe", "realtime", 0, False, {
            "cameras": True, "camera_hz": 10.0, "image_size": 96, "watchdog_ms": 50.0, "limits.force_n": 20.0}),
            tmp_path / "robot.log")
        children["robot"] = robot
        r = robot.wait_ready(timeout=TIMEOUT)
        fast = Child("fast", "rdp.runtime.fast", [*args, f"addresses.robot_pub={r['pub']}",
                                                  f"addresses.robot_cmd={r['cmd']}"], tmp_path / "fast.log")
        children["fast"] = fast
        chunk = fast.wait_ready(timeout=TIMEOUT)["chunk"]
        slow = Child("slow", "rdp.runtime.slow", [*args, f"addresses.obs={r['pub']}", f"addresses.chunk={chunk}"],
                     tmp_path / "slow.log")
        children["slow"] = slow
        slow.wait_ready(timeout=TIMEOUT)
        episode = fast.wait_event("episode", timeout=180.0)
        assert episode["chunks"] >= 2, episode
        time.sleep(0.2)
        assert slow.alive()
        slow.stop(timeout=10.0)
        stats = slow.wait_event("exit", timeout=5.0)
    ages = stats["image_age_ms"]
    assert stats["plans"] >= 2 and ages["n"] == stats["plans"] and 0.0 <= ages["max"] <= 250.0
    assert math.isfinite(ages["p50"])
