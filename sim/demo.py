"""``make demo``: the force-aware expert against the position-only one on the wipe task.

Until the learned slow-fast stack lands, the demo shows what the rest of the project builds on:
a perturbation (the vase is raised or lowered mid-wipe) that only touch can handle. It writes a
video and a force plot per policy under ``outputs/demo/`` and prints a summary table.

    python -m sim.demo [episodes=4] [seed=0] [out=outputs/demo]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bus.cli import UsageError, command
from bus.config import compose
from sim.eval import evaluate
from sim.experts import make_expert


@dataclass
class DemoConfig:
    """``configs/sim/demo.yaml``."""

    episodes: int = 4
    seed: int = 0
    out: str = "outputs/demo"

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.seed < 0:
            raise UsageError(f"episodes={self.episodes} must be >= 1 and seed={self.seed} >= 0")


@command("sim.demo")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = compose(DemoConfig, "sim/demo", list(sys.argv[1:] if argv is None else argv), "demo", "episodes=2")
    demo(cfg.episodes, cfg.seed, Path(cfg.out))
    return 0


def demo(episodes: int = 4, seed: int = 0, out: Path = Path("outputs/demo")) -> None:
    rows = []
    for policy, feedback in (("expert", True), ("expert_noforce", False)):
        res = evaluate(
            task="wipe",
            make_policy=lambda feedback=feedback: make_expert("wipe", force_feedback=feedback),
            policy_name=policy,
            episodes=episodes,
            seed=seed,
            out_dir=out / policy,
        )
        rows.append(res)
    print(f"\nwipe task, perturbations on, seeds {seed}..{seed + episodes - 1}")
    print(f"{'policy':16} {'success':>8} {'95% CI':>16} {'mean score':>11}  outputs")
    for r in rows:
        ci = "[{:.2f}, {:.2f}]".format(*r["ci95"])
        print(f"{r['policy']:16} {r['success_rate']:8.2f} {ci:>16} {r['mean_score']:11.2f}  {r['run_dir']}")
    print("each run dir holds results.json, episode0.mp4 (video) and force.png (force over time)")
    print(json.dumps({r["policy"]: r["success_rate"] for r in rows}))


if __name__ == "__main__":
    sys.exit(main())
