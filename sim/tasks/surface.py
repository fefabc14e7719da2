"""Shared machinery of the tool-on-surface tasks (wipe, peel).

The surface is a kinematic (mocap) body, so perturbations can raise, lower or tilt it mid-episode
without the robot being told. The nominal tool path over the surface (points, normals, tangents)
is computed from the *initial* state and published in ``task.nominal``: experts may plan with it,
but only touch tells them when the surface moved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import mujoco
import numpy as np

from sim.kinematics import frame_from_z_and_x
from sim.tasks.base import ArmSetup, Perturbation, Task, ToolSpec, body_id, contact_normal_force, geom_id

if TYPE_CHECKING:
    from sim.env import ContactRichEnv

SURFACE_MOVE_SPEED = 0.03  # m/s, how fast a raise/lower/tilt perturbation moves the surface

# Which part of the work a goal asks for, as a span of the path's length from its start. The path starts near the
# robot and runs away from it, which the scene camera (the operator's view) sees from left to right: ``left`` is
# the half nearer the robot. A region means *only* that part: work done outside it counts against the goal.
Region = Literal["all", "left", "right"]
REGION_SPAN: dict[str, tuple[float, float]] = {"all": (0.0, 1.0), "left": (0.0, 0.5), "right": (0.5, 1.0)}


def region_mask(region: str, n: int) -> np.ndarray:
    """(n,) bool: which of ``n`` pieces laid out along the path (marks, strips) lie in ``region``, by the
    position of each piece's centre in the row."""
    lo, hi = REGION_SPAN[region]
    centres = (np.arange(n) + 0.5) / n
    return (centres >= lo) & (centres < hi)


def single_arm(tool: ToolSpec) -> tuple[ArmSetup, ...]:
    return (
        ArmSetup(
            prefix="arm/",
            base_pos=(0.0, 0.0, 0.0),
            base_yaw=0.0,
            tool=tool,
            workspace=((0.2, -0.4, 0.0), (0.85, 0.4, 0.6)),
        ),
    )


class SurfaceTask(Task):
    """A tool pressed on a mocap-held surface, scored by where and how hard it presses."""

    hover: float = 0.05  # m above the first path point at the start
    force_band: tuple[float, float] = (4.0, 25.0)
    force_fail: float = 40.0
    force_target: float = 10.0
    surface_geom_names: tuple[str, ...] = ("surface",)
    look_geoms = {"table": ("floor",), "object": ("surface",)}

    def bind(self, model: mujoco.MjModel) -> None:
        self.model = model
        self._body = body_id(model, "surface_body")
        self._mocap = int(model.body_mocapid[self._body])
        self._tool_pad = geom_id(model, self.arms[0].prefix + "tool_pad")
        self._surface_geoms = {geom_id(model, n) for n in self.surface_geom_names}

    @staticmethod
    def add_decals(body: mujoco.MjsBody, name: str, n: int, size: list[float], rgba: list[float]) -> None:
        """Visual-only markers on the surface (marks to wipe, strips to peel) that the task recolours."""
        for k in range(n):
            body.add_geom(
                name=f"{name}{k}",
                type=mujoco.mjtGeom.mjGEOM_BOX,
                size=size,
                rgba=rgba,
                contype=0,
                conaffinity=0,
                mass=0,
            )

    @staticmethod
    def decal_ids(model: mujoco.MjModel, name: str, n: int) -> list[int]:
        return [geom_id(model, f"{name}{k}") for k in range(n)]

    def place_surface(self, env: ContactRichEnv, pos: np.ndarray, quat: np.ndarray) -> None:
        self._pos0 = pos.copy()
        self._quat0 = quat.copy()
        env.data.mocap_pos[self._mocap] = pos
        env.data.mocap_quat[self._mocap] = quat

    def make_perturbation(self, kind: str, t: float, rng: np.random.Generator) -> Perturbation:
        if kind == "raise":
            dz = float(rng.uniform(0.018, 0.03))
            return Perturbation(kind, t, dz / SURFACE_MOVE_SPEED, {"dz": dz})
        if kind == "lower":
            dz = -float(rng.uniform(0.012, 0.03))
            return Perturbation(kind, t, -dz / SURFACE_MOVE_SPEED, {"dz": dz})
        if kind == "tilt":
            ang = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.09, 0.15))
            return Perturbation(kind, t, 0.5, {"tilt": ang})
        raise ValueError(f"unknown perturbation {kind!r} for {self.name}")

    def before_physics(self, env: ContactRichEnv) -> None:
        active = self.active_perturbation(env)
        if active is None:
            return
        p, a = active
        pos = self._pos0.copy()
        pos[2] += a * p.params.get("dz", 0.0)
        quat = self._quat0.copy()
        tilt = a * p.params.get("tilt", 0.0)
        if tilt:
            q_tilt = np.array([np.cos(tilt / 2), 0.0, np.sin(tilt / 2), 0.0])  # about world y
            mujoco.mju_mulQuat(quat, q_tilt, self._quat0)
        env.data.mocap_pos[self._mocap] = pos
        env.data.mocap_quat[self._mocap] = quat

    def reset_scoring(self) -> None:
        self.failure = None
        self.max_force = 0.0
        self.force = 0.0

    def measure_force(self, env: ContactRichEnv, what_broke: str) -> bool:
        """Read the tool's normal force on the surface (ground truth); True if the limit was broken."""
        f = contact_normal_force(env.model, env.data, self._tool_pad, self._surface_geoms)
        self.force = f
        sustained = float(self.sustained(env, f))
        self.max_force = max(self.max_force, sustained)
        if sustained > self.force_fail:
            self.failure = f"force {sustained:.1f} N over the {self.force_fail:.0f} N limit{what_broke}"
            return True
        return False

    def tcp_in_surface_frame(self, env: ContactRichEnv) -> np.ndarray:
        """(3,) TCP position in the *current* (possibly perturbed) surface frame."""
        d = env.data
        rot = d.xmat[self._body].reshape(3, 3)
        return rot.T @ (d.site_xpos[env.arms[0].tcp_site] - d.xpos[self._body])

    def start_pose(self, arm: ArmSetup) -> tuple[np.ndarray, np.ndarray]:
        p0 = self.nominal["points"][0]
        n0 = self.nominal["normals"][0]
        return p0 + n0 * self.hover, frame_from_z_and_x(-n0, self.nominal["x_hint"])

    def scene_features(self) -> np.ndarray:
        """Start and end points of the whole nominal tool path on the surface as it was at reset (6,): the same
        whatever the goal, which the observation carries apart (``goal``)."""
        return self._scene.copy()

    def publish_path(
        self, points: np.ndarray, normals: np.ndarray, tangents: np.ndarray, whole: np.ndarray | None = None, **extra
    ) -> None:
        """The plan an expert follows: the path over the part of the surface the goal asks for. ``whole``: the
        points of the path over all of it when the goal asks for a part (``scene_features`` report its ends)."""
        ends = points if whole is None else whole
        self._scene = np.concatenate([ends[0], ends[-1]]).astype(np.float32)
        self.nominal = {
            "points": points,
            "normals": normals,
            "tangents": tangents,
            "force_target": self.force_target,
            # Tool x axis kept near world -y: the Panda's natural wrist angle over the table.
            "x_hint": np.array([0.0, -1.0, 0.0]),
            **extra,
        }
