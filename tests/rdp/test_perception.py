"""The perception head (rdp.perception): the scene estimate read off the episode's first scene-camera frame, the
same in training data, in sim.eval and in the runtime's slow node, and never the simulator's own scene. Weights
are seconds-long tiny runs, so the plumbing is under test; the errors of trained heads are in docs/results.md."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from bus.cli import UsageError
from bus.message import Message
from rdp.perception import (
    ENCODER_SIZES,
    EstimatorConfig,
    SceneEstimator,
    SpatialSoftmax,
    count_parameters,
    main,
    scene_errors,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Frames of 6 peel resets, an estimator trained 3 steps on them, 2 short expert demos with cameras and an RDP
    run trained 4 steps per stage on the estimate."""
    from rdp.train import DiffusionSizes, MethodConfig, TokenizerSizes, TrainConfig, train
    from teleop.record_expert import RecordConfig, record_expert_episodes

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("perception")
    frames, est = root / "frames.npz", root / "est"
    assert main(["stage=data", "task=peel", "episodes=6", "seed=7", f"out={frames}", "progress=false"]) == 0
    assert main(["stage=train", f"data={frames}", f"val={frames}", "steps=3", "batch=4", "model.encoder=resnet",
                 "model.width=4", f"out={est}", "progress=false"]) == 0
    demos = root / "demos"
    record_expert_episodes(RecordConfig(task="peel", episodes=2, seed=3, out=str(demos), max_steps=40, cameras=True,
                                        looks="train", progress=False))
    method = MethodConfig(
        name="rdp", obs_keys=("proprio_scene_seen", "tactile", "scene_seen"), cond_key="tactile",
        tokenizer=TokenizerSizes(latent_steps=4, latent_channels=4, encoder_hidden=16, decoder_hidden=16),
        diffusion=DiffusionSizes(down_dims=(16, 32), diffusion_step_embed_dim=16, num_train_timesteps=20,
                                 num_inference_steps=2),
        tokenizer_steps=4, policy_steps=4, warmup_steps=2)
    run = root / "run"
    train(TrainConfig(task="peel", method=method, data=str(demos), out=str(run), horizon=16, batch_size=8,
                      progress=False, log_every=1, checkpoint_every=4, perception=str(est)))
    return {"frames": frames, "est": est, "demos": demos, "run": run}


# ----------------------------------------------------------------------------------------------- the model


def test_each_encoder_has_its_own_default_sizes_and_the_rgb_pair_match_in_parameters() -> None:
    assert EstimatorConfig().encoder == "pointnet"
    sizes = {e: (EstimatorConfig(encoder=e).width, EstimatorConfig(encoder=e).stem_stride) for e in ENCODER_SIZES}
    assert sizes == ENCODER_SIZES
    assert EstimatorConfig(encoder="terminator", width=8).width == 8  # an explicit size wins
    resnet, term = (count_parameters(SceneEstimator(EstimatorConfig(encoder=e)).encoder)
                    for e in ("resnet", "terminator"))
    assert abs(resnet - term) / resnet < 0.01, (resnet, term)  # the equal-parameter comparison in docs/results.md


@pytest.mark.parametrize("encoder", ["resnet", "terminator", "pointnet"])
def test_estimator_shapes_save_and_load(encoder: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SceneEstimator(EstimatorConfig(task="lift", encoder=encoder, width=4, image_size=32, points=64))
    x = (np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8) if encoder != "pointnet"
         else np.random.default_rng(0).normal(0.5, 0.1, (64, 3)).astype(np.float32))
    y = model.estimate(x)
    assert y.shape == (6,) and y.dtype == np.float32 and np.all(np.isfinite(y))
    model.save(tmp_path / "m")
    again = SceneEstimator.load(tmp_path / "m")
    assert np.array_equal(again.estimate(x), y)
    assert np.array_equal(again.estimate_batch(x[None])[0], y) or np.allclose(again.estimate_batch(x[None])[0], y)
    with pytest.raises(ValueError, match="expects"):
        model(torch.zeros(1, 3, 32, 32) if encoder != "pointnet" else torch.zeros(1, 64, 4))


def test_spatial_softmax_finds_where_a_bright_spot_is() -> None:
    ss = SpatialSoftmax(1)
    with torch.no_grad():
        ss.log_temperature.fill_(3.0)
    fmap = torch.zeros(1, 1, 5, 5)
    fmap[0, 0, 1, 4] = 10.0  # row 1 (y = -0.5), column 4 (x = +1)
    x, y = ss(fmap)[0].tolist()
    assert x == pytest.approx(1.0, abs=1e-3) and y == pytest.approx(-0.5, abs=1e-3)


def test_scene_errors_in_mm_and_degrees() -> None:
    true = np.array([[0.5, 0.0, 0.1, 0.7, 0.0, 0.1]])
    pred = true + np.array([[0.003, 0.004, 0.0, 0.0, 0.0, 0.0]])  # start 5 mm off
    e = scene_errors("peel", pred, true)
    assert e["path start mm"]["mean"] == pytest.approx(5.0) and e["path end mm"]["mean"] == 0.0
    assert 0.0 < e["path direction deg"]["mean"] < 2.0
    assert "box centre mm" in scene_errors("lift", pred, true) and "path direction deg" not in scene_errors(
        "lift", pred, true)


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    cases = {("stage=nope",): "no such perception stage",
             ("stage=train", f"out={tmp_path / 'x'}"): "stage=train needs data=",
             ("stage=evaluate", f"run={tmp_path}", f"data={tmp_path / 'missing.npz'}"): "checkpoint file not found",
             ("stage=train", f"data={tmp_path / 'bad.npz'}", f"out={tmp_path / 'r'}"): "not a perception frame file"}
    for argv, message in cases.items():
        capsys.readouterr()
        assert main(list(argv)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("rdp.perception: error: ") and message in err[0], err


def test_trained_tiny_estimator_reports_its_errors(tiny: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    summary = json.loads((tiny["est"] / "summary.json").read_text())
    assert summary["task"] == "peel" and summary["train_episodes"] == 6 and summary["val"]["episodes"] == 6
    assert {"path start mm", "path end mm", "path direction deg", "estimate ms"} <= set(summary["val"])
    capsys.readouterr()
    assert main(["stage=evaluate", f"run={tiny['est']}", f"data={tiny['frames']}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["looks"] == "train" and out["path start mm"]["mean"] == summary["val"]["path start mm"]["mean"]


# ----------------------------------------------------------------------------------------------- one feature path


def test_training_and_the_planner_read_the_same_estimate_and_never_the_scene(tiny: dict[str, Path]) -> None:
    from rdp.api import load_planner
    from rdp.data import load_episodes
    from sim.registry import make_env

    run = json.loads((tiny["run"] / "run.json").read_text())
    assert run["perception"]["camera"] == "scene_rgb" and (tiny["run"] / "perception" / "config.json").is_file()
    est = SceneEstimator.load(tiny["run"] / "perception")
    episodes = load_episodes(tiny["demos"], 25.0, perception=est)
    assert "scene" not in episodes.features and "proprio_scene" not in episodes.features
    planner = load_planner(tiny["run"], task="peel")
    env = make_env("peel", perturb=True, cameras=True, image_size=96, looks="train")
    try:
        for i, seed in enumerate((3, 4)):
            obs, _ = env.reset(seed=seed)
            planner.new_episode(seed)
            f = planner.features(obs)
            start = episodes.starts[i]
            assert np.array_equal(f["scene_seen"], episodes.features["scene_seen"][start])  # bit for bit
            assert np.allclose(f["proprio_scene_seen"], episodes.features["proprio_scene_seen"][start], atol=1e-6)
            # later readings keep the episode's estimate, and the simulator's scene changes nothing
            obs2 = {**obs, "scene": obs["scene"] + 1.0, "scene_rgb": np.zeros_like(obs["scene_rgb"])}
            assert np.array_equal(planner.features(obs2)["scene_seen"], f["scene_seen"])
            assert "scene" not in planner.features(obs2)
        planner.new_episode(5)
        with pytest.raises(UsageError, match="sensors=vision"):
            planner.features({k: v for k, v in obs.items() if k != "scene_rgb"})
    finally:
        env.close()


def test_training_refuses_data_without_the_camera_and_an_estimator_of_another_task(tiny: dict[str, Path],
                                                                                   tmp_path: Path) -> None:
    from rdp.data import DataError, load_episodes
    from teleop.record_expert import RecordConfig, record_expert_episodes

    blind = tmp_path / "blind"
    record_expert_episodes(RecordConfig(task="peel", episodes=1, seed=3, out=str(blind), max_steps=10,
                                        progress=False))
    with pytest.raises(DataError, match="scene_rgb"):
        load_episodes(blind, 25.0, perception=SceneEstimator.load(tiny["est"]))
    proc = subprocess.run([sys.executable, "-m", "rdp.train", "task=wipe", "policy=rdp", f"data={tiny['demos']}",
                           f"out={tmp_path / 'r'}", f"perception={tiny['est']}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "estimates the 'peel' scene, not 'wipe'" in proc.stderr.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------------- runtime


def _frame(sim_time: float, shape: tuple[int, ...] = (96, 96, 3), value: int = 0) -> Message:
    return Message("image", 0.0, 0, {"scene_rgb": np.full(shape, value, np.uint8)}, {"sim_time": sim_time})


def test_first_frame_is_the_episodes_first_and_only_from_the_past(tiny: dict[str, Path]) -> None:
    from rdp.api import load_planner
    from rdp.runtime.slow import FirstFrame

    counts: Counter[str] = Counter()
    first = FirstFrame(load_planner(tiny["run"], task="peel"), counts)
    assert first.at(0.0) is None and counts["awaiting_image"] == 1
    first.offer(_frame(0.0, (48, 48, 3)))
    assert counts["rej_image"] == 1 and "reads uint8 (96, 96, 3)" in first.problem
    first.offer(_frame(0.1, value=1))
    assert first.at(0.04) is None  # a frame from after the step
    first.offer(_frame(0.2, value=2))  # later frames do not replace the first
    assert first.at(0.12)[0, 0, 0] == 1
    first.clear()
    assert first.at(1.0) is None


@pytest.mark.timeout(300)
def test_lockstep_run_reads_the_first_frame(tiny: dict[str, Path], tmp_path: Path) -> None:
    from rdp.run import robot_settings
    from rdp.runtime.config import load_config

    cfg = load_config([f"checkpoint={tiny['run']}", "task=peel"])
    assert robot_settings(cfg, json.loads((tiny["run"] / "run.json").read_text()))["cameras"] is True
    cmd = [sys.executable, "-m", "rdp.run", "task=peel", f"checkpoint={tiny['run']}", "slow.replan_every=4",
           "fast.start_timeout_s=30", "mode=lockstep", "max_episode_s=0.4", "video=false", "robot.looks=train",
           f"out={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] is None and result["exit_codes"] == {"fast": 0, "slow": 0, "robot": 0}
    slow = json.loads((tmp_path / "out" / "results.json").read_text())["loop"]["slow"]
    assert slow["plans"] >= 3 and slow["images"] >= 1 and not any(k.startswith("rej_image") for k in slow)


def test_a_point_cloud_head_reads_the_same_cloud_in_training_in_sim_eval_and_from_the_robot_node(
        tiny: dict[str, Path], tmp_path: Path) -> None:
    """The depth path: teleop.record_expert point_cloud=true records scene_points with the frames, the env's
    point_cloud observation and the robot node's camera thread (a copy of the state) make the same cloud, and the
    estimate a policy trains on is the one its planner makes at the reset."""
    from rdp.api import load_planner
    from rdp.data import load_episodes
    from rdp.runtime.slow import FirstFrame
    from rdp.train import DiffusionSizes, MethodConfig, TokenizerSizes, TrainConfig, train
    from sim.mujoco_robot import MujocoCameras
    from sim.registry import make_env
    from teleop.record_expert import RecordConfig, record_expert_episodes

    head = tmp_path / "head"
    assert main(["stage=train", f"data={tiny['frames']}", "steps=2", "batch=4", "model.encoder=pointnet",
                 "model.width=4", f"out={head}", "progress=false"]) == 0
    demos = tmp_path / "demos"
    record_expert_episodes(RecordConfig(task="peel", episodes=1, seed=3, out=str(demos), max_steps=20, cameras=True,
                                        looks="train", point_cloud=True, progress=False))
    method = MethodConfig(
        name="rdp", obs_keys=("proprio_scene_seen", "tactile"), cond_key="tactile",
        tokenizer=TokenizerSizes(latent_steps=4, latent_channels=4, encoder_hidden=16, decoder_hidden=16),
        diffusion=DiffusionSizes(down_dims=(16, 32), diffusion_step_embed_dim=16, num_train_timesteps=20,
                                 num_inference_steps=2), tokenizer_steps=2, policy_steps=2, warmup_steps=1)
    run = tmp_path / "run"
    train(TrainConfig(task="peel", method=method, data=str(demos), out=str(run), horizon=16, batch_size=4,
                      progress=False, log_every=1, checkpoint_every=2, perception=str(head)))
    assert json.loads((run / "run.json").read_text())["perception"]["camera"] == "scene_points"
    episodes = load_episodes(demos, 25.0, perception=SceneEstimator.load(run / "perception"))
    planner = load_planner(run, task="peel")
    env = make_env("peel", perturb=True, cameras=True, image_size=96, looks="train", point_cloud=True)
    try:
        obs, _ = env.reset(seed=3)
        planner.new_episode(3)
        assert np.array_equal(planner.features(obs)["scene_seen"], episodes.features["scene_seen"][0])
        cameras = MujocoCameras(env, 96, point_cloud=True)
        cameras.capture()
        sent = cameras.frames()
        cameras.close()
        assert np.array_equal(sent["scene_points"], obs["scene_points"])
    finally:
        env.close()
    counts: Counter[str] = Counter()
    first = FirstFrame(planner, counts)
    first.offer(Message("image", 0.0, 0, {"scene_points": np.zeros((10, 3), np.float32)}, {"sim_time": 0.0}))
    assert counts["rej_image"] == 1 and "reads float32 (512, 3)" in first.problem
    first.offer(Message("image", 0.0, 1, {"scene_points": sent["scene_points"]}, {"sim_time": 0.0}))
    assert np.array_equal(first.at(0.0), sent["scene_points"]) and "point_cloud=true" in first.how_to_start()
