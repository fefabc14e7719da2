"""Evaluate several trained policies on several tasks over the same seeds and write one results table.

    python -m rdp.compare    # shipped rdp_teleop and dp (same teleoperated demos), every task, seeds 0-49
    python -m rdp.compare tasks=[wipe,peel,lift] policies=[rdp,rdp_nolm,rdp_wrench,dp,dp_tactile] \\
        runs=runs episodes=50 seed=0 out=results/policies [jobs=2] [extra='policy.num_inference_steps=4']
    python -m rdp.compare ... jobs=32 launcher=ray ray_address=auto    # the cells as tasks on a Ray cluster

Every cell is one ``python -m sim.eval task=T policy=P policy.checkpoint=RUN`` process (perturbations on, the
same seeds ``seed .. seed+episodes-1`` for every policy), where RUN is ``checkpoints/T/R`` (``runs=shipped``, the
default) or ``RUNS/T-R``, and R the training run a policy config evaluates: its own name, except inference-time
ablations of another run (``rdp_nolm`` evaluates the ``rdp`` run). A run that sees gets the cameras it reads
(``sensors=vision``, or ``vision_points`` for a depth head; ``run_sensors``) unless ``extra`` sets ``sensors``.
``jobs`` cells run at once, one torch thread each (``bus.sweep``: processes on this machine, or Ray tasks with
``launcher=ray``, on a local Ray or the cluster at ``ray_address``). A cell whose ``OUT/T-P/results.json`` already
exists with the same episodes and seed is not re-run, so an interrupted comparison resumes. Writes
``OUT/summary.json`` (every cell: success rate, Wilson 95 % interval, mean score, per perturbation) and
``OUT/table.md`` (success and interval per task and policy); the last stdout line is the summary JSON. A bad argument
(unknown key, task or policy, a malformed number, launcher) ends in one line and exit code 2 (``bus.cli``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.cli import UsageError, choose, command
from bus.config import compose, override
from bus.resources import checkpoint_dir, config_dir
from bus.sweep import module_command, run_commands

ROOT = Path(__file__).resolve().parent.parent  # the source tree, for tests; data comes from bus.resources


@dataclass
class CompareConfig:
    """``configs/rdp/compare.yaml``."""

    tasks: list[str] = field(default_factory=lambda: ["wipe", "peel", "lift"])
    policies: list[str] = field(default_factory=lambda: ["rdp_teleop", "dp"])  # the same teleoperated demonstrations
    runs: str = "shipped"  # shipped: checkpoints/<task>/<run>; else a directory of <task>-<run> training runs
    episodes: int = 50
    seed: int = 0
    out: str = "results/policies"
    jobs: int = 2
    launcher: str = "local"  # where the cells run (bus.sweep): local processes, or ray tasks
    ray_address: str | None = None  # launcher=ray: None starts a local Ray; auto, ray://HEAD:10001 join a cluster
    extra: str = ""  # more sim.eval overrides for every cell, space-separated


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
    cfg = compose(CompareConfig, "rdp/compare", argv, "compare", "tasks=[wipe,peel] episodes=20")
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


def run_cells(cfg: CompareConfig) -> list[dict[str, Any]]:
    """Every cell's ``results.json`` (or ``error``), tasks by policies in table order: a finished cell is read back,
    a cell without a training run is an error, the others run as one ``sim.eval`` process each, ``cfg.jobs`` at a
    time (``bus.sweep.run_commands``)."""
    pairs = [(t, p) for t in cfg.tasks for p in cfg.policies]
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    todo: list[tuple[str, str]] = []
    for task, policy in pairs:
        old = finished(Path(cfg.out) / f"{task}-{policy}", cfg.episodes, cfg.seed)
        run = run_dir(cfg, task, policy)
        if old is not None:
            cells[task, policy] = old
        elif not (run / "run.json").is_file():
            cells[task, policy] = {"task": task, "policy": policy, "error": f"no training run at {run} (python -m "
                                                                            f"rdp.train task={task} policy="
                                                                            f"{run_of(policy)} ...)"}
        else:
            todo.append((task, policy))
    commands = [_cell_command(cfg, task, policy) for task, policy in todo]
    results = run_commands(commands, jobs=cfg.jobs, launcher=cfg.launcher, ray_address=cfg.ray_address,
                           labels=[f"{task} {policy}" for task, policy in todo])
    for (task, policy), result in zip(todo, results, strict=True):
        done = Path(cfg.out) / f"{task}-{policy}" / "results.json"
        cells[task, policy] = (json.loads(done.read_text()) if result.ok
                               else {"task": task, "policy": policy, "error": [result.error_line()]})
    for (task, policy), cell in cells.items():
        cell.setdefault("task", task)
        cell["policy"] = policy
    return [cells[pair] for pair in pairs]


def run_sensors(run: Mapping[str, Any]) -> str:
    """The ``sensors`` config a training run observes in ``sim.eval`` (its ``run.json``): ``vision_points`` for a
    depth perception head, ``vision`` for one that reads RGB (images or an RGB head), else "" (the default)."""
    if (run.get("perception") or {}).get("camera") == "scene_points":
        return "vision_points"
    return "vision" if run.get("image_keys") or run.get("perception") else ""


def _cell_command(cfg: CompareConfig, task: str, policy: str) -> list[str]:
    """One cell's ``python -m sim.eval`` command line (perturbations on, the comparison's seeds, no video; the
    cameras a run that sees needs, unless ``extra`` chooses the sensors)."""
    out = Path(cfg.out) / f"{task}-{policy}"
    run = run_dir(cfg, task, policy)
    values = {"task": task, "policy": policy, "policy.checkpoint": str(run), "episodes": cfg.episodes,
              "seed": cfg.seed, "out": str(out), "video": False}
    sensors = run_sensors(json.loads((run / "run.json").read_text()))
    if sensors and not any(a.startswith("sensors=") for a in cfg.extra.split()):
        values["sensors"] = sensors
    return module_command("sim.eval", *(override(k, v) for k, v in values.items()), *cfg.extra.split())


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
    cfg = parse_args(list(sys.argv[1:] if argv is None else argv))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = run_cells(cfg)
    for c in cells:
        shown = f"{c['success_rate']:.2f}" if "success_rate" in c else f"error: {c.get('error')}"
        print(f"{c['task']:5s} {c['policy']:12s} {shown}", file=sys.stderr, flush=True)
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
