"""The robot-side press guard (sim.press_guard in ContactRichEnv): it caps a press, changes nothing while idle, and
``env.step`` and the robot node's ticks give the same physics with it on."""

from __future__ import annotations

import numpy as np
import pytest

from bus.cli import UsageError
from sim.env import ContactRichEnv
from sim.mujoco_robot import MujocoRobot, from_node_config
from sim.node import load_config
from sim.press_guard import TASK_PRESS_LIMIT_N, guard_steps
from sim.registry import make_env
from spatial.rotations import mat_to_rotvec

STEPS = 60  # control steps (1.2 s): the press has settled


def _press_into_surface(env: ContactRichEnv, depth: float = 0.03) -> np.ndarray:
    """(7,) action: the start orientation, ``depth`` into the wipe surface at the start of its path."""
    env.reset(seed=0)
    point, normal = env.task.nominal["points"][0], env.task.nominal["normals"][0]
    _, rot = env.tcp_pose(0)
    return np.array([*(point - depth * normal), *mat_to_rotvec(rot), 0.02])


def _settled_press(press_guard_n: float) -> tuple[float, dict]:
    env = make_env("wipe", perturb=False, press_guard_n=press_guard_n)
    action = _press_into_surface(env)
    forces = []
    for _ in range(STEPS):
        obs, _, _, _, info = env.step(action)
        forces.append(-float(obs["wrench"][0, 2]))
    return float(np.mean(forces[-10:])), info


def test_the_guard_caps_a_press_the_commands_push_into_the_surface() -> None:
    limit = TASK_PRESS_LIMIT_N["wipe"]
    off, info_off = _settled_press(0.0)
    on, info_on = _settled_press(limit)
    assert off > limit + 10.0  # 3 cm into a stiff surface: far over the limit without the guard
    assert on == pytest.approx(limit, abs=2.0)  # the guard holds it at its limit
    assert "guard_retract_m" not in info_off
    assert 0.005 < info_on["guard_retract_m"] <= 0.03 and info_on["guard_active_s"] > 0.5


def test_an_idle_guard_changes_no_physics() -> None:
    """A limit the press never reaches: the same trajectory as with the guard off (only the wrench noise draws
    differ: the guard reads the wrist every period)."""
    envs = [make_env("wipe", perturb=False, press_guard_n=n) for n in (0.0, 1000.0)]
    actions = [_press_into_surface(env, depth=0.005) for env in envs]
    for _ in range(20):
        for env, action in zip(envs, actions, strict=True):
            env.step(action)
    assert np.array_equal(envs[0].data.qpos, envs[1].data.qpos)
    assert envs[1].info()["guard_retract_m"] == 0.0


def test_env_step_and_the_robot_nodes_ticks_give_the_same_physics_with_the_guard_on() -> None:
    """sim.eval (one env.step per 20 ms) and the robot node (MujocoRobot: apply, then one advance per 4 ms tick)
    read and guard at the same instants, so the same commands give bit-identical states and wrenches."""
    stepped = make_env("wipe", perturb=False, press_guard_n=20.0)
    ticked = make_env("wipe", perturb=False, press_guard_n=20.0)
    period = guard_steps(ticked.physics_hz)  # the robot node's default tick: 2 steps at 500 Hz, 4 ms
    robot = MujocoRobot(ticked, period)
    action = _press_into_surface(stepped)
    assert np.array_equal(_press_into_surface(ticked), action)
    for _ in range(STEPS // 2):
        stepped.step(action)
        robot.apply(action.reshape(1, 7))
        for _ in range(ticked.substeps // period):
            robot.advance()
    assert stepped.info()["guard_retract_m"] > 0
    assert np.array_equal(stepped.data.qpos, ticked.data.qpos)
    assert np.array_equal(stepped.last_wrench, ticked.last_wrench)
    assert stepped.info() == robot.info()


def test_the_robot_node_config_turns_the_guard_on_in_its_scene() -> None:
    robot = from_node_config(load_config(["press_guard_n=15"]))
    assert robot.env.guard.cfg.press_force_n == 15.0
    assert not from_node_config(load_config([])).env.guard.enabled  # off by default


def test_a_bad_guard_setting_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match=r"^press_guard_n=-1.0: expected a wrist force limit >= 0 N \(0 = off\)$"):
        make_env("wipe", press_guard_n=-1.0)
    with pytest.raises(UsageError, match="press_guard_n=-5.0: expected a wrist force limit >= 0 N") as err:
        load_config(["press_guard_n=-5"])
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="publish_every=1 must be a multiple of the guard's period of 2"):
        load_config(["press_guard_n=20", "publish_every=1"])
    with pytest.raises(UsageError, match="the press guard is part of the MuJoCo scene"):
        load_config(["press_guard_n=20", "robot=fake"])
    env = make_env("wipe", press_guard_n=20.0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="steps=1: with the press guard on, a multiple of its period of 2"):
        env.advance(1)
    with pytest.raises(ValueError, match="a multiple of its period of 2 physics steps"):
        MujocoRobot(env, 1)
