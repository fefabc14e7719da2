"""The MuJoCo scene as a :class:`sim.robot_interface.Robot`: what the robot node drives by default (``robot: mujoco``).

A thin wrapper over :class:`sim.env.ContactRichEnv`: ``apply`` / ``advance`` / ``read`` are the env's own
``apply`` / ``advance`` / ``read_into``, the functions ``ContactRichEnv.step`` runs, so the node and evaluation step
the physics, score the task and build observations with one piece of code. One ``advance`` is one node tick:
``publish_every`` physics steps; the task scores every ``physics_hz / control_hz`` steps, as in evaluation. With the
env's press guard on (``press_guard_n``), a tick is a whole number of guard periods, so a node tick and ``env.step``
guard and read the wrist at the same instants.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import mujoco
import numpy as np

from sim.env import ACTION_DIM_PER_ARM, SCENE_CAMERA, ContactRichEnv, depth_cloud
from sim.registry import make_env
from sim.robot_interface import Reading, TaskStep

if TYPE_CHECKING:
    from sim.node import RobotNodeConfig


class MujocoCameras:
    """The env's cameras rendered from a private copy of the physics state: ``capture`` copies ``MjData`` (tens of
    microseconds, on the loop), ``frames`` renders the copy (milliseconds; MuJoCo releases the GIL meanwhile), so
    the loop may step on while a render thread draws what it captured."""

    def __init__(self, env: ContactRichEnv, size: int, point_cloud: bool = False) -> None:
        self._model, self._data = env.model, env.data
        self._cameras = dict(env.camera_names)
        self._snapshot = mujoco.MjData(env.model)
        self._renderer = mujoco.Renderer(env.model, size, size)  # its GL context belongs to this thread
        # point_cloud: also ``scene_points``, the scene camera's depth as the env's point_cloud observation makes it
        self._points = env._points_sampler() if point_cloud else None

    def capture(self) -> None:
        mujoco.mj_copyData(self._snapshot, self._model, self._data)

    def frames(self) -> dict[str, np.ndarray]:
        out = {}
        for key, camera in self._cameras.items():
            self._renderer.update_scene(self._snapshot, camera)
            out[key] = self._renderer.render().copy()
        if self._points is not None:
            cloud = depth_cloud(self._model, self._snapshot, self._renderer, SCENE_CAMERA, self._points.cfg.max_depth)
            out["scene_points"] = self._points.sample(cloud)
        return out

    def close(self) -> None:
        self._renderer.close()


class MujocoRobot:
    """:class:`~sim.robot_interface.Robot` over a :class:`ContactRichEnv`; ``steps_per_period`` physics steps per
    ``advance`` (a divisor of the env's steps per control step, so the task scores at the end of an advance)."""

    def __init__(self, env: ContactRichEnv, steps_per_period: int, point_cloud: bool = False) -> None:
        if not (isinstance(steps_per_period, int) and steps_per_period >= 1 and env.substeps % steps_per_period == 0):
            raise ValueError(
                f"steps_per_period={steps_per_period!r}, expected a positive divisor of the env's "
                f"{env.substeps} physics steps per control step"
            )
        if env.guard.enabled and steps_per_period % env.guard_steps:
            raise ValueError(
                f"steps_per_period={steps_per_period}: with the press guard on, a multiple of its period of "
                f"{env.guard_steps} physics steps"
            )
        self.env = env
        self.point_cloud = point_cloud  # the camera frames carry scene_points too
        self._steps = steps_per_period
        self._period = steps_per_period / env.physics_hz
        low, high = env.action_space.low, env.action_space.high
        self._low = low.reshape(len(env.arms), ACTION_DIM_PER_ARM)
        self._high = high.reshape(len(env.arms), ACTION_DIM_PER_ARM)
        self._reading = env.new_reading()

    # ------------------------------------------------------------------------------ description
    @property
    def n_arms(self) -> int:
        return len(self.env.arms)

    @property
    def pad_names(self) -> tuple[str, ...]:
        return tuple(self.env.pad_names)

    @property
    def cameras(self) -> Mapping[str, str]:
        return self.env.camera_names

    @property
    def action_low(self) -> np.ndarray:
        return self._low

    @property
    def action_high(self) -> np.ndarray:
        return self._high

    @property
    def period(self) -> float:
        return self._period

    @property
    def time(self) -> float:
        return self.env.time

    # ------------------------------------------------------------------------------ episode
    def reset(self, seed: int) -> dict[str, Any]:
        _, info = self.env.reset(seed=seed)  # also resets the controllers to hold the start pose
        return info

    def apply(self, target: np.ndarray) -> None:
        self.env.apply(target)

    def hold(self) -> np.ndarray:
        target = self.env.hold_action().reshape(self.n_arms, ACTION_DIM_PER_ARM)
        self.env.apply(target)
        return target

    def advance(self) -> TaskStep | None:
        return self.env.advance(self._steps)

    def read(self) -> Reading:
        return self.env.read_into(self._reading)

    def info(self) -> dict[str, Any]:
        return self.env.info()

    def open_cameras(self, size: int) -> MujocoCameras:
        return MujocoCameras(self.env, size, self.point_cloud)

    def close(self) -> None:
        self.env.close()


def from_node_config(cfg: RobotNodeConfig) -> MujocoRobot:
    """``robot: mujoco``: the task's scene as the robot node's config asks for it (without the env's own cameras:
    the node renders at ``camera_hz`` itself)."""
    env = make_env(
        cfg.task,
        perturb=cfg.perturb,
        cameras=False,
        image_size=cfg.image_size,
        control_hz=cfg.control_hz,
        physics_hz=cfg.physics_hz,
        wrench_noise=cfg.wrench_noise,
        looks=cfg.looks,
        goal=cfg.goal,
        press_guard_n=cfg.press_guard_n,
    )
    return MujocoRobot(env, cfg.publish_every, point_cloud=cfg.point_cloud)
