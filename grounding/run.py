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
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
        check_execute_options(self)
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


class ExecuteOptions(Protocol):
    """How a grounding is carried out (``grounding.run`` and ``grounding.node`` configs both have these)."""

    execute: str
    episodes: int
    seed: int
    max_episode_s: float | None


def check_execute_options(cfg: ExecuteOptions) -> None:
    """A UsageError naming the first bad one."""
    choose("execute", cfg.execute, EXECUTE, "execution mode")
    if cfg.episodes < 1 or cfg.seed < 0:
        raise UsageError(f"episodes={cfg.episodes} must be >= 1 and seed={cfg.seed} >= 0")
    if cfg.max_episode_s is not None and not cfg.max_episode_s > 0:
        raise UsageError(f"max_episode_s={cfg.max_episode_s} must be > 0 or null")


def rdp_run_args(cfg: ExecuteOptions, grounding: Grounding, checkpoint: Path, out: Path) -> list[str]:
    """``python -m rdp.run`` overrides that carry out ``grounding``."""
    values: dict[str, Any] = {"task": grounding.task, "checkpoint": str(checkpoint),
                              "goal": goal_option(grounding.goal), "mode": cfg.execute, "episodes": cfg.episodes,
                              "seed": cfg.seed, "out": str(out)}
    if cfg.max_episode_s is not None:
        values["max_episode_s"] = cfg.max_episode_s
    return [override(k, v) for k, v in values.items()]


class Execution:
    """``python -m rdp.run ARGS`` carrying out a grounding, started at once (its log in OUT/launcher.log, its results
    in OUT). :meth:`wait` follows it to its end (its live lines to stderr) and returns its summary; :meth:`cancel`,
    from any thread, stops it as its own Ctrl-C would (SIGTERM: it stops its nodes in order and writes its
    results), so a cancelled run still ends in ``wait`` with what it did."""

    def __init__(self, args: Sequence[str], out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.log = out, out / "launcher.log"
        self.child = Child("rdp.run", "rdp.run", list(args), self.log)
        self.cancelled = False

    def wait(self, echo: bool = True) -> dict[str, Any]:
        """Its summary (``exit_code``, ``log`` and rdp.run's summary line); a run that wrote none is a UsageError
        (exit 2: its configuration) or a CommandError naming the log's last line."""
        while True:
            _, record = self.child.lines.get()
            if record is None:
                break
            if echo and "text" in record:
                print(record["text"], file=sys.stderr, flush=True)
        code = self.child.stop(timeout=STOP_TIMEOUT_S, grace=STOP_TIMEOUT_S)
        summary = self.child.last if self.child.last is not None and "success_rate" in self.child.last else None
        if summary is None:
            kind = UsageError if code == 2 else CommandError
            raise kind(f"rdp.run exited {code} without results: {self.child.last_log_line()} (log: {self.log})")
        return {"exit_code": code, "log": str(self.log), **summary}

    def cancel(self) -> bool:
        """Ask the run to stop (False if it had already ended); :meth:`wait` returns once it has."""
        self.cancelled = self.child.signal(signal.SIGTERM) or self.cancelled
        return self.cancelled


def launch(args: Sequence[str], out: Path) -> dict[str, Any]:
    """Run ``python -m rdp.run ARGS`` to its end (:class:`Execution`); Ctrl-C stops it the way its own would."""
    execution = Execution(args, out)
    try:
        return execution.wait()
    except KeyboardInterrupt:
        print(f"stopping rdp.run (pid {execution.child.pid}) ...", file=sys.stderr, flush=True)
        execution.child.stop(timeout=STOP_TIMEOUT_S)
        raise


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
