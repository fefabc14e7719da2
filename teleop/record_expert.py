"""Record scripted-expert demonstrations in-process, in the recorder's format (``dataset.format``).

    python -m teleop.record_expert task=wipe episodes=20 seed=0 out=data/wipe [cameras=true] [max_steps=N]
    python -m teleop.record_expert task=wipe episodes=200 seed=100000 out=data/wipes200 jobs=8 [launcher=ray]
    python -m teleop.record_expert task=wipe goal=random episodes=200 seed=100000 out=data/wipe_goals

The force-aware expert (``sim.experts.make_expert``) drives the environment with perturbations on, and every
episode is written by :class:`dataset.recorder.EpisodeRecorder` at native rates, stamped with simulation time.
Raw streams only: features (the tactile embedding, pad load, proprio) are computed when a dataset is loaded for
training, by the function the running policy uses (``dataset.features``); recordings of this module made before
that also hold a ``tactile_emb`` stream, which training ignores.

* every control step (50 Hz): ``tcp_pos`` (A, 3), ``tcp_quat`` (A, 4), ``joint_pos`` (A, 7), ``gripper_width``
  (A,), ``wrench`` (A, 6), ``marker_offset`` (P, R, C, 2) (each pad's marker field), ``scene`` (the task's
  one-shot object localisation at reset, ``Task.scene_features``) and
  ``action`` (7 A,): the expert's command computed from the observation of the same step;
* with ``cameras=true``, ``scene_rgb`` / ``wrist_rgb`` (96, 96, 3) uint8 at 10 Hz, under a new look every episode
  with ``looks=train`` (``sim.looks``; the physics, and so every other stream, is the same as with looks off).

Timestamps are the simulation clock rounded to 1 us: MuJoCo accumulates ``time`` in 2 ms physics steps, so the raw
value drifts by ~1e-15 s, and a ``build`` at a divisor rate (25 Hz) would then hold the *previous* sample at some
ticks. Rounded, ``k / 25`` lands exactly on every second sample. Episode meta: ``task``, ``seed``, ``success`` and
under ``user`` the perturbation, the expert, the goal option (``goal_option``: ``default``, ``random`` or a goal,
as ``configs/task`` spells it), the episode's goal (``goal``: its name, ``default`` for today's task) and its
encoding (``goal_vector``, what a goal-conditioned policy observes as ``goal``; ``sim.tasks``; only when the goal
option is not ``default``, as the env observes it then), with which the expert planned. This is the expert-demo
recorder; teleoperation over the bus, recorded by the recorder process, is ``teleop.collect``.

``jobs=N`` (N > 1) records the seeds as N contiguous shards, each its own ``teleop.record_expert ... jobs=1`` process
(``bus.sweep``: on this machine, or as Ray tasks with ``launcher=ray``), into ``OUT.shards/K``, then merges them
(``dataset.format.merge_recordings``) into ``OUT``: the episodes of the sequential run, in seed order, with the same
streams (an episode depends on its seed alone). ``OUT`` appears whole or not at all, so it must be new or empty; a
failed shard leaves ``OUT.shards`` for a look and no ``OUT``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bus.cli import CommandError, UsageError, command
from bus.config import compose, override
from bus.sweep import check_launcher, module_command, run_commands, split_range
from dataset.format import merge_recordings
from dataset.recorder import EpisodeMeta, EpisodeRecorder

LOWDIM_STREAMS = ("tcp_pos", "tcp_quat", "joint_pos", "gripper_width", "wrench", "marker_offset", "scene")
CAMERA_HZ = 10.0
TIME_DECIMALS = 6  # timestamps rounded to 1 us, see the module docstring


@dataclass(frozen=True)
class RecordConfig:
    """Command-line settings: ``configs/teleop/record_expert.yaml``."""

    task: str = "wipe"
    episodes: int = 10
    seed: int = 0
    out: str = ""
    cameras: bool = False
    image_size: int = 96
    looks: str = "none"  # sim.looks.LOOKS: per-episode lighting, paint, camera offsets and a distractor
    point_cloud: bool = False  # with cameras: also scene_points (sim's point_cloud observation) at the camera rate
    perturb: bool = True
    goal: str = "default"  # the task's goal option (configs/task): default | random | a goal of the task
    max_steps: int | None = None  # cap on control steps per episode (tests); None = until the task ends
    progress: bool = True
    jobs: int = 1  # >1: seed shards recorded by this many processes at once, merged into one recording
    launcher: str = "local"  # where the shards run (bus.sweep): local processes, or ray tasks
    ray_address: str | None = None  # launcher=ray: None starts a local Ray; auto, ray://HEAD:10001 join a cluster

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("out=DIR is required: the dataset directory to record into")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.point_cloud and not self.cameras:
            raise ValueError("point_cloud=true records the scene camera's depth with its frames: set cameras=true")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        check_launcher(self.launcher, self.jobs)
        from sim.registry import goal_option

        goal_option(self.task, self.goal)  # a bad task or goal fails here, before any episode or shard starts


def record_expert_episodes(cfg: RecordConfig) -> list[dict[str, Any]]:
    """Record ``cfg.episodes`` episodes (seeds ``seed .. seed + episodes - 1``); return one summary per episode.
    In this process, or in ``cfg.jobs`` seed shards merged into one recording (the module docstring)."""
    if (cfg.jobs > 1 and cfg.episodes > 1) or cfg.launcher != "local":
        return _record_in_shards(cfg)
    return _record_here(cfg)


def _record_here(cfg: RecordConfig) -> list[dict[str, Any]]:
    from sim.experts import make_expert
    from sim.registry import make_env

    env = make_env(cfg.task, perturb=cfg.perturb, goal=cfg.goal, cameras=False, image_size=cfg.image_size,
                   looks=cfg.looks)
    expert = make_expert(cfg.task, force_feedback=True)
    recorder = EpisodeRecorder(cfg.out)
    camera_every = max(int(round(env.control_hz / CAMERA_HZ)), 1)
    wrist_camera = env.task.arms[0].prefix + "wrist_cam"
    rows = []
    bar = tqdm(range(cfg.episodes), desc=f"record {cfg.task}", unit="ep", file=sys.stderr, disable=not cfg.progress)
    try:
        for k in bar:
            seed = cfg.seed + k
            obs, info = env.reset(seed=seed)
            expert.reset(env)
            recorder.begin(EpisodeMeta(task=cfg.task, seed=seed, user={
                "expert": "force_aware", "perturbation": info["perturbation"], "control_hz": env.control_hz,
                "max_steps": cfg.max_steps, "looks": cfg.looks, "goal_option": env.task.goal_setting.text,
                "goal": info["goal"],
                # what the env observed as ``goal``: only when goals vary, as a goal-conditioned policy will see them
                **({"goal_vector": env.task.goal.vector().tolist()} if env.task.goal_conditioned else {}),
            }))
            steps = 0
            while True:
                t = round(env.time, TIME_DECIMALS)
                action = expert.act(obs)
                for name in LOWDIM_STREAMS:
                    recorder.append(name, t, obs[name])
                recorder.append("action", t, np.asarray(action, dtype=np.float32))
                if cfg.cameras and steps % camera_every == 0:
                    recorder.append("scene_rgb", t, env.render_camera("scene_cam", cfg.image_size))
                    recorder.append("wrist_rgb", t, env.render_camera(wrist_camera, cfg.image_size))
                    if cfg.point_cloud:
                        recorder.append("scene_points", t, env.scene_points_now())
                obs, _, terminated, truncated, info = env.step(action)
                steps += 1
                if terminated or truncated or (cfg.max_steps is not None and steps >= cfg.max_steps):
                    break
            # The meta written at begin() cannot change, so the outcome goes in `success` (and the summary).
            # An episode cut at max_steps before the task ended has no outcome (None), not a failure.
            cut = not (terminated or truncated)
            path = recorder.commit(success=None if cut and not info["success"] else bool(info["success"]))
            rows.append({"episode": path.name, "seed": seed, "steps": steps, "success": bool(info["success"]),
                         "perturbation": info["perturbation"], "perturbation_time": info["perturbation_time"],
                         "goal": info["goal"]})
            bar.set_postfix(ok=f"{sum(r['success'] for r in rows)}/{len(rows)}")
    except BaseException:
        recorder.abort()  # an interrupted demo is incomplete: it must not look like a committed episode
        raise
    finally:
        env.close()
    return rows


def _record_in_shards(cfg: RecordConfig) -> list[dict[str, Any]]:
    """Each seed shard as its own ``jobs=1`` process into ``OUT.shards/K``, then one merged recording at ``OUT``."""
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"out={out} already exists and is not empty: with jobs={cfg.jobs} the shards are merged into "
                         "a new recording, not added to one; choose a new directory")
    root = out.with_name(out.name + ".shards")
    if root.exists():
        raise UsageError(f"{root} exists (the shards of an interrupted run?): remove it, then run again")
    shards = split_range(cfg.seed, cfg.episodes, cfg.jobs)
    commands = []
    for k, (first, n) in enumerate(shards):
        shard = dataclasses.replace(cfg, seed=first, episodes=n, out=str(root / str(k)), progress=False, jobs=1,
                                    launcher="local", ray_address=None)
        commands.append(module_command("teleop.record_expert", *_arguments(shard)))
    labels = [f"seed {first}" if n == 1 else f"seeds {first}-{first + n - 1}" for first, n in shards]
    results = run_commands(commands, jobs=cfg.jobs, launcher=cfg.launcher, ray_address=cfg.ray_address,
                           labels=labels)
    failed = [r for r in results if not r.ok]
    if failed:
        line = failed[0].error_line().removeprefix("teleop.record_expert: error: ")
        raise CommandError(f"{line} ({labels[failed[0].index]}; {len(failed)} of {len(shards)} shards failed; what "
                           f"they recorded is in {root}, nothing was written to {out})")
    rows = [row for r in results for row in json.loads(r.stdout_tail.splitlines()[-1])["episodes"]]
    episodes = merge_recordings([root / str(k) for k in range(len(shards))], out)
    for row, episode in zip(rows, episodes, strict=True):
        row["episode"] = episode.name
    shutil.rmtree(root)
    return rows


def _arguments(cfg: RecordConfig) -> list[str]:
    """``cfg`` as the hydra overrides that parse back to it (``bus.config.override`` quotes what needs it)."""
    return [override(f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)]


def parse_overrides(argv: Sequence[str]) -> RecordConfig:
    """Hydra overrides of ``configs/teleop/record_expert.yaml`` -> a checked :class:`RecordConfig`; unknown keys
    and bad values raise a ``bus.cli.UsageError`` (a ValueError) naming them (``bus.config.compose``)."""
    return compose(RecordConfig, "teleop/record_expert", argv, "record_expert", "task=wipe episodes=2 out=DIR")


@command("teleop.record_expert")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_overrides(list(sys.argv[1:] if argv is None else argv))
    rows = record_expert_episodes(cfg)
    ok = sum(r["success"] for r in rows)
    print(f"recorded {len(rows)} episodes ({ok} successful) -> {cfg.out}", file=sys.stderr)
    print(json.dumps({"task": cfg.task, "out": cfg.out, "episodes": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
