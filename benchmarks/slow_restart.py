"""Slow-node restarts under ``rdp.run``: kill -9 the slow node at spaced random times of a realtime run with a shipped
checkpoint and measure how the supervisor brings it back.

    python -m benchmarks.slow_restart [task=wipe] [kills=10] [cold_kills=5] [episodes=20] [seed=0] [out=FILE]

One realtime run with the warm standby (the default, ``restart.slow.standby=true``) and ``kills`` kills, then one
without it (cold restarts) and ``cold_kills`` kills for comparison. Each kill comes a random 5-10 s after the
previous replacement was ready, mid-episode (at least 1 s into it). Per kill, from the launcher's results.json and
the fast node's trace (``fast_timing.npz``; one monotonic clock for all processes):

* ``kill_to_ready_s``: kill -> the new slow node ready (a cold start's ready line; a standby's promotion);
* ``kill_to_chunk_s``: kill -> the first chunk of the new slow node adopted by the fast node, i.e. driving the
  robot (goal: <= 2 s);
* ``held``: the fast node's chunk ran out before that and it held the robot (``held_s`` long); ``stale_ticks``:
  ticks after the old chunk's last step on which the fast node did *not* hold (commands beyond the chunk: must
  be 0);
* ``episode_continued``: the episode the kill fell into ended by the task or its time limit, not by a stop;
* ``standby_ready``: a warm standby was ready at the kill. After each takeover the next standby needs the start-up
  time of a cold one (longer on a loaded machine); a kill before it is ready waits for it (it is ahead of a cold
  start), so the summary also gives the times of the kills that found one ready.

The restart budget is raised for the benchmark (``restart.slow.window_s=3``: kills 5 s apart are each the first
restart in their window, so each gets the initial 0.1 s back-off; the default 5 per 60 s would end a run with 10
kills in 80 s by design). Prints a table; writes benchmarks/results/slow_restart.json (the last stdout line).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import publish
from bus.cli import UsageError, command
from bus.config import compose
from rdp.runtime.chunks import policy_step
from rdp.runtime.process import ROOT

GOAL_KILL_TO_CHUNK_S = 2.0
GAP_S = (5.0, 10.0)  # kill this long after the previous replacement was ready (uniform)
MIN_EPISODE_STEP = 25  # kill at least this many policy steps (1 s at 25 Hz) into an episode


def run_with_kills(task: str, episodes: int, seed: int, kills: int, standby: bool, out: Path,
                   rng: np.random.Generator) -> dict[str, Any]:
    """One realtime ``rdp.run`` during which the slow node is killed ``kills`` times; its results and the kills."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "rdp.run", f"task={task}", f"episodes={episodes}", f"seed={seed}", "video=false",
           f"out={out}", f"restart.slow.standby={str(standby).lower()}", "restart.slow.max_restarts=50",
           "restart.slow.window_s=3"]
    with open(out / "launcher.stderr", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_read_lines, args=(proc, lines), daemon=True).start()
        slow_pid, spare_ready, fast = None, False, None
        next_kill, done = None, []
        try:
            while True:
                try:
                    line = lines.get(timeout=0.05)
                except queue.Empty:
                    line = ""
                if line is None:
                    break
                now = time.monotonic()
                if m := re.match(r"\[slow\] pid (\d+) ready", line):  # a promoted standby leaves no spare behind
                    slow_pid, next_kill, spare_ready = int(m[1]), now + rng.uniform(*GAP_S), False
                elif re.match(r"\[supervisor\] slow standby pid \d+ ready", line):
                    spare_ready = True
                elif m := re.match(r"\[fast\] ep (\d+) step (-?\d+) ", line):
                    fast = (now, int(m[1]), int(m[2]))
                elif line.startswith(("[episode", "[supervisor]", "stopping")):
                    print(line.rstrip(), flush=True)
                mid_episode = fast is not None and now - fast[0] < 1.0 and fast[2] >= MIN_EPISODE_STEP
                if len(done) < kills and slow_pid and next_kill is not None and now >= next_kill and mid_episode:
                    os.kill(slow_pid, signal.SIGKILL)
                    done.append({"pid": slow_pid, "kill_at": time.monotonic(), "standby_ready": spare_ready,
                                 "robot_episode": fast[1], "step": fast[2]})
                    print(f"kill {len(done)}: slow pid {slow_pid} (episode {fast[1]}, step {fast[2]}, standby "
                          f"{'ready' if spare_ready else 'not ready'})", flush=True)
                    slow_pid, spare_ready, next_kill = None, False, None
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
    result = json.loads((out / "results.json").read_text())
    return {"exit_code": code, "result": result, "kills": done}


def _read_lines(proc: subprocess.Popen, lines: queue.Queue) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


def analyse(run: dict[str, Any], out: Path, horizon: int, rate_hz: float) -> list[dict[str, Any]]:
    """Per kill: restart times, the fast node's hold and whether it commanded beyond the old chunk."""
    result = run["result"]
    restarts = {r["died_pid"]: r for r in result["supervision"]["slow"]["detail"]}
    episodes = {e["robot_episode"]: e for e in result["episodes_detail"]}
    with np.load(out / "fast_timing.npz") as z:
        t = {k: z[k] for k in z.files}
    wall, sim, holding = t["tick_wall"], t["tick_sim_time"], t["tick_holding"]
    rows = []
    for k in run["kills"]:
        r = restarts.get(k["pid"], {})
        kill, ready = k["kill_at"], r.get("ready_at")
        new = t["adopt_wall"][t["adopt_wall"] >= ready] if ready is not None else t["adopt_wall"][:0]
        first = float(new[0]) if new.size else None
        old = t["adopt_obs_step"][t["adopt_wall"] < (ready if ready is not None else np.inf)]
        idx = np.nonzero((wall >= kill) & (wall < (first if first is not None else np.inf)))[0]
        drop = np.nonzero(np.diff(sim[idx]) < 0)[0]  # a new episode began: the fast node sends nothing until a chunk
        if drop.size:
            idx = idx[: drop[0] + 1]
        steps = np.array([policy_step(float(x), rate_hz) for x in sim[idx]])
        beyond = steps >= (old[-1] + horizon if old.size else -1)
        held = holding[idx] > 0
        dt = np.diff(wall, append=wall[-1])[idx]
        episode = episodes.get(k["robot_episode"])
        rows.append({
            **k, "exit_code": r.get("exit_code"), "backoff_s": r.get("backoff_s"), "via": r.get("via"),
            "kill_to_ready_s": round(ready - kill, 3) if ready is not None else None,
            "kill_to_chunk_s": round(first - kill, 3) if first is not None else None,
            "held": bool(held.any()), "held_s": round(float(dt[held].sum()), 3),
            "hold_began_after_s": round(float(wall[idx][held][0] - kill), 3) if held.any() else None,
            "stale_ticks": int((beyond & ~held).sum()),
            "episode_ended_before_pickup": bool(drop.size),
            "episode_continued": episode is not None and episode["ended_by"] in ("task", "max_episode_s"),
        })
    return rows


def summarise(rows: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    result = run["result"]
    chunk = np.array([r["kill_to_chunk_s"] for r in rows if r["kill_to_chunk_s"] is not None])
    warm = np.array([r["kill_to_chunk_s"] for r in rows if r["kill_to_chunk_s"] is not None and r["standby_ready"]])
    ready = np.array([r["kill_to_ready_s"] for r in rows if r["kill_to_ready_s"] is not None])
    fast, robot = result["loop"]["fast"] or {}, result["loop"]["robot"] or {}

    def pct(x: np.ndarray) -> dict[str, float | None]:
        if not x.size:
            return {"p50": None, "p95": None, "max": None}
        return {"p50": round(float(np.percentile(x, 50)), 3), "p95": round(float(np.percentile(x, 95)), 3),
                "max": round(float(x.max()), 3)}

    return {
        "kills": len(rows), "restarts": result["supervision"]["slow"]["restarts"],
        "via_standby": sum(r["via"] == "standby" for r in rows),
        "kill_to_ready_s": pct(ready), "kill_to_chunk_s": pct(chunk),
        "kills_with_standby_ready": int(sum(r["standby_ready"] for r in rows)),
        "kill_to_chunk_s_standby_ready": pct(warm),
        "within_goal": int((chunk <= GOAL_KILL_TO_CHUNK_S).sum()), "picked_up": int(chunk.size),
        "held": sum(r["held"] for r in rows), "stale_ticks": sum(r["stale_ticks"] for r in rows),
        "episodes_continued": sum(r["episode_continued"] for r in rows),
        "run_completed": result["error"] is None and result["episodes"] == result["episodes_requested"],
        "episodes": result["episodes"], "success_rate": result["success_rate"],
        "fast_holds": result["fast_holds"], "stop": result["stop"],
        "fast_cmd_jitter_p99_ms": (fast.get("cmd_rate") or {}).get("jitter_p99_ms"),
        "fast_step_p99_ms": (fast.get("step_ms") or {}).get("p99"),
        "robot_overruns": robot.get("overruns"), "robot_ticks": robot.get("ticks"),
        "robot_watchdog_trips": robot.get("watchdog_trips", 0), "robot_force_holds": robot.get("force_holds", 0),
    }


def print_table(name: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"\n{name}")
    print(f"{'kill':>4} {'ep':>3} {'step':>5} {'via':>8} {'standby':>8} {'->ready s':>10} {'->chunk s':>10} "
          f"{'held':>5} {'held s':>7} {'stale':>6} {'continued':>9}")
    for i, r in enumerate(rows, 1):
        print(f"{i:4d} {r['robot_episode']:3d} {r['step']:5d} {r['via'] or '-':>8} "
              f"{'ready' if r['standby_ready'] else '-':>8} {_f(r['kill_to_ready_s']):>10} "
              f"{_f(r['kill_to_chunk_s']):>10} {str(r['held']):>5} {r['held_s']:7.2f} {r['stale_ticks']:6d} "
              f"{str(r['episode_continued']):>9}")
    s = summary
    print(f"kill->ready p50/p95/max {s['kill_to_ready_s']['p50']}/{s['kill_to_ready_s']['p95']}/"
          f"{s['kill_to_ready_s']['max']} s; kill->first new chunk p50/p95/max {s['kill_to_chunk_s']['p50']}/"
          f"{s['kill_to_chunk_s']['p95']}/{s['kill_to_chunk_s']['max']} s ({s['within_goal']}/{s['kills']} within "
          f"{GOAL_KILL_TO_CHUNK_S:g} s; with the standby ready at the kill ({s['kills_with_standby_ready']}): "
          f"p50/max {s['kill_to_chunk_s_standby_ready']['p50']}/{s['kill_to_chunk_s_standby_ready']['max']} s); "
          f"held {s['held']}/{s['kills']}; stale ticks {s['stale_ticks']}; episodes "
          f"continued {s['episodes_continued']}/{s['kills']}; run completed {s['run_completed']} "
          f"({s['episodes']} episodes, success {s['success_rate']:.2f}); fast cmd jitter p99 "
          f"{s['fast_cmd_jitter_p99_ms']} ms; robot watchdog trips {s['robot_watchdog_trips']}, force holds "
          f"{s['robot_force_holds']}")


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


@dataclass
class RestartConfig:
    """``configs/benchmarks/slow_restart.yaml``."""

    task: str = "wipe"
    kills: int = 10  # kills in the run with the warm standby (0: skip that run)
    cold_kills: int = 5  # kills in the run without it (0: skip that run)
    episodes: int = 20
    seed: int = 0
    out: str = "benchmarks/results/slow_restart.json"

    def __post_init__(self) -> None:
        if self.kills < 0 or self.cold_kills < 0 or self.episodes < 1:
            raise UsageError(f"kills={self.kills} and cold_kills={self.cold_kills} must be >= 0, "
                             f"episodes={self.episodes} >= 1")


@command("benchmarks.slow_restart")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(RestartConfig, "benchmarks/slow_restart", list(sys.argv[1:] if argv is None else argv),
                   "slow_restart", "kills=2 cold_kills=0 episodes=2")
    from rdp.inference import shipped_run

    ckpt = shipped_run(args.task, "rdp")
    spec = json.loads((ckpt / "run.json").read_text())
    horizon, rate_hz = int(spec["horizon"]), float(spec["rate_hz"])
    tmp = Path(tempfile.mkdtemp(prefix="slow-restart-"))
    rng = np.random.default_rng(args.seed)
    runs = {}
    for name, standby, kills in (("standby", True, args.kills), ("cold", False, args.cold_kills)):
        if kills <= 0:
            continue
        print(f"== {name}: {args.task}, {args.episodes} episodes, {kills} kills ({tmp / name})", flush=True)
        run = run_with_kills(args.task, args.episodes, args.seed, kills, standby, tmp / name, rng)
        rows = analyse(run, tmp / name, horizon, rate_hz)
        runs[name] = {"standby": standby, "exit_code": run["exit_code"], "summary": summarise(rows, run),
                      "kills": rows, "policy": run["result"]["supervision"]["slow"]["policy"]}
    for name, r in runs.items():
        print_table(f"{name} ({'warm standby' if r['standby'] else 'cold restarts'})", r["kills"], r["summary"])
    publish({
        "benchmark": "slow_restart", "task": args.task, "checkpoint": str(ckpt.relative_to(ROOT)),
        "episodes": args.episodes, "seed": args.seed, "horizon_steps": horizon, "rate_hz": rate_hz,
        "chunk_s": horizon / rate_hz, "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "goal": {"kill_to_chunk_s": GOAL_KILL_TO_CHUNK_S, "stale_ticks": 0}, "runs": runs,
    }, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
