import numpy as np
import pytest

import sim


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
