"""A 3-D view of one recorded episode: the scene's points, the TCP track, where the tool pad touched and the force.

    python -m teleop.view3d DIR [episode=0] [out=FILE.ply]        (DIR: data=DIR; the keys: --help)

Writes ``FILE.ply`` (one coloured point cloud, open3d's ``io.write_point_cloud``; MeshLab, CloudCompare or
``open3d.visualization.draw_geometries`` show it) and ``FILE.png`` (two matplotlib 3-D views of the same, oblique
and from above); default ``DIR/episode_XXXXXX_3d.ply``. The last stdout line is JSON. In both files:

* **scene** (its RGB colours, or grey): the recording's own ``scene_points`` stream (its first sample) when it has
  one; else the scene camera's depth rendered from the sim for the episode's ``task`` and ``seed`` at its reset: the
  initial state (objects where the episode started them, arms at their start pose; a perturbation that moves the
  surface later is not shown), cropped to the task's ``scene_points_box`` as the ``scene_points`` observation is;
* **TCP track** (``tcp_pos``), coloured by time (viridis: dark at the start, yellow at the end);
* **contact** (red): where each arm's tool pad (the pad whose frame is the TCP) was touched, at every ``marker_offset``
  sample whose largest marker displacement exceeds ``contact_threshold``: the displacement-weighted centre of the
  pad's markers, placed on the pad face by the TCP pose. Finger pads are counted, not placed (their pose needs the
  arm's forward kinematics);
* **force** (orange): the contact force on the tool (``wrench``, sensed in the TCP frame, turned to the world frame
  by ``tcp_quat``), drawn from the TCP every ``arrow_every`` s where it is at least ``min_force``, ``force_scale``
  m per N.

Streams are matched in time by zero-order hold (the latest sample not after), as ``dataset build`` does. This
module lives in ``teleop`` because it rebuilds the sim (``sim``) for a recording (``dataset``), and those two layers
do not import each other.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bus.cli import command
from bus.config import compose
from dataset.format import DatasetError, list_episodes, load_stream, read_meta
from spatial.rotations import quat_to_matrix

if TYPE_CHECKING:
    from sim.env import ContactRichEnv

SCENE_STREAM = "scene_points"
SCENE_GREY = (0.6, 0.6, 0.6)
CONTACT_RED = (0.9, 0.1, 0.1)
FORCE_ORANGE = (1.0, 0.55, 0.0)
ARROW_SAMPLES = 24  # points along each force arrow in the PLY


@dataclass
class View3dConfig:
    """``configs/teleop/view3d.yaml``."""

    data: str
    episode: int = 0
    out: str | None = None
    render_size: int = 160
    num_points: int = 4096
    voxel_size: float = 0.003
    contact_threshold: float = 1e-5
    force_scale: float = 0.005
    arrow_every: float = 0.2
    min_force: float = 1.0

    def __post_init__(self) -> None:
        if self.out is not None and not self.out.endswith(".ply"):
            raise ValueError(f"out={self.out}: expected a .ply file (the .png is written beside it)")
        if self.render_size < 8 or self.num_points < 1:
            raise ValueError(f"render_size={self.render_size}, num_points={self.num_points}: expected an image side "
                             ">= 8 pixels and at least one point")
        if not (math.isfinite(self.voxel_size) and self.voxel_size >= 0):
            raise ValueError(f"voxel_size={self.voxel_size}: expected a length >= 0 (m; 0 keeps every point)")
        for name in ("contact_threshold", "force_scale", "arrow_every", "min_force"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value}: expected a number > 0")


@dataclass
class EpisodeGeometry:
    """What the view draws, world frame (m)."""

    scene: np.ndarray  # (S, 3)
    scene_rgb: np.ndarray  # (S, 3) in [0, 1]
    scene_source: str
    track: np.ndarray  # (T, A, 3) TCP positions
    track_t: np.ndarray  # (T,) s
    contacts: np.ndarray  # (K, 3) touch points on the tool pads
    arrows: np.ndarray  # (F, 2, 3) force arrows: start, end
    finger_contact_samples: int  # marker samples with a finger pad touched (not placed)


def view_episode(cfg: View3dConfig) -> dict[str, Any]:
    """Write the PLY and the PNG of ``cfg.episode`` of ``cfg.data``; returns a summary."""
    root = Path(cfg.data)
    episodes = list_episodes(root)
    if not episodes:
        raise DatasetError(f"{root}: no committed episodes")
    if not 0 <= cfg.episode < len(episodes):
        raise DatasetError(f"episode={cfg.episode}: {root} has episodes 0..{len(episodes) - 1}")
    path = episodes[cfg.episode]
    meta = read_meta(path)
    geometry = episode_geometry(path, meta, cfg)
    ply = Path(cfg.out) if cfg.out is not None else root / f"{path.name}_3d.ply"
    png = ply.with_suffix(".png")
    ply.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(ply, lambda tmp: _write_ply(geometry, tmp))
    title = f"{meta.get('task')} | {path.name} | seed {meta.get('seed')} | success {meta.get('success')}"
    _write_atomically(png, lambda tmp: _write_png(geometry, tmp, title))
    return {
        "ply": str(ply), "png": str(png), "episode": path.name, "scene_source": geometry.scene_source,
        "scene_points": len(geometry.scene), "track_samples": len(geometry.track_t),
        "contact_samples": len(geometry.contacts), "finger_contact_samples": geometry.finger_contact_samples,
        "force_arrows": len(geometry.arrows),
    }


def episode_geometry(episode: Path, meta: dict, cfg: View3dConfig) -> EpisodeGeometry:
    """Everything the view draws, from one episode's streams (and the sim, for the pads and the scene)."""
    for name in ("tcp_pos", "tcp_quat"):
        if name not in meta["streams"]:
            raise DatasetError(f"{episode}: no {name!r} stream; the 3-D view needs the TCP pose")
    env = _task_env(episode, meta)
    try:
        t_track, track = load_stream(episode, "tcp_pos", meta)
        t_quat, quat = load_stream(episode, "tcp_quat", meta)
        track = track.reshape(len(t_track), -1, 3).astype(np.float64)
        rot = quat_to_matrix(quat.reshape(len(t_quat), -1, 4))  # (T, A, 3, 3)
        if track.shape[1] != len(env.arms) or rot.shape[1] != len(env.arms):
            raise DatasetError(f"{episode}: tcp_pos / tcp_quat hold {track.shape[1]} / {rot.shape[1]} arms, the "
                               f"{meta['task']} task has {len(env.arms)}")
        scene, scene_rgb, source = _scene(env, episode, meta, cfg)
        contacts, finger = _contacts(env, episode, meta, cfg, t_track, track, t_quat, rot)
        arrows = _force_arrows(episode, meta, cfg, t_track, track, t_quat, rot)
    finally:
        env.close()
    return EpisodeGeometry(scene, scene_rgb, source, track, t_track, contacts, arrows, finger)


def _task_env(episode: Path, meta: dict) -> ContactRichEnv:
    from sim.registry import TASKS, make_env

    task = meta.get("task")
    if task not in TASKS:
        raise DatasetError(f"{episode}: meta task={task!r}; the 3-D view rebuilds the scene of one of "
                           f"{', '.join(sorted(TASKS))}")
    return make_env(task, perturb=False)


def _scene(env: ContactRichEnv, episode: Path, meta: dict, cfg: View3dConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """(S, 3) points, (S, 3) colours and where they came from: the recorded stream, else the sim at reset."""
    from sensors.pointcloud import EmptyCloudError, PointCloudConfig, WorkspaceSampler
    from sim.env import SCENE_CAMERA

    if SCENE_STREAM in meta["streams"]:
        _, values = load_stream(episode, SCENE_STREAM, meta)
        first = np.asarray(values[0], dtype=np.float64)
        if first.ndim != 2 or first.shape[1] not in (3, 6):
            raise DatasetError(f"{episode}: {SCENE_STREAM} has shape {first.shape}, expected (n, 3) or (n, 6)")
        rgb = first[:, 3:6] if first.shape[1] == 6 else np.tile(SCENE_GREY, (len(first), 1))
        return first[:, :3], rgb, f"recorded {SCENE_STREAM} (first sample)"
    seed = meta.get("seed")
    if not isinstance(seed, int):
        raise DatasetError(f"{episode}: no {SCENE_STREAM} stream and no integer seed in meta (seed={seed!r}): the "
                           "scene cannot be rendered")
    env.reset(seed=seed)
    lo, hi = env.task.scene_points_box
    sampler = WorkspaceSampler(PointCloudConfig(lo, hi, cfg.num_points, cfg.voxel_size, colors=True))
    try:
        points = sampler.sample(env.camera_cloud(SCENE_CAMERA, cfg.render_size, sampler.cfg.max_depth, colors=True))
    except EmptyCloudError as exc:
        raise DatasetError(f"{episode}: the rendered scene of {meta['task']} seed {seed}: {exc}") from exc
    return points[:, :3].astype(np.float64), points[:, 3:].astype(np.float64), f"sim {meta['task']} seed {seed} reset"


def _contacts(env: ContactRichEnv, episode: Path, meta: dict, cfg: View3dConfig, t_track: np.ndarray,
              track: np.ndarray, t_quat: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, int]:
    """(K, 3) touch points on the tool pads, and how many marker samples touched a finger pad."""
    if "marker_offset" not in meta["streams"]:
        return np.zeros((0, 3)), 0
    t, offset = load_stream(episode, "marker_offset", meta)
    offset = offset.reshape(len(t), -1, *offset.shape[-3:])  # (n, P, R, C, 2)
    grid = env.pads[0].pad.rest.shape[:2]
    if offset.shape[1:] != (len(env.pads), *grid, 2):
        raise DatasetError(f"{episode}: marker_offset samples have shape {offset.shape[1:]}, the {meta['task']} task's "
                           f"pads give {(len(env.pads), *grid, 2)}")
    magnitude = np.linalg.norm(offset.astype(np.float64), axis=-1)  # (n, P, R, C)
    touched = magnitude.max(axis=(2, 3)) > cfg.contact_threshold  # (n, P)
    arm_of_site = {a.tcp_site: i for i, a in enumerate(env.arms)}
    i_track, i_quat = _held_indices(t_track, t), _held_indices(t_quat, t)
    points, finger = [], 0
    for p, pad in enumerate(env.pads):
        arm = arm_of_site.get(pad.site)
        if arm is None:  # a finger pad
            finger += int(touched[:, p].sum())
            continue
        rest = pad.pad.rest  # (R, C, 2) marker positions in the pad (= TCP) frame
        for k in np.flatnonzero(touched[:, p]):
            w = magnitude[k, p]
            xy = (w[..., None] * rest).sum(axis=(0, 1)) / w.sum()
            local = np.array([xy[0], xy[1], 0.0])
            points.append(track[i_track[k], arm] + rot[i_quat[k], arm] @ local)
    return (np.array(points) if points else np.zeros((0, 3))), finger


def _force_arrows(episode: Path, meta: dict, cfg: View3dConfig, t_track: np.ndarray, track: np.ndarray,
                  t_quat: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """(F, 2, 3) arrows (start at the TCP, end at start + force_scale * force in the world frame)."""
    if "wrench" not in meta["streams"]:
        return np.zeros((0, 2, 3))
    t, wrench = load_stream(episode, "wrench", meta)
    wrench = wrench.reshape(len(t), -1, 6).astype(np.float64)
    keep = np.flatnonzero(np.diff(np.floor((t - t[0]) / cfg.arrow_every), prepend=-1) > 0)  # first sample per period
    i_track, i_quat = _held_indices(t_track, t[keep]), _held_indices(t_quat, t[keep])
    arrows = []
    for j, k in enumerate(keep):
        for arm in range(min(wrench.shape[1], track.shape[1])):
            force = rot[i_quat[j], arm] @ wrench[k, arm, :3]
            if np.linalg.norm(force) >= cfg.min_force:
                start = track[i_track[j], arm]
                arrows.append((start, start + cfg.force_scale * force))
    return np.array(arrows) if arrows else np.zeros((0, 2, 3))


def _held_indices(t_source: np.ndarray, t_query: np.ndarray) -> np.ndarray:
    """Index of the latest ``t_source`` sample not after each query (the first before the stream starts)."""
    return np.maximum(np.searchsorted(t_source, t_query, side="right") - 1, 0)


def _track_colours(t: np.ndarray, arms: int) -> np.ndarray:
    from matplotlib import colormaps

    span = max(float(t[-1] - t[0]), 1e-9) if len(t) else 1.0
    colours = colormaps["viridis"]((t - (t[0] if len(t) else 0.0)) / span)[:, :3]  # (T, 3)
    return np.repeat(colours, arms, axis=0)  # (T * A, 3), the order of track.reshape(-1, 3)


def _write_ply(g: EpisodeGeometry, path: Path) -> None:
    import open3d as o3d

    s = np.linspace(0.0, 1.0, ARROW_SAMPLES)[None, :, None]
    arrow_points = (g.arrows[:, :1] + s * (g.arrows[:, 1:] - g.arrows[:, :1])).reshape(-1, 3)
    parts = [
        (g.scene, g.scene_rgb),
        (g.track.reshape(-1, 3), _track_colours(g.track_t, g.track.shape[1])),
        (g.contacts, np.tile(CONTACT_RED, (len(g.contacts), 1))),
        (arrow_points, np.tile(FORCE_ORANGE, (len(arrow_points), 1))),
    ]
    cloud = o3d.geometry.PointCloud()
    cloud.points = o3d.utility.Vector3dVector(np.concatenate([p for p, _ in parts]).astype(np.float64))
    cloud.colors = o3d.utility.Vector3dVector(np.concatenate([c for _, c in parts]).astype(np.float64))
    if not o3d.io.write_point_cloud(str(path), cloud):
        raise OSError(f"open3d could not write {path}")


def _write_png(g: EpisodeGeometry, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 6), dpi=100)
    everything = np.concatenate([g.scene, g.track.reshape(-1, 3), g.arrows.reshape(-1, 3)])
    lo, hi = everything.min(axis=0), everything.max(axis=0)
    track_rgb = _track_colours(g.track_t, g.track.shape[1])
    oblique = fig.add_subplot(1, 2, 1, projection="3d")
    above = fig.add_subplot(1, 2, 2)
    for ax, dims in ((oblique, slice(0, 3)), (above, slice(0, 2))):
        ax.scatter(*g.scene[:, dims].T, c=g.scene_rgb, s=1.5, linewidths=0)
        for arm in range(g.track.shape[1]):
            ax.plot(*g.track[:, arm, dims].T, color="black", lw=0.6, alpha=0.5)
        ax.scatter(*g.track.reshape(-1, 3)[:, dims].T, c=track_rgb, s=5, label="TCP track")
        if len(g.contacts):
            ax.scatter(*g.contacts[:, dims].T, color=CONTACT_RED, s=10, label="tool pad contact")
        if len(g.arrows):
            start, vec = g.arrows[:, 0, dims], (g.arrows[:, 1] - g.arrows[:, 0])[:, dims]
            if ax is oblique:
                ax.quiver(*start.T, *vec.T, color=FORCE_ORANGE, lw=1.2, arrow_length_ratio=0.2, label="force on tool")
            else:
                ax.quiver(*start.T, *vec.T, color=FORCE_ORANGE, angles="xy", scale_units="xy", scale=1, width=0.004,
                          label="force on tool")
    oblique.set_box_aspect(np.maximum(hi - lo, 1e-3))
    oblique.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), zlim=(lo[2], hi[2]), xlabel="x [m]", ylabel="y [m]",
                zlabel="z [m]", title="from the scene camera's side")
    oblique.view_init(elev=30.0, azim=-40.0)
    above.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="x [m]", ylabel="y [m]", title="from above")
    above.set_aspect("equal")
    above.grid(alpha=0.3)
    above.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{title}\nscene: {g.scene_source}; TCP track dark -> yellow over {_duration(g.track_t):.2f} s")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _duration(t: np.ndarray) -> float:
    return float(t[-1] - t[0]) if len(t) else 0.0


def _write_atomically(path: Path, write) -> None:
    """``write(tmp)`` then rename onto ``path``: the file is whole or absent."""
    tmp = path.with_name(f".{path.stem}.writing{path.suffix}")  # same suffix: open3d picks the format by it
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@command("teleop.view3d")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = compose(View3dConfig, "teleop/view3d", list(sys.argv[1:] if argv is None else argv), "view3d",
                  "DIR episode=0", positional=("data",))
    summary = view_episode(cfg)
    print(f"wrote {summary['ply']} and {summary['png']} ({summary['scene_source']}; {summary['contact_samples']} "
          f"contact samples, {summary['force_arrows']} force arrows)", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
