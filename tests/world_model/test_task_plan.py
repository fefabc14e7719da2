"""World-model planning on a task of the suite: the candidate plans become the world model's actions frame by frame,
a progress head learns the env's score from expert frames, and the plan -> act -> observe loop runs in sim.eval's
episodes through a planner node with a tiny world model (plumbing, not skill)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bus.cli import UsageError
from bus.message import Message
from world_model.runtime import CameraFeed
from world_model.task_plan import WorldModelPolicy

PY = [sys.executable, "-m"]
TINY = ["model.width=32", "model.depth=1", "model.ae_width=8", "model.context_frames=2", "model.chunk_frames=2",
        "model.inference_steps=2", "model.train_timesteps=20", "ae.steps=10", "ae.batch=8", "diffusion.steps=10",
        "diffusion.batch=4", "log_every=5", "progress=false"]


def stub_policy(arms: int = 1) -> SimpleNamespace:
    return SimpleNamespace(planner=SimpleNamespace(codec=object()), run={"method": "rdp", "num_arms": arms},
                           image_keys=(), chooser=None)


def test_a_plan_becomes_the_tcp_displacement_into_each_coming_camera_frame():
    wm = WorldModelPolicy(stub_policy(), planner=None, image_size=16, action_dim=3, frames_ahead=4)
    wm.camera_every, wm.ticks_per_step, wm.tick = 5, 2, 10  # a 10 Hz camera, 25 Hz policy, 50 Hz control
    wm.last_tcp = np.array([0.5, 0.0, 0.2], np.float32)
    horizon = 32
    targets = np.zeros((2, horizon, 10), np.float32)
    targets[:, :, 0] = 0.5 + 0.01 * np.arange(horizon)  # entry j: x = 0.5 + 0.01 j
    targets[1, :, 1] = 0.1  # the second plan also steps 0.1 m sideways at once
    moves = wm.frame_moves(targets)
    assert moves.shape == (2, 4, 3)
    # frames at ticks 15, 20, 25, 30 fall in the plan's steps 2, 5, 7, 10 (entry 0 = this tick, 2 ticks a step)
    np.testing.assert_allclose(moves[0, :, 0], [0.02, 0.03, 0.02, 0.03], atol=1e-6)
    np.testing.assert_allclose(moves[1, :, 1], [0.1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(moves.sum(1)[:, 0], 0.1, atol=1e-6)  # they add up to where the plan goes
    wm.tick = 12  # between frames: the next one is at tick 15 (step 1 of a plan made now)
    np.testing.assert_allclose(wm.frame_moves(targets)[0, 0, 0], 0.01, atol=1e-6)
    wm.frames_ahead = 40  # beyond the plan: its last target is held
    assert np.allclose(wm.frame_moves(targets)[0, -5:], 0)


def test_the_planning_policy_refuses_what_it_cannot_plan_with():
    with pytest.raises(UsageError, match="takes 4 action values a frame, this policy moves 1 arm"):
        WorldModelPolicy(stub_policy(), planner=None, image_size=16, action_dim=4)
    no_codec = stub_policy()
    no_codec.planner.codec = None
    with pytest.raises(UsageError, match="no plan codec"):
        WorldModelPolicy(no_codec, planner=None, image_size=16, action_dim=3)
    with pytest.raises(UsageError, match="candidates >= 1"):
        WorldModelPolicy(stub_policy(), planner=None, image_size=16, action_dim=3, candidates=0)
    wm = WorldModelPolicy(stub_policy(), planner=None, image_size=16, action_dim=3)
    with pytest.raises(UsageError, match="renders none: evaluate with sensors=vision"):
        wm.reset(SimpleNamespace(cameras=False, control_hz=50.0))
    with pytest.raises(UsageError, match="camera_hz=7 must divide"):
        WorldModelPolicy(stub_policy(), planner=None, image_size=16, action_dim=3, camera_hz=7.0).reset(
            SimpleNamespace(cameras=True, control_hz=50.0))


@pytest.fixture(scope="module")
def tiny_wipe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny world model (16 px, camera moves as actions) and a progress head trained on a few short expert
    episodes of wipe."""
    root = tmp_path_factory.mktemp("task-plan")
    data, run, scorer = root / "data", root / "run", root / "scorer"
    subprocess.run([*PY, "world_model.data", "revisit", f"out={data}", "episodes=2", "seed=1", "image_size=16"],
                   check=True, capture_output=True)
    subprocess.run([*PY, "world_model.train", f"data={data}", f"out={run}", *TINY], check=True, capture_output=True)
    done = subprocess.run([*PY, "world_model.task_plan", "scorer", "task=wipe", f"run={run}", f"out={scorer}",
                           "episodes=4", "seconds=4", "every=4", "steps=5", "progress=false"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert set(report["validation"]) == {"real", "autoencoder"} and report["train_frames"] > 0
    frames = np.load(scorer / "frames.npz")
    assert frames["frames"].shape[1:] == (16, 16, 3) and set(np.unique(frames["episode"])) == set(range(6))
    assert 0 <= frames["labels"].min() and frames["labels"].max() <= 1 and frames["labels"].max() > 0  # it wiped
    return run, scorer


def test_plan_act_observe_on_wipe_through_the_planner_node(tiny_wipe, tmp_path):
    run, scorer = tiny_wipe
    out = tmp_path / "eval"
    done = subprocess.run([*PY, "world_model.task_plan", "eval", "task=wipe", "policy=rdp", f"run={run}",
                           f"scorer={scorer}", "episodes=1", "seed=3", "conditions=[policy,temp_lora,no_memory]",
                           "progress=false", f"out={out}"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())["conditions"]
    assert set(metrics) == {"policy", "temp_lora", "no_memory"}
    for name, m in metrics.items():
        lo, hi = m["wilson95"]
        assert m["episodes"] == 1 and 0 <= lo <= m["success"] <= hi <= 1
        rows = json.loads((out / name / "results.json").read_text())["episodes_detail"]
        assert [r["seed"] for r in rows] == [3]  # every condition on the same episode
    for name in ("temp_lora", "no_memory"):
        m = metrics[name]
        assert m["decisions"] >= 5 and 0 <= m["replaced_fraction"] <= 1  # one decision per slow-policy plan
        assert len(m["first_decisions"][0]["scores"]) == 4  # the policy's own plan and three samples
        assert (out / f"{name}-imagined.mp4").stat().st_size > 0 and (out / f"planner-{name}.log").exists()
        compared = m["imagined_vs_real_progress"]
        assert compared["decisions"] >= 2 and 0 <= compared["mean_abs_error"] <= 1
    assert metrics["temp_lora"]["memory_update_ms"] > 0  # the seen frames went into TEMP-LoRA chunk by chunk
    assert "memory_update_ms" not in metrics["no_memory"]


# ------------------------------------------------------------------------------------------- in the runtime

def _image(t: float, value: int = 0, shape: tuple[int, ...] = (32, 32, 3), dtype: type = np.uint8) -> Message:
    return Message("image", t, arrays={"wrist_rgb": np.full(shape, value, dtype)}, meta={"sim_time": t})


def _state(t: float, x: float) -> Message:
    return Message("state", t, arrays={"tcp_pos": np.array([[x, 0.0, 0.2]])}, meta={"sim_time": t})


def test_the_runtime_camera_feed_pairs_each_frame_with_the_tcp_of_its_tick_in_either_order():
    counts: Counter[str] = Counter()
    feed = CameraFeed("wrist_rgb", 16, 10.0, counts)
    feed.offer_image(_image(0.0, 1))  # lockstep: a tick's frame comes before its state
    assert feed.times == []
    feed.offer_state(_state(0.0, 0.5))
    for k in range(1, 25):
        feed.offer_state(_state(k * 0.004, 0.5 + k * 0.001))
    feed.offer_image(_image(0.06, 2))  # realtime: after it (the render thread finishes later)
    feed.offer_image(_image(0.06, 3))  # not newer: ignored
    feed.offer_image(_image(0.1, 4))  # its state has not come yet
    assert feed.times == [0.0, 0.06] and feed.frames[1].shape == (16, 16, 3)
    feed.offer_state(_state(0.1, 0.6))
    assert feed.times == [0.0, 0.06, 0.1] and feed.upto(0.08) == 2 and feed.index_of(0.06) == 1
    frames, moves = feed.batch(0, 3)
    assert frames.shape == (3, 16, 16, 3) and frames[1].max() == 2
    np.testing.assert_allclose(moves[:, 0], [0.0, 0.015, 0.085], atol=1e-6)  # zero into the first frame
    np.testing.assert_allclose(feed.batch(1, 3)[1][:, 0], [0.015, 0.085], atol=1e-6)
    feed.offer_image(_image(0.2, shape=(32, 32)))  # no colour channels
    feed.offer_image(Message("image", 0.3, arrays={"scene_rgb": np.zeros((8, 8, 3), np.uint8)},
                             meta={"sim_time": 0.3}))
    feed.offer_image(_image(float("nan")))
    bad_state = Message("state", 0.2, arrays={"tcp_pos": np.array([[np.inf, 0, 0]])}, meta={"sim_time": 0.2})
    feed.offer_state(bad_state)
    assert counts["rej_planner_image"] == 3 and counts["rej_planner_state"] == 1 and len(feed.times) == 3
    feed.offer_image(_image(0.4))
    feed.offer_state(_state(0.8, 0.7))  # the frame's own state never came: none within half a camera period
    assert counts["planner_frames_unpaired"] == 1 and len(feed.times) == 3


def test_a_feed_that_joined_mid_episode_goes_on_from_the_planners_last_frame_when_it_can():
    feed = CameraFeed("wrist_rgb", 16, 10.0, Counter())
    for k in range(75, 101):  # joined at 0.3 s: states from then, frames from 0.4 s
        feed.offer_state(_state(k * 0.004, 0.5 + k * 0.001))
    feed.offer_image(_image(0.4))
    feed.offer_state(_state(0.404, 0.7))
    assert feed.times == [0.4]
    assert feed.resume_after(0.4) == 1  # holds the planner's last frame: the next one goes
    assert feed.resume_after(0.3) == 0  # the frame just before its first: from the TCP there
    np.testing.assert_allclose(feed.batch(0, 1)[1][0, 0], 0.6 - 0.575, atol=1e-6)
    assert feed.resume_after(0.2) is None  # a frame (0.3 s) would be missing from the memory
    assert CameraFeed("wrist_rgb", 16, 10.0, Counter()).resume_after(0.3) is None  # nothing held


def test_the_runtime_refuses_planning_that_cannot_see_the_camera(tmp_path):
    from rdp.run import robot_settings
    from rdp.runtime.config import load_config

    run = {"obs_keys": ["proprio", "tactile"]}
    cfg = load_config(["planning.enabled=true", f"checkpoint={tmp_path}"])
    assert robot_settings(cfg, run)["cameras"] and robot_settings(cfg, run)["camera_hz"] == 10.0
    with pytest.raises(UsageError, match="robot.cameras=false would send it none"):
        robot_settings(load_config(["planning.enabled=true", "robot.cameras=false", f"checkpoint={tmp_path}"]), run)
    with pytest.raises(UsageError, match="planning.camera_hz=10: robot.camera_hz is 20"):
        robot_settings(load_config(["planning.enabled=true", "robot.camera_hz=20", f"checkpoint={tmp_path}"]), run)


def _run_planning(tiny_wipe, out: Path, *extra: str) -> subprocess.Popen:
    run, scorer = tiny_wipe
    return subprocess.Popen([*PY, "rdp.run", "task=wipe", "policy=rdp", "mode=lockstep", "episodes=3", "seed=3",
                             "max_episode_s=2.0", "video=false", "planning.enabled=true", f"planning.run={run}",
                             f"planning.scorer={scorer}", f"out={out}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_runtime_plans_through_the_planner_node_and_outlives_it(tiny_wipe, tmp_path):
    """Lockstep, three short episodes: the planning slow node sends the wrist frames and candidates to the planner
    node. Mid-episode the slow node is killed: its warm standby takes over and keeps the episode's memory in the
    planner. Then the planner is killed, and the run goes on with the policy's own plans."""
    proc = _run_planning(tiny_wipe, tmp_path, "planning.timeout_s=2", "planning.retry_s=600")
    lines, pids, killed, standby, following = [], {}, [], False, {}
    try:
        for line in proc.stdout:
            lines.append(line)
            words = line.split()
            if len(words) > 3 and words[1] == "pid" and words[3] == "ready":
                pids.setdefault(words[0], int(words[2]))
            standby = standby or line.startswith("[supervisor] slow standby pid")
            if standby and line.startswith("[fast] ep") and not killed:
                episode, step = int(words[2]), int(words[4])
                following.setdefault(episode, step)  # the standby follows this episode from about here on
                # mid-episode (of 50 policy steps), a plan (every 8 steps) after the standby was following
                if step <= 35 and step >= following[episode] + 8:
                    os.kill(pids["[slow]"], signal.SIGKILL)
                    killed.append("slow")
            elif line.startswith("[episode") and killed == ["slow"]:
                os.kill(pids["[planner]"], signal.SIGKILL)
                killed.append("planner")
        assert proc.wait(timeout=300) == 0, "".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (tmp_path / "launcher.log").write_text("".join(lines))
    assert killed == ["slow", "planner"], "".join(lines[-30:])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["episodes"] == 3 and results["error"] is None
    assert results["supervision"]["slow"]["detail"][0]["via"] == "standby"
    assert any(ln.startswith("[planner] pid") and "died" in ln for ln in lines)
    slow = results["loop"]["slow"]["planner"]  # the standby's, from its take-over on
    assert slow["memory_kept"] == 1 and slow["decisions"] >= 1 and slow["frames_sent"] >= 1
    assert slow["errors_timeout"] == 1 and slow["alone"] >= 3  # the next episode: one timeout, then alone
    assert results["loop"]["planner"]["event"] == "died"
