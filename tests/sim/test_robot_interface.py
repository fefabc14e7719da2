"""The robot protocol: the env and the robot node step, score and sense through one path (``MujocoRobot``), and the
node runs unchanged on a wall-clock arm without MuJoCo (``LagArm``: commands in, states out at its rate, a force
hold on a fake over-force reading). Rate bounds are loose (a shared 2-core machine)."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from bus.message import Message
from bus.transport import Publisher, Subscriber
from sim.fake_robot import LagArm
from sim.mujoco_robot import MujocoRobot
from sim.node import RobotNode, load_config
from sim.registry import make_env
from sim.robot_interface import Reading, Robot, TaskStep

ANY_PORT = ["addresses.pub=tcp://127.0.0.1:*", "addresses.cmd=tcp://127.0.0.1:*", "addresses.tick=tcp://127.0.0.1:*"]
TIMEOUT = 60.0


def test_both_robots_are_robots() -> None:
    env = make_env("wipe", perturb=False)
    try:
        assert isinstance(MujocoRobot(env, 2), Robot)
        assert isinstance(LagArm(period=0.004), Robot)
        with pytest.raises(ValueError, match="divisor"):
            MujocoRobot(env, 3)  # 10 physics steps per control step
    finally:
        env.close()


def test_env_step_and_the_robot_node_path_are_one_stepping_function() -> None:
    """``env.step`` and ``MujocoRobot`` (five 2-step advances per control step) reach the same physics state, the
    same task verdicts and the same observation, bit for bit (no wrench noise: its draws follow the read count)."""
    a = make_env("wipe", wrench_noise=0.0)
    b = make_env("wipe", wrench_noise=0.0)
    robot = MujocoRobot(b, 2)
    try:
        obs, info = a.reset(seed=5)
        assert robot.reset(5) == info
        start = a.hold_action()
        for k in range(40):
            action = start + np.r_[0.0, 0.0, -0.002 * k, 0.0, 0.0, 0.0, 0.0]
            obs, reward, terminated, truncated, info = a.step(action)
            robot.apply(action.reshape(1, 7))
            verdicts = [robot.advance() for _ in range(5)]
            assert verdicts[:4] == [None] * 4
            assert verdicts[4] == TaskStep(reward, terminated, truncated)
            reading = robot.read()
            np.testing.assert_array_equal(a.data.qpos, b.data.qpos)
            np.testing.assert_array_equal(a.data.qvel, b.data.qvel)
            assert a.step_count == b.step_count == k + 1 and robot.info() == info
            flat = {**reading.state, **reading.tactile, **reading.wrench}
            assert set(flat) == set(obs)
            for key, value in obs.items():
                assert value.dtype == np.float32, key
                np.testing.assert_array_equal(value, flat[key].astype(np.float32), err_msg=key)
        with pytest.raises(ValueError, match="steps=11"):
            b.advance(11)  # past the end of the control step: the task would skip a scoring step
    finally:
        a.close()
        b.close()


def test_reading_has_the_published_layout() -> None:
    r = Reading.allocate(2, 3, 6, (14, 18))
    assert {k: (v.shape, v.dtype.str) for k, v in r.state.items()} == {
        "tcp_pos": ((2, 3), "<f8"), "tcp_quat": ((2, 4), "<f8"), "joint_pos": ((2, 7), "<f8"),
        "joint_vel": ((2, 7), "<f8"), "gripper_width": ((2,), "<f8"), "scene": ((6,), "<f4"),
    }
    assert {k: (v.shape, v.dtype.str) for k, v in r.tactile.items()} == {
        "marker_offset": ((3, 7, 9, 2), "<f4"), "marker_depth": ((3, 14, 18), "<f4"), "marker_slip": ((3, 2), "<f4"),
    }
    assert r.wrench["wrench"].shape == (2, 6) and r.wrench["wrench"].dtype == np.float64


def test_lag_arm_follows_its_target_and_feels_the_table() -> None:
    t = [0.0]
    arm = LagArm(period=0.004, tau=0.05, surface_z=0.1, stiffness=5000.0, clock=lambda: t[0])
    arm.reset(0)
    arm.apply(np.array([[0.5, 0.1, 0.08, math.pi, 0.0, 0.0, 0.02]]))
    for _ in range(250):  # 1 s of wall clock
        t[0] += 0.004
        assert arm.advance() is None
    r = arm.read()
    np.testing.assert_allclose(r.state["tcp_pos"][0], [0.5, 0.1, 0.08], atol=1e-6)
    np.testing.assert_allclose(r.state["gripper_width"], [0.02], atol=1e-6)
    # 2 cm into the table: 100 N pushing the tool up, i.e. along -z of the downward-pointing TCP frame
    np.testing.assert_allclose(r.wrench["wrench"][0], [0.0, 0.0, -100.0, 0.0, 0.0, 0.0], atol=1e-3)
    assert arm.time == pytest.approx(1.0)
    held = arm.hold()
    np.testing.assert_allclose(held[0, :3], r.state["tcp_pos"][0])


def test_node_refuses_an_unknown_robot() -> None:
    with pytest.raises(ValueError, match="fake, mujoco"):
        load_config(["robot=ur5"])
    with pytest.raises(ValueError, match="package.module:function"):
        load_config(["robot=not a path:x"])


def _poll(sub: Subscriber, into: list[Message]) -> None:
    while (msg := sub.recv(timeout=0)) is not None:
        into.append(msg)


def test_robot_node_runs_on_a_wall_clock_arm_without_mujoco() -> None:
    """The realtime node's loop on ``LagArm``: it takes commands, publishes state at its tick rate, and holds the arm
    when the fake force sensor reads more than the limit (the tool commanded 3 cm into the virtual table)."""
    node = RobotNode(load_config([*ANY_PORT, "robot=fake", "mode=realtime", "task=wipe"]))
    assert isinstance(node.robot, LagArm)
    runner = threading.Thread(target=node.run, name="robot-node", daemon=True)
    sub = Subscriber(node.pub.address, topics=("state", "wrench", "watchdog", "applied", "tactile", "image"))
    cmd = Publisher(node.cmd.address, bind=False)
    got: list[Message] = []
    try:
        runner.start()

        def command(target: list[float], until) -> None:
            end = time.monotonic() + TIMEOUT
            while time.monotonic() < end:
                cmd.publish("cmd", {"target": np.array([target])})
                _poll(sub, got)
                if until():
                    return
                time.sleep(0.01)
            raise AssertionError(f"timed out commanding {target}; last messages {[m.topic for m in got[-5:]]}")

        # 1. Commands reach the arm: it settles on the target (lag 50 ms), states flow at the node's tick rate.
        goal = [0.5, 0.1, 0.25, math.pi, 0.0, 0.0, 0.03]

        def settled() -> bool:
            states = [m for m in got if m.topic == "state"]
            return bool(states) and np.allclose(states[-1].arrays["tcp_pos"][0], goal[:3], atol=1e-3)

        command(goal, settled)
        t_settled = time.monotonic()
        command(goal, lambda: time.monotonic() - t_settled > 1.0)
        states = [m for m in got if m.topic == "state"]
        assert states[-1].arrays["tcp_pos"].dtype == np.float64 and states[-1].arrays["scene"].dtype == np.float32
        stamps = np.array([m.stamp for m in states[-200:]])
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        assert rate > 0.5 * node.cfg.tick_hz, f"{rate:.0f} Hz states, node ticks at {node.cfg.tick_hz} Hz"
        assert not [m for m in got if m.topic == "watchdog" and m.meta["reason"] == "force_limit"]
        assert not [m for m in got if m.topic == "image"]  # the fake arm has no cameras

        # 2. Into the table: the fake sensor reads 150 N, over the 60 N limit, and the node holds the arm there.
        def force_hold() -> bool:
            return any(m.topic == "watchdog" and m.meta["engaged"] and m.meta["reason"] == "force_limit" for m in got)

        command([0.5, 0.1, 0.07, math.pi, 0.0, 0.0, 0.03], force_hold)
        event = next(m for m in got if m.topic == "watchdog" and m.meta["reason"] == "force_limit")
        assert event.meta["force_n"] > node.cfg.limits.force_n
        end = time.monotonic() + TIMEOUT
        while not any(m.topic == "applied" and m.meta["reason"] == "force_limit" for m in got):
            assert time.monotonic() < end, "no applied hold target after the force hold"
            _poll(sub, got)
            time.sleep(0.01)
        hold = next(m for m in got if m.topic == "applied" and m.meta["reason"] == "force_limit")
        assert 0.07 < hold.arrays["applied_target"][0, 2] < node.robot.surface_z  # held where it pressed, not deeper
        wrench = [m for m in got if m.topic == "wrench"][-1].arrays["wrench"]
        assert wrench.dtype == np.float64 and wrench[0, 2] < -node.cfg.limits.force_n * node.cfg.limits.force_release
        assert node.counts["force_holds"] == 1 and node.counts["accepted"] > 0 and node.hold_reason == "force_limit"
    finally:
        node.stop()
        runner.join(timeout=10)
        cmd.close()
        sub.close()
        node.close()
    assert not runner.is_alive()
