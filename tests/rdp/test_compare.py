"""rdp.compare: which training run each cell evaluates, and a cell without a run reported, not crashed."""

from __future__ import annotations

import json
from pathlib import Path

from rdp.compare import ROOT, _cell_command, main, parse_args, run_dir


def test_the_default_evaluates_the_shipped_rdp_and_dp_trained_on_the_same_teleoperated_data() -> None:
    cfg = parse_args([])
    assert cfg.policies == ["rdp_teleop", "dp"] and cfg.episodes == 50 and cfg.seed == 0
    assert run_dir(cfg, "wipe", "rdp_teleop") == ROOT / "checkpoints" / "wipe" / "rdp_teleop"
    assert run_dir(cfg, "peel", "dp") == ROOT / "checkpoints" / "peel" / "dp"
    assert run_dir(cfg, "wipe", "rdp_nolm") == ROOT / "checkpoints" / "wipe" / "rdp"  # an inference-time ablation


def test_a_policy_that_sees_is_evaluated_with_the_cameras_its_head_reads() -> None:
    cfg = parse_args([])
    shipped = {p: _cell_command(cfg, t, p) for t, p in (("peel", "rdp_perception"), ("lift", "dp"))}
    assert "sensors=vision_points" in shipped["rdp_perception"]  # a depth head: the cloud too
    assert not any(a.startswith("sensors=") for a in shipped["dp"])  # blind: the default sensors
    chosen = _cell_command(parse_args(["extra='sensors=vision_points_heldout'"]), "peel", "rdp_perception")
    assert [a for a in chosen if a.startswith("sensors=")] == ["sensors=vision_points_heldout"]  # extra wins


def test_a_runs_directory_holds_task_run_folders(tmp_path: Path) -> None:
    cfg = parse_args([f"runs={tmp_path}"])
    assert run_dir(cfg, "lift", "rdp_rtc") == tmp_path / "lift-rdp"


def test_a_missing_run_is_a_cell_error_in_the_table(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = main([f"runs={tmp_path / 'none'}", "tasks=wipe", "policies=dp", "episodes=1", f"out={out}"])
    assert code == 1  # a cell failed
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    text = json.dumps(summary)
    assert "no training run at" in text and "policy=dp" in text
    assert "| dp | — |" in (out / "table.md").read_text()


def test_a_cell_runs_through_the_sweep_and_an_interrupted_comparison_resumes(tmp_path: Path, capsys) -> None:
    """A cell is one sim.eval process (bus.sweep); the same command again reads it back, runs nothing and writes the
    same outputs."""
    out = tmp_path / "out"
    argv = ["tasks=wipe", "policies=rdp", "episodes=1", "seed=3", f"out={out}"]
    assert main(argv) == 0
    assert "wipe rdp ok in" in capsys.readouterr().err  # the sweep's progress line
    cell = out / "wipe-rdp" / "results.json"
    stamp, summary = cell.stat().st_mtime_ns, (out / "summary.json").read_text()
    assert [(c["task"], c["policy"], c["episodes"]) for c in json.loads(summary)["cells"]] == [("wipe", "rdp", 1)]
    assert main(argv) == 0
    assert " ok in " not in capsys.readouterr().err  # nothing ran
    assert cell.stat().st_mtime_ns == stamp and (out / "summary.json").read_text() == summary


def test_a_failed_cell_is_its_error_line_and_a_bad_launcher_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["tasks=wipe", "policies=dp", "episodes=1", f"out={out}", "extra='nosuchkey=1'"]) == 1
    cell = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cells"][0]
    assert cell["error"] == ["sim.eval: error: nosuchkey=1: no such key; the keys are episodes, guard, jobs, launcher, "
                             "out, perturb, policy, ray_address, seed, sensors, task, video"]
    assert main(["tasks=wipe", "policies=dp", "episodes=1", f"out={out}", "launcher=slurm"]) == 2
    assert capsys.readouterr().err.strip().endswith("launcher=slurm: no such launcher; choose one of local, ray")
