"""The revisit set: videos in which the camera leaves a region for longer than the world model's context window and
comes back, over a new random layout and look every episode.

A camera looks straight down at a table much larger than its view (the wrist camera's situation above a workspace).
Each episode draws, from its seed, the table's colour, the light, and a layout of coloured objects (boxes, cylinders,
spheres); the camera starts over a random spot A, pans to a far spot B, dwells there (so nothing of A is in the last
``context`` frames), and retraces its outgoing path back to A. The return frames therefore show exactly what the
first visit showed (the scene is static): a model that keeps only its context window has to invent A again, one
with an episodic memory can reproduce it. ``pairs`` holds (first-visit frame, return frame) index pairs of identical
camera poses, the ground truth of the consistency metric. Actions are the camera's displacement into each frame
(dx, dy, dz in m).

Episodes are deterministic in their seed (MuJoCo's renderer on the CPU is); the scene is rebuilt per episode (a
new layout is a new model), which costs a few ms of compilation next to tens of ms of rendering.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import mujoco
import numpy as np

ACTION_DIM = 3


@dataclass(frozen=True)
class RevisitConfig:
    """Sizes of the revisit episodes. ``dwell`` frames at B must exceed the model's context window."""

    image_size: int = 32
    table_half: tuple[float, float] = (0.6, 0.4)  # m; the view at ``height`` covers about 0.29 m
    height: float = 0.25  # camera above the table top, m
    fovy: float = 60.0
    step: float = 0.03  # camera travel per frame, m
    first_visit: int = 6  # frames hovering over A before leaving
    dwell: int = 10  # frames at B
    min_travel: float = 0.45  # |B - A| at least this, so the views do not overlap
    objects: tuple[int, int] = (25, 40)  # number of objects, [low, high): about 3 in a view

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.first_visit < 1 or self.dwell < 1 or not self.step > 0:
            raise ValueError(f"bad revisit config {self}")
        view = 2 * self.height * np.tan(np.deg2rad(self.fovy) / 2)
        if self.min_travel < view:
            raise ValueError(f"min_travel {self.min_travel} m is less than the view ({view:.2f} m): B would show A")


@dataclass
class RevisitEpisode:
    """frames (T, S, S, 3) uint8; actions (T, 3) float32 (actions[0] = 0); camera (T, 3) float64 positions;
    pairs (P, 2) int (first-visit index, return index) of identical poses; ``left`` / ``back`` the first frame
    off A's view and the first return frame."""

    seed: int
    frames: np.ndarray
    actions: np.ndarray
    camera: np.ndarray
    pairs: np.ndarray
    left: int
    back: int


def _colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> str:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val))
    return f"{r:.3f} {g:.3f} {b:.3f} 1"


def scene_xml(cfg: RevisitConfig, rng: np.random.Generator) -> str:
    """An MJCF scene: table, light and a random layout of objects, and a mocap-held camera looking down."""
    hx, hy = cfg.table_half
    light_dir = rng.normal(size=3) * [0.4, 0.4, 0.0] + [0.0, 0.0, -1.0]
    light = rng.uniform(0.5, 0.9)
    objects = []
    for i in range(int(rng.integers(*cfg.objects))):
        kind = rng.choice(["box", "cylinder", "sphere"])
        size = rng.uniform(0.02, 0.05)
        x, y = rng.uniform(-hx + size, hx - size), rng.uniform(-hy + size, hy - size)
        dims = {"box": f"{size:.3f} {rng.uniform(0.5, 1.0) * size:.3f} {size:.3f}",
                "cylinder": f"{size:.3f} {size:.3f}", "sphere": f"{size:.3f}"}[kind]
        yaw = rng.uniform(0, np.pi)
        objects.append(f'<geom name="o{i}" type="{kind}" size="{dims}" pos="{x:.3f} {y:.3f} {size:.3f}" '
                       f'euler="0 0 {yaw:.3f}" rgba="{_colour(rng, (0.5, 1.0), (0.4, 1.0))}"/>')
    return f"""<mujoco>
  <visual><global offwidth="{cfg.image_size}" offheight="{cfg.image_size}"/><quality shadowsize="0"/></visual>
  <asset>
    <texture name="table" type="2d" builtin="{rng.choice(['checker', 'flat'])}" width="64" height="64"
             rgb1="{_colour(rng, (0.0, 0.35), (0.35, 0.8))[:-2]}" rgb2="{_colour(rng, (0.0, 0.35), (0.35, 0.8))[:-2]}"/>
    <material name="table" texture="table" texrepeat="{rng.uniform(4, 12):.2f} {rng.uniform(4, 12):.2f}"/>
  </asset>
  <worldbody>
    <light directional="true" dir="{light_dir[0]:.3f} {light_dir[1]:.3f} {light_dir[2]:.3f}"
           diffuse="{light:.3f} {light:.3f} {light:.3f}" ambient="0.25 0.25 0.25" castshadow="false"/>
    <geom name="table" type="box" size="{hx} {hy} 0.01" pos="0 0 -0.01" material="table"/>
    {chr(10).join(objects)}
    <body name="eye" mocap="true" pos="0 0 {cfg.height}">
      <camera name="eye" fovy="{cfg.fovy}" xyaxes="1 0 0 0 1 0"/>
    </body>
  </worldbody>
</mujoco>"""


def camera_path(cfg: RevisitConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(T, 3) camera positions: hover over A, travel to B, dwell, retrace the travel back to A. Returns the path,
    the (first-visit, return) pairs of identical positions, the first frame whose view no longer overlaps A's and
    the first return frame."""
    view = 2 * cfg.height * np.tan(np.deg2rad(cfg.fovy) / 2)
    hx, hy = np.array(cfg.table_half) - view / 2  # keep the view on the table
    while True:
        a, b = rng.uniform([-hx, -hy], [hx, hy]), rng.uniform([-hx, -hy], [hx, hy])
        if np.linalg.norm(b - a) >= cfg.min_travel:
            break
    hover = a + np.cumsum(rng.normal(scale=cfg.step / 3, size=(cfg.first_visit, 2)), axis=0)
    hover = np.clip(hover, [-hx, -hy], [hx, hy])
    n_travel = int(np.ceil(np.linalg.norm(b - hover[-1]) / cfg.step))
    travel = hover[-1] + (b - hover[-1]) * (np.arange(1, n_travel + 1) / n_travel)[:, None]
    dwell = np.clip(b + np.cumsum(rng.normal(scale=cfg.step / 3, size=(cfg.dwell, 2)), axis=0), [-hx, -hy], [hx, hy])
    outgoing = np.concatenate([hover, travel])  # indices 0 .. len-1
    back = outgoing[::-1]  # retraced: back[k] == outgoing[len - 1 - k]
    xy = np.concatenate([outgoing, dwell, back])
    first_back = len(outgoing) + len(dwell)
    n_out = len(outgoing)
    pairs = np.array([(n_out - 1 - k, first_back + k) for k in range(n_out)])
    far = np.abs(outgoing - a).max(axis=1) > view  # views no longer overlapping A's
    left = int(np.argmax(far)) if far.any() else n_out
    pairs = pairs[np.abs(outgoing[pairs[:, 0]] - a).max(axis=1) <= view]  # pairs that show A
    pos = np.concatenate([xy, np.full((len(xy), 1), cfg.height)], axis=1)
    return pos, pairs, left, first_back + n_out - 1 - int(pairs[:, 0].max())


def render_episode(cfg: RevisitConfig, seed: int) -> RevisitEpisode:
    """One revisit episode from its seed."""
    rng = np.random.default_rng(seed)
    model = mujoco.MjModel.from_xml_string(scene_xml(cfg, rng))
    data = mujoco.MjData(model)
    pos, pairs, left, back = camera_path(cfg, rng)
    frames = np.empty((len(pos), cfg.image_size, cfg.image_size, 3), np.uint8)
    with mujoco.Renderer(model, cfg.image_size, cfg.image_size) as renderer:
        for t, p in enumerate(pos):
            data.mocap_pos[0] = p
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, "eye")
            frames[t] = renderer.render()
    actions = np.zeros((len(pos), ACTION_DIM), np.float32)
    actions[1:] = np.diff(pos, axis=0)
    return RevisitEpisode(seed, frames, actions, pos, pairs, left, back)
