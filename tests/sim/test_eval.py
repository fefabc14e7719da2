import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sim.eval import evaluate, main, summarize, wilson_interval
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
    (["nosuchkey=1"], "nosuchkey=1: no such key; the keys are episodes, guard, jobs, launcher, out, perturb, "
                      "policy, ray_address, seed, sensors, task, video"),
    (["guard=20"], "guard=20: expected true or false (the default is false)"),
    (["launcher=slurm"], "launcher=slurm: no such launcher; choose one of local, ray"),
    (["jobs=0"], "jobs=0: expected an integer >= 1"),
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
    """The force-aware expert beats the position-only one under perturbations (two seeds; docs/results.md has 50)."""
    common = dict(task=task, episodes=2, seed=100, out_dir=tmp_path, video=False)
    ff = evaluate(make_policy=lambda: make_expert(task, True), policy_name="expert", **common)
    pos = evaluate(make_policy=lambda: make_expert(task, False), policy_name="expert_noforce", **common)
    assert ff["success_rate"] == 1.0
    assert pos["success_rate"] <= 0.5


def _eval_in_process(out: Path, *argv: str) -> dict[str, Any]:
    """``python -m sim.eval`` in this process (``main``), hydra's run directory kept under ``out``."""
    assert main(["task=wipe", "policy=expert_noforce", "episodes=3", "seed=3", "video=false", f"out={out}",
                 f"hydra.run.dir={out}", *argv]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result.pop("run_dir") == str(out)
    return result


def test_jobs_splits_the_seeds_into_shards_and_merges_the_sequential_results(tmp_path: Path, capsys) -> None:
    """Three episodes as shards of seeds 3-4 and 5, each its own process: the same results.json as one process
    (every per-episode row, the rates, the per-perturbation summary), and the first episode's plot."""
    sequential = _eval_in_process(tmp_path / "one")
    sharded = _eval_in_process(tmp_path / "two", "jobs=2")
    assert [r["seed"] for r in sharded["episodes_detail"]] == [3, 4, 5]
    assert sharded == sequential
    assert (tmp_path / "two" / "force.png").stat().st_size > 10_000 and not (tmp_path / "two" / "shards").exists()
    err = capsys.readouterr().err
    assert "seeds 3-4 ok in" in err and "seed 5 ok in" in err


def test_a_failed_shard_fails_the_run_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("SLOWFAST_DEBUG", raising=False)
    code = main(["policy=rdp", "policy.checkpoint=/nonexistent/run", "episodes=2", "jobs=2", "video=false",
                 f"out={tmp_path}", f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("sim.eval: error: /nonexistent/run: no such directory"), err
    assert "2 of 2 shards failed" in err and not (tmp_path / "results.json").exists()


def test_the_press_guard_option_is_recorded_in_the_results(tmp_path: Path) -> None:
    """guard=true: the env guards at the task's teleop press limit, and results.json says so, per episode too."""
    assert main(["task=wipe", "policy=expert", "episodes=1", "seed=3", "video=false", "guard=true",
                 f"out={tmp_path}", f"hydra.run.dir={tmp_path}"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["press_guard_n"] == 20.0 and result["guard_acted"] in (0, 1)
    row = result["episodes_detail"][0]
    assert 0.0 <= row["guard_retract_m"] <= 0.03 and row["guard_active_s"] >= 0.0
    off = summarize([{k: row[k] for k in ("seed", "success", "score", "failure", "perturbation")}], task="wipe",
                    policy_name="expert", policy_config=None, seed=3, perturb=True, out_dir=tmp_path)
    assert off["press_guard_n"] == 0.0 and "guard_acted" not in off


def test_jobs_on_ray_gives_the_sequential_results(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    assert _eval_in_process(tmp_path / "ray", "jobs=2", "launcher=ray") == _eval_in_process(tmp_path / "one")
