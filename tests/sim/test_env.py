import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from sim.registry import ENV_IDS, TASKS


@pytest.mark.parametrize("task", sorted(TASKS))
def test_check_env(task):
    env = gym.make(ENV_IDS[task]).unwrapped
    check_env(env, skip_render_check=True)
    env.close()


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="valid tasks"):
        sim.make_env("juggle")


def test_bad_actions_are_rejected_before_physics():
    env = sim.make_env("wipe")
    env.reset(seed=0)
    qpos = env.data.qpos.copy()
    t = env.time
    with pytest.raises(ValueError, match="expected"):
        env.step(np.zeros(3))
    bad = env.hold_action()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        env.step(bad)
    assert env.time == t
    np.testing.assert_array_equal(env.data.qpos, qpos)


def test_hold_action_keeps_the_robot_still():
    env = sim.make_env("wipe", perturb=False)
    env.reset(seed=1)
    p0 = env.tcp_pose(0)[0]
    for _ in range(25):
        env.step(env.hold_action())
    assert np.linalg.norm(env.tcp_pose(0)[0] - p0) < 0.005
