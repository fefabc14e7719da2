"""sensors.pointcloud: depth -> open3d cloud -> workspace crop -> voxel grid -> a fixed number of points."""

from __future__ import annotations

import numpy as np
import pytest

from sensors.camera import intrinsics_from_fovy
from sensors.pointcloud import EmptyCloudError, PointCloudConfig, WorkspaceSampler, camera_cloud

BOX = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def sampler(num_points: int, voxel_size: float = 0.0, colors: bool = False) -> WorkspaceSampler:
    return WorkspaceSampler(PointCloudConfig(*BOX, num_points=num_points, voxel_size=voxel_size, colors=colors))


def test_crop_keeps_exactly_the_points_inside_the_box() -> None:
    inside = np.array([[0.1, 0.2, 0.3], [0.9, 0.9, 0.9], [0.5, 0.5, 0.01], [0.3, 0.7, 0.5]])
    outside = np.array([[-0.1, 0.5, 0.5], [0.5, 1.2, 0.5], [0.5, 0.5, -0.01], [2.0, 2.0, 2.0]])
    mixed = np.concatenate([outside[:2], inside[:2], outside[2:], inside[2:]])
    out = sampler(4).from_points(mixed)
    assert out.shape == (4, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, inside.astype(np.float32))  # in order: nothing lost, nothing added


def test_fewer_points_are_repeated_in_order() -> None:
    pts = np.random.default_rng(0).uniform(0.1, 0.9, (5, 3))
    out = sampler(12).from_points(pts)
    np.testing.assert_array_equal(out, pts[np.arange(12) % 5].astype(np.float32))


def test_voxel_grid_keeps_one_point_per_occupied_voxel() -> None:
    corners = 0.3 + 0.02 * np.stack(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"), -1).reshape(-1, 3)
    jitter = np.random.default_rng(0).uniform(-1e-4, 1e-4, (50, 1, 3))
    clusters = (corners[None] + jitter).reshape(-1, 3)  # 400 points in 8 clusters 2 cm apart, each 0.2 mm wide
    out = sampler(64, voxel_size=0.005).from_points(clusters)
    centres = np.unique(out, axis=0)
    assert len(centres) <= 16  # one point per occupied voxel (a cluster may straddle a voxel face), repeated to 64
    assert np.linalg.norm(centres[:, None] - corners[None], axis=-1).min(axis=1).max() < 2e-4
    g = np.arange(10) * 0.001 + 0.2  # a 1 mm grid over 1 cm
    cube = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    assert 8 <= len(np.unique(sampler(1000, voxel_size=0.005).from_points(cube), axis=0)) <= 27  # of 1000


def test_more_points_are_farthest_point_sampled_deterministically() -> None:
    rng = np.random.default_rng(1)
    pts = rng.uniform(-0.5, 1.5, (20000, 3))  # about an eighth lies in the box
    s = sampler(256, voxel_size=0.01)
    out = s.from_points(pts)
    assert out.shape == (256, 3) and out.dtype == np.float32
    assert (out >= 0).all() and (out <= 1).all()
    assert len(np.unique(out, axis=0)) == 256
    np.testing.assert_array_equal(out, s.from_points(pts))  # the same input gives the same sample
    # Farthest-point sampling spreads the points: the nearest-neighbour gap beats a random pick's.
    inside = pts[((pts >= 0) & (pts <= 1)).all(axis=1)]
    random_pick = inside[rng.choice(len(inside), 256, replace=False)]
    assert nearest_gap(out).min() > 2 * nearest_gap(random_pick).min()


def nearest_gap(p: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def test_an_empty_crop_is_an_error_naming_the_box() -> None:
    with pytest.raises(EmptyCloudError, match=r"none of the 3 points lies in the workspace box \(0.0, 0.0, 0.0\)"):
        sampler(8).from_points(np.full((3, 3), 5.0))
    assert issubclass(EmptyCloudError, ValueError)


def test_colours_ride_along_with_their_points() -> None:
    pts = np.array([[0.1, 0.1, 0.1], [0.8, 0.8, 0.8], [3.0, 0.0, 0.0]])
    rgb = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    out = sampler(2, colors=True).from_points(pts, rgb)
    assert out.shape == (2, 6)
    np.testing.assert_allclose(out, np.hstack((pts[:2], rgb[:2])).astype(np.float32))
    with pytest.raises(ValueError, match="colors=True needs per-point colours"):
        sampler(2, colors=True).from_points(pts)


@pytest.mark.parametrize("kwargs, says", [
    ({"box_min": (0, 0, 1), "box_max": (1, 1, 1)}, "below box_max"),
    ({"box_min": (0, 0), "box_max": (1, 1, 1)}, "two finite"),
    ({"num_points": 0}, "num_points=0"),
    ({"voxel_size": -0.01}, "voxel_size=-0.01"),
    ({"max_depth": 0.0}, "max_depth=0.0"),
])
def test_config_refuses_bad_values(kwargs: dict, says: str) -> None:
    args = {"box_min": BOX[0], "box_max": BOX[1]} | kwargs
    with pytest.raises(ValueError, match=says):
        PointCloudConfig(**args)


def look_at(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world rotation in MuJoCo's convention: columns = camera x (right), y (up), z (backward)."""
    back = (pos - target) / np.linalg.norm(pos - target)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    return np.stack((right, np.cross(back, right), back), axis=1)


def test_camera_cloud_back_projects_in_mujoco_camera_convention() -> None:
    size, fovy = 9, 60.0
    k = intrinsics_from_fovy(fovy, size, size)
    pos = np.array([1.0, -0.5, 0.8])
    rot = look_at(pos, np.zeros(3))
    depth = np.full((size, size), 1.2, np.float32)
    depth[0, 0], depth[0, 1], depth[1, 0] = 5.0, np.nan, -1.0  # beyond max_depth, invalid, behind: all dropped
    pts = np.asarray(camera_cloud(depth, k, pos, rot, max_depth=3.0).points)
    assert pts.shape == (size * size - 3, 3)
    # Reference, written out: pixel (v, u) at depth z -> camera ((u - cx) z / f, -(v - cy) z / f, -z) -> world.
    v, u = 4, 7
    z = 1.2
    cam = np.array([(u - k[0, 2]) * z / k[0, 0], -(v - k[1, 2]) * z / k[1, 1], -z])
    assert np.isclose(np.linalg.norm(pts - (rot @ cam + pos), axis=1), 0, atol=1e-6).any()
    centre = pos + rot @ np.array([0.0, 0.0, -z])  # the centre pixel lies on the optical axis
    assert np.isclose(np.linalg.norm(pts - centre, axis=1), 0, atol=1e-6).any()
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[4, 4] = (255, 0, 0)
    coloured = camera_cloud(depth, k, pos, rot, max_depth=3.0, rgb=rgb)
    red = np.asarray(coloured.points)[np.asarray(coloured.colors)[:, 0] > 0.99]
    np.testing.assert_allclose(red, [centre], atol=1e-6)
    with pytest.raises(ValueError, match=r"rgb must be \(9, 9, 3\) uint8"):
        camera_cloud(depth, k, pos, rot, rgb=rgb[:, :4])


def test_scene_camera_depth_puts_the_lift_table_top_at_its_height() -> None:
    import mujoco

    import sim
    from sim.env import SCENE_CAMERA
    from sim.tasks.lift import TABLE_TOP

    env = sim.make_env("lift", perturb=False)
    env.reset(seed=0)
    cid = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, SCENE_CAMERA)
    k = intrinsics_from_fovy(float(env.model.cam_fovy[cid]), 96, 96)
    depth = env.render_depth(SCENE_CAMERA, 96)
    # The table's top face (0.2 x 0.25 half-size around (0.55, 0)), a slab 2 cm around its height.
    table = WorkspaceSampler(PointCloudConfig((0.37, -0.23, TABLE_TOP - 0.01), (0.73, 0.23, TABLE_TOP + 0.01),
                                              num_points=128, voxel_size=0.005))
    pts = table.from_depth(depth, k, env.data.cam_xpos[cid], env.data.cam_xmat[cid].reshape(3, 3))
    assert pts.shape == (128, 3) and len(np.unique(pts, axis=0)) == 128  # the top face gives more than 128 points
    np.testing.assert_allclose(np.median(pts[:, 2]), TABLE_TOP, atol=0.002)
    assert np.mean(np.abs(pts[:, 2] - TABLE_TOP) < 0.003) > 0.9
    env.close()
