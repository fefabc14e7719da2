"""Chunk hand-over: RDP's "latest wins" against the real-time-chunking inpainting hand-over.

    python -m benchmarks.handover [task=wipe] [episodes=20] [seed=0] [checkpoint=RUN] [latency_s=0.08] [out=FILE]

Runs ``sim.eval``'s lockstep episodes (perturbations on, the same seeds) with the shipped (or given) checkpoint,
once per hand-over, and measures at 25 Hz policy steps:

* ``jump_mm``: how far the commanded TCP position moves on the step a new chunk takes over (p50 / p95 / max), and
  ``step_mm`` the same on every other step: a hand-over that continues the running chunk jumps like a normal step;
* success rate and mean score, with Wilson 95 % intervals.

Prints a table, writes JSON to ``out`` (default benchmarks/results/handover_<task>.json); the last stdout line is
that JSON.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.report import RESULTS_DIR, publish
from bus.cli import UsageError, choose, command
from bus.config import compose
from rdp.inference import HANDOVERS, make_policy
from sim.eval import wilson_interval
from sim.registry import make_env


def run_episodes(task: str, handover: str, episodes: int, seed: int, checkpoint: str | None,
                 latency_s: float) -> dict:
    env = make_env(task, perturb=True)
    policy = make_policy(task, checkpoint=checkpoint, default_run="rdp", latency_s=latency_s, handover=handover)
    jumps, steps, rows = [], [], []
    t0 = time.perf_counter()
    for k in tqdm(range(episodes), desc=f"{task}/{handover}", unit="ep"):
        obs, info = env.reset(seed=seed + k)
        policy.reset(env)
        prev_cmd, prev_active = None, None
        while True:
            action = policy.act(obs)
            if policy.tick % policy.ticks_per_step == 1 or policy.ticks_per_step == 1:  # a new policy step
                cmd = action[: 3].copy()  # first arm's commanded position
                if prev_cmd is not None:
                    moved = float(np.linalg.norm(cmd - prev_cmd)) * 1e3
                    (jumps if policy.active is not prev_active else steps).append(moved)
                prev_cmd, prev_active = cmd, policy.active
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        rows.append({"seed": seed + k, "success": bool(info["success"]), "score": float(info["score"])})
    env.close()
    ok = sum(r["success"] for r in rows)

    def pct(v: list[float]) -> dict[str, float | None]:
        if not v:
            return {"n": 0, "p50": None, "p95": None, "max": None}
        p50, p95 = np.percentile(v, [50, 95])
        return {"n": len(v), "p50": round(float(p50), 3), "p95": round(float(p95), 3), "max": round(max(v), 3)}

    return {"handover": handover, "episodes": episodes, "success_rate": ok / episodes,
            "ci95": wilson_interval(ok, episodes), "mean_score": float(np.mean([r["score"] for r in rows])),
            "jump_mm": pct(jumps), "step_mm": pct(steps), "seconds": round(time.perf_counter() - t0, 1),
            "episodes_detail": rows}


@dataclass
class HandoverConfig:
    """``configs/benchmarks/handover.yaml``."""

    task: str = "wipe"
    episodes: int = 20
    seed: int = 0
    checkpoint: str | None = None  # a training run; None: the shipped checkpoints/<task>/rdp
    latency_s: float = 0.08  # simulated slow-policy inference latency
    out: str | None = None  # None: benchmarks/results/handover_<task>.json

    def __post_init__(self) -> None:
        from sim.registry import TASKS

        if self.episodes < 1:
            raise UsageError(f"episodes={self.episodes} must be >= 1")
        choose("task", self.task, TASKS, "task")


@command("benchmarks.handover")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = compose(HandoverConfig, "benchmarks/handover", list(sys.argv[1:] if argv is None else argv), "handover",
                  "task=wipe episodes=10")
    cells = [run_episodes(cfg.task, h, cfg.episodes, cfg.seed, cfg.checkpoint, cfg.latency_s) for h in HANDOVERS]
    print(f"\n{'handover':10s} {'success':>8s} {'score':>6s} {'jump p50/p95 mm':>17s} {'step p50/p95 mm':>17s}")
    for c in cells:
        jump, step = c["jump_mm"], c["step_mm"]
        print(f"{c['handover']:10s} {c['success_rate']:8.2f} {c['mean_score']:6.2f} "
              f"{jump['p50']:>8} / {jump['p95']:<6} {step['p50']:>8} / {step['p95']:<6}")
    report = {"benchmark": "handover", "task": cfg.task, "seed": cfg.seed, "latency_s": cfg.latency_s,
              "checkpoint": cfg.checkpoint or f"checkpoints/{cfg.task}/rdp", "machine": platform.machine(),
              "cells": cells}
    publish(report, Path(cfg.out) if cfg.out else RESULTS_DIR / f"handover_{cfg.task}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
