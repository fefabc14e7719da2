"""Scripted experts: they make the demonstrations, so they react only to what the robot senses.

Each expert may read ``task.nominal`` (the privileged initial state) to plan its nominal motion,
but every reaction to a perturbation comes from the wrist wrench or the tactile pads. The episode's goal
(``task.goal``) reaches them through that plan: the task plans the path over the part of the surface the goal
asks for, the force level to press with, the height to lift to and the most a gentle grip may squeeze. The
``force_feedback=False`` variants replay the same nominal plan with a fixed, calibrated
penetration/squeeze: the position-only baseline that shows the perturbations need touch.

Policy protocol used by :mod:`sim.eval`: ``reset(env)`` at the start of an episode, then
``act(obs) -> action`` every control step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np

from sim.kinematics import frame_from_z_and_x
from spatial.rotations import mat_to_rotvec

if TYPE_CHECKING:
    from sim.env import ContactRichEnv


def _arc_lengths(points: np.ndarray) -> np.ndarray:
    return np.concatenate(([0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))))


def _interp(s: float, cum: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.array([np.interp(s, cum, values[:, k]) for k in range(values.shape[1])])


class SurfaceFollowExpert:
    """Presses a tool along the task's nominal path while regulating the contact force.

    With force feedback, the commanded depth ``d`` below the nominal surface follows a
    proportional-integral law on the sensed normal force (``-F_z`` of the wrist wrench in the TCP
    frame); without it, ``d`` stays at the calibrated ``F_target / K``.

    A goal's plan may ask for more (the default goal's asks for none of it, and the motion is today's):

    * a force level to keep (``force_tolerance``: a gentle or firm wipe, scored on the median wiping force): it wipes
      at ``level_speed`` of its speed, so that a transient weighs less, backs off ``backoff`` times faster while
      over the target (as when the surface rises into the tool) and may retract up to ``level_depth_limit``, where
      the arm's tracking error presses the tool into a strongly curved surface;
    * ends to reach (``reach_ends``: a path over part of the surface, stopping short of the rest): at each end it
      holds until the tool, which friction drags behind its target, is within ``end_tolerance`` of it, for at most
      ``end_dwell`` seconds.
    """

    def __init__(
        self,
        force_feedback: bool = True,
        speed: float = 0.035,
        gain: float = 0.008,
        depth_limit: float = 0.05,
        level_speed: float = 0.65,
        backoff: float = 2.0,
        level_depth_limit: float = 0.1,
        end_dwell: float = 1.0,
        end_tolerance: float = 0.003,
    ):
        self.force_feedback = force_feedback
        self.speed = speed
        self.gain = gain  # m/s per N of force error
        self.depth_limit = depth_limit  # m, the most |d| the force regulation may command
        self.level_speed = level_speed
        self.backoff = backoff
        self.level_depth_limit = level_depth_limit
        self.end_dwell = end_dwell
        self.end_tolerance = end_tolerance

    def reset(self, env: ContactRichEnv, seed: int | None = None) -> None:
        del seed  # deterministic: nothing to seed
        nom = env.task.nominal
        self.points, self.normals, self.tangents = nom["points"], nom["normals"], nom["tangents"]
        self.x_hint = nom["x_hint"]
        self.cum = _arc_lengths(self.points)
        self.length = float(self.cum[-1])
        self.force_target = float(nom["force_target"])
        level = nom.get("force_tolerance") is not None
        self.traverse_speed = self.speed * self.level_speed if level else self.speed
        self.gain_over = self.gain * self.backoff if level else self.gain  # m/s per N, while over the target
        self.d_limit = self.level_depth_limit if level else self.depth_limit
        self.max_dwell = self.end_dwell if nom.get("reach_ends") else 0.0  # s at a path end
        self.dwelt = 0.0
        self.stiffness = env.controllers[0].gains.kp_pos
        self.passes = int(nom.get("passes", 1))
        self.reverse = bool(nom.get("reverse", True))
        self.dt = 1.0 / env.control_hz
        self.hover = env.task.hover
        self.d_nominal = self.force_target / self.stiffness
        self.d = -self.hover  # start above the surface
        self.s = 0.0
        self.pass_index = 0
        self.direction = 1.0
        self.phase = "descend"
        self.grip = 0.0

    def _pose(self, s: float, depth: float) -> np.ndarray:
        p = _interp(s, self.cum, self.points)
        n = _interp(s, self.cum, self.normals)
        n /= np.linalg.norm(n)
        rot = frame_from_z_and_x(-n, self.x_hint)
        return np.concatenate((p - n * depth, mat_to_rotvec(rot), [self.grip]))

    def _trailing(self, obs: dict[str, np.ndarray]) -> float:
        """How far (m) the tool's centre is behind its target point along the direction of travel."""
        t = _interp(self.s, self.cum, self.tangents) * self.direction
        p = _interp(self.s, self.cum, self.points)
        return float(np.dot(p - obs["tcp_pos"][0], t / np.linalg.norm(t)))

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        # Normal force along the tool axis; on a slanted contact the total force is the safer reading.
        w = obs["wrench"][0].astype(float)
        force = max(-w[2], 0.75 * float(np.linalg.norm(w[:3])))
        if self.phase == "descend":
            # Fast until 1 cm above the nominal surface, then slowly so contact is gentle.
            v = self.speed if self.d < -0.01 else 0.3 * self.speed
            self.d = min(self.d + v * self.dt, self.d_nominal)
            if (self.force_feedback and force > 0.5 * self.force_target) or self.d >= self.d_nominal:
                self.phase = "traverse"
        elif self.phase == "traverse":
            self.s += self.direction * self.traverse_speed * self.dt
            if self.s >= self.length or self.s <= 0.0:
                self.s = float(np.clip(self.s, 0.0, self.length))
                if self.dwelt < self.max_dwell and self._trailing(obs) > self.end_tolerance:
                    self.dwelt += self.dt
                else:
                    self.dwelt = 0.0
                    self.pass_index += 1
                    if self.pass_index >= self.passes:
                        self.phase = "retract"
                    elif self.reverse:
                        self.direction = -self.direction
                    else:
                        self.phase = "return"
        elif self.phase == "return":  # lift off, fly back to the start, press again
            self.d = max(self.d - self.speed * self.dt, -self.hover)
            if self.d <= -self.hover + 1e-6:
                self.s = max(self.s - 3 * self.speed * self.dt, 0.0)
                if self.s <= 0.0:
                    self.phase = "descend"
        elif self.phase == "retract":
            self.d = max(self.d - self.speed * self.dt, -self.hover)
        if self.phase == "traverse":
            if self.force_feedback:
                gain = self.gain_over if force > self.force_target else self.gain
                step = gain * (force - self.force_target) * self.dt
                self.d = float(np.clip(self.d - step, -self.d_limit, self.d_limit))
            else:
                self.d = self.d_nominal
        return self._pose(self.s, self.d)


def make_expert(task: str, force_feedback: bool = True, **kwargs):
    """Resolve the scripted expert of ``task`` (``sim.eval`` calls this through hydra)."""
    if task in ("wipe", "peel"):
        return SurfaceFollowExpert(force_feedback=force_feedback, **kwargs)
    if task == "lift":
        return SqueezeLiftExpert(force_feedback=force_feedback, **kwargs)
    raise ValueError(f"no expert for task {task!r}; valid: ['wipe', 'peel', 'lift']")


class SqueezeLiftExpert:
    """Bimanual squeeze-and-lift with upright paddles.

    With force feedback, each paddle's squeeze depth follows a PI law toward a target normal force
    that grows with the *sensed* load (vertical wrist force) and with detected slip (the contact
    patch drifting across the tactile pad), capped below the crush limit. Without it, the squeeze
    depth is the calibrated nominal one.
    """

    def __init__(
        self,
        force_feedback: bool = True,
        gain: float = 0.006,
        mu_assumed: float = 0.5,
        safety: float = 1.4,
        max_squeeze: float = 40.0,
        lift_speed: float = 0.04,
        squeeze_rate: float = 80.0,
        slip_speed: float = 0.004,
        limit_margin: float = 0.9,
    ):
        self.limit_margin = limit_margin
        self.slip_speed = slip_speed
        self.squeeze_rate = squeeze_rate
        self.force_feedback = force_feedback
        self.gain = gain
        self.mu0 = mu_assumed
        self.safety = safety
        self.max_squeeze = max_squeeze
        self.lift_speed = lift_speed

    def reset(self, env: ContactRichEnv, seed: int | None = None) -> None:
        del seed  # deterministic: nothing to seed
        from sim.tasks.lift import paddle_rotation

        nom = env.task.nominal
        self.centre, self.half = nom["centre"], nom["half"]
        self.lift_height = float(nom["lift_height"])
        self.n_min = float(nom["squeeze_target"])
        # A gentle grip's limit: the squeeze target stays this far under it, so that its overshoot does too.
        limit = nom.get("squeeze_limit")
        self.n_max = self.max_squeeze if limit is None else min(self.max_squeeze, self.limit_margin * float(limit))
        self.stiffness = env.controllers[0].gains.kp_pos
        self.dt = 1.0 / env.control_hz
        self.sides = (-1.0, 1.0)
        self.rots = [mat_to_rotvec(paddle_rotation(s)) for s in self.sides]
        self.depth = np.full(2, -0.05)  # < 0: outside the nominal face
        self.z = 0.0
        self.t = 0.0
        self.phase = "approach"
        self.mu_hat = self.mu0
        self.load_max = 0.0
        self.target = np.full(2, self.n_min)
        self.correction = np.zeros(2)
        self.pads = [env.pad_names.index(a.prefix + "tool") for a in env.task.arms]
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self.t += self.dt
        forces = -obs["wrench"][:, 2].astype(float)  # normal force on each paddle
        d_nom = self.n_min / self.stiffness
        if self.phase == "approach":
            self.depth = np.minimum(self.depth + 0.05 * self.dt, d_nom)
            touching = forces > 0.5 * self.n_min if self.force_feedback else self.depth >= d_nom
            if np.all(touching) or np.all(self.depth >= d_nom):
                self.phase, self.t_phase = "squeeze", self.t
        elif self.phase == "squeeze" and self.t - self.t_phase > 0.8:
            self.phase = "lift"
        if self.phase == "lift":
            self.z = min(self.z + self.lift_speed * self.dt, self.lift_height)
        if self.phase in ("squeeze", "lift"):
            if self.force_feedback:
                self._regulate(obs, forces)
            else:
                self.depth[:] = d_nom
        out = []
        for i, side in enumerate(self.sides):
            face = self.centre + np.array([0.0, side * self.half[1], self.z])
            pos = face - np.array([0.0, side, 0.0]) * self.depth[i]
            out += [*pos, *self.rots[i], 0.0]
        return np.array(out)

    def _regulate(self, obs: dict[str, np.ndarray], forces: np.ndarray) -> None:
        # Sensed load: the world-vertical part of each paddle's wrench, read through the TCP rotation.
        load = 0.0
        for i in range(2):
            q = obs["tcp_quat"][i].astype(float)
            rot = np.zeros(9)
            mujoco.mju_quat2Mat(rot, q)
            f_world = rot.reshape(3, 3) @ obs["wrench"][i, :3].astype(float)
            load += abs(f_world[2])
        # Slip: the box starts to slide when the friction the pads feel can no longer carry its weight,
        # so the sensed load drops below what they carried; the shear/normal ratio then reads mu.
        self.load_max = max(self.load_max, load)
        # Slip, read by the tactile pads: the box sliding over the gel. While it slides, the
        # shear/normal ratio the pad feels *is* the friction coefficient, so the squeeze is re-planned.
        slip = max(float(np.linalg.norm(obs["marker_slip"][p])) for p in self.pads)
        if self.phase == "lift" and slip > self.slip_speed:
            ratio = float(np.mean(np.linalg.norm(obs["wrench"][:, :2], axis=1) / np.maximum(forces, 1e-3)))
            self.mu_hat = float(np.clip(0.8 * ratio, 0.05, self.mu_hat))
        need = self.safety * 0.5 * self.load_max / self.mu_hat
        goal = np.clip(max(self.n_min, need), self.n_min, self.n_max)
        # Raise the squeeze at a bounded rate: a step in the setpoint would overshoot into a crush.
        self.target[:] = np.minimum(goal, self.target + self.squeeze_rate * self.dt)
        # Feed-forward on the target (a new target moves the setpoint at once) + integral correction.
        self.correction = np.clip(self.correction + self.gain * (self.target - forces) * self.dt, -0.02, 0.02)
        self.depth = np.clip(self.target / self.stiffness + self.correction, -0.02, 0.06)

