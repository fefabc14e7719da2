"""Teleoperation with and without touch and force feedback: success per task over the same seeds.

    python -m benchmarks.teleop_feedback [tasks=[wipe,peel,lift]] [episodes=50] [seed=0]
        [out=outputs/teleop_feedback] [press_assist=auto|always|never] [results=results/teleop_collect]

Per task, two ``python -m teleop.collect`` runs through the full process graph (robot node, teleop node, scripted
operator, recorder), lockstep, perturbations on, cameras off, the same seeds ``seed .. seed+episodes-1``:
``feedback=true`` (the operator feels touch and force; the teleop node's press limiter is on) and
``feedback=false`` (poses only). A run whose ``collect.json`` is complete is not re-run, so an interrupted study
resumes (delete its directory to redo it). Each run's summary is copied to ``RESULTS/<task>-<arm>.json`` (``results``,
default ``results/teleop_collect``; ``arm``: feedback / nofeedback, plus ``-assist-<mode>`` when ``press_assist`` is
not auto), and the table (successes, Wilson 95 % interval, failure reasons) to ``RESULTS/summary.json``. Prints the
table; the last stdout line is the summary JSON. About 10 s of wall time per episode on an idle 2-core machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.cli import CommandError, UsageError, choose, command
from bus.config import compose

ROOT = Path(__file__).resolve().parent.parent
PRESS_ASSIST = ("auto", "always", "never")


@dataclass
class FeedbackConfig:
    """``configs/benchmarks/teleop_feedback.yaml``."""

    tasks: list[str] = field(default_factory=lambda: ["wipe", "peel", "lift"])
    episodes: int = 50
    seed: int = 0
    out: str = "outputs/teleop_feedback"  # one teleop.collect run directory per task and arm
    press_assist: str = "auto"  # the teleop node's press limiter (teleop.collect press_assist=)
    results: str = "results/teleop_collect"  # the per-run summaries and summary.json

    def __post_init__(self) -> None:
        from sim.registry import TASKS

        if self.episodes < 1:
            raise UsageError(f"episodes={self.episodes} must be >= 1")
        choose("press_assist", self.press_assist, PRESS_ASSIST, "press-assist mode")
        for task in self.tasks:
            choose("tasks", task, TASKS, "task")


def wilson(k: int, n: int) -> tuple[float, float]:
    from sim.eval import wilson_interval

    lo, hi = wilson_interval(k, n)
    return round(lo, 3), round(hi, 3)


def run_arm(task: str, feedback: bool, args: FeedbackConfig) -> dict[str, Any]:
    """One collect run (or its finished result); returns its collect.json."""
    name = f"{task}-{'feedback' if feedback else 'nofeedback'}"
    if args.press_assist != "auto":
        name += f"-assist-{args.press_assist}"
    out = Path(args.out) / name
    done = out / "collect.json"
    if done.is_file():
        old = json.loads(done.read_text())
        if old.get("episodes") == args.episodes and old.get("seed") == args.seed:
            return {**old, "name": name}
    if out.exists():
        raise UsageError(f"{out} holds an unfinished run; delete it to redo it")
    cmd = [sys.executable, "-m", "teleop.collect", f"task={task}", f"episodes={args.episodes}", f"seed={args.seed}",
           "mode=lockstep", "cameras=false", f"feedback={str(feedback).lower()}",
           f"press_assist={args.press_assist}", f"out={out}"]
    print(f"$ {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=ROOT)
    if not done.is_file():
        raise CommandError(f"{' '.join(cmd[2:])} ended with code {proc.returncode} and no summary; see {out}/logs/")
    return {**json.loads(done.read_text()), "name": name}


def cell(summary: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in summary["rows"] if r.get("event") == "commit"]
    ok = sum(bool(r["success"]) for r in rows)
    fails = Counter(re.sub(r"[0-9.]+", "#", r.get("failure") or "score below success at the time limit")
                    for r in rows if not r["success"])
    by_kind: dict[str, list[int]] = {}
    for r in rows:
        k = by_kind.setdefault(str(r.get("perturbation")), [0, 0])
        k[0] += bool(r["success"])
        k[1] += 1
    return {"episodes": len(rows), "successes": ok, "success_rate": round(ok / max(len(rows), 1), 4),
            "wilson95": list(wilson(ok, len(rows))), "seed": summary["seed"], "failures": dict(fails),
            "per_perturbation": {k: f"{a}/{b}" for k, (a, b) in sorted(by_kind.items())},
            "failed_seeds": [r["seed"] for r in rows if not r["success"]], "wall_s": summary.get("wall_s"),
            "press_assist_n": summary.get("press_assist_n"), "timed_out": summary.get("timed_out")}


@command("benchmarks.teleop_feedback")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(FeedbackConfig, "benchmarks/teleop_feedback", list(sys.argv[1:] if argv is None else argv),
                   "teleop_feedback", "tasks=[wipe] episodes=10")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    summary_file = results / "summary.json"
    table = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    for task in args.tasks:
        for feedback in (True, False):
            s = run_arm(task, feedback, args)
            (results / f"{s['name']}.json").write_text(json.dumps({k: v for k, v in s.items() if k != "name"},
                                                                 indent=1) + "\n")
            table[s["name"]] = cell(s)
            summary_file.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print("| task | arm | successes | Wilson 95 % | failures |")
    print("|---|---|---|---|---|")
    for name, c in sorted(table.items()):
        task, arm = name.split("-", 1)
        print(f"| {task} | {arm} | {c['successes']}/{c['episodes']} | {c['wilson95'][0]:.2f}-{c['wilson95'][1]:.2f} "
              f"| {', '.join(f'{n} {k}' for k, n in c['failures'].items()) or '-'} |")
    print(json.dumps(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
