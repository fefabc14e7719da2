import dataclasses

import mujoco
import numpy as np
import pytest

import sim
from bus.cli import UsageError
from bus.config import _hydra_compose
from bus.resources import config_dir
from sim.looks import (
    HUE_BAND,
    SCENE_CAMERA_JITTER,
    SPACES,
    WRIST_CAMERA_JITTER,
    sample_look,
    texture_image,
)

SIZE = 96
SCENE = "scene_cam"


def _env(task="wipe", looks="train", cameras=True):
    return sim.make_env(task, perturb=True, cameras=cameras, image_size=SIZE, looks=looks)


def _sample(split, seed, spots=((0.3, 0.5, 0.5, 0.6, 0.0),)):
    cams = {SCENE: SCENE_CAMERA_JITTER, "arm/wrist_cam": WRIST_CAMERA_JITTER}
    return sample_look(np.random.default_rng(seed), split, ["floor", "table", "object"], cams, spots)


def _hues(look):
    return [p.hue for p in look.paints.values()] + [look.distractor.paint.hue]


def test_same_seed_same_look_and_images_different_seeds_differ():
    env = _env()
    obs3, _ = env.reset(seed=3)
    look3 = env.looks.current
    obs4, _ = env.reset(seed=4)
    again, _ = env.reset(seed=3)  # whatever came before, the seed alone decides
    assert env.looks.current == look3 and env.looks.current != _sample("train", 0)
    for key in ("scene_rgb", "wrist_rgb"):
        np.testing.assert_array_equal(again[key], obs3[key])
        assert np.abs(obs4[key].astype(int) - obs3[key].astype(int)).mean() > 3, key
    other = _env()  # another env (another renderer) draws the same look for the seed
    obs, _ = other.reset(seed=3)
    assert other.looks.current == look3
    np.testing.assert_array_equal(obs["scene_rgb"], obs3["scene_rgb"])
    env.close()
    other.close()


def test_splits_are_disjoint():
    heldout_only = set(SPACES["heldout"].textures) - set(SPACES["train"].textures)
    assert heldout_only and not set(SPACES["train"].shapes) & set(SPACES["heldout"].shapes)
    for split, other in (("train", "heldout"), ("heldout", "train")):
        bands, other_bands = set(SPACES[split].hue_bands), set(SPACES[other].hue_bands)
        assert not bands & other_bands
        lo, hi = SPACES[other].key_azimuth
        for seed in range(300):
            look = _sample(split, seed)
            assert all(int(h // HUE_BAND) in bands for h in _hues(look)), look
            assert look.distractor.shape in SPACES[split].shapes
            az = look.lighting.azimuth
            assert not any(lo <= a < hi for a in (az, az - 360.0, az + 360.0)), az  # never from the other's sector
            textures = {p.texture for p in look.paints.values()} | {look.distractor.paint.texture}
            if split == "train":
                assert not textures & heldout_only


@pytest.mark.parametrize("task", ["wipe", "lift"])
def test_looks_leave_physics_and_non_image_observations_bit_identical(task):
    runs = []
    for looks in ("none", "train", "heldout"):
        env = _env(task, looks)
        obs, info = env.reset(seed=11)
        rng = np.random.default_rng(0)  # the same action sequence for each
        hold = env.hold_action()
        trace = [(obs, info)]
        for _ in range(6):
            a = hold + np.tile([*rng.normal(0, 0.01, 3), 0, 0, 0, 0], len(env.arms))
            obs, reward, terminated, truncated, info = env.step(a)
            trace.append((obs, {**info, "reward": reward, "ended": (terminated, truncated)}))
        d = env.data
        state = {k: getattr(d, k).copy() for k in ("qpos", "qvel", "qacc", "act", "ctrl", "qfrc_constraint",
                                                   "mocap_pos", "sensordata", "efc_force")}
        state["xpos"] = d.xpos[: runs[0][1]["xpos"].shape[0] if runs else None].copy()  # less the distractor's body
        runs.append((trace, state, d.ncon, env.last_wrench.copy(), [f.offset.copy() for f in env.last_fields]))
        env.close()
    (base, state0, ncon0, wrench0, fields0), *others = runs
    for trace, state, ncon, wrench, fields in others:
        assert ncon == ncon0
        for k, v in state.items():
            np.testing.assert_array_equal(v, state0[k], err_msg=k)
        np.testing.assert_array_equal(wrench, wrench0)
        for f, f0 in zip(fields, fields0, strict=True):
            np.testing.assert_array_equal(f, f0)
        for (obs, info), (obs0, info0) in zip(trace, base, strict=True):
            assert info == info0
            for key, value in obs0.items():
                if not key.endswith("_rgb"):  # images are what looks change
                    np.testing.assert_array_equal(obs[key], value, err_msg=key)


def test_looks_change_the_renders_and_heldout_renders():
    none, train, heldout = (_env("peel", looks) for looks in ("none", "train", "heldout"))
    imgs = {}
    for name, env in (("none", none), ("train", train), ("heldout", heldout)):
        obs, _ = env.reset(seed=5)
        imgs[name] = obs
        for key in ("scene_rgb", "wrist_rgb"):
            assert obs[key].std() > 5, (name, key)  # not a blank frame
    assert none.looks is None and heldout.looks.current.split == "heldout"
    assert heldout.looks.current.distractor.shape in SPACES["heldout"].shapes
    for key in ("scene_rgb", "wrist_rgb"):
        for name in ("train", "heldout"):
            assert np.abs(imgs[name][key].astype(int) - imgs["none"][key].astype(int)).mean() > 5, (name, key)
    for env in (none, train, heldout):
        env.close()


def test_camera_offsets_move_the_view_without_drift():
    env = _env("lift", "train", cameras=False)
    m = env.model
    cams = {name: i for i, name in enumerate(m.camera(i).name for i in range(m.ncam))}
    env.reset(seed=1)
    first = m.cam_pos.copy(), m.cam_quat.copy()
    env.reset(seed=2)
    env.reset()  # no seed: the looks' own stream goes on
    env.reset(seed=1)
    np.testing.assert_array_equal(m.cam_pos, first[0])  # restored from the nominal pose, not moved on from the last
    np.testing.assert_array_equal(m.cam_quat, first[1])
    look = env.looks.current
    nominal = sim.make_env("lift", perturb=False)  # looks none: the nominal poses
    for name, offset in look.cameras.items():
        i = cams[name]
        shift = m.cam_pos[i] - nominal.model.cam_pos[i]
        np.testing.assert_allclose(shift, offset.shift, atol=1e-12)
        limit = SCENE_CAMERA_JITTER if name == SCENE else WRIST_CAMERA_JITTER
        assert 0 < np.linalg.norm(shift) <= limit.shift + 1e-12
        dot = abs(float(np.dot(m.cam_quat[i], nominal.model.cam_quat[i])))
        assert np.rad2deg(2 * np.arccos(min(dot, 1.0))) <= limit.tilt + 1e-6
    # The offsets alone (everything else of the look kept) move the rendered views.
    views = {name: env.render_camera(name, SIZE) for name in look.cameras}
    env.looks.apply(m, dataclasses.replace(look, cameras={
        n: dataclasses.replace(o, shift=(0.0, 0.0, 0.0), rotvec=(0.0, 0.0, 0.0)) for n, o in look.cameras.items()}))
    mujoco.mj_forward(m, env.data)
    for name, view in views.items():
        assert np.abs(env.render_camera(name, SIZE).astype(int) - view.astype(int)).mean() > 0.5, name
    env.close()
    nominal.close()


def test_distractor_never_collides_and_stays_out_of_the_work():
    for task in ("wipe", "peel", "lift"):
        env = sim.make_env(task, perturb=False, looks="train")
        m = env.model
        shapes = env.looks._shapes
        assert all(m.geom_contype[g] == 0 and m.geom_conaffinity[g] == 0 for g in shapes.values())
        lo, hi = (np.asarray(c) for c in env.task.scene_points_box)
        for split in ("train", "heldout"):
            for seed in range(100):
                d = sample_look(np.random.default_rng(seed), split, [], {}, env.task.distractor_spots).distractor
                s = np.asarray(d.size)
                reach = {"box": np.hypot(s[0], s[1]), "capsule": s[0] + s[1]}.get(d.shape, max(s[0], s[1]))
                top = d.pos[2] + {"cylinder": s[1]}.get(d.shape, s[2] if d.shape in ("box", "ellipsoid") else s[0])
                outside_xy = (d.pos[0] + reach < lo[0] or d.pos[0] - reach > hi[0]
                              or d.pos[1] + reach < lo[1] or d.pos[1] - reach > hi[1])
                assert outside_xy or top < lo[2], (task, split, d)
        env.close()


def test_looks_option_reaches_the_env_from_configs(monkeypatch, tmp_path):
    sensors = _hydra_compose(config_dir() / "eval.yaml", ["sensors=vision_heldout"]).sensors
    assert sensors.cameras is True and sensors.looks == "heldout"
    assert _hydra_compose(config_dir() / "eval.yaml", ["sensors=vision"]).sensors.looks == "train"
    assert _hydra_compose(config_dir() / "eval.yaml", []).sensors.looks == "none"

    import sim.eval

    made = {}

    def make_env(task, **kwargs):
        made.update(kwargs)
        raise UsageError("stop here")

    monkeypatch.setattr(sim.eval, "make_env", make_env)
    code = sim.eval.main(["task=peel", "policy=expert", "sensors=vision_heldout", "episodes=1", f"out={tmp_path}"])
    assert code == 2 and made["looks"] == "heldout" and made["cameras"] is True

    from sim.mujoco_robot import from_node_config
    from sim.node import load_config

    robot = from_node_config(load_config(["task=wipe", "looks=heldout"]))
    cameras = robot.open_cameras(32)  # the node's own renderer, made once, shows each episode's look
    frames = []
    for seed in (0, 1):
        robot.reset(seed=seed)
        cameras.capture()
        frames.append(cameras.frames()["scene_rgb"].astype(int))
    assert robot.env.looks.current.split == "heldout" and np.abs(frames[1] - frames[0]).mean() > 3
    cameras.close()
    robot.close()
    with pytest.raises(UsageError, match="looks"):
        load_config(["looks=sometimes"])
    with pytest.raises(ValueError, match="looks=sometimes"):
        sim.make_env("wipe", looks="sometimes")


def test_textures_tile_seamlessly_and_stay_light():
    for kind in ("checker", "stripes", "grain", "dots", "marble"):
        img = texture_image(kind).astype(float) / 255
        assert img.shape == (128, 128, 3) and 0.5 < img.min() and img.mean() > 0.75, kind
        grey = img[:, :, 0]
        for axis in (0, 1):  # across the tile's edge no bigger a step than between neighbouring pixels inside it
            wrap = np.abs(np.take(grey, 0, axis) - np.take(grey, -1, axis)).max()
            assert wrap <= np.abs(np.diff(grey, axis=axis)).max() + 1e-9, (kind, axis)


def test_sheet_cli_writes_a_contact_sheet(tmp_path, capsys):
    from sim.looks import main

    assert main(["task=peel", "split=heldout", "n=2", "size=32", f"out={tmp_path}"]) == 0
    from PIL import Image

    sheet = np.asarray(Image.open(tmp_path / "peel-heldout-seed0-n2.png"))
    assert sheet.shape == (64, 64, 3) and sheet.std() > 5
    assert main(["split=sometimes"]) == 2
