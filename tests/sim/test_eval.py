import json
import subprocess
import sys

import pytest

from sim.eval import evaluate, wilson_interval
from sim.experts import make_expert


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 50)
    assert hi == 1.0 and 0.928 < lo < 0.929
    lo, hi = wilson_interval(25, 50)
    assert lo == pytest.approx(0.3664, abs=1e-3) and hi == pytest.approx(0.6336, abs=1e-3)


def test_unknown_policy_name_lists_valid_ones(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sim.eval", "policy=telepathy", "episodes=1", f"out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "expert" in proc.stderr and "expert_noforce" in proc.stderr


def test_unknown_task_name_lists_valid_ones(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sim.eval", "task=juggle", "episodes=1", f"out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "wipe" in proc.stderr and "peel" in proc.stderr


def test_eval_cli_last_line_is_json_and_writes_artifacts(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sim.eval", "task=wipe", "policy=expert", "episodes=1", "seed=3", f"out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("task", "policy", "episodes", "success_rate", "ci95", "per_perturbation"):
        assert key in result
    assert result["task"] == "wipe" and result["episodes"] == 1
    detail = json.loads((tmp_path / "results.json").read_text())
    assert detail["policy_config"]["force_feedback"] is True  # the resolved settings that made the result
    assert (tmp_path / "force.png").stat().st_size > 10_000
    assert (tmp_path / "episode0.mp4").stat().st_size > 10_000


@pytest.mark.heavy
@pytest.mark.parametrize("task", ["wipe", "peel", "lift"])
def test_touch_matters_on_the_same_seeds(task, tmp_path):
    """The force-aware expert beats the position-only one under perturbations (small sample)."""
    common = dict(task=task, episodes=4, seed=100, out_dir=tmp_path, video=False)
    ff = evaluate(make_policy=lambda: make_expert(task, True), policy_name="expert", **common)
    pos = evaluate(make_policy=lambda: make_expert(task, False), policy_name="expert_noforce", **common)
    assert ff["success_rate"] >= 0.75
    assert pos["success_rate"] <= ff["success_rate"] - 0.5
