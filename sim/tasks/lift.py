"""Lift (bimanual): two arms squeeze a box between upright paddles, lift it and hold it.

The box slips out if the squeeze is too weak for its weight and friction (a drop fails the
episode), and is crushed if either paddle presses harder than ``crush_force`` (averaged over 0.1 s).
Success = the box held at least ``lift_height`` above its start for ``hold_seconds``.
Perturbations that only touch reveals: mass added mid-lift (ramped, like pouring into the box)
and the box's surface turning slippery mid-lift.

Goal (:class:`LiftGoal`): how high and how hard. A height (``HEIGHTS``) is the band the box must be held in for
``hold_seconds``: ``normal`` today's (at least ``lift_height``), ``low`` a low band, ``high`` twice today's.
A ``gentle`` grip starts with a lighter squeeze and needs every paddle's force (averaged over 0.1 s, as the crush
limit) to stay at or under ``GENTLE_LIMIT`` all episode, or the episode misses its goal (``success`` False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import mujoco
import numpy as np

from sim.kinematics import frame_from_z_and_x
from sim.tasks.base import (
    ArmSetup,
    Goal,
    Perturbation,
    Task,
    ToolSpec,
    body_id,
    contact_normal_force,
    geom_id,
    resize_geom,
)

if TYPE_CHECKING:
    from sim.env import ContactRichEnv

PADDLE = ToolSpec(
    half_size=(0.035, 0.035, 0.008),
    rgba=(0.3, 0.55, 0.9, 1.0),
    mass=0.1,
    friction=0.05,
    mount_z=0.30,
    face="side",
    # A firmer gel: squeezing a 2.6 kg box at 40 N through the soft default made the solver blow up.
    gel_solimp=(0.9, 0.95, 0.004, 0.5, 2.0),
)
TABLE_TOP = 0.12
LIFT_HEIGHT = 0.10  # m, today's: the box held at least this high
# Height goals: (lowest, highest) the box is held above its start to count, and the height the plan lifts the
# paddles to (above the band's floor: a squeezed box sinks a few millimetres in the paddles).
HEIGHTS: dict[str, tuple[float, float, float]] = {
    "normal": (LIFT_HEIGHT, np.inf, 0.15),
    "low": (0.03, 0.07, 0.05),
    "high": (2 * LIFT_HEIGHT, np.inf, 0.25),
}
GENTLE_SQUEEZE = 0.6  # of the nominal squeeze target, where a gentle grip starts
GENTLE_LIMIT = 25.0  # N, the most a gentle grip may press with either paddle (averaged over 0.1 s)
CRUSH_FORCE = 60.0  # N


@dataclass(frozen=True)
class LiftGoal(Goal):
    """How high to lift the box and how hard to squeeze it."""

    task: ClassVar[str] = "lift"
    height: Literal["normal", "low", "high"] = "normal"
    grip: Literal["normal", "gentle"] = "normal"

    def scalars(self) -> tuple[float, ...]:
        """(lowest height to hold relative to today's, squeeze limit relative to the crush force)."""
        limit = GENTLE_LIMIT if self.grip == "gentle" else CRUSH_FORCE
        return (HEIGHTS[self.height][0] / LIFT_HEIGHT, limit / CRUSH_FORCE)


class LiftTask(Task):
    name = "lift"
    goal_type = LiftGoal
    goal: LiftGoal
    perturbation_kinds = ("mass", "friction")
    max_seconds = 12.0
    # The noslip pass removes the soft-contact creep that would let a firmly held box sink slowly.
    noslip_iterations = 5
    # Two paddles squeezing a heavy box stiffly are at the edge of stability at 500 Hz: with an operator's tremor
    # the box was shaken loose in a third of the heavy-box episodes (measured); at 1000 Hz it holds.
    physics_hz = 1000.0
    lift_height = LIFT_HEIGHT
    hold_seconds = 2.0
    crush_force = CRUSH_FORCE
    drop_distance = 0.04
    squeeze_target = 10.0  # N per paddle, nominal
    arms = (
        ArmSetup("left/", (0.0, -0.42, 0.0), 0.0, PADDLE, ((0.3, -0.45, 0.1), (0.8, 0.05, 0.6))),
        ArmSetup("right/", (0.0, 0.42, 0.0), 0.0, PADDLE, ((0.3, -0.05, 0.1), (0.8, 0.45, 0.6))),
    )
    scene_camera = ((1.45, -0.55, 0.75), (0.35, 0.94, 0.0, -0.35, 0.13, 0.93))
    look_geoms = {"floor": ("floor",), "table": ("table",), "object": ("box",)}
    # On the floor beside the table, on the scene camera's side: below scene_points_box, clear of the arms' bases.
    distractor_spots = ((0.25, 0.55, -0.55, -0.32, 0.0),)
    # Above the table top: the box, lifted up to 0.15 m, and both paddles; the table itself is left out.
    scene_points_box = ((0.3, -0.3, TABLE_TOP + 0.005), (0.8, 0.3, 0.55))

    def build(self, spec: mujoco.MjSpec) -> None:
        spec.worldbody.add_geom(
            name="table",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[0.2, 0.25, TABLE_TOP / 2],
            pos=[0.55, 0, TABLE_TOP / 2],
            rgba=[0.45, 0.33, 0.22, 1],
            friction=[0.5, 0.005, 0.0001],
        )
        box = spec.worldbody.add_body(name="box", pos=[0.55, 0, TABLE_TOP + 0.05])
        box.add_freejoint(name="box_free")
        box.add_geom(
            name="box",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[0.045, 0.08, 0.045],
            rgba=[0.85, 0.5, 0.25, 1],
            mass=0.5,
            friction=[0.7, 0.005, 0.0001],
            condim=4,
        )

    def bind(self, model: mujoco.MjModel) -> None:
        self.model = model
        self._box = body_id(model, "box")
        self._box_geom = geom_id(model, "box")
        self._pads = [geom_id(model, a.prefix + "tool_pad") for a in self.arms]
        jnt = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "box_free")
        self._qadr = int(model.jnt_qposadr[jnt])
        self._inertia0 = model.body_inertia[self._box].copy()
        self._mass0 = float(model.body_mass[self._box])

    def reset(self, env: ContactRichEnv, rng: np.random.Generator, perturb: bool) -> None:
        m, d = env.model, env.data
        half = np.array([rng.uniform(0.035, 0.05), rng.uniform(0.06, 0.09), 0.045])
        resize_geom(m, self._box_geom, half)
        mass = float(rng.uniform(0.45, 0.6))
        m.body_mass[self._box] = mass
        m.body_inertia[self._box] = mass / 3.0 * np.array(
            [half[1] ** 2 + half[2] ** 2, half[0] ** 2 + half[2] ** 2, half[0] ** 2 + half[1] ** 2]
        )
        self.friction0 = float(rng.uniform(0.6, 0.9))
        m.geom_friction[self._box_geom][0] = self.friction0
        centre = np.array([rng.uniform(0.52, 0.58), rng.uniform(-0.015, 0.015), TABLE_TOP + half[2] + 0.001])
        d.qpos[self._qadr : self._qadr + 3] = centre
        d.qpos[self._qadr + 3 : self._qadr + 7] = [1, 0, 0, 0]
        self.base_mass = mass
        self.half = half
        self.z0 = float(centre[2])
        # Nominal plan (privileged initial state and the goal): paddle faces on the box's +-y faces.
        lowest, highest, plan = HEIGHTS[self.goal.height]
        self.height_band = (lowest, highest)
        gentle = self.goal.grip == "gentle"
        self.squeeze_limit = GENTLE_LIMIT if gentle else None
        self.nominal = {
            "centre": centre.copy(),
            "half": half.copy(),
            "squeeze_target": self.squeeze_target * GENTLE_SQUEEZE if gentle else self.squeeze_target,
            "squeeze_limit": self.squeeze_limit,
            "lift_height": plan,
        }
        self.failure = None
        self.held_since: float | None = None
        self.done = False
        self.forces = np.zeros(2)
        self.max_squeeze = 0.0
        self.height = 0.0
        self.schedule(rng, perturb, (3.5, 5.5), self._make_perturbation)

    def scene_features(self) -> np.ndarray:
        """The box's centre and half-size at reset (6,)."""
        return np.concatenate([self.nominal["centre"], self.nominal["half"]]).astype(np.float32)

    def start_pose(self, arm: ArmSetup) -> tuple[np.ndarray, np.ndarray]:
        side = -1.0 if arm.prefix == "left/" else 1.0
        c, h = self.nominal["centre"], self.nominal["half"]
        pos = c + np.array([0.0, side * (h[1] + 0.05), 0.0])
        return pos, paddle_rotation(side)

    def _make_perturbation(self, kind: str, t: float, rng: np.random.Generator) -> Perturbation:
        if kind == "mass":
            return Perturbation(kind, t, 0.8, {"added": float(rng.uniform(1.0, 2.0))})
        if kind == "friction":
            return Perturbation(kind, t, 1.5, {"friction": float(rng.uniform(0.12, 0.17))})
        raise ValueError(f"unknown perturbation {kind!r} for lift")

    def before_physics(self, env: ContactRichEnv) -> None:
        active = self.active_perturbation(env)
        if active is None:
            return
        p, a = active
        m = env.model
        if p.kind == "mass":
            mass = self.base_mass + a * p.params["added"]
            m.body_mass[self._box] = mass
            m.body_inertia[self._box] = self._inertia_for(mass)
        elif p.kind == "friction":
            m.geom_friction[self._box_geom][0] = self.friction0 + a * (p.params["friction"] - self.friction0)

    def _inertia_for(self, mass: float) -> np.ndarray:
        h = self.half
        return mass / 3.0 * np.array([h[1] ** 2 + h[2] ** 2, h[0] ** 2 + h[2] ** 2, h[0] ** 2 + h[1] ** 2])

    def update(self, env: ContactRichEnv) -> tuple[float, bool]:
        m, d = env.model, env.data
        f = np.array([contact_normal_force(m, d, g, {self._box_geom}) for g in self._pads])
        self.forces = f
        sustained = self.sustained(env, f)
        self.max_squeeze = max(self.max_squeeze, float(sustained.max()))
        if sustained.max() > self.crush_force:
            self.failure = f"box crushed: paddle force {sustained.max():.1f} N over {self.crush_force:.0f} N"
            return -1.0, True
        z = float(d.xpos[self._box][2])
        lifted = z - self.z0
        self.height = lifted
        tcp_z = np.mean([d.site_xpos[a.tcp_site][2] for a in env.arms])
        # The paddles grasp at the box's mid-height, so paddle rise minus box rise is the slip.
        if tcp_z - self.z0 > 0.03 and (tcp_z - self.z0) - lifted > self.drop_distance:
            self.failure = f"box slipped out ({(tcp_z - self.z0) - lifted:.3f} m below the paddles)"
            return -1.0, True
        lowest, highest = self.height_band
        if lowest <= lifted <= highest:
            if self.held_since is None:
                self.held_since = env.time
            if env.time - self.held_since >= self.hold_seconds:
                self.done = True
                return 1.0, True
        else:
            self.held_since = None
        return 0.0, False

    @property
    def score(self) -> float:
        return 1.0 if getattr(self, "done", False) and self.goal_miss is None else 0.0

    @property
    def success(self) -> bool:
        return self.failure is None and getattr(self, "done", False) and self.goal_miss is None

    @property
    def goal_miss(self) -> str | None:
        limit = getattr(self, "squeeze_limit", None)
        if limit is not None and self.max_squeeze > limit:
            return f"squeezed {self.max_squeeze:.1f} N, over the gentle grip's {limit:.0f} N"
        return None

    def goal_report(self) -> dict:
        return {
            **super().goal_report(),
            "height": float(getattr(self, "height", 0.0)),
            "max_squeeze": float(getattr(self, "max_squeeze", 0.0)),
            "squeeze_limit": getattr(self, "squeeze_limit", None),
        }


def paddle_rotation(side: float) -> np.ndarray:
    """TCP frame of a paddle on the box's ``side`` (-1: -y face, +1: +y face): face normal toward the box,
    tool x pointing down, which keeps the wrist in its natural down-pointing posture."""
    return frame_from_z_and_x(np.array([0.0, -side, 0.0]), np.array([0.0, 0.0, -1.0]))
