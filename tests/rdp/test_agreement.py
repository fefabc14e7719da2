"""rdp.agreement: the realtime-vs-lockstep comparison's arithmetic, resume and error handling (rdp.run replaced by
a fake that writes results files; the real runs take minutes each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bus.cli import UsageError
from rdp.agreement import AgreementConfig, compare_task, main, parse_args


def _result(seeds: range, failed: set[int], **extra: Any) -> dict[str, Any]:
    detail = [{"seed": s, "success": s not in failed} for s in seeds]
    return {"episodes": len(seeds), "seed": seeds[0], "error": None, "episodes_detail": detail,
            "success_rate": sum(d["success"] for d in detail) / len(detail), **extra}


def test_compare_task_reports_every_run_the_mean_and_the_seeds_that_make_the_gap() -> None:
    seeds = range(20)
    lock = _result(seeds, {0, 8, 18})
    rt = [_result(seeds, {12}, loop={"fast": {"step_ms": {"p99": 0.5}}}), _result(seeds, {5, 8, 12, 16}),
          _result(seeds, set())]
    c = compare_task("peel", lock, rt, tolerance=0.05)
    assert c["lockstep"]["success_rate"] == pytest.approx(0.85)
    assert c["lockstep"]["failed_seeds"] == [0, 8, 18]
    assert c["realtime"]["success_rates"] == pytest.approx([0.95, 0.80, 1.00])
    assert c["realtime"]["mean"] == pytest.approx(2.75 / 3)
    assert c["gap_mean"] == pytest.approx(2.75 / 3 - 0.85)
    assert not c["mean_within_tolerance"]  # +6.7 points
    assert c["runs_within_tolerance"] == 1  # 0.80 is exactly 5 points off; 0.95 and 1.00 are not within
    # Lockstep failed 0, 8, 18 where most realtime runs succeeded; it succeeded on 12 where most failed.
    assert c["lockstep_minority_seeds"] == [0, 8, 12, 18]
    assert c["realtime_per_seed"]["8"] == pytest.approx(2 / 3)
    lo, hi = c["realtime"]["pooled_ci95"]
    assert lo < c["realtime"]["mean"] < hi
    assert [r["step_p99_ms"] for r in c["realtime_loop"]] == [0.5, None, None]  # only run 0 reports its loop
    assert c["binomial_sd_one_run"] == pytest.approx((c["realtime"]["mean"] * (1 - c["realtime"]["mean"]) / 20) ** 0.5)
    # The same outcomes everywhere: no gap, every run within any tolerance.
    same = compare_task("wipe", lock, [lock, lock], tolerance=0.0)
    assert same["gap_mean"] == 0 and same["mean_within_tolerance"] and same["runs_within_tolerance"] == 2
    assert same["lockstep_minority_seeds"] == []


def test_compare_task_refuses_runs_over_different_seeds() -> None:
    with pytest.raises(ValueError, match="realtime run 0 ran seeds"):
        compare_task("wipe", _result(range(5), set()), [_result(range(1, 6), set())], tolerance=0.05)


def test_parse_args_names_what_is_wrong() -> None:
    assert parse_args(["tasks=peel", "realtime_runs=5"]) == AgreementConfig(tasks=["peel"], realtime_runs=5)
    for bad, says in ((["runs=3"], "runs=3: no such agreement config key"),
                      (["episodes=x"], "episodes=x: expected an integer"),
                      (["realtime_runs=0"], "realtime_runs >= 1"), (["tolerance=5"], "tolerance=5"),
                      (["tasks=juggle"], "tasks=juggle: no such task; choose one of lift, peel, wipe")):
        with pytest.raises(UsageError, match=says):
            parse_args(bad)


def test_main_runs_lockstep_then_realtime_resumes_and_reports_a_failed_run(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    calls: list[tuple[str, str]] = []

    def fake_run(task: str, mode: str, out: Path, cfg: AgreementConfig) -> dict[str, Any]:
        calls.append((task, mode))
        if task == "lift":
            return {"error": "rdp.run exited 1; see launcher.log"}
        failed = {2} if mode == "lockstep" else {len(calls) % 4}
        res = _result(range(cfg.seed, cfg.seed + cfg.episodes), failed, task=task, mode=mode)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(res))
        return res

    args = ["tasks=wipe,lift", "episodes=4", "seed=0", "realtime_runs=2", f"out={tmp_path}"]
    assert main(args, run=fake_run) == 1  # lift failed
    assert calls[:3] == [("wipe", "lockstep"), ("wipe", "realtime"), ("wipe", "realtime")]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    wipe, lift = summary["tasks"]
    assert wipe["task"] == "wipe" and wipe["realtime"]["runs"] == 2 and "error" in lift
    for name in ("agreement.json", "agreement.md", "agreement.png"):
        assert (tmp_path / name).is_file(), name
    assert "error" in (tmp_path / "agreement.md").read_text()
    # Finished runs are reused: only lift's (failed) runs are attempted again.
    calls.clear()
    assert main(args, run=fake_run) == 1
    assert all(task == "lift" for task, _ in calls)
    # More episodes than the stored runs hold: everything runs again.
    calls.clear()
    main(["tasks=wipe", "episodes=5", "realtime_runs=1", f"out={tmp_path}"], run=fake_run)
    assert calls == [("wipe", "lockstep"), ("wipe", "realtime")]


@pytest.mark.timeout(300)
def test_launch_runs_rdp_run_with_the_configured_seeds(tmp_path: Path) -> None:
    """The real command line: one lockstep rdp.run of a seconds-long tiny checkpoint; its results are read back."""
    from test_runtime_units import make_tiny_run

    from rdp.agreement import launch

    run = make_tiny_run(tmp_path / "ckpt")
    cfg = AgreementConfig(tasks=("wipe",), episodes=2, seed=7, realtime_runs=1, out=str(tmp_path / "agr"),
                          extra=f"checkpoint={run} slow.replan_every=4 max_episode_s=0.2 robot.cameras=false")
    res = launch("wipe", "lockstep", tmp_path / "agr" / "wipe" / "lockstep", cfg)
    assert res.get("error") is None, res
    assert res["mode"] == "lockstep" and [e["seed"] for e in res["episodes_detail"]] == [7, 8]
    assert (tmp_path / "agr" / "wipe" / "lockstep" / "launcher.log").is_file()
    # A run that cannot start reports where to look instead of raising.
    bad = AgreementConfig(episodes=1, extra="checkpoint=/nonexistent")
    failed = launch("wipe", "lockstep", tmp_path / "bad", bad)
    assert "launcher.log" in failed["error"]
