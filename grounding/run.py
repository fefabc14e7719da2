"""Ground an operator's instruction in an episode's scene video, and carry it out with the task's goal policy.

    python -m grounding.run "do that again, but gentler." video=data/ground-test/episode_000004.npz run=runs/g-sf-64
    python -m grounding.run instruction='now the other side' video=EPISODE run=RUN execute=lockstep \\
        [checkpoint=GOAL_RUN] [episodes=1] [seed=0] [max_episode_s=null] [out=DIR]

The instruction may come first without its key (it holds spaces and commas, which ``instruction=`` needs quoted for
hydra: ``"instruction='now, gently'"``). ``video``: a grounding episode file (``grounding.data``) or a recorded
episode directory with a ``scene_rgb`` stream (``dataset``). The grounding run's model reads the video and the
instruction (``grounding.ground.Grounder``) and the command prints what it grounded as one line, then one JSON line
(the last stdout line): instruction, task, goal, fields, keyframe_s, confidence, per-head probabilities, and
``execute`` (null, or the outcome below).

``execute=lockstep|realtime`` then runs ``python -m rdp.run task=<task> checkpoint=<goal policy> goal=<goal>
mode=<execute> episodes=... seed=...`` as a child process (its live lines on stderr, its log in OUT/launcher.log,
its results in OUT) and prints its outcome. The goal policy: ``checkpoint=`` (a goal-conditioned ``rdp.train`` run of
the grounded task), else the shipped ``checkpoints/<task>/rdp_goal``. A default goal is passed spelled out
(``goal=all-normal``), the same goal, so that the robot node still publishes it for the policy to read.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.cli import CommandError, UsageError, choose, command
from bus.config import compose, override
from bus.process import Child
from grounding.ground import Grounder, Grounding, goal_option, load_video, shipped_run

EXECUTE = ("none", "lockstep", "realtime")
GOAL_POLICY = "rdp_goal"  # the shipped goal-conditioned run of each task: checkpoints/<task>/rdp_goal
STOP_TIMEOUT_S = 60.0  # rdp.run stopping its nodes and writing its results after SIGTERM
TRAIN_HOW = ("python -m teleop.record_expert task={task} goal=random episodes=200 out=data/{task}-goals, then "
             "python -m rdp.train task={task} policy=rdp data=data/{task}-goals out=runs/{task}-goals "
             "'policy.train.obs_keys=[proprio,tactile,goal]'")


@dataclass
class GroundingRunConfig:
    """``configs/grounding/run.yaml``."""

    instruction: str = ""
    video: str = ""
    run: str = ""
    execute: str = "none"
    checkpoint: str | None = None
    seed: int = 0
    episodes: int = 1
    max_episode_s: float | None = None
    out: str | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        if not self.video:
            raise UsageError(f"video= required (e.g. {EXAMPLE})")
        if not self.run:
            self.run = str(shipped_run())
        if not self.instruction.strip():
            raise UsageError(f"instruction is empty: say what to do (e.g. {EXAMPLE})")
        choose("execute", self.execute, EXECUTE, "execution mode")
        if self.episodes < 1 or self.seed < 0:
            raise UsageError(f"episodes={self.episodes} must be >= 1 and seed={self.seed} >= 0")
        if self.max_episode_s is not None and not self.max_episode_s > 0:
            raise UsageError(f"max_episode_s={self.max_episode_s} must be > 0 or null")
        if self.threads < 1:
            raise UsageError(f"threads={self.threads}: expected an integer >= 1")


EXAMPLE = "'do that again, but gentler.' video=data/ground-test/episode_000004.npz run=runs/g-sf-64"


def goal_policy(task: str, checkpoint: str | None) -> Path:
    """The goal-conditioned policy run that carries out a grounded goal of ``task``: ``checkpoint`` or the shipped
    one; an absent one, one of another task or one that does not observe a goal is a one-line error."""
    from rdp.checkpoint import load_run_info
    from rdp.inference import shipped_run

    if checkpoint is None:
        try:
            path = shipped_run(task, GOAL_POLICY)
        except FileNotFoundError:
            raise FileNotFoundError(f"no goal-conditioned {task} policy: checkpoints/{task}/{GOAL_POLICY} is not "
                                    f"shipped; train one ({TRAIN_HOW.format(task=task)}) and pass "
                                    f"checkpoint=runs/{task}-goals") from None
    else:
        path = Path(checkpoint)
    run = load_run_info(path)
    if run["task"] != task:
        raise UsageError(f"checkpoint={path} was trained on {run['task']}, but the instruction grounds to {task}; "
                         f"pass a {task} goal policy (or leave checkpoint= out for the shipped one)")
    if "goal" not in run["obs_keys"]:
        raise UsageError(f"checkpoint={path} does not observe a goal (obs_keys {list(run['obs_keys'])}): it would "
                         f"ignore the grounded one; train one that does ({TRAIN_HOW.format(task=task)})")
    return path


def rdp_run_args(cfg: GroundingRunConfig, grounding: Grounding, checkpoint: Path, out: Path) -> list[str]:
    """``python -m rdp.run`` overrides that carry out ``grounding``."""
    values: dict[str, Any] = {"task": grounding.task, "checkpoint": str(checkpoint),
                              "goal": goal_option(grounding.goal), "mode": cfg.execute, "episodes": cfg.episodes,
                              "seed": cfg.seed, "out": str(out)}
    if cfg.max_episode_s is not None:
        values["max_episode_s"] = cfg.max_episode_s
    return [override(k, v) for k, v in values.items()]


def launch(args: Sequence[str], out: Path) -> dict[str, Any]:
    """Run ``python -m rdp.run ARGS`` to its end, its live lines to stderr; its summary and exit code. Ctrl-C stops it
    as its own Ctrl-C would (SIGTERM: it stops its nodes in order and writes its results)."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "launcher.log"
    child = Child("rdp.run", "rdp.run", list(args), log)
    try:
        while True:
            _, record = child.lines.get()
            if record is None:
                break
            if "text" in record:
                print(record["text"], file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"stopping rdp.run (pid {child.pid}) ...", file=sys.stderr, flush=True)
        child.stop(timeout=STOP_TIMEOUT_S)
        raise
    code = child.stop(timeout=STOP_TIMEOUT_S, grace=STOP_TIMEOUT_S)
    summary = child.last if child.last is not None and "success_rate" in child.last else None
    if summary is None:
        kind = UsageError if code == 2 else CommandError
        raise kind(f"rdp.run exited {code} without results: {child.last_log_line()} (log: {log})")
    return {"exit_code": code, "log": str(log), **summary}


def outcome_line(result: dict[str, Any]) -> str:
    n, rate = result.get("episodes") or 0, result.get("success_rate")
    ok = "-" if rate is None else f"{round(rate * n)}/{n}"
    error = f", error: {result['error']}" if result.get("error") else ""
    return (f"executed: rdp.run mode={result.get('mode')} task={result.get('task')} goal={result.get('goal')}: "
            f"{ok} episodes succeeded{error} -> {result.get('run_dir')}")


def parse_args(argv: Sequence[str]) -> GroundingRunConfig:
    return compose(GroundingRunConfig, "grounding/run", argv, "grounding run", EXAMPLE, positional=("instruction",))


@command("grounding.run")
def main(argv: Sequence[str] | None = None) -> int:
    import torch

    cfg = parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(cfg.threads)
    video = load_video(cfg.video)
    grounding = Grounder(cfg.run).ground(video.frames, cfg.instruction, times=video.times, duration=video.duration)
    print(grounding.line(), flush=True)
    result: dict[str, Any] = {**grounding.to_json(), "video": cfg.video, "run": cfg.run, "execute": None}
    code = 0
    if cfg.execute != "none":
        checkpoint = goal_policy(grounding.task, cfg.checkpoint)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(cfg.out) if cfg.out else Path("outputs/grounding") / f"{grounding.task}-{cfg.execute}-{stamp}"
        executed = launch(rdp_run_args(cfg, grounding, checkpoint, out), out)
        print(outcome_line(executed), flush=True)
        result["execute"] = executed
        code = 0 if executed["exit_code"] == 0 else 1
    print(json.dumps(result, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
