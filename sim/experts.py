"""Scripted experts: they make the demonstrations, so they react only to what the robot senses.

Each expert may read ``task.nominal`` (the privileged initial state) to plan its nominal motion,
but every reaction to a perturbation comes from the wrist wrench or the tactile pads. The
``force_feedback=False`` variants replay the same nominal plan with a fixed, calibrated
penetration/squeeze: the position-only baseline that shows the perturbations need touch.

Policy protocol used by :mod:`sim.eval`: ``reset(env)`` at the start of an episode, then
``act(obs) -> action`` every control step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sim.controller import mat_to_rotvec
from sim.kinematics import frame_from_z_and_x

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
    """

    def __init__(self, force_feedback: bool = True, speed: float = 0.035, gain: float = 0.004):
        self.force_feedback = force_feedback
        self.speed = speed
        self.gain = gain  # m/s per N of force error

    def reset(self, env: ContactRichEnv) -> None:
        nom = env.task.nominal
        self.points, self.normals, self.tangents = nom["points"], nom["normals"], nom["tangents"]
        self.x_hint = nom["x_hint"]
        self.cum = _arc_lengths(self.points)
        self.length = float(self.cum[-1])
        self.force_target = float(nom["force_target"])
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

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        force = -float(obs["wrench"][0][2])
        if self.phase == "descend":
            # Fast until 1 cm above the nominal surface, then slowly so contact is gentle.
            v = self.speed if self.d < -0.01 else 0.3 * self.speed
            self.d = min(self.d + v * self.dt, self.d_nominal)
            if (self.force_feedback and force > 0.5 * self.force_target) or self.d >= self.d_nominal:
                self.phase = "traverse"
        elif self.phase == "traverse":
            self.s += self.direction * self.speed * self.dt
            if self.s >= self.length or self.s <= 0.0:
                self.s = float(np.clip(self.s, 0.0, self.length))
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
                step = self.gain * (force - self.force_target) * self.dt
                self.d = float(np.clip(self.d - step, -0.05, 0.05))
            else:
                self.d = self.d_nominal
        return self._pose(self.s, self.d)


def make_expert(task: str, force_feedback: bool = True, **kwargs):
    """Resolve the scripted expert of ``task`` (``sim.eval`` calls this through hydra)."""
    if task in ("wipe", "peel"):
        return SurfaceFollowExpert(force_feedback=force_feedback, **kwargs)
    if task == "lift":
        from sim.experts_lift import SqueezeLiftExpert

        return SqueezeLiftExpert(force_feedback=force_feedback, **kwargs)
    raise ValueError(f"no expert for task {task!r}; valid: ['wipe', 'peel', 'lift']")
