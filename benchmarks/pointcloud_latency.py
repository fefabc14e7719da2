"""Cost of the ``scene_points`` observation on one pinned core: depth render, then each stage of ``sensors.pointcloud``.

    python -m benchmarks.pointcloud_latency [runs=100] [sizes=[96,160]] [tasks=[wipe,peel,lift]] [out=FILE]

Per task (its reset state, seed 0) and depth-image size: the points at each stage (pixels nearer than max_depth,
inside the task's ``scene_points_box``, after the 5 mm voxel grid, the fixed count), and the median ms of the depth
render (MuJoCo, ``MUJOCO_GL``), the back-projection, crop, voxel grid, farthest-point sampling, the whole sampler
(``WorkspaceSampler.from_depth``, the render excluded) and ``PointNetEncoder`` on the result (batch 1, one thread);
then what the observation adds to ``env.step`` (holding still): the step without and with ``point_cloud=True``.
Prints a table, writes benchmarks/results/pointcloud_latency.json; the last stdout line is that JSON.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.report import publish
from bus.cli import UsageError, choose, command
from bus.config import compose

os.environ.setdefault("MUJOCO_GL", "egl")


@dataclass
class PointCloudLatencyConfig:
    """``configs/benchmarks/pointcloud_latency.yaml``."""

    runs: int = 100
    sizes: list[int] = field(default_factory=lambda: [96, 160])
    tasks: list[str] = field(default_factory=lambda: ["wipe", "peel", "lift"])
    num_points: int = 512
    voxel_size: float = 0.005
    out: str = "benchmarks/results/pointcloud_latency.json"

    def __post_init__(self) -> None:
        if self.runs < 1 or not self.sizes or min(self.sizes) < 8:
            raise UsageError(f"runs={self.runs}, sizes={self.sizes}: expected runs >= 1 and sizes >= 8 pixels")


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up: first-call allocations are not the steady state
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench(task: str, size: int, cfg: PointCloudLatencyConfig) -> dict:
    import mujoco
    import torch

    import sim
    from rdp.encoders import PointNetEncoder
    from sensors.camera import intrinsics_from_fovy
    from sensors.pointcloud import PointCloudConfig, WorkspaceSampler, camera_cloud
    from sim.env import SCENE_CAMERA

    env = sim.make_env(task, perturb=False)
    env.reset(seed=0)
    cid = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, SCENE_CAMERA)
    k = intrinsics_from_fovy(float(env.model.cam_fovy[cid]), size, size)
    pos, rot = env.data.cam_xpos[cid].copy(), env.data.cam_xmat[cid].reshape(3, 3).copy()
    lo, hi = env.task.scene_points_box
    sampler = WorkspaceSampler(PointCloudConfig(lo, hi, num_points=cfg.num_points, voxel_size=cfg.voxel_size))
    depth = env.render_depth(SCENE_CAMERA, size)
    cloud = camera_cloud(depth, k, pos, rot, sampler.cfg.max_depth)
    box = sampler.box
    cropped = cloud.crop(box)
    voxels = cropped.voxel_down_sample(cfg.voxel_size)
    points = torch.from_numpy(sampler.from_depth(depth, k, pos, rot))[None]
    encoder = PointNetEncoder().eval()
    runs = cfg.runs
    with torch.inference_mode():
        encoder_ms = median_ms(lambda: encoder(points), runs)
    row = {
        "points": {"pixels": len(cloud.points), "in_box": len(cropped.points), "voxels": len(voxels.points),
                   "out": cfg.num_points},
        "render_ms": median_ms(lambda: env.render_depth(SCENE_CAMERA, size), runs),
        "backproject_ms": median_ms(lambda: camera_cloud(depth, k, pos, rot, sampler.cfg.max_depth), runs),
        "crop_ms": median_ms(lambda: cloud.crop(box), runs),
        "voxel_ms": median_ms(lambda: cropped.voxel_down_sample(cfg.voxel_size), runs),
        "fps_ms": (median_ms(lambda: voxels.farthest_point_down_sample(cfg.num_points), runs)
                   if len(voxels.points) > cfg.num_points else 0.0),
        "sampler_ms": median_ms(lambda: sampler.from_depth(depth, k, pos, rot), runs),
        "encoder_ms": encoder_ms,
        "step_ms_without": step_ms(env, runs),
    }
    env.close()
    with_cloud = sim.make_env(task, perturb=False, point_cloud=True, image_size=size,
                              point_cloud_points=cfg.num_points, point_cloud_voxel=cfg.voxel_size)
    with_cloud.reset(seed=0)
    row["step_ms_with"] = step_ms(with_cloud, runs)
    with_cloud.close()
    return row


def step_ms(env, runs: int) -> float:
    hold = env.hold_action()
    return median_ms(lambda: env.step(hold), runs)


@command("benchmarks.pointcloud_latency")
def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from sim.registry import TASKS

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = compose(PointCloudLatencyConfig, "benchmarks/pointcloud_latency", argv, "pointcloud_latency",
                  "runs=20 sizes=[96]")
    for task in cfg.tasks:
        choose("tasks", task, TASKS, "task")
    core = None
    if hasattr(os, "sched_setaffinity"):
        core = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    results = {f"{task}/{size}": bench(task, size, cfg) for task in cfg.tasks for size in cfg.sizes}
    print(f"{'task/size':10s} {'pixels':>7s} {'in box':>7s} {'voxels':>7s} {'render':>7s} {'backpr':>7s} "
          f"{'crop':>6s} {'voxel':>6s} {'fps':>6s} {'sampler':>8s} {'encoder':>8s} {'step':>6s} {'+cloud':>7s}  (ms)")
    for name, r in results.items():
        p = r["points"]
        print(f"{name:10s} {p['pixels']:7d} {p['in_box']:7d} {p['voxels']:7d} {r['render_ms']:7.2f} "
              f"{r['backproject_ms']:7.2f} {r['crop_ms']:6.2f} {r['voxel_ms']:6.2f} {r['fps_ms']:6.2f} "
              f"{r['sampler_ms']:8.2f} {r['encoder_ms']:8.2f} {r['step_ms_without']:6.2f} {r['step_ms_with']:7.2f}")
    report = {
        "benchmark": f"scene camera depth -> {cfg.num_points} points (voxel {cfg.voxel_size} m), seed-0 reset state",
        "core": core, "runs": cfg.runs, "mujoco_gl": os.environ.get("MUJOCO_GL"),
        "cpu": platform.processor() or platform.machine(), "load_1min": os.getloadavg()[0], "results": results,
    }
    publish(report, Path(cfg.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
