"""The world model's commands on a tiny revisit set: data (deterministic, revisit pairs show the same view),
training with a resumable stage, generation with and without TEMP-LoRA writing metrics and a video, and one-line
errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from world_model.data import RevisitDataConfig, VideoSet, revisit_set
from world_model.generate import histogram_distance, ssim
from world_model.revisit import RevisitConfig, render_episode
from world_model.train import Stage, StageConfig, WorldModelTrainConfig

TINY = ["model.width=32", "model.depth=1", "model.ae_width=8", "model.context_frames=2", "model.chunk_frames=2",
        "model.inference_steps=2", "model.train_timesteps=20", "ae.steps=20", "ae.batch=8", "diffusion.steps=20",
        "diffusion.batch=4", "log_every=10", "progress=false"]


def test_revisit_episodes_are_deterministic_and_return_to_the_same_view():
    cfg = RevisitConfig(image_size=16)
    a, b = render_episode(cfg, 7), render_episode(cfg, 7)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.actions, b.actions)
    assert not np.array_equal(a.frames[:4], render_episode(cfg, 8).frames[:4])
    assert len(a.pairs) > 0 and a.back > a.left
    for i, j in a.pairs:  # the return frame shows exactly what the first visit showed
        assert np.array_equal(a.frames[i], a.frames[j])
    assert np.allclose(np.cumsum(a.actions, axis=0)[1:] + a.camera[0], a.camera[1:])
    gap = a.back - a.left  # frames with A out of view: longer than any context window we train
    assert gap > 8, gap


def test_video_set_round_trip_and_windows(tmp_path):
    videos = revisit_set(RevisitDataConfig(out=str(tmp_path), episodes=2, seed=3, image_size=16), progress=False)
    videos.save(tmp_path)
    loaded = VideoSet.load(tmp_path)
    assert np.array_equal(loaded.frames, videos.frames) and np.array_equal(loaded.pairs, videos.pairs)
    w = loaded.windows(6)
    assert all(loaded.starts[np.searchsorted(loaded.starts, s, side="right") - 1] + 6
               <= loaded.starts[np.searchsorted(loaded.starts, s, side="right")] for s in w)
    with pytest.raises(FileNotFoundError, match="no video set"):
        VideoSet.load(tmp_path / "nothing")


def test_ssim_and_histogram_distance():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert float(ssim(x, 1 - x).mean()) < 0.5
    frames = (np.random.default_rng(0).random((3, 16, 16, 3)) * 255).astype(np.uint8)
    d = histogram_distance(np.stack([frames[0], frames[0], frames[1]]))
    assert d[0] == pytest.approx(0.0, abs=1e-6) and d[1] > 0


def test_a_stage_resumes_from_its_checkpoint(tmp_path):
    cfg = WorldModelTrainConfig(out=str(tmp_path), checkpoint_every=5, log_every=5, progress=False)
    from rdp.train import JsonlLog

    model = torch.nn.Linear(3, 1)
    log = JsonlLog(tmp_path / "log.jsonl")
    stage = Stage("toy", cfg, StageConfig(steps=10, batch=1, lr=1e-2, warmup=0), model, {"in": 3}, log)
    stage.run(lambda g: model(torch.randn(4, 3, generator=g)).pow(2).mean())
    assert (tmp_path / "checkpoints" / "toy" / "state.json").exists()
    fresh = torch.nn.Linear(3, 1)
    cfg.resume = True
    resumed = Stage("toy", cfg, StageConfig(steps=10, batch=1, lr=1e-2, warmup=0), fresh, {"in": 3}, log)
    assert resumed.step == 10 and torch.equal(fresh.weight, model.weight)
    assert resumed.optimizer.state_dict()["state"]  # Adam's moments came back too


@pytest.mark.heavy
def test_train_then_generate_with_and_without_memory(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    py = [sys.executable, "-m"]
    subprocess.run([*py, "world_model.data", "revisit", f"out={data}", "episodes=3", "seed=1", "image_size=16"],
                   check=True, capture_output=True)
    done = subprocess.run([*py, "world_model.train", f"data={data}", f"out={run}", *TINY], check=True,
                          capture_output=True, text=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 3 and np.isfinite(summary["diffusion_loss"])
    assert (run / "diffusion" / "model.safetensors").exists() and (run / "autoencoder" / "config.json").exists()
    assert not (run / "checkpoints" / "diffusion").exists()  # removed once the stage finished
    results = {}
    variants = {"memory": [], "none": ["memory=false"], "single": ["memory=false", "context=1"],
                "given": ["memorize_given=true"]}
    for name, extra in variants.items():
        out = tmp_path / name
        proc = subprocess.run([*py, "world_model.generate", f"run={run}", f"data={data}", f"out={out}",
                               "episodes=2", "videos=1", *extra], check=True, capture_output=True, text=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        metrics = json.loads((out / "metrics.json").read_text())
        assert len(metrics["episodes"]) == 2 and (out / "episode0.mp4").stat().st_size > 0
        assert (out / "horizon.png").stat().st_size > 0
        assert len(metrics["summary"]["horizon_ssim"]) == max(len(r["horizon_ssim"]) for r in metrics["episodes"])
    for r in results.values():
        assert 0.0 <= r["revisit_ssim"] <= 1.0 and r["scene_cuts"] >= 0
    # A second model on the first one's autoencoder, with the camera-motion warp.
    warped = tmp_path / "warp"
    done = subprocess.run([*py, "world_model.train", f"data={data}", f"out={warped}", f"autoencoder={run}",
                           "model.motion=warp", *TINY], check=True, capture_output=True, text=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["autoencoder_from"] == str(run) and "ae_loss" not in summary
    assert np.array(summary["motion_estimate"]).shape == (2, 3) and np.abs(summary["motion_estimate"]).max() > 0
    assert (warped / "autoencoder" / "model.safetensors").read_bytes() == \
        (run / "autoencoder" / "model.safetensors").read_bytes()
    subprocess.run([*py, "world_model.generate", f"run={warped}", f"data={data}", f"out={tmp_path / 'gw'}",
                    "episodes=1", "videos=0"], check=True, capture_output=True, text=True)
    bench = subprocess.run([*py, "benchmarks.world_model_chunk", f"runs=[{run},{warped}]", "repeats=1", "warmup=0",
                            "batch=2", f"out={tmp_path / 'bench.json'}"], check=True, capture_output=True, text=True)
    rows = json.loads(bench.stdout.strip().splitlines()[-1])["results"]
    assert [r["motion"] for r in rows] == ["none", "warp"] and all(r["generate_ms"] > 0 for r in rows)
    bad = subprocess.run([*py, "world_model.train", f"data={data}", f"out={tmp_path / 'x'}", f"autoencoder={run}",
                          *TINY, "model.ae_width=16"], capture_output=True, text=True)
    assert bad.returncode == 2 and "other sizes" in bad.stderr


def test_bad_command_lines_are_one_line_errors(tmp_path):
    for args, expected in [(["world_model.train", "out=X"], "data=DIR"),
                           (["world_model.generate", f"run={tmp_path}", f"data={tmp_path}"], "no run.json"),
                           (["world_model.data"], "expected a command"),
                           (["world_model.data", "recording", "out=X"], "data=RECORDING")]:
        proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
        assert proc.returncode != 0 and expected in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_robot_recording_becomes_a_video_set_that_trains_the_world_model(tmp_path):
    from dataset.format import list_episodes, load_stream
    from teleop.record_expert import RecordConfig, record_expert_episodes
    from world_model.data import main as data_main
    from world_model.train import main as train_main

    demos, videos, run = tmp_path / "demos", tmp_path / "videos", tmp_path / "run"
    record_expert_episodes(RecordConfig(task="peel", episodes=2, seed=3, out=str(demos), max_steps=40, cameras=True,
                                        image_size=32, looks="train", progress=False))
    assert data_main(["recording", f"data={demos}", f"out={videos}", "image_size=16", "progress=false"]) == 0
    vs = VideoSet.load(videos)
    assert vs.episodes == 2 and vs.image_size == 16 and vs.action_dim == 3 + 1 + 3 * 3  # move, grip, 3 pads' load
    first = list_episodes(demos)[0]
    t_frame, _ = load_stream(first, "wrist_rgb")
    t_pos, pos = load_stream(first, "tcp_pos")
    frames, actions = vs.episode(0)
    kept = t_frame[t_frame >= t_pos[0]]
    assert len(frames) == len(kept) and np.all(actions[0, :3] == 0)
    held = pos[np.searchsorted(t_pos, kept, side="right") - 1, 0]
    np.testing.assert_allclose(actions[:, :3].sum(axis=0), held[-1] - held[0], atol=1e-6)  # displacements add up
    assert data_main(["recording", f"data={demos}", f"out={tmp_path / 'v2'}", "touch=false", "progress=false"]) == 0
    assert VideoSet.load(tmp_path / "v2").action_dim == 4
    v3 = tmp_path / "v3-moves"
    assert data_main(["recording", f"data={demos}", f"out={v3}", "touch=false", "gripper=false", "image_size=16",
                      "progress=false"]) == 0
    assert VideoSet.load(v3).action_dim == 3 and np.array_equal(VideoSet.load(v3).actions, vs.actions[:, :3])
    assert train_main([f"data={videos}", f"out={run}", *TINY]) == 0
    assert (run / "diffusion" / "model.safetensors").exists()
    # A run fine-tuned from another starts from its weights; one of other sizes is refused in one line.
    tuned = tmp_path / "tuned"
    assert train_main([f"data={videos}", f"out={tuned}", f"init={run}", *TINY, "ae.steps=2",
                       "diffusion.steps=2"]) == 0
    assert (tuned / "diffusion" / "model.safetensors").exists()
    proc = subprocess.run([sys.executable, "-m", "world_model.train", f"data={v3}", f"out={tmp_path / 'bad'}",
                           f"init={run}", *TINY], capture_output=True, text=True)
    assert proc.returncode == 2 and f"init={run} has another action_dim (13)" in proc.stderr, proc.stderr
    # A recording without the camera says which camera streams it has, in one line.
    record_expert_episodes(RecordConfig(task="peel", episodes=1, seed=4, out=str(tmp_path / "blind"), max_steps=10,
                                        progress=False))
    proc = subprocess.run([sys.executable, "-m", "world_model.data", "recording", f"data={tmp_path / 'blind'}",
                           f"out={tmp_path / 'v3'}", "camera=scene_rgb", "progress=false"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no stream ['scene_rgb'] (camera streams here: []" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
