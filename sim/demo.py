"""``make demo``: the force-aware expert against the position-only one on the wipe task.

Until the learned slow-fast stack lands, the demo shows what the rest of the project builds on:
a perturbation (the vase is raised or lowered mid-wipe) that only touch can handle. It writes a
video and a force plot per policy under ``outputs/demo/`` and prints a summary table.
"""

from __future__ import annotations

import json
from pathlib import Path

from sim.eval import evaluate
from sim.experts import make_expert


def main(episodes: int = 4, seed: int = 0, out: Path = Path("outputs/demo")) -> None:
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
    main()
