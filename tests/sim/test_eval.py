import json
import subprocess
import sys
from pathlib import Path

import pytest

from sim.eval import evaluate, main, wilson_interval
from sim.experts import make_expert

ROOT = Path(__file__).resolve().parents[2]


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
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "expert" in proc.stderr and "expert_noforce" in proc.stderr


def test_unknown_task_name_lists_valid_ones(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sim.eval", "task=juggle", "episodes=1", f"out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.strip() == "sim.eval: error: task=juggle: no such task; choose one of lift, peel, wipe"


@pytest.mark.parametrize(("argv", "says"), [
    (["episodes=abc"], "episodes=abc: expected an integer (the default is 50)"),
    (["episodes=0"], "episodes=0: expected an integer >= 1"),
    (["perturb=maybe"], "perturb=maybe: expected true or false (the default is true)"),
    (["nosuchkey=1"], "nosuchkey=1: no such key; the keys are episodes, out, perturb, policy, seed, sensors, task"),
    (["task.perturbations=[nosuch]"], "no such wipe perturbation nosuch; choose from raise, lower"),
    (["policy=rdp", "policy.handover=x"], "handover=x: no such hand-over; choose one of latest, rtc"),
    (["policy=rdp", "policy.checkpoint=/nonexistent/run"], "/nonexistent/run: no such directory; a training run"),
    (["task=peel", "policy=rdp", "policy.checkpoint=checkpoints/wipe/rdp"], "trained on task 'wipe', not 'peel'"),
])
def test_bad_command_lines_fail_in_one_line(argv: list[str], says: str, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("SLOWFAST_DEBUG", raising=False)
    monkeypatch.chdir(ROOT)
    assert main([*argv, f"out={tmp_path}", "video=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("sim.eval: error: ") and says in err


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
