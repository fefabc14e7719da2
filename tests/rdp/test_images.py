"""Camera images as slow-policy observations: held frames in the training set, uint8 windows, image training and
the live hold at run time (rdp.data, dataset build, rdp.train, rdp.inference)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset.format import build_training_set, list_episodes, load_stream, load_training_episode
from rdp.data import DataError, gather, load_episodes, make_windows, resize_images
from rdp.inference import make_policy
from rdp.train import DiffusionSizes, MethodConfig, TokenizerSizes, TrainConfig, train
from teleop.record_expert import RecordConfig, record_expert_episodes

CONTROL_STEPS = 30  # 0.6 s at 50 Hz: camera frames at ticks 0, 5, ..., 25, so 13 training steps at 25 Hz (the
STEPS = 13  # build's clock ends at the last frame, t = 0.5 s: no stream is held past its end)
SIZE = 16  # frames resized 96 -> 16 for speed


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cam_demos") / "wipe"
    record_expert_episodes(RecordConfig(task="wipe", episodes=2, seed=3, out=str(out), max_steps=CONTROL_STEPS,
                                        cameras=True, progress=False))
    for ep in list_episodes(out):  # cut at 30 steps, the demos end unfinished (success=false, not trained on):
        meta = json.loads((ep / "meta.json").read_text())  # mark the outcome unknown instead
        (ep / "meta.json").write_text(json.dumps({**meta, "success": None}))
    return out


def image_config(data: Path, out: Path, encoder: str = "resnet", steps: int = 2) -> TrainConfig:
    method = MethodConfig(
        name="rdp", obs_keys=("proprio", "tactile"), cond_key="tactile",
        tokenizer=TokenizerSizes(latent_steps=4, latent_channels=4, encoder_hidden=16, decoder_hidden=16),
        diffusion=DiffusionSizes(down_dims=(16, 32), diffusion_step_embed_dim=16, num_train_timesteps=20,
                                 num_inference_steps=2),
        tokenizer_steps=steps, policy_steps=steps, warmup_steps=1, image_keys=("wrist_rgb",), image_size=SIZE,
        encoder=encoder, encoder_width=8, encoder_stem_stride=4,
    )
    return TrainConfig(task="wipe", method=method, data=str(data), out=str(out), horizon=16, batch_size=4,
                       progress=False, log_every=1, checkpoint_every=100)


# ----------------------------------------------------------------------------------------------- data


def test_build_holds_camera_frames_and_records_their_rate(demos: Path, tmp_path: Path) -> None:
    built = tmp_path / "built"
    summary = build_training_set(demos, 25.0, built, streams=["action", "wrist_rgb"])
    assert summary["held_streams"] == {"wrist_rgb": pytest.approx(10.0)}
    ep = load_training_episode(built / "episode_000000.npz")
    _, raw = load_stream(list_episodes(demos)[0], "wrist_rgb")
    k = np.arange(len(ep["timestamp"]))
    held = (2 * k) // 5  # step k is tick 2k; the latest frame at or before it is frame floor(2k / 5) (tick 5 j)
    assert ep["wrist_rgb"].dtype == np.uint8 and len(k) == STEPS
    np.testing.assert_array_equal(ep["wrist_rgb"], raw[held])
    assert not np.array_equal(raw[0], raw[-1])  # the frames differ, so the check above means something


def test_image_windows_are_uint8_held_frames(demos: Path) -> None:
    eps = load_episodes(demos, 25.0, image_keys=("wrist_rgb",), image_size=SIZE)
    assert eps.image_hz == {"wrist_rgb": pytest.approx(10.0)} and eps.camera_size == {"wrist_rgb": (96, 96)}
    assert eps.images["wrist_rgb"].shape == (2 * STEPS, SIZE, SIZE, 3) and eps.images["wrist_rgb"].dtype == np.uint8
    windows = make_windows(eps, obs_steps=2, horizon=16)
    batch = gather(eps, windows, np.arange(len(windows)), ("proprio",), None, image_keys=("wrist_rgb",))
    images = batch["obs"]["wrist_rgb"]
    assert images.shape == (2 * STEPS, 2, SIZE, SIZE, 3) and images.dtype == np.uint8
    _, raw = load_stream(list_episodes(demos)[1], "wrist_rgb")
    i = STEPS + 7  # episode 1, step 7 (tick 14): holds frame 2 (tick 10); its history step 6 (tick 12) holds frame 2
    np.testing.assert_array_equal(batch["obs"]["wrist_rgb"][i, 1], resize_images(raw[2], SIZE))
    np.testing.assert_array_equal(batch["obs"]["wrist_rgb"][i, 0], resize_images(raw[2], SIZE))
    # the low-dim steps are those of a low-dim load, cut where the last camera frame ends the clock
    plain = load_episodes(demos, 25.0)
    for start, n, start_img in zip(plain.starts, plain.lengths, eps.starts, strict=True):
        assert n == 15
        np.testing.assert_array_equal(plain.features["proprio"][start:start + STEPS],
                                      eps.features["proprio"][start_img:start_img + STEPS])


def test_missing_or_wrong_image_streams_are_refused(demos: Path) -> None:
    with pytest.raises(DataError, match=r"lacks image stream 'cam_front'.*scene_rgb.*wrist_rgb"):
        load_episodes(demos, 25.0, image_keys=("cam_front",))
    with pytest.raises(DataError, match=r"'tcp_pos' is .*not an RGB image stream"):
        load_episodes(demos, 25.0, image_keys=("tcp_pos",))
    with pytest.raises(KeyError, match="were not loaded"):
        eps = load_episodes(demos, 25.0)
        gather(eps, make_windows(eps), np.arange(2), (), None, image_keys=("wrist_rgb",))


def test_resize_is_an_area_mean() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    box = img.reshape(2, 48, 2, 48, 2, 3).astype(np.float64).mean(axis=(2, 4))
    np.testing.assert_array_equal(resize_images(img, 48), np.rint(box).astype(np.uint8))
    assert resize_images(img, None) is img and resize_images(img, 96) is img
    flat = np.full((96, 96, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_images(flat, 64), np.full((64, 64, 3), 77, np.uint8))  # non-integer ratio
    with pytest.raises(ValueError, match="expected uint8"):
        resize_images(img.astype(np.float32), 48)


# ----------------------------------------------------------------------------------------------- train + run


@pytest.mark.parametrize("encoder", ["resnet", "terminator"])
def test_image_policy_trains_and_holds_live_frames_like_training(demos: Path, tmp_path: Path, encoder: str) -> None:
    import sim

    run = tmp_path / encoder
    train(image_config(demos, run, encoder))
    info = json.loads((run / "run.json").read_text())
    assert info["image_keys"] == ["wrist_rgb"] and info["image_shape"] == [SIZE, SIZE]
    assert info["encoder"] == encoder and info["image_hz"] == {"wrist_rgb": pytest.approx(10.0)}
    policy = make_policy("wipe", checkpoint=run, replan_every=2)
    assert policy.planner.model.cfg.encoder == encoder and policy.planner.model.cfg.image_size == (SIZE, SIZE)

    seen: list[torch.Tensor] = []
    predict = policy.planner.model.predict
    policy.planner.model.predict = lambda obs, **kw: (seen.append(obs["wrist_rgb"].clone()), predict(obs, **kw))[1]
    env = sim.make_env("wipe", cameras=True)
    try:
        obs, _ = env.reset(seed=5)
        policy.reset(env)
        frames = []  # what the env rendered at each tick
        for _ in range(12):
            frames.append(obs["wrist_rgb"].copy())
            obs, *_ = env.step(policy.act(obs))
    finally:
        env.close()
    # plans at policy steps 0, 2, 4 (ticks 0, 4, 8); step k holds the frame of tick 5 * floor(2k / 5)
    assert len(seen) == 3 and seen[0].shape == (1, 2, 3, SIZE, SIZE) and seen[0].dtype == torch.uint8

    def held(k: int) -> np.ndarray:
        return resize_images(frames[5 * ((2 * max(k, 0)) // 5)], SIZE)

    for plan, k in enumerate((0, 2, 4)):
        got = seen[plan][0].permute(0, 2, 3, 1).numpy()  # (To, H, W, 3)
        np.testing.assert_array_equal(got[1], held(k))
        np.testing.assert_array_equal(got[0], held(k - 1))
    assert not np.array_equal(held(4), held(0))


def test_image_policy_refuses_an_env_without_cameras(demos: Path, tmp_path: Path) -> None:
    import sim

    run = tmp_path / "run"
    train(image_config(demos, run, steps=1))
    policy = make_policy("wipe", checkpoint=run)
    env = sim.make_env("wipe")
    try:
        env.reset(seed=0)
        with pytest.raises(ValueError, match=r"reads camera images \['wrist_rgb'\].*sensors=vision"):
            policy.reset(env)
    finally:
        env.close()
    env = sim.make_env("wipe", cameras=True, image_size=64)
    try:
        env.reset(seed=0)
        with pytest.raises(ValueError, match="96x96 pixels, env renders 64x64"):
            policy.reset(env)
    finally:
        env.close()


def test_image_run_refuses_a_resume_with_another_encoder(demos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(image_config(demos, run, steps=1))
    cfg = image_config(demos, run, "terminator", steps=2)
    with pytest.raises(ValueError, match="encoder: run 'resnet', now 'terminator'"):
        train(dataclasses.replace(cfg, resume=True))


def test_vision_configs_compose_for_training() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(str(configs), version_base=None):
        for name, encoder in (("rdp_vision", "resnet"), ("rdp_vision_terminator", "terminator")):
            cfg = compose("train", overrides=[f"policy={name}", "data=D", "out=O"])
            tc = TrainConfig.from_hydra(OmegaConf.to_container(cfg, resolve=True))
            assert tc.method.image_keys == ("wrist_rgb",) and tc.method.encoder == encoder
            assert tc.method.obs_keys == ("proprio", "tactile") and tc.method.name == "rdp"
        base = TrainConfig.from_hydra(OmegaConf.to_container(
            compose("train", overrides=["policy=rdp", "data=D", "out=O"]), resolve=True))
        assert base.method.image_keys == ()
