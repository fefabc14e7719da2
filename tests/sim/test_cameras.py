import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from sim.registry import ENV_IDS


def test_cameras_render_and_point_cloud_finds_the_table():
    env = sim.make_env("lift", perturb=False, cameras=True)
    obs, _ = env.reset(seed=0)
    for key in ("scene_rgb", "wrist_rgb"):
        img = obs[key]
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert img.std() > 5  # not a blank frame
    pts = env.point_cloud("scene_cam", size=64)
    assert pts.ndim == 2 and pts.shape[1] == 3 and pts.dtype == np.float64
    # Points on the lift table's top face (z = 0.12 within its footprint) must be recovered.
    top = pts[(np.abs(pts[:, 0] - 0.55) < 0.15) & (np.abs(pts[:, 1]) < 0.2) & (pts[:, 2] < 0.125)]
    assert len(top) > 20
    np.testing.assert_allclose(np.median(top[:, 2]), 0.12, atol=0.01)
    floor = pts[(np.abs(pts[:, 0] - 0.55) > 0.4)]
    assert np.median(np.abs(floor[:, 2])) < 0.02  # the floor plane is at z = 0
    with pytest.raises(KeyError, match="cameras"):
        env.point_cloud("no_such_cam")
    env.close()


def test_scene_points_observation_is_off_by_default_and_fixed_size_when_on():
    assert "scene_points" not in sim.make_env("peel").observation_space.spaces
    env = gym.make(ENV_IDS["peel"], point_cloud=True, point_cloud_points=256).unwrapped  # gym's env.spec for check_env
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    pts = obs["scene_points"]
    assert pts.shape == (256, 3) and pts.dtype == np.float32
    assert env.observation_space["scene_points"].contains(pts)
    lo, hi = env.task.scene_points_box
    assert (pts >= np.float32(lo)).all() and (pts <= np.float32(hi)).all()
    # The cucumber on the floor (radius 2-3 cm) is in the cloud; the floor (z = 0) is not.
    assert (pts[:, 2] < 0.065).sum() > 50 and pts[:, 2].min() > 0.004
    obs2, *_ = env.step(env.hold_action())
    assert obs2["scene_points"].shape == (256, 3)
    np.testing.assert_array_equal(env.reset(seed=0)[0]["scene_points"], pts)  # same state, same cloud
    env.close()


@pytest.mark.parametrize("task", ["wipe", "lift"])
def test_every_task_box_holds_enough_scene_points(task):
    env = sim.make_env(task, perturb=False, point_cloud=True)
    obs, _ = env.reset(seed=0)
    assert obs["scene_points"].shape == (512, 3)
    assert len(np.unique(obs["scene_points"], axis=0)) == 512  # the box holds more than 512 voxels: no padding
    env.close()


def test_a_camera_rate_renders_on_its_ticks_and_holds_the_frames_between():
    from sim.registry import make_env

    every = make_env("wipe", cameras=True, point_cloud=True, image_size=32)
    rated = make_env("wipe", cameras=True, point_cloud=True, image_size=32, camera_hz=10.0)
    try:
        a, _ = every.reset(seed=4)
        b, _ = rated.reset(seed=4)
        action = np.concatenate([a["tcp_pos"][0] + [0.0, 0.0, -0.02], [np.pi, 0.0, 0.0], [0.0]])
        keys = ("wrist_rgb", "scene_rgb", "scene_points")
        held = {k: b[k] for k in keys}
        for tick in range(1, 11):
            a, *_ = every.step(action)
            b, *_ = rated.step(action)
            assert np.array_equal(a["tcp_pos"], b["tcp_pos"])  # the physics is untouched
            if tick % 5 == 0:  # 50 Hz control, a 10 Hz camera: a frame every fifth tick, the same as rendering all
                assert all(np.array_equal(a[k], b[k]) for k in keys)
                held = {k: b[k] for k in keys}
            else:  # between, the last frame is held
                assert all(np.array_equal(b[k], held[k]) for k in keys)
        assert not np.array_equal(held["wrist_rgb"], rated.reset(seed=5)[0]["wrist_rgb"])  # a reset renders anew
    finally:
        every.close()
        rated.close()
    with pytest.raises(ValueError, match="camera_hz=7.0 must divide the control rate 50.0 Hz"):
        make_env("wipe", cameras=True, camera_hz=7.0)
