"""Task names -> task classes, and the gymnasium registration."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from bus.cli import choose
from sim.tasks.base import GoalSetting, Task


def _task_classes() -> dict[str, type[Task]]:
    from sim.tasks.wipe import WipeTask

    classes: dict[str, type[Task]] = {"wipe": WipeTask}
    try:
        from sim.tasks.peel import PeelTask

        classes["peel"] = PeelTask
    except ImportError:
        pass
    try:
        from sim.tasks.lift import LiftTask

        classes["lift"] = LiftTask
    except ImportError:
        pass
    return classes


TASKS = _task_classes()
ENV_IDS = {name: f"slowfast/{name.capitalize()}-v0" for name in TASKS}


def make_env(task: str, perturbations: tuple[str, ...] | None = None, goal: str | None = None, **kwargs: Any):
    """Build the environment of ``task`` with the goal option ``goal`` (None: ``default``); an unknown task or goal
    raises a ``bus.cli.UsageError`` (a ValueError) listing the valid ones."""
    choose("task", task, TASKS, "task")
    from sim.env import ContactRichEnv

    return ContactRichEnv(TASKS[task](perturbations=perturbations, goal=goal), **kwargs)


def goal_option(task: str, goal: str | None) -> str:
    """The goal option ``goal`` of ``task`` as the env spells it: ``default``, ``random`` or a goal's canonical name
    (``gentle-left`` -> ``left-gentle``); a bad one raises a ``bus.cli.UsageError`` listing the valid ones."""
    choose("task", task, TASKS, "task")
    return GoalSetting(TASKS[task].goal_type, goal).text


def task_physics_hz(task: str) -> float:
    """The mj_step rate ``task`` runs at unless told otherwise."""
    choose("task", task, TASKS, "task")
    return float(TASKS[task].physics_hz)


def register_envs() -> None:
    for name, env_id in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="sim.registry:make_env", kwargs={"task": name})
