"""The perception heads' cost side by side: one training step and one estimate per encoder, under the same load.

    python -m benchmarks.perception_heads [rounds=5] [steps=10] [repeats=30] [out=FILE]

Each encoder is built at the size the shipped and compared heads use (``rdp.perception``: ResNet-style width 16,
4x4 stem; Terminator width 40, 8x8 patches, two slow-fast blocks; PointNet width 32) on random inputs of the real
shapes (96x96 RGB frames, 512-point clouds). A training step is ``rdp.perception.train_step``, what
``train_estimator`` runs: batch 64, smooth-L1 loss plus the Terminator's slow-net loss, backward, clipping,
AdamW. The estimate is ``SceneEstimator.estimate`` on one frame. One thread. The encoders take turns in ``rounds``
rounds, so a change in the machine's load falls on all of them alike; the median over rounds is reported. A head's
`train s` in a run's summary was measured under whatever else ran then; this benchmark is the fair ratio.

Prints a table, writes JSON to benchmarks/results/perception_heads.json; the last stdout line is that JSON.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.rdp_ldp_latency import time_ms
from benchmarks.report import publish
from bus.cli import UsageError, command
from bus.config import compose

HEADS = ("resnet", "terminator", "pointnet")  # each at its default sizes (rdp.perception.ENCODER_SIZES)


@dataclass
class PerceptionHeadsConfig:
    """``configs/benchmarks/perception_heads.yaml``."""

    rounds: int = 5
    steps: int = 10  # timed training steps per round (after one untimed)
    repeats: int = 30  # timed estimates per round (after three untimed)
    batch: int = 64
    out: str = "benchmarks/results/perception_heads.json"

    def __post_init__(self) -> None:
        if min(self.rounds, self.steps, self.repeats, self.batch) < 1:
            raise UsageError(f"rounds, steps, repeats and batch must be >= 1, got {self.rounds}, {self.steps}, "
                             f"{self.repeats}, {self.batch}")


class _Head:
    """One encoder's estimator, optimiser and inputs, timed a round at a time."""

    def __init__(self, name: str, batch: int) -> None:
        from rdp.perception import EstimatorConfig, SceneEstimator, count_parameters

        self.model = SceneEstimator(EstimatorConfig(task="lift", encoder=name))  # the task only names the box
        self.encoder_parameters = count_parameters(self.model.encoder)
        self.parameters = count_parameters(self.model)
        gen = torch.Generator().manual_seed(0)
        if name == "pointnet":
            self.x = torch.rand(batch, 512, 3, generator=gen) * 0.3
            self.frame = self.x[0].numpy()
        else:
            self.x = torch.rand(batch, 96, 96, 3, generator=gen) * 2 - 1  # augmented frames are floats in [-1, 1]
            self.frame = (torch.rand(96, 96, 3, generator=gen) * 255).to(torch.uint8).numpy()
        self.y = torch.randn(batch, self.model.cfg.out_dim, generator=gen)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def train_step(self) -> None:
        from rdp.perception import train_step

        self.model.train()
        train_step(self.model, self.opt, self.x, self.y)

    def estimate(self) -> None:
        self.model.estimate(self.frame)


def _median_ms(fn, n: int, warmup: int) -> float:
    return float(np.median(time_ms(fn, n, warmup)))


@command("benchmarks.perception_heads")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(PerceptionHeadsConfig, "benchmarks/perception_heads", list(sys.argv[1:] if argv is None else argv),
                   "perception_heads", "rounds=1 steps=2 repeats=5")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    heads = {name: _Head(name, args.batch) for name in HEADS}
    step_ms: dict[str, list[float]] = {name: [] for name in heads}
    estimate_ms: dict[str, list[float]] = {name: [] for name in heads}
    for _ in range(args.rounds):
        for name, head in heads.items():
            step_ms[name].append(_median_ms(head.train_step, args.steps, 1))
            estimate_ms[name].append(_median_ms(head.estimate, args.repeats, 3))
    rows = {}
    for name, head in heads.items():
        step = float(np.median(step_ms[name]))
        rows[name] = {"encoder_parameters": head.encoder_parameters, "parameters": head.parameters,
                      "config": {k: getattr(head.model.cfg, k) for k in ("encoder", "width", "stem_stride", "depth")},
                      "train_step_ms": round(step, 2),
                      "train_3000_steps_s": round(step * 3.0, 1), "estimate_ms": round(float(np.median(
                          estimate_ms[name])), 3)}
    print(f"{'encoder':11s} {'enc params':>10s} {'train step ms':>13s} {'3000 steps s':>12s} {'estimate ms':>11s}")
    for name, r in rows.items():
        print(f"{name:11s} {r['encoder_parameters']:10,d} {r['train_step_ms']:13.1f} {r['train_3000_steps_s']:12.1f} "
              f"{r['estimate_ms']:11.2f}")
    publish({"benchmark": f"perception head: training step (batch {args.batch}) and one estimate, one thread",
             "rounds": args.rounds, "steps": args.steps, "repeats": args.repeats, "torch": torch.__version__,
             "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
             "load_average": list(os.getloadavg()), "results": rows}, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
