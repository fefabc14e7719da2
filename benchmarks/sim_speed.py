"""Simulation speed on one core: physics + impedance control + tactile, and offscreen cameras.

    python -m benchmarks.sim_speed [seconds=8] [tasks=[wipe,peel,lift]] [out=FILE]

Reports, per task, the real-time factor of the control loop (500 Hz physics with the operational-space
controller every physics step, marker fields and wrench read every control step), the same with the
tactile read at physics rate, the cost of one tactile read, and ms per 96x96 camera frame. Prints a
table, writes benchmarks/results/sim_speed.json; the last stdout line is that JSON.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.report import publish
from bus.cli import UsageError, choose, command
from bus.config import compose
from spatial.rotations import rotvec_to_mat

os.environ.setdefault("MUJOCO_GL", "egl")


def _pin_one_core() -> int | None:
    if hasattr(os, "sched_setaffinity"):
        core = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {core})
        return core
    return None


def bench_task(task: str, seconds: float) -> dict:
    import mujoco

    import sim
    from sim.experts import make_expert

    env = sim.make_env(task, perturb=True, cameras=False)
    obs, _ = env.reset(seed=0)
    pol = make_expert(task)
    pol.reset(env)
    steps = int(seconds * env.control_hz)
    wall = 0.0  # stepping only: resets (IK) are not part of the control loop
    for k in range(steps):
        t0 = time.perf_counter()
        obs, _, term, trunc, _ = env.step(pol.act(obs))
        wall += time.perf_counter() - t0
        if term or trunc:
            obs, _ = env.reset(seed=k + 1)
            pol.reset(env)
    rtf_control = steps / env.control_hz / wall
    # Tactile + wrench at physics rate: read the pads after every physics step.
    obs, _ = env.reset(seed=0)
    pol.reset(env)
    dt = env.model.opt.timestep
    n_phys = int(seconds / dt / 2)
    t0 = time.perf_counter()
    for k in range(n_phys):
        if k % env.substeps == 0:
            a = env.check_action(pol.act(obs))
            for i, c in enumerate(env.controllers):
                u = a[i * 7 : (i + 1) * 7]
                c.set_target(u[:3], rotvec_to_mat(u[3:6]), u[6], env.task.arms[i].grip_force)
        for c in env.controllers:
            c.compute(env.data, dt)
        mujoco.mj_step(env.model, env.data)
        env.last_fields, env.last_wrench = env.sensing.read(env.data)
        if k % env.substeps == env.substeps - 1:
            obs = env._observation()
    wall_phys = time.perf_counter() - t0
    rtf_phys = n_phys * dt / wall_phys
    # Cost of one tactile read (all pads, in contact).
    t0 = time.perf_counter()
    reps = 2000
    for _ in range(reps):
        env.sensing.read(env.data)
    read_us = (time.perf_counter() - t0) / reps * 1e6
    ncontacts = int(env.data.ncon)
    # Cameras: scene + wrist at 96x96.
    frames = 40
    env.render_camera("scene_cam", 96)
    env.render_camera(env.task.arms[0].prefix + "wrist_cam", 96)
    t0 = time.perf_counter()
    for _ in range(frames):
        env.render_camera("scene_cam", 96)
        env.render_camera(env.task.arms[0].prefix + "wrist_cam", 96)
    ms_frame = (time.perf_counter() - t0) / (2 * frames) * 1e3
    env.close()
    # Does physics + tactile + two cameras at 10 Hz fit in real time?
    cam_s_per_sim_s = 2 * 10 * ms_frame / 1e3
    budget = 1.0 / rtf_control + cam_s_per_sim_s
    return {
        "task": task,
        "pads": len(env.pads),
        "real_time_factor_control_rate_tactile": round(rtf_control, 2),
        "real_time_factor_physics_rate_tactile": round(rtf_phys, 2),
        "tactile_read_us_all_pads": round(read_us, 1),
        "contacts_during_read": ncontacts,
        "ms_per_96px_frame": round(ms_frame, 2),
        "wall_s_per_sim_s_with_two_cameras_10hz": round(budget, 3),
        "cameras_fit_real_time": bool(budget < 1.0),
    }


@dataclass
class SimSpeedConfig:
    """``configs/benchmarks/sim_speed.yaml``."""

    seconds: float = 8.0
    tasks: list[str] = field(default_factory=lambda: ["wipe", "peel", "lift"])
    out: str = "benchmarks/results/sim_speed.json"

    def __post_init__(self) -> None:
        from sim.registry import TASKS

        if self.seconds <= 0:
            raise UsageError(f"seconds={self.seconds} must be > 0")
        for task in self.tasks:
            choose("tasks", task, TASKS, "task")


@command("benchmarks.sim_speed")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(SimSpeedConfig, "benchmarks/sim_speed", list(sys.argv[1:] if argv is None else argv),
                   "sim_speed", "seconds=1 tasks=[wipe]")
    core = _pin_one_core()
    rows = [bench_task(t, args.seconds) for t in args.tasks]
    print(f"{'task':6} {'RTF ctl':>8} {'RTF phys':>9} {'tactile us':>10} {'ms/frame':>9} {'s/s w/ cams':>11}")
    for r in rows:
        print(
            f"{r['task']:6} {r['real_time_factor_control_rate_tactile']:8.1f} "
            f"{r['real_time_factor_physics_rate_tactile']:9.1f} {r['tactile_read_us_all_pads']:10.1f} "
            f"{r['ms_per_96px_frame']:9.2f} {r['wall_s_per_sim_s_with_two_cameras_10hz']:11.3f}"
        )
    result = {"benchmark": "sim_speed", "pinned_core": core, "physics_hz": 500, "control_hz": 50, "tasks": rows}
    publish(result, Path(args.out))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
