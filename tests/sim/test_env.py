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
    with pytest.raises(ValueError, match="no such task; choose one of lift, peel, wipe"):
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


def test_task_decals_are_drawn_where_the_task_scores_them():
    """Marks/strips moved at reset must really move (MuJoCo ignores geom_pos of 'same frame' geoms)."""
    env = sim.make_env("wipe", perturb=False)
    env.reset(seed=4)
    task = env.task
    centre = env.data.xpos[task._body]
    for k, gid in enumerate(task._marks):
        th = task.mark_theta[k]
        expected = centre + task.radius * np.array([np.sin(th), 0.0, np.cos(th)])
        np.testing.assert_allclose(env.data.geom_xpos[gid], expected, atol=2e-3)
    env = sim.make_env("peel", perturb=False)
    env.reset(seed=4)
    xs = [env.data.geom_xpos[g][0] for g in env.task._segs]
    assert np.all(np.diff(xs) > 0.02)  # strips laid out along the cucumber, not stacked at its centre
