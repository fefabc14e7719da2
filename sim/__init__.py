"""MuJoCo contact-rich tasks with tactile and wrench sensing.

Importing this package registers the gymnasium environments ``slowfast/Wipe-v0`` (and the other
tasks as they land).
"""

from sim.registry import TASKS, make_env, register_envs

register_envs()

__all__ = ["TASKS", "make_env", "register_envs"]
