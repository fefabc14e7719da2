"""What grounding costs the robot: grounded instructions carried out in the simulator, against the true goal.

    python -m grounding.endtoend run=RUN data=data/ground-test policies=[wipe:RUN_W,peel:RUN_P,lift:RUN_L] \\
        [episodes=50] [seed=700000] [split=heldout] [kinds=[explicit,repeat,modified,relative,complement]] out=DIR

For the k-th of the first ``episodes`` test episodes (``grounding.data``, recorded under held-out looks), one
instruction of the allowed ``kinds`` in the ``split`` wording is drawn from (``seed``, the episode's seed), among
those the episode answers (``grounding.instructions.generate``). Its answer is the *target*: the episode's task, and
the goal the instruction asks, a field it does not ask (a force "do that again" cannot see) at its default. The
grounding run reads the episode's video and the instruction (``grounding.ground``); then a new episode of the
target task, env seed ``seed + k``, is run twice in the simulator, scored against the target goal
(``make_env(task, goal=target)``), with the target task's goal-conditioned policy (``policies=``) observing

* (a) ``grounded``: the grounded goal (its ``Goal.vector`` in place of ``obs["goal"]``); a wrongly grounded task
  fails without running (the row says so);
* (b) ``true``: the target goal, as the env gives it.

(b) - (a) is what grounding costs. Writes OUT/results.json: every row (instruction, kind, target, grounded, which
asked fields were right, the outcome of both runs) and the success of both with 95 % Wilson intervals, overall, per
kind and per task; prints a compact table. Episodes with no instruction of the allowed kinds are listed as skipped.
``max_seconds`` ends every run early (tests).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bus.cli import UsageError, choose, command
from bus.config import compose
from dataset.durable import write_file_durably
from grounding.data import GroundingSet, read_episode
from grounding.ground import Grounder, Grounding, goal_from_classes, goal_option
from grounding.instructions import FIELDS, IGNORE, KINDS, SPLITS, TASK_FIELDS, TASKS, Instruction, generate
from sim.eval import run_episode, wilson_interval
from sim.tasks.base import Goal

E2E_FORMAT = "slowfast-grounding-endtoend/1"
GOAL_KINDS = tuple(k for k in KINDS if k != "when")  # kinds that ask for a goal to carry out
ARMS = ("grounded", "true")  # (a) the policy observes the grounded goal, (b) the target goal


@dataclass
class EndToEndConfig:
    """``configs/grounding/endtoend.yaml``."""

    run: str = ""
    data: str = ""
    policies: list[str] = field(default_factory=list)
    episodes: int = 50
    tasks: list[str] = field(default_factory=list)  # only episodes of these tasks; empty: every task
    seed: int = 700000
    split: str = "heldout"
    kinds: list[str] = field(default_factory=lambda: list(GOAL_KINDS))
    out: str = ""
    max_seconds: float | None = None
    perturb: bool = True
    latency_s: float = 0.08  # the policies' simulated inference latency, as sim.eval's policy configs have it
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        missing = [k for k in ("run", "data", "policies", "out") if not getattr(self, k)]
        if missing:
            raise UsageError(f"{', '.join(f'{k}=' for k in missing)} required (e.g. {EXAMPLE})")
        choose("split", self.split, SPLITS, "instruction split")
        if not self.kinds:
            raise UsageError(f"kinds= is empty; choose from {', '.join(GOAL_KINDS)}")
        for task in self.tasks:
            choose("tasks", task, TASKS, "task")
        for kind in self.kinds:
            if kind == "when":
                raise UsageError(f"kinds: 'when' asks for a moment, not a goal to carry out; choose from "
                                 f"{', '.join(GOAL_KINDS)}")
            choose("kinds", kind, GOAL_KINDS, "instruction kind")
        self.policy_runs()  # a malformed entry fails here
        if self.episodes < 1 or self.threads < 1:
            raise UsageError(f"episodes={self.episodes} and threads={self.threads} must be >= 1")
        if not self.latency_s >= 0:
            raise UsageError(f"latency_s={self.latency_s} must be >= 0")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise UsageError(f"max_seconds={self.max_seconds} must be > 0 or null (the task's own end)")

    def policy_runs(self) -> dict[str, str]:
        """``policies=[task:RUN,...]`` as {task: RUN}."""
        runs: dict[str, str] = {}
        for entry in self.policies:
            task, sep, run = str(entry).partition(":")
            if not sep or not run:
                raise UsageError(f"policies: {entry!r} is not TASK:RUN (e.g. policies=[wipe:runs/wipe-goals])")
            choose("policies", task, TASKS, "task")
            if task in runs:
                raise UsageError(f"policies: two runs for {task} ({runs[task]}, {run})")
            runs[task] = run
        return runs


EXAMPLE = ("run=runs/g-sf-64 data=data/ground-test policies=[wipe:runs/wipe-goals,peel:runs/peel-goals,"
           "lift:runs/lift-goals] out=results/ground-e2e")


# ------------------------------------------------------------------------------------------------------ targets
def draw_instruction(meta: Mapping[str, Any], split: str, seed: int, kinds: Sequence[str]) -> Instruction | None:
    """One instruction about the episode ``meta``, uniformly among those of ``kinds`` it answers, drawn from
    (``seed``, the episode's seed, ``split``) alone; None when it answers none."""
    rng = np.random.default_rng([seed, int(meta["seed"]), SPLITS.index(split)])
    options = generate(meta, split, rng, tuple(kinds))
    return options[int(rng.integers(len(options)))] if options else None


def target_of(instruction: Instruction) -> tuple[str, Goal, dict[str, str]]:
    """The instruction's answer as (task, goal, the fields it asks {field: value}); unasked fields at default."""
    task = TASKS[instruction.targets["task"]]
    asked = {k: FIELDS[k][instruction.targets[k]] for k in TASK_FIELDS[task] if instruction.targets[k] != IGNORE}
    return task, goal_from_classes(task, asked), asked


def scored(grounding: Grounding, task: str, goal: Goal, asked: Mapping[str, str]) -> dict[str, bool]:
    """Which asked parts the model got (as ``grounding.evaluate`` scores them: its answer per head), and all."""
    right = {"task": grounding.task == task, **{k: grounding.classes.get(k) == v for k, v in asked.items()}}
    return {**right, "all": all(right.values())}


# ------------------------------------------------------------------------------------------------------- episodes
class GoalOverride:
    """An ``observe`` hook for ``sim.eval.run_episode``: the policy sees ``vector`` as its goal (B: (G,) float32),
    whatever goal the env scores. Writes into the observation the env just returned (a fresh dict each step)."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = np.asarray(vector, dtype=np.float32)

    def __call__(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "goal" not in obs or np.shape(obs["goal"]) != self.vector.shape:
            raise ValueError(f"observation goal {np.shape(obs.get('goal'))}, expected {self.vector.shape}: the env "
                             "must be goal-conditioned for the task the goal belongs to")
        obs["goal"] = self.vector
        return obs


def run_arm(env: Any, policy: Any, seed: int, goal: Goal | None, max_seconds: float | None) -> dict[str, Any]:
    """One episode (env seed ``seed``); ``goal``: what the policy observes instead of the env's goal (None: the
    env's own). Its outcome."""
    observe = None if goal is None else GoalOverride(goal.vector())
    info, _ = run_episode(env, policy, seed, observe=observe, max_seconds=max_seconds)
    return {"ran": True, "success": bool(info["success"]), "score": round(float(info["score"]), 4),
            "failure": info["failure"], "goal_miss": info["goal_miss"], "cut": bool(info.get("cut", False))}


def load_policies(cfg: EndToEndConfig, tasks: Sequence[str]) -> dict[str, Any]:
    """The goal-conditioned policy of every task in ``tasks`` (``sim.eval``'s ``SimPolicy``)."""
    from rdp.inference import make_policy

    runs = cfg.policy_runs()
    missing = sorted(set(tasks) - set(runs))
    if missing:
        raise UsageError(f"policies= has no run for {', '.join(missing)}, a task of the chosen episodes; add "
                         f"{', '.join(f'{t}:RUN' for t in missing)} (a goal-conditioned rdp.train run)")
    policies = {}
    for task in sorted(set(tasks)):
        policy = make_policy(task, checkpoint=runs[task], latency_s=cfg.latency_s)
        if "goal" not in policy.run["obs_keys"]:
            raise UsageError(f"policies: {runs[task]} does not observe a goal (obs_keys {list(policy.run['obs_keys'])})"
                             ": it cannot carry out a grounded one; train it with goal among its observations")
        policies[task] = policy
    return policies


def make_task_env(task: str, goal: Goal, policy: Any, perturb: bool) -> Any:
    """The env of ``task`` scoring ``goal`` and observing it, with the cameras ``policy`` reads: its image inputs,
    or its perception head's camera (the depth cloud, ``scene_points``, for a point-cloud head)."""
    from sim.registry import make_env

    sizes = [int(s[0]) for s in (policy.run.get("camera_size") or {}).values()] if policy.image_keys else []
    perception = policy.run.get("perception") or {}
    if perception.get("image_size"):
        sizes.append(int(perception["image_size"]))
    return make_env(task, goal=goal_option(goal), perturb=perturb, cameras=bool(sizes),
                    point_cloud=perception.get("camera") == "scene_points",
                    **({"image_size": sizes[0]} if sizes else {}))


def episode_row(k: int, index: int, meta: Mapping[str, Any], path: Path, instruction: Instruction,
                grounder: Grounder, policies: Mapping[str, Any], cfg: EndToEndConfig) -> dict[str, Any]:
    """Ground the instruction on the episode's video, then run both arms; the result row."""
    task, goal, asked = target_of(instruction)
    frames, times, _ = read_episode(path)
    g = grounder.ground(frames, instruction.text, times=times, duration=float(meta["duration"]))
    env_seed = cfg.seed + k
    env = make_task_env(task, goal, policies[task], cfg.perturb)
    try:
        true = run_arm(env, policies[task], env_seed, None, cfg.max_seconds)
        if g.task == task:
            grounded = run_arm(env, policies[task], env_seed, g.goal, cfg.max_seconds)
        else:
            grounded = {"ran": False, "success": False, "why": f"grounded task {g.task}, not {task}: counted failed"}
    finally:
        env.close()
    return {"episode": index, "file": path.name, "episode_seed": meta["seed"], "env_seed": env_seed,
            "looks": meta.get("looks"), "instruction": instruction.text, "kind": instruction.kind,
            "template": instruction.template,
            "target": {"task": task, "goal": goal.name, "asked": asked},
            "grounded": {"task": g.task, "goal": g.goal.name, "fields": g.fields, "confidence": round(g.confidence, 4)},
            "correct": scored(g, task, goal, asked), "goal_exact": g.task == task and g.goal == goal,
            "arms": {"grounded": grounded, "true": true}}


# ------------------------------------------------------------------------------------------------------ summary
def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Success of both arms (95 % Wilson), their gap, and how often the grounding was right, over ``rows``."""
    n = len(rows)

    def rate(k: int) -> dict[str, Any]:
        lo, hi = wilson_interval(k, n)
        return {"count": k, "rate": k / n if n else None, "ci95": [round(lo, 4), round(hi, 4)]}

    out: dict[str, Any] = {"episodes": n}
    for arm in ARMS:
        out[arm] = rate(sum(bool(r["arms"][arm]["success"]) for r in rows))
    out["gap"] = None if not n else out["true"]["rate"] - out["grounded"]["rate"]
    out["task_right"] = rate(sum(bool(r["correct"]["task"]) for r in rows))
    out["all_right"] = rate(sum(bool(r["correct"]["all"]) for r in rows))
    out["goal_exact"] = rate(sum(bool(r["goal_exact"]) for r in rows))
    return out


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals overall, per kind and per target task."""
    return {"overall": summarise(rows),
            "by_kind": {k: summarise([r for r in rows if r["kind"] == k]) for k in KINDS
                        if any(r["kind"] == k for r in rows)},
            "by_task": {t: summarise([r for r in rows if r["target"]["task"] == t]) for t in TASKS
                        if any(r["target"]["task"] == t for r in rows)}}


def _pct(entry: Mapping[str, Any]) -> str:
    return "-" if entry["rate"] is None else f"{100 * entry['rate']:.0f}"


def format_table(result: Mapping[str, Any]) -> str:
    """Rows overall, per kind, per task; columns: n, grounding right (task, all asked, whole goal) and the success
    of both arms with their 95 % intervals, in %."""
    totals = result["totals"]
    lines = [f"grounded execution: {result['episodes']} {result['split']} instructions on {result['data']} "
             f"(success %, 95 % CI)",
             f"{'':<11}{'n':>4}{'task':>6}{'all':>6}{'goal':>6}   {'(a) grounded':<17}{'(b) true goal':<17}{'gap':>5}"]

    def cell(entry: Mapping[str, Any]) -> str:
        lo, hi = entry["ci95"]
        return f"{_pct(entry)} ({100 * lo:.0f}-{100 * hi:.0f})"

    groups = [("overall", totals["overall"]), *totals["by_kind"].items(), *totals["by_task"].items()]
    for label, t in groups:
        gap = "-" if t["gap"] is None else f"{100 * t['gap']:+.0f}"
        lines.append(f"{label:<11}{t['episodes']:>4}{_pct(t['task_right']):>6}{_pct(t['all_right']):>6}"
                     f"{_pct(t['goal_exact']):>6}   {cell(t['grounded']):<17}{cell(t['true']):<17}{gap:>5}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- run
def evaluate(cfg: EndToEndConfig) -> dict[str, Any]:
    import torch

    torch.set_num_threads(cfg.threads)
    data = GroundingSet(cfg.data, cfg.split, instructions=cfg.kinds, num_frames=2)  # checks the folder and metas
    chosen = [i for i in sorted(data.files) if not cfg.tasks or data.metas[i]["task"] in cfg.tasks][:cfg.episodes]
    if len(chosen) < cfg.episodes:
        raise UsageError(f"data={cfg.data} holds {len(chosen)} episodes of tasks {cfg.tasks or 'any'}, "
                         f"episodes={cfg.episodes} asked for more")
    grounder = Grounder(cfg.run)
    policies = load_policies(cfg, [data.metas[i]["task"] for i in chosen])
    rows, skipped = [], []
    bar = tqdm(list(enumerate(chosen)), desc="ground + execute", unit="ep", file=sys.stderr, disable=not cfg.progress)
    for k, index in bar:
        meta = data.metas[index]
        instruction = draw_instruction(meta, cfg.split, cfg.seed, cfg.kinds)
        if instruction is None:
            skipped.append({"episode": index, "why": f"answers no instruction of kinds {list(cfg.kinds)}"})
            continue
        rows.append(episode_row(k, index, meta, data.files[index], instruction, grounder, policies, cfg))
        ok = {arm: sum(bool(r["arms"][arm]["success"]) for r in rows) for arm in ARMS}
        bar.set_postfix(a=f"{ok['grounded']}/{len(rows)}", b=f"{ok['true']}/{len(rows)}")
    bar.close()
    return {"format": E2E_FORMAT, "run": cfg.run, "data": cfg.data, "split": cfg.split, "kinds": list(cfg.kinds),
            "seed": cfg.seed, "episodes": len(rows), "episodes_requested": cfg.episodes,
            "policies": cfg.policy_runs(), "perturb": cfg.perturb, "latency_s": cfg.latency_s,
            "max_seconds": cfg.max_seconds,
            "looks": sorted({str(data.metas[i].get("looks")) for i in chosen}), "grounding_frames": grounder.frames,
            "totals": summary(rows), "rows": rows, "skipped": skipped}


def parse_args(argv: Sequence[str]) -> EndToEndConfig:
    return compose(EndToEndConfig, "grounding/endtoend", argv, "grounding end-to-end evaluation", EXAMPLE)


@command("grounding.endtoend")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(list(sys.argv[1:] if argv is None else argv))
    result = evaluate(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_file_durably(out / "results.json", (json.dumps(result, indent=1) + "\n").encode())
    print(format_table(result), file=sys.stderr)
    overall = result["totals"]["overall"]
    print(json.dumps({"episodes": result["episodes"], "grounded": overall["grounded"]["rate"],
                      "true": overall["true"]["rate"], "gap": overall["gap"], "out": str(out / "results.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
