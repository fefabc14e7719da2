"""Wipe: a sponge removes marks from a curved (vase-like) surface.

A mark is removed only while the sponge covers it with a contact force inside ``force_band``;
pressing harder than ``force_fail`` breaks the vase and ends the episode. Score = fraction removed;
success = at least ``success_fraction`` removed without a failure.

Goal (:class:`WipeGoal`): which marks to wipe and how hard. A region (``left``/``right`` half of the row of marks)
means only those: score = fraction of the region's marks removed minus the fraction of the others removed (at
least 0); success also needs none of the others removed, and the episode ends once the region is clean. A force
level (``gentle``/``firm``: ``FORCE_SCALE`` times today's target) also needs the median wiping force (over the
steps inside ``force_band``: a surface moving into the tool, a bounce, weigh little) within ``FORCE_TOLERANCE`` of
the level's target; ``normal`` asks nothing more than today.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import mujoco
import numpy as np

from sim.tasks.base import Goal, ToolSpec, geom_id, place_geom, resize_geom
from sim.tasks.surface import REGION_SPAN, Region, SurfaceTask, region_mask, single_arm

if TYPE_CHECKING:
    from sim.env import ContactRichEnv

N_MARKS = 6
MARK_TIME = 0.25  # s of in-band contact to remove a mark
MARK_REACH = 0.02  # m, sponge centre within this arc distance of a mark covers it
MARK_CLEARANCE = MARK_REACH + 0.005  # m, how far a region's path keeps the sponge from the marks outside it
FORCE_SCALE = {"normal": 1.0, "gentle": 0.75, "firm": 1.3}  # of WipeTask.force_target
FORCE_TOLERANCE = 0.15  # relative: a gentle/firm wipe's median force must be within this of the level's target


@dataclass(frozen=True)
class WipeGoal(Goal):
    """Which half of the row of marks to wipe (``all``: every mark) and how hard to press."""

    task: ClassVar[str] = "wipe"
    region: Region = "all"
    force: Literal["normal", "gentle", "firm"] = "normal"

    def scalars(self) -> tuple[float, ...]:
        """(region start, region end as fractions of the row, force relative to today's target)."""
        return (*REGION_SPAN[self.region], FORCE_SCALE[self.force])


class WipeTask(SurfaceTask):
    name = "wipe"
    goal_type = WipeGoal
    goal: WipeGoal
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
        whole = centre + radius * normals
        self.in_region = region_mask(self.goal.region, N_MARKS)
        if not self.in_region.all():  # the path over the region's marks only
            th = self._region_arc(radius)
            normals = np.stack((np.sin(th), np.zeros_like(th), np.cos(th)), axis=1)
            tangents = np.stack((np.cos(th), np.zeros_like(th), -np.sin(th)), axis=1)
        self.level_force = self.force_target * FORCE_SCALE[self.goal.force]
        self.publish_path(centre + radius * normals, normals, tangents, whole=whole, passes=2, reverse=True,
                          force_target=self.level_force, reach_ends=not self.in_region.all(),
                          force_tolerance=None if self.goal.force == "normal" else FORCE_TOLERANCE)
        self.progress = np.zeros(N_MARKS)
        self.removed = np.zeros(N_MARKS, dtype=bool)
        self.reset_scoring()
        self._wipe_forces: list[float] = []  # the force of every step that wiped
        self.schedule(rng, perturb, (1.5, 3.5), self.make_perturbation)

    def _region_arc(self, radius: float) -> np.ndarray:
        """(80,) angles of a path over the region's marks: from 3 cm before its first to 3 cm after its last, but
        ``MARK_CLEARANCE`` short of any mark outside it."""
        inside = np.flatnonzero(self.in_region)
        k0, k1 = inside[0], inside[-1]
        start = self.mark_theta[k0] - 0.03 / radius
        end = self.mark_theta[k1] + 0.03 / radius
        if k0 > 0:
            start = max(start, self.mark_theta[k0 - 1] + MARK_CLEARANCE / radius)
        if k1 < N_MARKS - 1:
            end = min(end, self.mark_theta[k1 + 1] - MARK_CLEARANCE / radius)
        return np.linspace(start, end, 80)

    def update(self, env: ContactRichEnv) -> tuple[float, bool]:
        if self.measure_force(env, ""):
            return -1.0, True
        reward = 0.0
        lo, hi = self.force_band
        if lo <= self.force <= hi:
            self._wipe_forces.append(self.force)
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
        return reward, bool(self.removed[self.in_region].all())

    @property
    def score(self) -> float:
        if not hasattr(self, "removed"):
            return 0.0
        if self.in_region.all():
            return float(self.removed.mean())
        return max(float(self.removed[self.in_region].mean()) - float(self.removed[~self.in_region].mean()), 0.0)

    @property
    def success(self) -> bool:
        if not hasattr(self, "removed"):
            return False
        cleaned = float(self.removed[self.in_region].mean())
        return self.failure is None and cleaned >= self.success_fraction and self.goal_miss is None

    @property
    def wipe_force(self) -> float | None:
        """Median contact force over the steps that wiped (force inside ``force_band``), N; None before any."""
        forces = getattr(self, "_wipe_forces", None)
        return float(np.median(forces)) if forces else None

    @property
    def goal_miss(self) -> str | None:
        if not hasattr(self, "removed"):
            return None
        outside = int(self.removed[~self.in_region].sum())
        if outside:
            return f"wiped {outside} mark(s) outside the {self.goal.region} half"
        f, level = self.wipe_force, self.level_force
        if self.goal.force != "normal" and f is not None and abs(f - level) > FORCE_TOLERANCE * level:
            return f"median wiping force {f:.1f} N, not within {FORCE_TOLERANCE:.0%} of {self.goal.force}'s {level:g} N"
        return None

    def goal_report(self) -> dict:
        has = hasattr(self, "removed")
        return {
            **super().goal_report(),
            "region_cleaned": float(self.removed[self.in_region].mean()) if has else 0.0,
            "outside_cleaned": int(self.removed[~self.in_region].sum()) if has else 0,
            "wipe_force": self.wipe_force,
            "force_level": getattr(self, "level_force", self.force_target),
        }
