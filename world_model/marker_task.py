"""The marker task, where memory decides: bring the camera back over a marker that left the view long ago.

The camera looks down at a revisit table (a new random layout and look every episode, ``world_model.revisit``). A
marker -- a white plate with a black dot, the only white thing on the table -- lies under the camera's first
position A. The camera hovers over A, is carried far away to B and dwells there for longer than the world model's
context window, so nothing of A is in the last frames. Then the task starts: the robot is offered ``candidates``
destinations (the marker's spot and decoys a full view away from it, all exactly as far from the camera, in a
random order) and
must move the camera to the one over the marker. Success: the camera ends within ``success_radius`` of the marker.

The current view shows none of the destinations, so a policy that sees the last frames (even two of them, or four)
has nothing to choose by: by design it is at chance, 1 / ``candidates``. What the first frames showed has to be
remembered. Actions are camera displacements (dx, dy, dz in m), as in the revisit set; a candidate plan is the
straight path to its destination at ``step`` per frame, then held, all padded to one length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from world_model.revisit import RevisitConfig, camera_path, scene_xml


@dataclass(frozen=True)
class MarkerTaskConfig:
    """Sizes of the marker task. ``revisit`` sets the table, camera and path; ``dwell`` there must exceed the
    world model's context."""

    revisit: RevisitConfig = field(default_factory=RevisitConfig)
    candidates: int = 4
    marker_half: float = 0.022  # m, the plate's half side
    marker_height: float = 0.11  # m above the table: above every object (the tallest reach 0.10 m)
    success_radius: float = 0.05  # m, camera to marker in the table plane
    hold: int = 2  # frames held at the destination at the end of every candidate plan

    def __post_init__(self) -> None:
        if self.candidates < 2 or self.hold < 1 or not 0 < self.success_radius < self.view / 2:
            raise ValueError(f"bad marker task config {self}")

    @property
    def view(self) -> float:
        """Side of the camera's view on the table, m."""
        r = self.revisit
        return 2 * r.height * float(np.tan(np.deg2rad(r.fovy) / 2))

    @property
    def reach(self) -> np.ndarray:
        """Half extents (x, y) of where the camera may go: the view stays on the table."""
        return np.array(self.revisit.table_half) - self.view / 2


def marker_xml(cfg: MarkerTaskConfig, xy: np.ndarray) -> str:
    h, z = cfg.marker_half, cfg.marker_height
    return (f'<geom name="marker" type="box" size="{h:.3f} {h:.3f} 0.002" pos="{xy[0]:.4f} {xy[1]:.4f} {z:.3f}" '
            f'rgba="1 1 1 1"/>\n    <geom name="marker_dot" type="cylinder" size="{h / 2.5:.4f} 0.0005" '
            f'pos="{xy[0]:.4f} {xy[1]:.4f} {z + 0.0025:.4f}" rgba="0.05 0.05 0.05 1"/>')


class MarkerWorld:
    """One episode's scene with a renderer: ``render(position)`` is the camera's frame from there. Close it (or
    use it as a context manager) to free the renderer."""

    def __init__(self, cfg: MarkerTaskConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        rng = np.random.default_rng(seed)
        xml = scene_xml(cfg.revisit, rng)
        for _ in range(100):  # a camera path whose circle of destinations fits on the table
            path, _, _, _ = camera_path(cfg.revisit, rng)
            n_seen = (len(path) + cfg.revisit.dwell) // 2  # hover, travel to B, dwell; the retraced half is dropped
            self.path = path[:n_seen]
            self.marker = path[0, :2].copy()
            destinations = self._destinations(rng)
            if destinations is not None:
                break
        else:
            raise RuntimeError(f"seed {seed}: no camera path leaves room for {cfg.candidates} destinations")
        xml = xml.replace('<body name="eye"', marker_xml(cfg, self.marker) + '\n    <body name="eye"')
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        size = cfg.revisit.image_size
        self.renderer = mujoco.Renderer(self.model, size, size)
        self.destinations = destinations
        self.answer = int(np.flatnonzero((self.destinations == self.marker).all(1))[0])

    def _destinations(self, rng: np.random.Generator) -> np.ndarray | None:
        """(K, 2): the marker's spot and K - 1 decoys on the circle through it around the camera's last seen
        position, shuffled (None where the table leaves no room on that circle). A decoy is a full view from the
        marker (its view shows none of it) and half a view from the other decoys; every destination is exactly as far
        from the camera, so how far one is tells nothing about which one is the marker."""
        cfg, reach = self.cfg, self.cfg.reach
        start = self.path[-1, :2]
        radius = float(np.linalg.norm(self.marker - start))
        points = [self.marker]
        for angle in rng.uniform(0, 2 * np.pi, 2000):
            p = start + radius * np.array([np.cos(angle), np.sin(angle)])
            if np.all(np.abs(p) <= reach) and np.abs(p - self.marker).max() > cfg.view \
                    and min(np.abs(p - q).max() for q in points) > cfg.view / 2:
                points.append(p)
                if len(points) == cfg.candidates:
                    return np.array(points)[rng.permutation(cfg.candidates)]
        return None

    def render(self, position: np.ndarray) -> np.ndarray:
        self.data.mocap_pos[0] = position
        mujoco.mj_forward(self.model, self.data)
        self.renderer.update_scene(self.data, "eye")
        return self.renderer.render().copy()

    def render_path(self, positions: np.ndarray) -> np.ndarray:
        return np.stack([self.render(p) for p in positions])

    def seen(self) -> tuple[np.ndarray, np.ndarray]:
        """The frames before the task starts (hover over A, travel, dwell at B) and the actions into them."""
        return self.render_path(self.path), displacements(self.path)

    def plans(self, start: np.ndarray | None = None) -> np.ndarray:
        """(K, L, 3) camera positions of every candidate plan from ``start`` (default: the last seen position):
        straight at ``step`` a frame, then held ``hold`` frames; all padded to one length L."""
        start = self.path[-1] if start is None else np.asarray(start, float)
        step = self.cfg.revisit.step
        dist = np.linalg.norm(self.destinations - start[:2], axis=1)
        length = int(np.ceil(dist.max() / step)) + self.cfg.hold
        out = np.empty((len(self.destinations), length, 3))
        for k, (goal, d) in enumerate(zip(self.destinations, dist, strict=True)):
            n = max(1, int(np.ceil(d / step)))
            frac = np.minimum(np.arange(1, length + 1) / n, 1.0)[:, None]
            out[k, :, :2] = start[:2] + (goal - start[:2]) * frac
            out[k, :, 2] = start[2]
        return out

    def success(self, position: np.ndarray) -> bool:
        return bool(np.linalg.norm(position[:2] - self.marker) < self.cfg.success_radius)

    def close(self) -> None:
        self.renderer.close()

    def __enter__(self) -> MarkerWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def displacements(positions: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """(T, 3) float32 actions into each position: the displacement from the one before (``start`` before the
    first; none given: the first action is zero)."""
    prev = np.concatenate([[positions[0] if start is None else start], positions[:-1]])
    return (positions - prev).astype(np.float32)


def scorer_frames(cfg: MarkerTaskConfig, seeds: range, per_episode: int = 24,
                  rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frames (N, S, S, 3) uint8 and labels (N,) float32 (1: the camera within ``success_radius`` of the marker)
    for the scorer: half of each episode's views near the marker (inside and just outside the radius), half
    anywhere on the table."""
    rng = rng or np.random.default_rng(0)
    frames, labels = [], []
    for seed in seeds:
        with MarkerWorld(cfg, seed) as world:
            for i in range(per_episode):
                if i % 2 == 0:
                    r = cfg.success_radius * rng.uniform(0.0, 2.0)
                    a = rng.uniform(0, 2 * np.pi)
                    xy = world.marker + r * np.array([np.cos(a), np.sin(a)])
                else:
                    xy = rng.uniform(-cfg.reach, cfg.reach)
                xy = np.clip(xy, -cfg.reach, cfg.reach)
                pos = np.array([*xy, cfg.revisit.height])
                frames.append(world.render(pos))
                labels.append(float(world.success(pos)))
    return np.stack(frames), np.array(labels, np.float32)
