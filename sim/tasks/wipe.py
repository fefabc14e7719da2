"""Wipe: a sponge removes marks from a curved (vase-like) surface.

A mark is removed only while the sponge covers it with a contact force inside ``force_band``;
pressing harder than ``force_fail`` breaks the vase and ends the episode. Score = fraction removed;
success = at least ``success_fraction`` removed without a failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np

from sim.tasks.base import ToolSpec, geom_id, place_geom, resize_geom
from sim.tasks.surface import SurfaceTask, single_arm

if TYPE_CHECKING:
    from sim.env import ContactRichEnv

N_MARKS = 6
MARK_TIME = 0.25  # s of in-band contact to remove a mark
MARK_REACH = 0.02  # m, sponge centre within this arc distance of a mark covers it


class WipeTask(SurfaceTask):
    name = "wipe"
    perturbation_kinds = ("raise", "lower")
    max_seconds = 16.0
    success_fraction = 0.8
    arms = single_arm(ToolSpec(half_size=(0.025, 0.025, 0.015), rgba=(0.95, 0.85, 0.25, 1.0)))
    # Beyond the ends of the widest vase (|y| < 0.46 on the floor), in the scene camera's view.
    distractor_spots = ((0.25, 0.5, 0.52, 0.66, 0.0), (0.05, 0.2, 0.3, 0.55, 0.0))
    # The vase's top (0.10-0.15 m, raised up to 0.03 m) around the marks, the sponge and the hand above it.
    scene_points_box = ((0.35, -0.25, 0.005), (0.85, 0.25, 0.4))

    def build(self, spec: mujoco.MjSpec) -> None:
        body = spec.worldbody.add_body(name="surface_body", mocap=True, pos=[0.5, 0, -0.1])
        # A vase lying on its side: a wide cylinder whose axis is world y.
        q = np.sqrt(0.5)
        body.add_geom(
            name="surface",
            type=mujoco.mjtGeom.mjGEOM_CAPSULE,  # analytic capsule-box contact: no missed contacts
            size=[0.25, 0.2, 0],
            quat=[q, q, 0, 0],
            rgba=[0.55, 0.7, 0.85, 1],
            friction=[0.6, 0.005, 0.0001],
        )
        self.add_decals(body, "mark", N_MARKS, [0.012, 0.012, 0.001], [0.3, 0.15, 0.05, 1])

    def bind(self, model: mujoco.MjModel) -> None:
        super().bind(model)
        self._marks = self.decal_ids(model, "mark", N_MARKS)
        self._surf = geom_id(model, "surface")

    def reset(self, env: ContactRichEnv, rng: np.random.Generator, perturb: bool) -> None:
        m = env.model
        radius = float(rng.uniform(0.2, 0.3))
        top = float(rng.uniform(0.10, 0.15))
        centre = np.array([rng.uniform(0.57, 0.63), rng.uniform(-0.05, 0.05), top - radius])
        resize_geom(m, self._surf, [radius, 0.2])
        span = 0.16 / radius  # the marks cover ~16 cm of arc
        self.mark_theta = np.linspace(-span / 2, span / 2, N_MARKS) + rng.normal(0, 0.01, N_MARKS)
        self.radius = radius
        for k, th in enumerate(self.mark_theta):
            gid = self._marks[k]
            quat = np.zeros(4)
            mujoco.mju_axisAngle2Quat(quat, np.array([0.0, 1.0, 0.0]), th)
            place_geom(m, gid, [radius * np.sin(th), 0.0, radius * np.cos(th) + 0.0005], quat)
            m.geom_rgba[gid] = [0.3, 0.15, 0.05, 1]
        self.place_surface(env, centre, np.array([1.0, 0, 0, 0]))
        # Nominal path: from just before the first mark to just after the last, along the arc.
        th = np.linspace(self.mark_theta[0] - 0.03 / radius, self.mark_theta[-1] + 0.03 / radius, 80)
        normals = np.stack((np.sin(th), np.zeros_like(th), np.cos(th)), axis=1)
        tangents = np.stack((np.cos(th), np.zeros_like(th), -np.sin(th)), axis=1)
        self.publish_path(centre + radius * normals, normals, tangents, passes=2, reverse=True)
        self.progress = np.zeros(N_MARKS)
        self.removed = np.zeros(N_MARKS, dtype=bool)
        self.reset_scoring()
        self.schedule(rng, perturb, (1.5, 3.5), self.make_perturbation)

    def update(self, env: ContactRichEnv) -> tuple[float, bool]:
        if self.measure_force(env, ""):
            return -1.0, True
        reward = 0.0
        lo, hi = self.force_band
        if lo <= self.force <= hi:
            # Where is the sponge on the (current) surface? Angle of the TCP around the cylinder axis.
            local = self.tcp_in_surface_frame(env)
            theta = np.arctan2(local[0], local[2])
            near = np.abs(theta - self.mark_theta) * self.radius < MARK_REACH
            near &= abs(local[1]) < MARK_REACH
            dt = 1.0 / env.control_hz
            for k in np.flatnonzero(near & ~self.removed):
                self.progress[k] += dt
                if self.progress[k] >= MARK_TIME:
                    self.removed[k] = True
                    env.model.geom_rgba[self._marks[k]] = [0.55, 0.7, 0.85, 0.0]
                    reward += 1.0
        return reward, bool(self.removed.all())

    @property
    def score(self) -> float:
        return float(self.removed.mean()) if hasattr(self, "removed") else 0.0

    @property
    def success(self) -> bool:
        return self.failure is None and self.score >= self.success_fraction
