"""A goal through the process graph: rdp.run goal=... -> the robot node's task -> ``goal`` in its state -> the slow
node's planner; a goal policy without a goal is refused before any node starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_runtime_units import make_tiny_run

from bus.cli import UsageError
from rdp.checkpoint import load_run_info
from rdp.runtime.config import load_config
from rdp.runtime.process import ROOT

LAUNCH_TIMEOUT = 240  # one rdp.run: minutes on a loaded 2-core machine


@pytest.fixture(scope="module")
def goal_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("goal_ckpt"), goal=True)


def test_robot_settings_carry_the_goal_and_refuse_a_goal_policy_without_one(goal_run: Path) -> None:
    from rdp.run import robot_settings

    run = load_run_info(goal_run)
    assert "goal" in run["obs_keys"]
    assert robot_settings(load_config([f"checkpoint={goal_run}", "goal=left-gentle", "video=false"]),
                          run)["goal"] == "left-gentle"
    with pytest.raises(UsageError, match="observes a goal, but goal=default"):
        robot_settings(load_config([f"checkpoint={goal_run}"]), run)
    with pytest.raises(UsageError, match="no such wipe goal value"):
        load_config([f"checkpoint={goal_run}", "goal=upside-down"])


def test_robot_node_config_checks_the_goal() -> None:
    from sim.node import RobotNodeConfig

    assert RobotNodeConfig(task="lift", goal="high-gentle").goal == "high-gentle"
    with pytest.raises(UsageError, match="no such lift goal value 'left'"):
        RobotNodeConfig(task="lift", goal="left")


@pytest.mark.timeout(LAUNCH_TIMEOUT + 60)
def test_lockstep_run_executes_the_goal_it_was_given(goal_run: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "rdp.run", f"checkpoint={goal_run}", "goal=right-firm", "slow.replan_every=4",
           "fast.start_timeout_s=30", "mode=lockstep", "max_episode_s=0.4", "video=false", f"out={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] is None and result["exit_codes"] == {"fast": 0, "slow": 0, "robot": 0}
    detail = json.loads((tmp_path / "results.json").read_text())
    assert detail["goal"] == "right-firm" and detail["episodes_detail"][0]["goal"] == "right-firm"
    # The slow node planned (it reads the goal from the robot's state; without it the planner has no input).
    assert detail["loop"]["slow"]["plans"] >= 2


def test_robot_settings_pass_the_looks_and_collect_checks_them(goal_run: Path) -> None:
    from rdp.run import robot_settings
    from teleop.collect import load_config as collect_config

    run = load_run_info(goal_run)
    settings = robot_settings(load_config([f"checkpoint={goal_run}", "goal=left", "robot.looks=heldout"]), run)
    assert settings["looks"] == "heldout" and settings["goal"] == "left"
    assert "looks" not in robot_settings(load_config([f"checkpoint={goal_run}", "goal=left"]), run)
    assert collect_config(["out=x", "looks=train"]).looks == "train"
    with pytest.raises(ValueError, match="looks='shiny'"):
        collect_config(["out=x", "looks=shiny"])
    with pytest.raises(UsageError, match="observes a goal, but goal=default"):  # looks are no goal
        robot_settings(load_config([f"checkpoint={goal_run}", "robot.looks=train"]), run)


def test_robot_settings_pass_the_press_guard(goal_run: Path) -> None:
    from rdp.run import robot_settings

    run = load_run_info(goal_run)
    on = robot_settings(load_config([f"checkpoint={goal_run}", "goal=left", "robot.press_guard_n=20"]), run)
    assert on["press_guard_n"] == 20.0
    assert "press_guard_n" not in robot_settings(load_config([f"checkpoint={goal_run}", "goal=left"]), run)
    with pytest.raises(UsageError, match=r"robot.press_guard_n=-1.0: expected a wrist force limit >= 0 N"):
        load_config([f"checkpoint={goal_run}", "robot.press_guard_n=-1"])
