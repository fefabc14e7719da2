"""Lockstep collection through the real process graph (robot node, teleop node, scripted operator, recorder):
every recorded stream's stamps lie inside their own episode, the outcome is episode metadata, the lockstep
barrier never had to give up waiting, and the dataset builds. Two unperturbed wipes (about 8 s of sim each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataset.format import build_training_set, list_episodes, load_stream, read_meta

ROOT = Path(__file__).resolve().parents[2]
TICK_S = 0.004


@pytest.mark.heavy
@pytest.mark.timeout(600)
def test_lockstep_collect_keeps_stamps_inside_each_episode_and_the_outcome_in_metadata(tmp_path):
    out = tmp_path / "wipe"
    proc = subprocess.run(
        [sys.executable, "-m", "teleop.collect", "task=wipe", "episodes=2", f"out={out}", "seed=3", "mode=lockstep",
         "perturb=false", "cameras=false", "progress=false", "step_timeout_s=60", "start_timeout_s=120",
         "episode_timeout_s=300"],
        cwd=ROOT, capture_output=True, text=True, timeout=560,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
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
