"""rdp.data + rdp.train: recorded demos -> windows -> two-stage training with resume -> a policy that drives the sim."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bus.cli import UsageError
from dataset.features import lowdim_features
from dataset.format import build_training_set, ensure_dataset_root
from rdp.checkpoint import load_checkpoint, load_config
from rdp.data import (
    DataError,
    env_to_policy_action,
    gather,
    load_episodes,
    make_windows,
    policy_to_env_action,
    shift_positions,
)
from rdp.inference import make_policy
from rdp.tokenizer import AsymmetricTokenizer, TokenizerConfig
from rdp.train import DiffusionSizes, MethodConfig, TokenizerSizes, TrainConfig, lr_at, train
from sensors.embedding import TactileEmbedding
from spatial.rotations import matrix_to_rotvec, rotvec_to_mat, rotvec_to_matrix
from teleop.record_expert import RecordConfig, record_expert_episodes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STEPS_PER_EPISODE = 60  # control steps at 50 Hz -> 30 training steps at 25 Hz


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demos") / "wipe"
    record_expert_episodes(RecordConfig(task="wipe", episodes=2, seed=0, out=str(out), max_steps=STEPS_PER_EPISODE,
                                        progress=False))
    return out


def tiny_config(name: str, data: Path, out: Path, steps: int = 4, **overrides: object) -> TrainConfig:
    tok = TokenizerSizes(latent_steps=4, latent_channels=4, encoder_hidden=16, decoder_hidden=16)
    tok = tok if name == "rdp" else None
    method = MethodConfig(
        name=name, obs_keys=("proprio", "tactile") if name == "rdp" else ("proprio",),
        cond_key="tactile" if name == "rdp" else None, tokenizer=tok,
        diffusion=DiffusionSizes(down_dims=(16, 32), diffusion_step_embed_dim=16, num_train_timesteps=20,
                                 num_inference_steps=2),
        tokenizer_steps=steps if name == "rdp" else 0, policy_steps=steps, warmup_steps=2,
    )
    base = dict(task="wipe", method=method, data=str(data), out=str(out), horizon=16, batch_size=8, progress=False,
                log_every=1, checkpoint_every=2)
    return TrainConfig(**{**base, **overrides})


# ----------------------------------------------------------------------------------------------- data


def test_windows_have_the_documented_shapes_and_padding(demos: Path) -> None:
    eps = load_episodes(demos, rate_hz=25.0)
    assert eps.lengths.tolist() == [STEPS_PER_EPISODE // 2] * 2 and eps.num_arms == 1 and eps.num_pads == 3
    windows = make_windows(eps, obs_steps=2, horizon=32)
    assert len(windows) == STEPS_PER_EPISODE
    batch = gather(eps, windows, np.arange(len(windows)), ("proprio", "tactile", "wrench"), "tactile")
    assert batch["obs"]["proprio"].shape == (60, 2, 10)
    assert batch["obs"]["tactile"].shape == (60, 2, 45)
    assert batch["obs"]["wrench"].shape == (60, 2, 6)
    assert batch["action"].shape == (60, 32, 10) and batch["cond"].shape == (60, 32, 45)
    # Start: the history repeats step 0. End: the chunk repeats the episode's last action.
    np.testing.assert_array_equal(batch["obs"]["proprio"][0, 0], batch["obs"]["proprio"][0, 1])
    last = 29
    np.testing.assert_array_equal(batch["action"][last], np.repeat(eps.action[last][None], 32, axis=0))
    np.testing.assert_array_equal(batch["action"][0, :30], eps.action[:30])


def test_training_rate_keeps_every_second_control_step(demos: Path, tmp_path: Path) -> None:
    from dataset.format import list_episodes, load_stream

    eps = load_episodes(demos, rate_hz=25.0)
    _, raw = load_stream(list_episodes(demos)[0], "action")
    np.testing.assert_allclose(policy_to_env_action(eps.action[:30]), raw[::2], atol=1e-5)
    built = tmp_path / "built25"
    build_training_set(demos, 25.0, built, streams=["action", "gripper_width", "marker_offset", "tcp_pos",
                                                    "tcp_quat", "wrench"])
    from_built = load_episodes(built, rate_hz=25.0)
    np.testing.assert_array_equal(from_built.action, eps.action)


def test_rotation_6d_round_trip_and_continuity_near_pi() -> None:
    rng = np.random.default_rng(0)
    axis = rng.normal(size=(500, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.concatenate([rng.uniform(0, np.pi, 400), np.pi - rng.uniform(0, 1e-5, 90), np.zeros(10)])
    rotvec = axis * angle[:, None]
    env = np.concatenate([rng.normal(size=(500, 3)), rotvec, rng.uniform(0, 0.08, (500, 1))], axis=1)
    back = policy_to_env_action(env_to_policy_action(env))
    np.testing.assert_allclose(back[:, [0, 1, 2, 6]], env[:, [0, 1, 2, 6]], atol=1e-12)
    np.testing.assert_allclose(rotvec_to_matrix(back[:, 3:6]), rotvec_to_matrix(rotvec), atol=1e-9)
    for i in (0, 123, 450):  # our Rodrigues agrees with the simulator's
        np.testing.assert_allclose(rotvec_to_matrix(rotvec[i]), rotvec_to_mat(rotvec[i]), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(matrix_to_rotvec(rotvec_to_matrix(rotvec)), axis=1), angle, atol=1e-6)
    # A tool pointing down: rotation by ~pi about x. Crossing pi flips the rotation vector, not the 6-D one.
    a = np.array([np.pi - 1e-3, 0, 0, 0, 0, 0, 0.0])
    b = np.array([-(np.pi - 1e-3), 0, 0, 0, 0, 0, 0.0])
    a[3:6], b[3:6] = a[:3], b[:3]
    a[:3] = b[:3] = 0
    assert np.linalg.norm(a[3:6] - b[3:6]) > 6.0
    assert np.linalg.norm(env_to_policy_action(a) - env_to_policy_action(b)) < 5e-3
    # Any 10-D output executes as a proper rotation (Gram-Schmidt), even when not orthonormal.
    noisy = env_to_policy_action(env[:20]) + rng.normal(scale=0.1, size=(20, 10))
    assert np.isfinite(policy_to_env_action(noisy)).all()


def test_bad_datasets_are_refused_with_a_reason(demos: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a dataset"):
        load_episodes(tmp_path, 25.0)
    ensure_dataset_root(tmp_path / "empty")
    with pytest.raises(DataError, match="empty dataset, no committed episodes"):
        load_episodes(tmp_path / "empty", 25.0)
    with pytest.raises(DataError, match=r"recorded at 50 Hz; the training rate 20 Hz must divide it"):
        load_episodes(demos, 20.0)
    with pytest.raises(DataError, match="must divide"):
        load_episodes(demos, 100.0)
    built = tmp_path / "built"
    build_training_set(demos, 10.0, built)
    with pytest.raises(DataError, match="built at 10 Hz, but training was asked for 25 Hz"):
        load_episodes(built, 25.0)
    with pytest.raises(DataError, match="task 'wipe', but training was asked for 'peel'"):
        train(tiny_config("rdp", demos, tmp_path / "run", task="peel"))


def test_scene_relative_proprio_ignores_where_the_scene_is() -> None:
    rng = np.random.default_rng(3)
    q = rng.normal(size=(5, 2, 4))
    steps = {"tcp_pos": rng.normal(size=(5, 2, 3)), "tcp_quat": q / np.linalg.norm(q, axis=-1, keepdims=True),
             "gripper_width": rng.uniform(size=(5, 2)), "marker_offset": rng.normal(size=(5, 3, 7, 9, 2)),
             "wrench": rng.normal(size=(5, 2, 6)), "scene": rng.normal(size=(5, 6))}
    embedding = TactileEmbedding.load("default")
    f = lowdim_features(steps, embedding)
    shift = np.array([0.3, -0.2, 0.05])
    moved = lowdim_features({**steps, "tcp_pos": steps["tcp_pos"] + shift,
                             "scene": steps["scene"] + np.concatenate([shift, np.zeros(3)])}, embedding)
    np.testing.assert_allclose(moved["proprio_scene"], f["proprio_scene"], atol=1e-6)  # the whole scene moved
    assert not np.allclose(moved["proprio"], f["proprio"])
    rel = f["proprio_scene"].reshape(5, 2, 10)
    np.testing.assert_allclose(rel[..., :3], steps["tcp_pos"] - steps["scene"][:, None, :3], atol=1e-6)
    np.testing.assert_array_equal(rel[..., 3:], f["proprio"].reshape(5, 2, 10)[..., 3:])
    assert "proprio_scene" not in lowdim_features({k: v for k, v in steps.items() if k != "scene"}, embedding)
    with pytest.raises(ValueError, match="scene"):
        lowdim_features({**steps, "scene": np.zeros((5, 2))}, embedding)


def test_scene_relative_policy_trains_with_localisation_noise_and_drives_the_sim(demos: Path, tmp_path: Path) -> None:
    run = tmp_path / "rel"
    cfg = tiny_config("rdp", demos, run, steps=3)
    train(dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, obs_keys=("proprio_scene", "tactile"),
                                                              scene_noise=0.01, cond_norm="meanstd",
                                                              cond_key="tactile+tcp_rel")))
    info = json.loads((run / "run.json").read_text())
    assert info["obs_keys"] == ["proprio_scene", "tactile"] and info["training"]["cond_norm"] == "meanstd"
    # The decoder's conditioning was normalised to zero mean / unit std per dimension (not min-max).
    episodes = load_episodes(demos, 25.0)
    cond = gather(episodes, make_windows(episodes, 2, 16), slice(None), (), "tactile+tcp_rel", "relative")["cond"]
    cond = cond.reshape(-1, cond.shape[-1]).astype(np.float64)
    stored = load_checkpoint(run / "tokenizer", AsymmetricTokenizer(TokenizerConfig(**load_config(
        run / "tokenizer")[1]))).normalizer
    varied = cond.std(0) > 1e-3
    assert varied.sum() >= 2  # the TCP offsets along the wiping path vary
    normed = cond * stored["cond.scale"].numpy() + stored["cond.offset"].numpy()
    np.testing.assert_allclose(normed[:, varied].mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(normed[:, varied].std(0), 1.0, rtol=1e-3)
    with pytest.raises(ValueError, match="cond_norm"):
        dataclasses.replace(cfg.method, cond_norm="zscore")
    _drive(make_policy("wipe", checkpoint=run, replan_every=4), ticks=10)


def test_decoder_reading_pad_load_trains_and_drives_the_sim(demos: Path, tmp_path: Path) -> None:
    from sensors.embedding import TactileEmbedding

    run = tmp_path / "load"
    cfg = tiny_config("rdp", demos, run, steps=3)
    train(dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, cond_key="tactile_load")))
    assert json.loads((run / "run.json").read_text())["cond_key"] == "tactile_load"
    episodes = load_episodes(demos, 25.0, embedding=TactileEmbedding.load("default"))
    load = episodes.features["tactile_load"]
    assert load.shape == (len(episodes.action), 3 * episodes.num_pads) and load.std(0).max() > 0
    # Computed at load from the marker fields, with the embedding given by name or as an object alike.
    np.testing.assert_array_equal(load_episodes(demos, 25.0, embedding="default").features["tactile_load"], load)
    _drive(make_policy("wipe", checkpoint=run, replan_every=4), ticks=10)


def test_proprio_noise_offsets_each_window_and_keeps_its_motion(demos: Path, tmp_path: Path) -> None:
    from rdp.train import _batch

    episodes = load_episodes(demos, 25.0)
    windows = make_windows(episodes, 2, 16)
    cfg = tiny_config("rdp", demos, tmp_path / "x")
    noisy = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, proprio_noise=(0.002, 0.01)))
    keys = ("proprio", "tactile")
    clean = _batch(cfg, episodes, windows, 0, 1, keys, None)["obs"]["proprio"].numpy()
    moved = _batch(noisy, episodes, windows, 0, 1, keys, None)["obs"]["proprio"].numpy()
    offset = moved - clean  # (B, To, 10)
    np.testing.assert_allclose(offset[:, 0], offset[:, 1], atol=1e-6)  # one offset per window: velocity kept
    assert 0.0005 < offset[..., :3].std() < 0.005 and 0.003 < offset[..., 3:9].std() < 0.03
    np.testing.assert_array_equal(offset[..., 9], 0.0)  # the gripper width is left alone
    with pytest.raises(ValueError, match="proprio_noise"):
        dataclasses.replace(cfg.method, proprio_noise=(0.001, -1.0))
    with pytest.raises(ValueError, match="cond_noise"):
        dataclasses.replace(cfg.method, cond_noise=-0.1)


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    lrs = [lr_at(s, 100, 1e-3, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False)) and lrs[-1] < 1e-5


# ----------------------------------------------------------------------------------------------- training


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_rdp_trains_both_stages_checkpoints_and_resumes(demos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = train(tiny_config("rdp", demos, run, steps=4))
    assert summary["tokenizer"]["steps"] == 4 and summary["policy"]["steps"] == 4
    for path in ("run.json", "state.json", "tokenizer/model.safetensors", "tokenizer/config.json",
                 "policy/model.safetensors", "policy/config.json", "checkpoints/policy_0000004/ema/model.safetensors",
                 "checkpoints/tokenizer_0000004/optimizer.safetensors"):
        assert (run / path).is_file(), path
    assert not (run / "checkpoints/policy_0000002").exists()  # older checkpoints are pruned
    rows = [r for r in _log(run) if "loss" in r]
    assert [(r["stage"], r["step"]) for r in rows] == [("tokenizer", s) for s in range(1, 5)] + [
        ("policy", s) for s in range(1, 5)]
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 and r["seconds"] >= 0 for r in rows)

    with pytest.raises(FileExistsError, match="resume=true"):
        train(tiny_config("rdp", demos, run, steps=4))
    with pytest.raises(ValueError, match="configuration changed"):
        train(tiny_config("rdp", demos, run, steps=6, resume=True, horizon=8))

    seconds_before = json.loads((run / "state.json").read_text())["policy"]["seconds"]
    summary = train(tiny_config("rdp", demos, run, steps=6, resume=True))
    assert summary["tokenizer"]["steps_this_run"] == 2 and summary["policy"]["steps_this_run"] == 2
    rows = [r for r in _log(run) if "loss" in r]
    assert [(r["stage"], r["step"]) for r in rows[-4:]] == [("tokenizer", 5), ("tokenizer", 6), ("policy", 5),
                                                            ("policy", 6)]
    state = json.loads((run / "state.json").read_text())
    assert state["policy"]["step"] == 6 and state["policy"]["done"]
    assert state["policy"]["seconds"] >= seconds_before  # wall clock adds up over resumed runs

    policy = make_policy("wipe", checkpoint=run, method="rdp", replan_every=4)
    _drive(policy, ticks=10)
    with pytest.raises(ValueError, match="trained on task 'wipe', not 'peel'"):
        make_policy("peel", checkpoint=run)
    with pytest.raises(ValueError, match="holds a 'rdp' run, not 'dp'"):
        make_policy("wipe", checkpoint=run, method="dp")


def test_dp_baseline_trains_and_drives_the_sim(demos: Path, tmp_path: Path) -> None:
    run = tmp_path / "dp"
    summary = train(tiny_config("dp", demos, run, steps=3))
    assert "tokenizer" not in summary and not (run / "tokenizer").exists()
    _drive(make_policy("wipe", checkpoint=run, method="dp", replan_every=4), ticks=10)


@pytest.mark.parametrize("name", ["rdp", "dp"])
def test_rtc_handover_continues_the_running_chunk(name: str, demos: Path, tmp_path: Path) -> None:
    run = tmp_path / name
    train(tiny_config(name, demos, run, steps=3))
    policy = make_policy("wipe", checkpoint=run, method=name, replan_every=4, latency_s=0.08, handover="rtc")
    _drive(policy, ticks=24)  # several hand-overs through the inpainting path
    assert policy.active is not None
    prev, prev_anchor, _ = policy.active
    horizon = int(policy.run["horizon"])
    features = policy.history[-1]
    anchor = prev_anchor + np.tile(np.r_[0.01, -0.02, 0.005, np.zeros(7)], policy.run["num_arms"]).astype(np.float32)
    guide = policy.planner.rtc_prefix(prev, prev_anchor, 4, anchor, 2, features)
    weights = guide["prefix_weights"]
    assert float(weights[0]) == 1.0 and float(weights[-1]) == 0.0 and (weights[1:] <= weights[:-1]).all()
    with torch.inference_mode():
        world = policy.planner.codec.to_actions(prev, prev_anchor, features)  # the running chunk in world positions
    if name == "dp":  # actions: the prefix is the running chunk 4 steps on, re-anchored to the new pose
        expected = shift_positions(world[np.minimum(np.arange(4, 4 + horizon), horizon - 1)], anchor, -1.0)
        np.testing.assert_allclose(guide["prefix"][0].numpy(), expected, atol=1e-6)
    else:  # latents: decoding the prefix gives back that future (up to the tokenizer's reconstruction)
        assert tuple(guide["prefix"].shape) == (1, *policy.planner.plan_shape)
    assert policy.planner.rtc_prefix(prev, prev_anchor, horizon, anchor, 2, features) == {}  # nothing left to continue
    with pytest.raises(ValueError, match="handover"):
        make_policy("wipe", checkpoint=run, method=name, handover="blend")


def _drive(policy, ticks: int) -> None:
    import sim

    env = sim.make_env("wipe")
    try:
        obs, _ = env.reset(seed=11)
        policy.reset(env)
        actions = []
        for _ in range(ticks):
            action = policy.act(obs)
            assert action.shape == env.action_space.shape and np.isfinite(action).all()
            env.check_action(action)
            actions.append(action)
            obs, *_ = env.step(action)
        # The policy steps at 25 Hz on a 50 Hz env: each action is held for two ticks.
        np.testing.assert_array_equal(actions[0], actions[1])
    finally:
        env.close()


def test_hydra_configs_compose_into_typed_train_configs(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        for name in ("rdp", "dp"):
            cfg = compose("train", overrides=[f"policy={name}", "data=D", f"out={tmp_path}"])
            typed = TrainConfig.from_hydra(OmegaConf.to_container(cfg, resolve=True))
            assert typed.method.name == name and typed.task == "wipe" and typed.rate_hz == 25.0
            assert (typed.method.tokenizer is not None) == (name == "rdp")
            assert ("tactile" in typed.method.obs_keys) == (name == "rdp")
        # Inference-time variants evaluate the rdp checkpoint with one setting changed.
        for name, key, value in (("rdp_nolm", "latency_matching", False), ("rdp_rtc", "handover", "rtc")):
            policy = compose("eval", overrides=[f"policy={name}"]).policy
            assert policy[key] == value and policy.default_run == "rdp" and policy.method == "rdp"


# ----------------------------------------------------------------------------------------------- distributed


@pytest.mark.timeout(240)
def test_torchrun_two_gloo_ranks_train_in_sync(demos: Path, tmp_path: Path) -> None:
    """Data-parallel training as on a multi-GPU node, on the CPU: torchrun, 2 processes, gloo."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "rdp.train", "task=wipe", "policy=rdp", f"data={demos}", f"out={out}", "progress=false",
           "horizon=16", "batch_size=8", "policy.train.tokenizer_steps=3", "policy.train.policy_steps=3",
           "policy.train.warmup_steps=1", "policy.train.diffusion.down_dims=[16,32]",
           "policy.train.tokenizer.encoder_hidden=8", "policy.train.tokenizer.decoder_hidden=8"]
    proc = subprocess.run(cmd, cwd=CONFIGS.parent, capture_output=True, text=True, timeout=230,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # rank 0's; the sync check itself gathered every rank's weights
    assert summaries[0]["world_size"] == 2 and summaries[0]["ranks_in_sync"] is True
    assert (out / "policy" / "model.safetensors").is_file() and (out / "tokenizer" / "model.safetensors").is_file()
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum(1 for r in logged if r.get("event") == "start") == 1  # rank 0 alone writes the run directory


@pytest.mark.parametrize(("argv", "says"), [
    (["task=wipe", "policy=rdp"], "data=... is required"),
    (["task=nosuch", "data=d"], "task=nosuch: no such task; choose one of lift, peel, wipe"),
    (["data=d", "batch_size=abc"], "batch_size=abc: expected an integer (the default is 64)"),
    (["data=d", "policy.train.action_frame=x"], "bad training config: action_frame must be one of"),
    (["data=DEMOS", "resume=true"], "resume=true, but"),
])
def test_bad_training_command_lines_fail_in_one_line(argv: list[str], says: str, demos: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from rdp.train import main

    monkeypatch.delenv("SLOWFAST_DEBUG", raising=False)
    args = [a.replace("DEMOS", str(demos)) for a in argv]
    assert main([*args, f"out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("rdp.train: error: ") and says in err


def test_goal_conditioned_policy_learns_the_recorded_goal_and_reads_the_envs(tmp_path: Path) -> None:
    import sim

    data = tmp_path / "goals"
    record_expert_episodes(RecordConfig(task="wipe", episodes=3, seed=0, out=str(data), goal="random",
                                        max_steps=STEPS_PER_EPISODE, progress=False))
    # Every step of an episode observes that episode's goal, as recorded in its metadata.
    episodes = load_episodes(data, 25.0)
    vectors = [json.loads(p.read_text())["user"]["goal_vector"] for p in sorted(data.glob("episode_*/meta.json"))]
    for start, length, vector in zip(episodes.starts, episodes.lengths, vectors, strict=True):
        np.testing.assert_array_equal(episodes.features["goal"][start:start + length],
                                      np.tile(np.float32(vector), (length, 1)))
    run = tmp_path / "run"
    cfg = tiny_config("dp", data, run, steps=3)
    train(dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, obs_keys=("proprio", "goal"))))
    assert json.loads((run / "run.json").read_text())["obs_keys"] == ["proprio", "goal"]
    policy = make_policy("wipe", checkpoint=run, method="dp", replan_every=4)
    env = sim.make_env("wipe", goal="left-gentle")
    try:
        obs, _ = env.reset(seed=3)
        assert policy.planner.features(obs)["goal"].tolist() == env.task.goal.vector().tolist()
        policy.reset(env)
        for _ in range(4):
            obs, *_ = env.step(policy.act(obs))
    finally:
        env.close()
    # The env of the default goal observes none: the policy says what is missing instead of failing deep inside.
    env = sim.make_env("wipe")
    try:
        with pytest.raises(UsageError, match="goal"):
            policy.reset(env)
    finally:
        env.close()
    # A dataset without goals cannot train a goal-conditioned policy, and says where goals come from.
    plain = tmp_path / "plain"
    record_expert_episodes(RecordConfig(task="wipe", episodes=1, seed=5, out=str(plain), max_steps=20, progress=False))
    with pytest.raises(DataError, match="goal=random"):
        train(dataclasses.replace(tiny_config("dp", plain, tmp_path / "r2", steps=1),
                                  method=dataclasses.replace(cfg.method, obs_keys=("proprio", "goal"))))
    # The fast decoder can read the goal too (how hard it may press), from the same per-step features.
    rdp_cfg = tiny_config("rdp", data, tmp_path / "rdp-goal", steps=2)
    rdp_method = dataclasses.replace(rdp_cfg.method, obs_keys=("proprio", "goal"), cond_key="tactile_load+goal")
    train(dataclasses.replace(rdp_cfg, method=rdp_method))
    policy = make_policy("wipe", checkpoint=tmp_path / "rdp-goal", method="rdp", replan_every=4)
    env = sim.make_env("wipe", goal="left-gentle")
    try:
        obs, _ = env.reset(seed=3)
        policy.reset(env)
        assert np.all(np.isfinite(policy.act(obs)))
    finally:
        env.close()
    with pytest.raises(DataError, match=r"decoder reads 'tactile_load\+goal'.*goal=random"):
        train(dataclasses.replace(tiny_config("rdp", plain, tmp_path / "r3", steps=1),
                                  method=dataclasses.replace(rdp_method, obs_keys=("proprio",))))
