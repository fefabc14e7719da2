"""Peel: a peeler strokes along a cucumber-like cylinder, taking off one strip segment at a time.

A segment is peeled only while the blade moves along the surface (speed along the axis above
``MIN_SPEED``) with the normal force inside ``force_band``, over enough of the segment's length.
Digging in (force above ``force_fail``, averaged over 0.1 s) ruins the cucumber and ends the episode.
Score = fraction peeled; success = at least ``success_fraction`` peeled without a failure.

Goal (:class:`PeelGoal`): which half of the cucumber to peel. A region (``left``: the four strips nearer the robot,
``right``: the other four) means only those: score = fraction of the region's strips peeled minus the fraction of
the others peeled (at least 0); success also needs none of the others peeled, and the episode ends once the region
is peeled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import mujoco
import numpy as np

from sim.tasks.base import Goal, ToolSpec, geom_id, place_geom, resize_geom
from sim.tasks.surface import REGION_SPAN, Region, SurfaceTask, region_mask, single_arm

if TYPE_CHECKING:
    from sim.env import ContactRichEnv

N_SEGMENTS = 8
LENGTH = 0.22  # m of cucumber body (capsule cylinder part)
MIN_SPEED = 0.01  # m/s along the axis
PEEL_FRACTION = 0.6  # of a segment's length travelled in band to peel it
REACH = 0.012  # m, blade centre within this distance of the top line
END_MARGIN = 0.003  # m, the path stays this far inside the cucumber's ends and a region's boundaries


@dataclass(frozen=True)
class PeelGoal(Goal):
    """Which half of the cucumber to peel (``all``: the whole of it)."""

    task: ClassVar[str] = "peel"
    region: Region = "all"

    def scalars(self) -> tuple[float, ...]:
        """(region start, region end) as fractions of the cucumber's length."""
        return REGION_SPAN[self.region]


class PeelTask(SurfaceTask):
    name = "peel"
    goal_type = PeelGoal
    goal: PeelGoal
    perturbation_kinds = ("raise", "lower", "tilt")
    max_seconds = 22.0
    success_fraction = 0.8
    force_band = (3.0, 20.0)
    force_fail = 30.0
    force_target = 8.0
    # Blade: long across the stroke (tool x = world -y), narrow along it.
    arms = single_arm(ToolSpec(half_size=(0.02, 0.006, 0.012), rgba=(0.8, 0.82, 0.85, 1.0)))
    # Either side of the cucumber, outside scene_points_box, in the scene camera's view.
    distractor_spots = ((0.3, 0.55, 0.21, 0.4, 0.0), (0.5, 0.62, -0.28, -0.21, 0.0))
    # The cucumber on the floor (x 0.44-0.76, |y| < 0.1), the blade and the hand above it.
    scene_points_box = ((0.4, -0.15, 0.005), (0.8, 0.15, 0.35))

    def build(self, spec: mujoco.MjSpec) -> None:
        body = spec.worldbody.add_body(name="surface_body", mocap=True, pos=[0.6, 0, 0.03])
        q = np.sqrt(0.5)
        body.add_geom(
            name="surface",
            type=mujoco.mjtGeom.mjGEOM_CAPSULE,
            size=[0.025, LENGTH / 2, 0],
            quat=[q, 0, q, 0],  # capsule axis along world x
            rgba=[0.25, 0.5, 0.2, 1],
            friction=[0.5, 0.005, 0.0001],
        )
        self.add_decals(body, "seg", N_SEGMENTS, [LENGTH / N_SEGMENTS / 2 * 0.9, 0.008, 0.0008], [0.15, 0.35, 0.12, 1])

    def bind(self, model: mujoco.MjModel) -> None:
        super().bind(model)
        self._segs = self.decal_ids(model, "seg", N_SEGMENTS)
        self._surf = geom_id(model, "surface")

    def reset(self, env: ContactRichEnv, rng: np.random.Generator, perturb: bool) -> None:
        m = env.model
        radius = float(rng.uniform(0.02, 0.03))
        centre = np.array([rng.uniform(0.57, 0.63), rng.uniform(-0.06, 0.06), radius + 0.002])
        resize_geom(m, self._surf, [radius, LENGTH / 2])
        self.radius = radius
        edges = np.linspace(-LENGTH / 2, LENGTH / 2, N_SEGMENTS + 1)
        self.seg_edges = edges
        for k in range(N_SEGMENTS):
            place_geom(m, self._segs[k], [(edges[k] + edges[k + 1]) / 2, 0.0, radius + 0.0004])
            m.geom_rgba[self._segs[k]] = [0.15, 0.35, 0.12, 1]
        self.place_surface(env, centre, np.array([1.0, 0, 0, 0]))
        xs = np.linspace(-LENGTH / 2 + 0.003, LENGTH / 2 - 0.003, 60)  # stay off the rounded ends
        whole = centre + np.stack((xs, np.zeros_like(xs), np.full_like(xs, radius)), axis=1)
        self.in_region = region_mask(self.goal.region, N_SEGMENTS)
        if not self.in_region.all():  # the path over the region's strips only, inside their outer edges
            inside = np.flatnonzero(self.in_region)
            xs = np.linspace(edges[inside[0]] + END_MARGIN, edges[inside[-1] + 1] - END_MARGIN, 30)
        points = centre + np.stack((xs, np.zeros_like(xs), np.full_like(xs, radius)), axis=1)
        normals = np.tile([0.0, 0.0, 1.0], (len(xs), 1))
        tangents = np.tile([1.0, 0.0, 0.0], (len(xs), 1))
        # A missed segment gets a second stroke on the way back, still in contact (a peeler cuts both ways here),
        # instead of lifting off and flying back: an in-air return at hover height looks like the first descent
        # (same place, same height, no touch), which a policy with a short history cannot tell apart.
        self.publish_path(points, normals, tangents, whole=whole, passes=2, reverse=True)
        self.travel = np.zeros(N_SEGMENTS)
        self.peeled = np.zeros(N_SEGMENTS, dtype=bool)
        self.reset_scoring()
        self._prev_local = None
        self.schedule(rng, perturb, (1.5, 4.0), self.make_perturbation)

    def update(self, env: ContactRichEnv) -> tuple[float, bool]:
        if self.measure_force(env, " (blade dug in)"):
            return -1.0, True
        f = self.force
        local = self.tcp_in_surface_frame(env)
        prev, self._prev_local = self._prev_local, local
        if prev is None:
            return 0.0, False
        dx = local[0] - prev[0]
        speed = abs(dx) * env.control_hz
        reward = 0.0
        lo, hi = self.force_band
        if lo <= f <= hi and speed >= MIN_SPEED and abs(local[1]) < REACH:
            k = int(np.searchsorted(self.seg_edges, local[0]) - 1)
            if 0 <= k < N_SEGMENTS and not self.peeled[k]:
                self.travel[k] += abs(dx)
                if self.travel[k] >= PEEL_FRACTION * (LENGTH / N_SEGMENTS):
                    self.peeled[k] = True
                    env.model.geom_rgba[self._segs[k]] = [0.85, 0.9, 0.6, 1]
                    reward = 1.0
        return reward, bool(self.peeled[self.in_region].all())

    @property
    def score(self) -> float:
        if not hasattr(self, "peeled"):
            return 0.0
        if self.in_region.all():
            return float(self.peeled.mean())
        return max(float(self.peeled[self.in_region].mean()) - float(self.peeled[~self.in_region].mean()), 0.0)

    @property
    def success(self) -> bool:
        if not hasattr(self, "peeled"):
            return False
        peeled = float(self.peeled[self.in_region].mean())
        return self.failure is None and peeled >= self.success_fraction and self.goal_miss is None

    @property
    def goal_miss(self) -> str | None:
        outside = int(self.peeled[~self.in_region].sum()) if hasattr(self, "peeled") else 0
        return f"peeled {outside} strip(s) outside the {self.goal.region} half" if outside else None

    def goal_report(self) -> dict:
        has = hasattr(self, "peeled")
        return {
            **super().goal_report(),
            "region_peeled": float(self.peeled[self.in_region].mean()) if has else 0.0,
            "outside_peeled": int(self.peeled[~self.in_region].sum()) if has else 0,
        }
