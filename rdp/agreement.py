"""Realtime against lockstep on the same seeds: does running the process graph on the wall clock cost success?

    python -m rdp.agreement tasks=[wipe,peel,lift] episodes=20 seed=0 realtime_runs=3 out=results/runtime/agreement
        [tolerance=0.05] [extra='slow.handover=rtc ...']

Per task: one lockstep ``python -m rdp.run`` (deterministic: a second run sends the same commands) and
``realtime_runs`` realtime ones, all over seeds ``seed .. seed+episodes-1``, one at a time (a realtime run needs
the machine to itself). A realtime run is one draw: wall-clock timing moves every command by microseconds, and on a
contact-rich task that can flip an episode near the success threshold, so one run can land several points from
the next. This command therefore reports every run, their mean, the pooled 95 % interval and which seeds flip,
and compares the *mean* realtime success with lockstep (``tolerance``, 5 points by default).

A run whose ``OUT/T/MODE-R/results.json`` already holds the same episodes and seed without an error is not
re-run, so an interrupted comparison resumes. Writes ``OUT/agreement.json``, ``OUT/agreement.md`` (one table) and
``OUT/agreement.png`` (per seed and run: success or failure); the last stdout line is the summary JSON.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bus.cli import UsageError, command
from bus.config import compose, override
from rdp.compare import check_names, finished
from sim.eval import wilson_interval


@dataclass
class AgreementConfig:
    """``configs/rdp/agreement.yaml``."""

    tasks: list[str] = field(default_factory=lambda: ["wipe", "peel", "lift"])
    episodes: int = 20
    seed: int = 0
    realtime_runs: int = 3
    tolerance: float = 0.05  # |mean realtime success - lockstep success| allowed
    out: str = "results/runtime/agreement"
    extra: str = ""  # more rdp.run overrides for every run, space-separated


    def __post_init__(self) -> None:
        if self.episodes < 1 or self.realtime_runs < 1:
            raise UsageError(f"need episodes >= 1 and realtime_runs >= 1, got {self.episodes}, {self.realtime_runs}")
        if not 0 <= self.tolerance <= 1:
            raise UsageError(f"tolerance={self.tolerance:g}: expected a success-rate difference in [0, 1]")
        check_names("tasks", self.tasks, "task")


def parse_args(argv: Sequence[str]) -> AgreementConfig:
    return compose(AgreementConfig, "rdp/agreement", argv, "agreement", "tasks=[wipe,peel] episodes=20")


def run_dirs(cfg: AgreementConfig, task: str) -> list[tuple[str, Path]]:
    """(mode, run directory) of every run of ``task``: the lockstep one first."""
    base = Path(cfg.out) / task
    return [("lockstep", base / "lockstep"), *(("realtime", base / f"realtime-{r}") for r in range(cfg.realtime_runs))]


def launch(task: str, mode: str, out: Path, cfg: AgreementConfig) -> dict[str, Any]:
    """One ``python -m rdp.run``; its results, or {"error": ...} naming the log to read."""
    out.mkdir(parents=True, exist_ok=True)
    values = {"task": task, "mode": mode, "episodes": cfg.episodes, "seed": cfg.seed, "out": str(out), "video": False}
    cmd = [sys.executable, "-m", "rdp.run", *(override(k, v) for k, v in values.items()), *cfg.extra.split()]
    log = out / "launcher.log"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # the launcher got the same Ctrl-C: let it stop its nodes and write its results
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    done = finished(out, cfg.episodes, cfg.seed)
    if code != 0 or done is None:
        return {"error": f"rdp.run exited {code}; see {log}"}
    return done


def outcomes(result: dict[str, Any]) -> dict[int, bool]:
    """Seed -> success of one rdp.run result."""
    return {int(e["seed"]): bool(e["success"]) for e in result["episodes_detail"]}


def loop_stats(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's loop goals as one realtime run measured them (absent numbers stay None)."""
    loop = result.get("loop") or {}
    fast, slow = loop.get("fast") or {}, loop.get("slow") or {}
    rate = fast.get("cmd_rate") or {}
    return {"step_p99_ms": (fast.get("step_ms") or {}).get("p99"), "cmd_hz": rate.get("mean_hz"),
            "jitter_p99_ms": rate.get("jitter_p99_ms"), "missed_ticks": rate.get("missed"),
            "tactile_to_cmd_p99_ms": (fast.get("tactile_to_cmd_ms") or {}).get("p99"),
            "plan_p50_ms": (slow.get("infer_ms") or {}).get("p50"),
            "robot_overruns": (loop.get("robot") or {}).get("overruns")}


def compare_task(task: str, lockstep: dict[str, Any], realtime: list[dict[str, Any]], tolerance: float
                 ) -> dict[str, Any]:
    """The agreement of one task's lockstep run with its realtime runs (rdp.run results, same seeds)."""
    lock = outcomes(lockstep)
    runs = [outcomes(r) for r in realtime]
    seeds = sorted(lock)
    for k, r in enumerate(runs):
        if sorted(r) != seeds:
            raise ValueError(f"{task}: realtime run {k} ran seeds {sorted(r)}, lockstep {seeds}")
    n = len(seeds)
    lock_rate = sum(lock.values()) / n
    rates = [round(sum(r.values()) / n, 12) for r in runs]
    pooled_ok = sum(sum(r.values()) for r in runs)
    mean = round(sum(rates) / len(rates), 12)  # 0.94, not 0.9399999999999998
    per_seed = {s: sum(r[s] for r in runs) / len(runs) for s in seeds}
    gap = round(mean - lock_rate, 12)  # no -0.000 for equal rates
    return {
        "task": task,
        "episodes": n,
        "seeds": [seeds[0], seeds[-1]],
        "lockstep": {"success_rate": lock_rate, "ci95": wilson_interval(sum(lock.values()), n),
                     "failed_seeds": [s for s in seeds if not lock[s]]},
        "realtime": {
            "runs": len(runs),
            "success_rates": rates,
            "mean": mean,
            "min": min(rates),
            "max": max(rates),
            "pooled_ci95": wilson_interval(pooled_ok, n * len(runs)),
            "failed_seeds": [[s for s in seeds if not r[s]] for r in runs],
        },
        # A realtime run's spread as one 20-episode draw would have it: sqrt(p (1 - p) / n) at the pooled rate.
        "binomial_sd_one_run": math.sqrt(max(mean * (1 - mean), 0.0) / n),
        "gap_mean": gap,
        "tolerance": tolerance,
        "mean_within_tolerance": abs(gap) <= tolerance + 1e-9,
        "runs_within_tolerance": sum(abs(r - lock_rate) <= tolerance + 1e-9 for r in rates),
        # Seeds where lockstep's outcome is the minority of the realtime runs' (the ones that make the gap).
        "lockstep_minority_seeds": [s for s in seeds if (per_seed[s] > 0.5 and not lock[s])
                                    or (per_seed[s] < 0.5 and lock[s])],
        "realtime_per_seed": {str(s): per_seed[s] for s in seeds},
        "realtime_loop": [loop_stats(r) for r in realtime],
    }


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | lockstep | realtime runs | realtime mean | pooled 95 % | gap | within ±tol (mean / runs) |",
             "|---|---|---|---|---|---|---|"]
    for c in rows:
        if "error" in c:
            lines.append(f"| {c['task']} | error: {c['error']} | | | | | |")
            continue
        rt = c["realtime"]
        lo, hi = rt["pooled_ci95"]
        lines.append(
            f"| {c['task']} | {c['lockstep']['success_rate']:.2f} | "
            f"{' / '.join(f'{r:.2f}' for r in rt['success_rates'])} | {rt['mean']:.3f} | [{lo:.2f}, {hi:.2f}] | "
            f"{c['gap_mean']:+.3f} | {'yes' if c['mean_within_tolerance'] else 'no'} / "
            f"{c['runs_within_tolerance']} of {rt['runs']} |")
    lines += ["", "Loop, every realtime run (worst / best over the runs):", "",
              "| task | fast step p99 ms | command Hz | jitter p99 ms | missed ticks | tactile→command p99 ms | "
              "slow plan p50 ms | robot overruns |", "|---|---|---|---|---|---|---|---|"]
    for c in rows:
        if "error" in c:
            continue
        cells = []
        for key, worst in (("step_p99_ms", max), ("cmd_hz", min), ("jitter_p99_ms", max), ("missed_ticks", max),
                           ("tactile_to_cmd_p99_ms", max), ("plan_p50_ms", max), ("robot_overruns", max)):
            vals = [r[key] for r in c["realtime_loop"] if r.get(key) is not None]
            best = min if worst is max else max
            cells.append(f"{_num(worst(vals))} / {_num(best(vals))}" if vals else "—")
        lines.append(f"| {c['task']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], lockstep: dict[str, dict[int, bool]], realtime: dict[str, list[dict[int, bool]]],
         path: Path) -> None:
    """Per task, a grid of seeds (columns) by runs (rows: lockstep, then each realtime run): green success, red
    failure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap

    shown = [c for c in rows if "error" not in c]
    if not shown:
        return
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 1.2 + 0.45 * (1 + max(c["realtime"]["runs"] for c in shown))
                                                     * len(shown)), dpi=100, squeeze=False)
    for ax, c in zip(axes[:, 0], shown, strict=True):
        task = c["task"]
        seeds = sorted(lockstep[task])
        grid = np.array([[lockstep[task][s] for s in seeds], *([r[s] for s in seeds] for r in realtime[task])],
                        dtype=float)
        ax.imshow(grid, cmap=ListedColormap(["#d62728", "#2ca02c"]), vmin=0, vmax=1, aspect="auto")
        ax.set_yticks(range(grid.shape[0]), ["lockstep", *(f"realtime {k}" for k in range(grid.shape[0] - 1))],
                      fontsize=8)
        ax.set_xticks(range(len(seeds)), [str(s) for s in seeds], fontsize=7)
        ax.set_xticks(np.arange(-0.5, len(seeds)), minor=True)
        ax.set_yticks(np.arange(-0.5, grid.shape[0]), minor=True)
        ax.grid(which="minor", color="white", lw=1)
        ax.tick_params(which="minor", length=0)
        ax.set_title(f"{task}: lockstep {c['lockstep']['success_rate']:.2f}, realtime mean "
                     f"{c['realtime']['mean']:.2f} ({' / '.join(f'{r:.2f}' for r in c['realtime']['success_rates'])})"
                     f" — green success, red failure", fontsize=9)
    axes[-1, 0].set_xlabel("seed")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@command("rdp.agreement")
def main(argv: Sequence[str] | None = None,
         run: Callable[[str, str, Path, AgreementConfig], dict[str, Any]] = launch) -> int:
    cfg = parse_args(list(sys.argv[1:] if argv is None else argv))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    lock_by: dict[str, dict[int, bool]] = {}
    rt_by: dict[str, list[dict[int, bool]]] = {}
    for task in cfg.tasks:
        results: list[dict[str, Any]] = []
        for mode, path in run_dirs(cfg, task):
            res = finished(path, cfg.episodes, cfg.seed)
            note = "reused"
            if res is None:
                print(f"{task} {mode} -> {path} (live: tail -f {path / 'launcher.log'}) ...", file=sys.stderr,
                      flush=True)
                res, note = run(task, mode, path, cfg), "ran"
            shown = f"error: {res['error']}" if res.get("error") else f"{res['success_rate']:.2f}"
            print(f"{task:5s} {mode:8s} {path.name:12s} {shown} ({note})", file=sys.stderr, flush=True)
            results.append(res)
        errors = [r["error"] for r in results if r.get("error")]
        if errors:
            rows.append({"task": task, "error": errors[0]})
            continue
        rows.append(compare_task(task, results[0], results[1:], cfg.tolerance))
        lock_by[task], rt_by[task] = outcomes(results[0]), [outcomes(r) for r in results[1:]]
    summary = {"config": asdict(cfg), "tasks": rows}
    (out / "agreement.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "agreement.md").write_text(table(rows))
    plot(rows, lock_by, rt_by, out / "agreement.png")
    print(table(rows), file=sys.stderr)
    print(json.dumps(summary))
    return 0 if not any("error" in c for c in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
