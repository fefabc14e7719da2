"""Lockstep collection through the real process graph (robot node, teleop node, scripted operator, recorder):
every recorded stream's stamps lie inside their own episode, the outcome is episode metadata, the lockstep
barrier never had to give up waiting, and the dataset builds. Then the user's whole path on that recording, each
step its own command: ``teleop.collect`` -> ``rdp.train`` (tiny networks, a few steps) -> ``sim.eval``.
Two unperturbed wipes (about 8 s of sim each), collected once for the module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataset.format import build_training_set, list_episodes, load_stream, read_meta

ROOT = Path(__file__).resolve().parents[2]
TICK_S = 0.004


# rdp.train overrides that make both stages tiny (sizes as in tests/rdp/test_train_pipeline.py).
TINY = ["policy.train.tokenizer_steps=3", "policy.train.policy_steps=3", "policy.train.warmup_steps=1",
        "policy.train.tokenizer.latent_steps=4", "policy.train.tokenizer.latent_channels=4",
        "policy.train.tokenizer.encoder_hidden=16", "policy.train.tokenizer.decoder_hidden=16",
        "policy.train.diffusion.down_dims=[16,32]", "policy.train.diffusion.diffusion_step_embed_dim=16",
        "policy.train.diffusion.num_train_timesteps=20", "policy.train.diffusion.num_inference_steps=2",
        "horizon=16", "batch_size=8", "progress=false", "keep_checkpoints=false"]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("collect") / "wipe"
    proc = subprocess.run(
        [sys.executable, "-m", "teleop.collect", "task=wipe", "episodes=2", f"out={out}", "seed=3", "mode=lockstep",
         "perturb=false", "cameras=false", "progress=false", "step_timeout_s=60", "start_timeout_s=120",
         "episode_timeout_s=300"],
        cwd=ROOT, capture_output=True, text=True, timeout=560,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.heavy
@pytest.mark.timeout(600)
def test_lockstep_collect_keeps_stamps_inside_each_episode_and_the_outcome_in_metadata(collected, tmp_path):
    out, summary = collected
    assert summary["mode"] == "lockstep" and summary["episodes"] == 2 and summary["timed_out"] == 0
    assert set(summary["exit_codes"].values()) == {0}, summary["exit_codes"]
    assert not any(k.endswith("timeouts") for k in summary["lockstep"]), summary["lockstep"]  # a true barrier

    episodes = list_episodes(out)
    assert len(episodes) == 2
    for ep, row in zip(episodes, summary["rows"], strict=True):
        meta = read_meta(ep)
        outcome = meta["outcome"]
        assert "outcome_score" not in meta["streams"]
        assert outcome["score"] == row["score"] and meta["success"] == row["success"]
        end = outcome["sim_time"]
        assert end > 1.0 and outcome.get("dropped", 0) == 0
        for name in meta["streams"]:
            t, _ = load_stream(ep, name, meta)
            assert t.size >= 2 and 0.0 < t[0] and t[-1] <= end + TICK_S + 1e-9, (ep.name, name, t[0], t[-1], end)
        # The clutch is pressed a latency after the reset, on this episode's clock (every episode after the first
        # used to carry the last episode's stamps on this stream).
        t, engaged = load_stream(ep, "clutch", meta)
        assert t[engaged[:, 0] == 1][0] < 1.0
        t_action, _ = load_stream(ep, "action", meta)
        assert t_action[0] < 1.0 and t_action[-1] > end - 0.5
    built = build_training_set(out, 25.0, tmp_path / "built", streams=["tcp_pos", "wrench", "action"])
    assert all(e["num_steps"] > 25 for e in built["episodes"])


@pytest.mark.heavy
@pytest.mark.timeout(600)
@pytest.mark.parametrize("policy", ["rdp", "dp"])
def test_a_teleoperated_recording_trains_a_policy_that_sim_eval_runs(collected, tmp_path, policy):
    out, summary = collected
    assert any(row["success"] for row in summary["rows"]), summary["rows"]  # something to learn from
    run = tmp_path / "run"
    proc = _run(["rdp.train", "task=wipe", f"policy={policy}", f"data={out}", f"out={run}",
                 *(t for t in TINY if policy == "rdp" or ".tokenizer" not in t)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "run.json").is_file() and (run / "policy" / "model.safetensors").is_file()
    assert (run / "tokenizer").is_dir() == (policy == "rdp")
    assert json.loads((run / "run.json").read_text())["data"] == str(out)  # the recording it learned from

    eval_dir = tmp_path / "eval"
    proc = _run(["sim.eval", "task=wipe", f"policy={policy}", f"policy.checkpoint={run}", "episodes=1", "seed=7",
                 "video=false", f"out={eval_dir}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((eval_dir / "results.json").read_text())
    assert results["episodes"] == 1 and 0.0 <= results["success_rate"] <= 1.0, results
