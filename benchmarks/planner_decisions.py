"""Planner decisions per second on this CPU: imagine K candidate plans of L frames with the world model (one batch,
chunk by chunk), decode them, score the end frames; in-process and through the planner node on the bus.

    python -m benchmarks.planner_decisions [run=RUN] [scorer=DIR] [candidates=[2,4,8]] [lengths=[16,32]] [node=true]

The planner has observed a marker-task episode's seen frames (seed ``seed``, rendered here, so no recorded data is
needed) with its TEMP-LoRA memory attached; every decision starts from those frames. ``node=true`` also times the
first (K, L) setting through a ``world_model.node`` process (request, imagination, the imagined frames back), one
thread each. Prints a table, writes JSON to benchmarks/results/planner_decisions.json; the last stdout line is that
JSON.
"""

from __future__ import annotations

import platform
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.perception_plan import median_ms
from benchmarks.report import publish
from bus.cli import UsageError, command
from bus.config import compose


@dataclass
class PlannerDecisionsConfig:
    """``configs/benchmarks/planner_decisions.yaml``."""

    run: str = ""
    scorer: str = ""
    candidates: list[int] = field(default_factory=lambda: [2, 4, 8])
    lengths: list[int] = field(default_factory=lambda: [16, 32])
    node: bool = True
    seed: int = 700000
    repeats: int = 5
    warmup: int = 1
    out: str = "benchmarks/results/planner_decisions.json"

    def __post_init__(self) -> None:
        if not self.candidates or not self.lengths or min(self.candidates + self.lengths) < 1:
            raise UsageError("candidates and lengths must be non-empty lists of positive ints")
        if self.repeats < 1 or self.warmup < 0:
            raise UsageError(f"repeats={self.repeats} must be >= 1 and warmup={self.warmup} >= 0")


def _plans(k: int, length: int, step: float, rng: np.random.Generator) -> np.ndarray:
    heading = rng.uniform(0, 2 * np.pi, k)
    moves = np.zeros((k, length, 3), np.float32)
    moves[:, :, 0], moves[:, :, 1] = (step * np.cos(heading))[:, None], (step * np.sin(heading))[:, None]
    return moves


@command("benchmarks.planner_decisions")
def main(argv: Sequence[str] | None = None) -> int:
    from world_model.marker_task import MarkerTaskConfig, MarkerWorld
    from world_model.node import RemotePlanner, build_planner
    from world_model.plan import shipped
    from world_model.revisit import RevisitConfig

    cfg = compose(PlannerDecisionsConfig, "benchmarks/planner_decisions",
                  list(sys.argv[1:] if argv is None else argv), "planner_decisions", "candidates=[4] lengths=[32]")
    torch.set_num_threads(1)
    run = cfg.run or str(shipped("revisit"))
    planner = build_planner(run, cfg.scorer, True, 0, 2, 8, 1e-3, 1)
    task = MarkerTaskConfig(revisit=RevisitConfig(image_size=planner.ae.cfg.image_size))
    with MarkerWorld(task, cfg.seed) as world:
        seen, actions = world.seen()
    planner.observe(seen, actions)
    rng = np.random.default_rng(0)
    rows = []
    for k in cfg.candidates:
        for length in cfg.lengths:
            plans = _plans(k, length, task.revisit.step, rng)
            ms = median_ms(lambda p=plans: planner.decide(p), cfg.repeats, cfg.warmup)
            rows.append({"where": "in-process", "candidates": k, "frames": length, "decision_ms": ms,
                         "decisions_per_s": round(1e3 / ms, 2), "imagined_frames_per_s": round(1e3 * k * length / ms)})
    if cfg.node:
        from bus.process import Child

        k, length = cfg.candidates[0], cfg.lengths[0]
        plans = _plans(k, length, task.revisit.step, rng)
        with tempfile.TemporaryDirectory() as tmp:
            child = Child("planner", "world_model.node", [f"run={run}", f"scorer={cfg.scorer}", "threads=1"],
                          Path(tmp) / "planner.log")
            try:
                remote = RemotePlanner(str(child.wait_event("ready", timeout=120.0)["address"]))
                remote.observe(seen, actions)
                ms = median_ms(lambda: remote.decide(plans), cfg.repeats, cfg.warmup)
                remote.close()
            finally:
                child.stop()
        rows.append({"where": "planner node", "candidates": k, "frames": length, "decision_ms": ms,
                     "decisions_per_s": round(1e3 / ms, 2), "imagined_frames_per_s": round(1e3 * k * length / ms)})
    print(f"{'where':14s} {'K':>3s} {'frames':>6s} {'ms':>8s} {'decisions/s':>11s} {'frames/s':>8s}")
    for r in rows:
        print(f"{r['where']:14s} {r['candidates']:3d} {r['frames']:6d} {r['decision_ms']:8.1f} "
              f"{r['decisions_per_s']:11.2f} {r['imagined_frames_per_s']:8d}")
    publish({"benchmark": "planner decisions: K candidate plans imagined and scored (one thread)", "run": run,
             "ddim_steps": planner.model.cfg.scheduler.num_inference_steps, "repeats": cfg.repeats,
             "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "results": rows},
            Path(cfg.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
