"""Evaluate several trained policies on several tasks over the same seeds and write one results table.

    python -m rdp.compare    # shipped rdp_teleop and dp (same teleoperated demos), every task, seeds 0-49
    python -m rdp.compare tasks=wipe,peel,lift policies=rdp,rdp_nolm,rdp_wrench,dp,dp_tactile \\
        runs=runs episodes=50 seed=0 out=results/policies [jobs=2] [extra='policy.num_inference_steps=4']

Every cell is one ``python -m sim.eval task=T policy=P policy.checkpoint=RUN`` process (perturbations on, the
same seeds ``seed .. seed+episodes-1`` for every policy), where RUN is ``checkpoints/T/R`` (``runs=shipped``, the
default) or ``RUNS/T-R``, and R the training run a policy config evaluates: its own name, except inference-time
ablations of another run (``rdp_nolm`` evaluates the ``rdp`` run).
``jobs`` cells run at once (one torch thread each). A cell whose ``OUT/T-P/results.json`` already exists with the
same episodes and seed is not re-run, so an interrupted comparison resumes. Writes ``OUT/summary.json`` (every
cell: success rate, Wilson 95 % interval, mean score, per perturbation) and ``OUT/table.md`` (success and interval
per task and policy); the last stdout line is the summary JSON. A bad argument (unknown key, task or policy, a
malformed number) ends in one line and exit code 2 (``bus.cli``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bus.cli import UsageError, choose, command, parse_key_values
from bus.resources import checkpoint_dir, config_dir

ROOT = Path(__file__).resolve().parent.parent  # the source tree, for tests; data comes from bus.resources
T = TypeVar("T")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class CompareConfig:
    tasks: tuple[str, ...] = ("wipe", "peel", "lift")
    policies: tuple[str, ...] = ("rdp_teleop", "dp")  # the same teleoperated demonstrations
    runs: str = "shipped"  # shipped: checkpoints/<task>/<run>; else a directory of <task>-<run> training runs
    episodes: int = 50
    seed: int = 0
    out: str = "results/policies"
    jobs: int = 2
    extra: str = ""  # more sim.eval overrides for every cell, space-separated


def kv_config(cls: type[T], argv: Sequence[str]) -> T:
    """``key=value`` arguments -> the dataclass ``cls`` (``bus.cli.parse_key_values``: fields typed str, int, float
    or tuple[str, ...], the last given comma-separated); an unknown key or a malformed number raises a
    ``UsageError`` naming it."""
    return parse_key_values(cls, argv)


def check_names(key: str, names: Sequence[str], group: str) -> None:
    """Every name in ``names`` must be a config in ``configs/<group>/`` (a task, a policy)."""
    options = {p.stem for p in (config_dir() / group).glob("*.yaml")}
    if not names:
        raise UsageError(f"{key}= is empty; choose from {', '.join(sorted(options))}")
    for name in names:
        choose(key, name, options, group)


def finished(path: Path, episodes: int, seed: int) -> dict[str, Any] | None:
    """The ``results.json`` at ``path`` of a complete, error-free run with these episodes and seed, else None (an
    interrupted comparison re-runs only what is missing)."""
    try:
        old = json.loads((path / "results.json").read_text())
    except (OSError, ValueError):
        return None
    ok = old.get("episodes") == episodes and old.get("seed") == seed and not old.get("error")
    return old if ok else None


def parse_args(argv: Sequence[str]) -> CompareConfig:
    cfg = kv_config(CompareConfig, argv)
    if cfg.episodes < 1 or cfg.jobs < 1:
        raise UsageError(f"episodes and jobs must be >= 1, got {cfg.episodes}, {cfg.jobs}")
    check_names("tasks", cfg.tasks, "task")
    check_names("policies", cfg.policies, "policy")
    return cfg


def run_of(policy: str) -> str:
    """The training run a policy config evaluates: its ``default_run``, inherited through its hydra ``defaults``
    (``rdp_nolm`` is ``rdp`` evaluated without latency matching, so it evaluates the ``rdp`` run)."""
    import yaml

    seen: list[str] = []
    name = policy
    while name not in seen:
        seen.append(name)
        node = yaml.safe_load((config_dir() / "policy" / f"{name}.yaml").read_text()) or {}
        if node.get("default_run"):
            return str(node["default_run"])
        parents = [d for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_"]
        if not parents:
            break
        name = parents[0]
    return policy


def run_dir(cfg: CompareConfig, task: str, policy: str) -> Path:
    run = run_of(policy)
    if cfg.runs == "shipped":
        return checkpoint_dir() / task / run
    return Path(cfg.runs) / f"{task}-{run}"


def _cell(cfg: CompareConfig, task: str, policy: str) -> dict[str, Any]:
    out = Path(cfg.out) / f"{task}-{policy}"
    done = out / "results.json"
    old = finished(out, cfg.episodes, cfg.seed)
    if old is not None:
        return old
    run = run_dir(cfg, task, policy)
    if not (run / "run.json").is_file():
        return {"task": task, "policy": policy, "error": f"no training run at {run} (python -m rdp.train "
                                                         f"task={task} policy={run_of(policy)} ...)"}
    cmd = [sys.executable, "-m", "sim.eval", f"task={task}", f"policy={policy}", f"policy.checkpoint={run}",
           f"episodes={cfg.episodes}", f"seed={cfg.seed}", f"out={out}", "video=false", *cfg.extra.split()]
    env = {**os.environ, **{k: "1" for k in THREAD_VARS}}  # one core per cell: `jobs` cells use `jobs` cores
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"task": task, "policy": policy, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(done.read_text())


def table(cells: list[dict[str, Any]], cfg: CompareConfig) -> str:
    by = {(c["task"], c["policy"]): c for c in cells}
    head = "| policy | " + " | ".join(cfg.tasks) + " |"
    lines = [head, "|" + "---|" * (len(cfg.tasks) + 1)]
    for p in cfg.policies:
        row = []
        for t in cfg.tasks:
            c = by.get((t, p), {})
            if "success_rate" in c:
                lo, hi = c["ci95"]
                row.append(f"{c['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]")
            else:
                row.append("—")
        lines.append(f"| {p} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


@command("rdp.compare")
def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    cfg = parse_args(args)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(t, p) for t in cfg.tasks for p in cfg.policies]
    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        futures = [pool.submit(_cell, cfg, t, p) for t, p in jobs]
        cells = []
        for (t, p), fut in zip(jobs, futures, strict=True):
            c = fut.result()
            c.setdefault("task", t)
            c["policy"] = p
            cells.append(c)
            shown = f"{c['success_rate']:.2f}" if "success_rate" in c else f"error: {c.get('error')}"
            print(f"{t:5s} {p:12s} {shown}", file=sys.stderr, flush=True)
    keep = ("task", "policy", "episodes", "seed", "success_rate", "ci95", "mean_score", "per_perturbation", "error")
    summary = {"episodes": cfg.episodes, "seed": cfg.seed, "extra": cfg.extra,
               "cells": [{k: c[k] for k in keep if k in c} for c in cells]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "table.md").write_text(table(cells, cfg))
    print(table(cells, cfg), file=sys.stderr)
    print(json.dumps(summary))
    return 0 if not any("error" in c for c in cells) else 1


if __name__ == "__main__":
    raise SystemExit(main())
