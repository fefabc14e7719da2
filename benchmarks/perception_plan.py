"""The slow node's cost with a perception policy: the scene estimate off the first camera frame, then each plan.

    python -m benchmarks.perception_plan runs=[checkpoints/peel/rdp_perception,...] [repeats=30] [out=FILE]

For each policy run trained with a perception head (``rdp.train perception=...``): the median CPU time (one thread,
batch 1) of the head's estimate from one 96x96 scene frame or its depth cloud (once per episode), of
``Planner.features`` for a reading, and of one plan at the run's DDIM steps (8 for the shipped runs) on a real
observation history from a reset of the task's scene under the training looks. ``plan_hz`` is the rate the slow node
can plan at (one plan per replan at most; the robot's 25 Hz training rate over ``replan_every`` = 8 asks for 3.1
Hz); ``first_plan_ms`` adds the estimate to the episode's first plan.

Prints a table, writes JSON to benchmarks/results/perception_plan.json; the last stdout line is that JSON.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.rdp_ldp_latency import time_ms
from benchmarks.report import publish
from bus.cli import UsageError, command
from bus.config import compose


@dataclass
class PerceptionPlanConfig:
    """``configs/benchmarks/perception_plan.yaml``."""

    runs: list[str] = field(default_factory=list)
    repeats: int = 30
    warmup: int = 3
    seed: int = 0
    out: str = "benchmarks/results/perception_plan.json"

    def __post_init__(self) -> None:
        if not self.runs:
            raise UsageError("runs=[RUN,...] is required: policy runs trained with perception=...")
        if self.repeats < 1 or self.warmup < 0:
            raise UsageError(f"repeats={self.repeats} must be >= 1 and warmup={self.warmup} >= 0")


def median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    return round(float(np.median(time_ms(fn, repeats, warmup))), 3)


def measure(run: str, cfg: PerceptionPlanConfig) -> dict[str, object]:
    from rdp.api import load_planner
    from sim.registry import make_env

    planner = load_planner(run)
    if planner.perception is None:
        raise UsageError(f"{run}: not a perception policy (trained without perception=...)")
    task = planner.run["task"]
    env = make_env(task, perturb=True, cameras=True, image_size=planner.perception.cfg.image_size, looks="train",
                   point_cloud=planner.perception_camera == "scene_points")
    try:
        obs, _ = env.reset(seed=cfg.seed)
    finally:
        env.close()
    frame = obs[planner.perception_camera]
    estimate_ms = median_ms(lambda: planner.perception.estimate(frame), cfg.repeats, cfg.warmup)
    planner.new_episode(cfg.seed)
    first = planner.features(obs)  # the episode's first reading: the estimate is made here; later ones reuse it
    features_ms = median_ms(lambda: planner.features(obs), cfg.repeats, cfg.warmup)
    history = [first] * int(planner.run["obs_steps"])
    with torch.inference_mode():
        plan_ms = median_ms(lambda: planner.plan(history), cfg.repeats, cfg.warmup)
    steps = planner.num_inference_steps or planner.model.cfg.num_inference_steps
    return {"run": run, "task": task, "method": planner.run["method"],
            "encoder": planner.perception.cfg.encoder, "ddim_steps": int(steps),
            "estimate_ms": estimate_ms, "features_ms": features_ms, "plan_ms": plan_ms,
            "first_plan_ms": round(estimate_ms + plan_ms, 3), "plan_hz": round(1e3 / plan_ms, 1)}


@command("benchmarks.perception_plan")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(PerceptionPlanConfig, "benchmarks/perception_plan", list(sys.argv[1:] if argv is None else argv),
                   "perception_plan", "runs=[checkpoints/peel/rdp_perception]")
    torch.set_num_threads(1)
    rows = [measure(run, args) for run in args.runs]
    print(f"{'run':40s} {'enc':10s} {'DDIM':>4s} {'estimate ms':>11s} {'features ms':>11s} {'plan ms':>8s} "
          f"{'plan Hz':>7s}")
    for r in rows:
        print(f"{r['run']:40s} {r['encoder']:10s} {r['ddim_steps']:4d} {r['estimate_ms']:11.2f} "
              f"{r['features_ms']:11.2f} {r['plan_ms']:8.2f} {r['plan_hz']:7.1f}")
    publish({"benchmark": "slow node with a perception policy: estimate, features, plan (batch 1, one thread)",
             "repeats": args.repeats, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
             "results": rows}, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
