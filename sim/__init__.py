"""MuJoCo contact-rich tasks with tactile and wrench sensing.

Importing this package registers the gymnasium environments ``slowfast/Wipe-v0`` (and the other
tasks as they land).
"""

import os

# Offscreen rendering on machines without a display: EGL (Mesa llvmpipe on the CPU). Must be set
# before mujoco is imported; an explicit MUJOCO_GL from the user wins.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from sim.registry import TASKS, make_env, register_envs

register_envs()

__all__ = ["TASKS", "make_env", "register_envs"]
