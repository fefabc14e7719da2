"""One evaluation harness for any policy.

    python -m sim.eval task=wipe policy=expert episodes=50 seed=0
    python -m sim.eval task=wipe policy=rdp episodes=50 seed=0 jobs=8 [launcher=ray [ray_address=auto]]
    python -m sim.eval task=wipe policy=expert task.goal=random    # a goal per episode: success per goal too
    python -m sim.eval task=wipe policy=rdp guard=true             # the robot-side press guard at the task's limit

Policies are resolved from config (``_target_``), so this module never imports a policy package.
Prints a progress bar, then as its last stdout line one JSON object; writes the same JSON, a video
of the first episode and a force-over-time plot into the run directory. A bad override (``task=nosuch``,
``episodes=abc``, an unknown key) or a bad checkpoint ends in one line and exit code 2 (``bus.cli``).

``jobs=N`` (N > 1) splits the seeds into N contiguous shards, runs each as its own ``sim.eval ... jobs=1`` process
with one torch thread (``bus.sweep``: ``launcher=local`` on this machine, ``launcher=ray`` as Ray tasks), and merges
their episodes into the ``results.json`` (and plot and video) the sequential run writes. The merge is exact because an
episode depends on its seed alone: the env is re-seeded on every reset and a sampling policy draws its noise from the
episode's seed (``policy.reset(env, seed=...)``).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bus.cli import USAGE_EXIT, CommandError, UsageError, command, exit_code, run_hydra
from bus.config import override
from bus.resources import config_dir
from bus.sweep import check_launcher, module_command, run_commands, split_range
from sim.press_guard import task_press_limit
from sim.registry import goal_option, make_env

CONFIG_DIR = config_dir()
SHARDS_DIR = "shards"  # OUT/shards/K: shard K of a run with jobs > 1, removed once merged
# Overrides a shard is given anew (its seeds, its directory, no video but shard 0's), not passed on from the parent.
SHARD_KEYS = ("seed", "episodes", "out", "video", "jobs", "launcher", "ray_address")


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, round(centre + half, 12)))


def run_episode(env, policy, seed: int, record: bool = False, observe: Callable[[dict], dict] | None = None,
                max_seconds: float | None = None) -> tuple[dict[str, Any], dict[str, list]]:
    """One episode of ``policy`` on ``env`` with env seed ``seed``: the last step's info and, with ``record``, its
    trace. ``observe``: what the policy sees instead of each observation (e.g. another goal in ``obs["goal"]``;
    the env scores what it was asked). ``max_seconds``: end the episode at this simulated time (info ``cut``)."""
    obs, info = env.reset(seed=seed)
    policy.reset(env, seed=seed)  # a sampling policy draws this episode's own noise
    trace: dict[str, list] = defaultdict(list)
    frame_every = max(int(round(env.control_hz / 25)), 1)
    while True:
        action = policy.act(obs if observe is None else observe(obs))
        obs, _, terminated, truncated, info = env.step(action)
        if record:
            trace["time"].append(env.time)
            trace["sensed_force"].append(-float(obs["wrench"][0][2]))
            trace["true_force"].append(float(getattr(env.task, "force", np.nan)))
            if env.step_count % frame_every == 0:
                trace["frames"].append(env.render())
        if terminated or truncated:
            break
        if max_seconds is not None and env.time >= max_seconds - 1e-9:
            info = {**info, "cut": True}
            break
    if record:
        trace["perturbation_time"] = info.get("perturbation_time")
    return info, trace


def evaluate(
    task: str,
    make_policy: Callable[[], Any],
    policy_name: str,
    episodes: int,
    seed: int,
    out_dir: Path,
    perturb: bool = True,
    video: bool = True,
    cameras: bool = False,
    perturbations: tuple[str, ...] | None = None,
    image_size: int = 96,
    wrench_noise: float = 0.2,
    policy_config: dict[str, Any] | None = None,
    point_cloud: bool = False,
    point_cloud_points: int = 512,
    point_cloud_voxel: float = 0.005,
    looks: str = "none",
    goal: str | None = None,
    press_guard_n: float = 0.0,
    camera_hz: float | None = None,
) -> dict[str, Any]:
    """Run ``episodes`` episodes (seeds ``seed`` ...) and write ``results.json`` (with ``policy_config``, the policy's
    resolved settings, so a result names what made it), a force plot and a video of the first episode. ``goal``: the
    task's goal option (``configs/task``); unless ``default``, every row names its episode's goal and the result
    has the success per goal. ``press_guard_n`` > 0: the env's press guard at that limit (N); every row then has
    the guard's largest retraction and the time it held one. ``camera_hz``: the env renders its cameras at this rate
    only, holding the last frames between (None: every control step)."""
    _check_episodes(episodes)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = make_env(
        task,
        perturbations=perturbations,
        goal=goal,
        perturb=perturb,
        cameras=cameras,
        image_size=image_size,
        wrench_noise=wrench_noise,
        point_cloud=point_cloud,
        point_cloud_points=point_cloud_points,
        point_cloud_voxel=point_cloud_voxel,
        looks=looks,
        press_guard_n=press_guard_n,
        camera_hz=camera_hz,
        render_mode="rgb_array",
    )
    policy = make_policy()
    rows = []
    trace: dict[str, list] = {}
    for k in tqdm(range(episodes), desc=f"{task}/{policy_name}", file=sys.stderr, unit="ep"):
        info, tr = run_episode(env, policy, seed + k, record=(k == 0))
        if k == 0:
            trace = tr
        rows.append({"seed": seed + k, **{key: info[key] for key in ("success", "score", "failure", "perturbation")}})
        if env.task.goal_conditioned:
            rows[-1].update(goal=info["goal"], goal_miss=info["goal_miss"])
        if press_guard_n > 0:
            rows[-1].update(guard_retract_m=info["guard_retract_m"], guard_active_s=info["guard_active_s"])
    env.close()
    result = summarize(rows, task=task, policy_name=policy_name, policy_config=policy_config, seed=seed,
                       perturb=perturb, out_dir=out_dir, goal=env.task.goal_setting.text, press_guard_n=press_guard_n)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    if trace:
        _plot_forces(trace, rows[0], out_dir / "force.png", task, policy_name)
        if video and trace.get("frames"):
            _write_video(trace["frames"], out_dir / "episode0.mp4")
    return result


def summarize(rows: list[dict[str, Any]], *, task: str, policy_name: str, policy_config: dict[str, Any] | None,
              seed: int, perturb: bool, out_dir: Path, goal: str = "default", press_guard_n: float = 0.0
              ) -> dict[str, Any]:
    """The ``results.json`` object of per-episode ``rows`` (seeds ``seed`` ...): one function for a run and for the
    merge of its shards, so both write the same file. With a goal option other than ``default``, it also holds
    ``goal`` (the option) and ``per_goal`` (the success per goal the episodes had). ``press_guard_n`` is the press
    guard's limit (0: off); with it on, ``guard_acted`` counts the episodes in which it backed a target off."""
    episodes = len(rows)
    n_ok = sum(r["success"] for r in rows)
    goals = {} if goal == "default" else {"goal": goal, "per_goal": _success_by(rows, "goal")}
    acted = {} if press_guard_n == 0 else {"guard_acted": sum(r["guard_retract_m"] > 0 for r in rows)}
    return {
        "task": task,
        "policy": policy_name,
        "policy_config": policy_config,
        "episodes": episodes,
        "seed": seed,
        "perturb": perturb,
        "press_guard_n": press_guard_n,
        **acted,
        "success_rate": n_ok / episodes,
        "ci95": wilson_interval(n_ok, episodes),
        "mean_score": float(np.mean([r["score"] for r in rows])),
        "per_perturbation": _success_by(rows, "perturbation"),
        **goals,
        "episodes_detail": rows,
        "run_dir": str(out_dir),
    }


def _success_by(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """{value of ``key``: episodes, success rate and its 95 % interval over the rows with that value}."""
    per: dict[str, dict[str, Any]] = {}
    for value in sorted({r[key] for r in rows}):
        sub = [r for r in rows if r[key] == value]
        ok = sum(r["success"] for r in sub)
        per[value] = {"episodes": len(sub), "success_rate": ok / len(sub), "ci95": wilson_interval(ok, len(sub))}
    return per


def evaluate_in_shards(
    overrides: Sequence[str],
    *,
    episodes: int,
    seed: int,
    out_dir: Path,
    video: bool,
    jobs: int,
    launcher: str = "local",
    ray_address: str | None = None,
    header: dict[str, Any],
) -> dict[str, Any]:
    """:func:`evaluate`'s run split into ``jobs`` contiguous seed shards, each a ``python -m sim.eval OVERRIDES
    seed=S episodes=N out=OUT/shards/K jobs=1`` process, merged into the same ``results.json``, plot and video.

    ``overrides``: the run's own command-line overrides (task, policy, sensors, ...), passed on to every shard but
    for ``SHARD_KEYS``. ``header``: ``summarize``'s ``task``, ``policy_name``, ``policy_config``, ``perturb``,
    ``goal``. A shard that fails fails the run (its one-line error, exit 2 when every failure was a bad input); its
    directory stays.
    """
    _check_episodes(episodes)
    shards = split_range(seed, episodes, jobs)
    root = out_dir / SHARDS_DIR
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("~+") not in SHARD_KEYS]
    commands = []
    for k, (first, n) in enumerate(shards):
        shard = root / str(k)
        values = {"seed": first, "episodes": n, "out": str(shard), "hydra.run.dir": str(shard),
                  "video": video and k == 0, "jobs": 1, "launcher": "local"}
        commands.append(module_command("sim.eval", *kept, *(override(key, v) for key, v in values.items())))
    labels = [f"seed {first}" if n == 1 else f"seeds {first}-{first + n - 1}" for first, n in shards]
    results = run_commands(commands, jobs=jobs, launcher=launcher, ray_address=ray_address, labels=labels)
    failed = [r for r in results if not r.ok]
    if failed:
        first_failure = failed[0]
        line = first_failure.error_line().removeprefix("sim.eval: error: ")
        kind = UsageError if all(r.returncode == USAGE_EXIT for r in failed) else CommandError
        raise kind(f"{line} ({labels[first_failure.index]}; {len(failed)} of {len(shards)} shards failed, their "
                   f"outputs are in {root})")
    rows: list[dict[str, Any]] = []
    for k, (first, n) in enumerate(shards):
        part = json.loads((root / str(k) / "results.json").read_text())
        if (part.get("seed"), part.get("episodes")) != (first, n):
            raise CommandError(f"{root / str(k) / 'results.json'}: seeds {part.get('seed')} + {part.get('episodes')}"
                               f" episodes, expected {first} + {n}: another run wrote into {root}?")
        rows += part["episodes_detail"]
    result = summarize(rows, seed=seed, out_dir=out_dir, **header)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    for name in ("force.png", "episode0.mp4"):  # the first episode's, as the sequential run writes them
        if (root / "0" / name).is_file():
            (root / "0" / name).replace(out_dir / name)
    shutil.rmtree(root)
    return result


def _check_episodes(episodes: int) -> None:
    if episodes < 1:
        raise UsageError(f"episodes={episodes}: expected an integer >= 1")


def _plot_forces(trace: dict[str, list], row: dict[str, Any], path: Path, task: str, policy: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=110)
    ax.plot(trace["time"], trace["true_force"], label="contact force (sim ground truth)", lw=1.5)
    ax.plot(trace["time"], trace["sensed_force"], label="sensed: -F_z wrist wrench", lw=0.8, alpha=0.8)
    t_p = trace.get("perturbation_time")
    if t_p is not None:
        ax.axvline(t_p, color="crimson", ls="--", lw=1, label=f"perturbation: {row['perturbation']}")
    ax.set_xlabel("time [s]")
    ax.set_ylabel("normal force [N]")
    outcome = "success" if row["success"] else f"fail ({row['failure'] or 'score too low'})"
    ax.set_title(f"{task} / {policy} — seed {row['seed']}, perturbation: {row['perturbation']} — {outcome}")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_video(frames: list[np.ndarray], path: Path, fps: int = 25) -> None:
    import imageio.v2 as imageio

    with imageio.get_writer(path, fps=fps, codec="libx264", quality=7, macro_block_size=8) as w:
        for f in frames:
            w.append_data(f)


@command("sim.eval")
def main(argv: list[str] | None = None) -> int:
    return run_hydra(CONFIG_DIR, "eval", sys.argv[1:] if argv is None else argv, _run)


def _run(cfg: Any) -> None:
    """The hydra application: ``cfg`` is configs/eval.yaml composed with the command line's overrides."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    out = Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir)
    policy_cfg = OmegaConf.to_container(cfg.policy, resolve=True)
    name = policy_cfg.pop("name")
    policy_config = {k: v for k, v in policy_cfg.items() if k not in ("_target_", "train")}
    perturbations = tuple(cfg.task.perturbations) if cfg.task.perturbations is not None else None
    goal = goal_option(cfg.task.name, cfg.task.goal)  # checked here, before any shard starts
    press_guard_n = task_press_limit(cfg.task.name) if cfg.guard else 0.0
    jobs, launcher = int(cfg.jobs), str(cfg.launcher)
    check_launcher(launcher, jobs)
    if (jobs > 1 and int(cfg.episodes) > 1) or launcher != "local":
        result = evaluate_in_shards(
            list(HydraConfig.get().overrides.task),
            episodes=int(cfg.episodes),
            seed=int(cfg.seed),
            out_dir=out,
            video=bool(cfg.video),
            jobs=jobs,
            launcher=launcher,
            ray_address=cfg.ray_address,
            header={"task": cfg.task.name, "policy_name": name, "policy_config": policy_config,
                    "perturb": bool(cfg.perturb), "goal": goal, "press_guard_n": press_guard_n},
        )
    else:
        result = evaluate(
            task=cfg.task.name,
            make_policy=lambda: _instantiate(policy_cfg, cfg.task.name),
            policy_name=name,
            episodes=int(cfg.episodes),
            seed=int(cfg.seed),
            out_dir=out,
            perturb=bool(cfg.perturb),
            video=bool(cfg.video),
            cameras=bool(cfg.sensors.cameras),
            image_size=int(cfg.sensors.image_size),
            wrench_noise=float(cfg.sensors.wrench_noise),
            point_cloud=bool(cfg.sensors.point_cloud),
            point_cloud_points=int(cfg.sensors.point_cloud_points),
            point_cloud_voxel=float(cfg.sensors.point_cloud_voxel),
            looks=str(cfg.sensors.looks),
            camera_hz=cfg.sensors.get("camera_hz"),
            perturbations=perturbations,
            policy_config=policy_config,
            goal=goal,
            press_guard_n=press_guard_n,
        )
    summary = {k: v for k, v in result.items() if k != "episodes_detail"}
    print(json.dumps(summary))


def _instantiate(policy_cfg: dict[str, Any], task: str) -> Any:
    """The configured policy; an expected error of its factory (a bad checkpoint, a bad setting) is raised as
    itself, not inside hydra's InstantiationException, so it reaches the command line as one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(policy_cfg, task=task)
    except InstantiationException as exc:
        cause = exc.__cause__
        if cause is not None and exit_code(cause) is not None:
            raise cause from None
        raise


if __name__ == "__main__":
    sys.exit(main())
