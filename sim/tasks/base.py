"""What every task provides to :class:`sim.env.ContactRichEnv`, and shared task machinery."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import mujoco
import numpy as np

from bus.cli import UsageError

if TYPE_CHECKING:
    from sim.env import ContactRichEnv


FAIL_WINDOW = 0.1  # s, force limits act on the force averaged over this window
GOAL_STREAM = 0x60A1  # ``random`` goals come from a stream seeded by (GOAL_STREAM, episode seed), not the physics'
GOAL_MODES = ("default", "random")  # the goal option's values besides a task's own goals
GOAL_JOIN = "-"  # a goal is written as its non-default values joined by this: "left-gentle"


@dataclass(frozen=True)
class ToolSpec:
    """A rigid tool held in the closed gripper; its face carries a tactile pad."""

    half_size: tuple[float, float, float]
    rgba: tuple[float, float, float, float] = (0.95, 0.8, 0.2, 1.0)
    mass: float = 0.08
    friction: float = 0.9
    mount_z: float = 0.262  # distance from link7 to the tool's back face, past the fingertips
    # "down": the face looks along the flange axis (wipe, peel); "side": the face looks sideways
    # (along link7's y axis), a paddle held upright so a down-pointing wrist can squeeze sideways.
    face: str = "down"
    # Gel contact impedance of the tool pad (MuJoCo solimp); None = the default soft gel.
    gel_solimp: tuple[float, ...] | None = None

    def mount_quat(self) -> list[float]:
        if self.face == "down":
            return [1.0, 0.0, 0.0, 0.0]
        if self.face == "side":
            # Tool axes in link7 coordinates: x -> link7 z, y -> link7 x, z (face normal) -> link7 y.
            q = np.zeros(4)
            mujoco.mju_mat2Quat(q, np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=float).reshape(-1))
            return q.tolist()
        raise ValueError(f"tool face must be 'down' or 'side', got {self.face!r}")


@dataclass(frozen=True)
class ArmSetup:
    prefix: str
    base_pos: tuple[float, float, float]
    base_yaw: float
    tool: ToolSpec
    workspace: tuple[tuple[float, float, float], tuple[float, float, float]]
    grip_force: float = 20.0


@dataclass
class Perturbation:
    """A scheduled change of the world that only touch can reveal."""

    kind: str
    time: float  # s, when it starts
    duration: float  # s, it is applied smoothly over this long
    params: dict[str, float] = field(default_factory=dict)

    def progress(self, t: float) -> float:
        if t < self.time:
            return 0.0
        if self.duration <= 0:
            return 1.0
        return float(min((t - self.time) / self.duration, 1.0))


@dataclass(frozen=True)
class Goal:
    """What the operator asked of an episode beyond doing the task: which part of it, how hard, how high.

    A task's goal is a frozen dataclass whose every field is a ``Literal`` of named values, the first one the default:
    ``Goal()`` is the default goal, today's task. A goal is written as its non-default values joined by ``-``
    (``left-gentle``; the default goal is ``default``) and reaches a policy as ``vector()``, a fixed-size float32
    encoding: a one-hot per field, then the task's normalised ``scalars()``.
    """

    task: ClassVar[str] = "task"  # whose goal it is, for messages

    def __post_init__(self) -> None:
        for name, values in self.choices().items():
            if getattr(self, name) not in values:
                raise UsageError(f"{self.task} goal {name}={getattr(self, name)!r}: choose one of {', '.join(values)}")

    @classmethod
    @functools.cache
    def choices(cls) -> dict[str, tuple[str, ...]]:
        """{field: its values, the default first}, read from the fields' ``Literal`` annotations."""
        hints = typing.get_type_hints(cls)
        out = {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            if not out[f.name] or f.default != out[f.name][0]:
                raise TypeError(f"{cls.__name__}.{f.name}: a Literal of values whose first is the field's default")
        return out

    @classmethod
    def every(cls) -> tuple[Goal, ...]:
        """Every goal of the task, the default first (what ``random`` draws from, uniformly)."""
        choices = cls.choices()
        return tuple(cls(**dict(zip(choices, values, strict=True))) for values in itertools.product(*choices.values()))

    @property
    def name(self) -> str:
        """``left-gentle``: the non-default values in field order; ``default`` for the default goal."""
        parts = [getattr(self, k) for k, values in self.choices().items() if getattr(self, k) != values[0]]
        return GOAL_JOIN.join(parts) or "default"

    @classmethod
    def parse(cls, text: str) -> Goal:
        """The goal ``text`` names: values joined by ``-``, each value setting every field that has it (a value
        several fields share, such as ``normal``, must be the default of each of them: it then changes nothing)."""
        if text == "default":
            return cls()
        chosen: dict[str, str] = {}
        for token in text.split(GOAL_JOIN):
            fields = [k for k, values in cls.choices().items() if token in values]
            if not fields:
                raise UsageError(f"goal={text}: no such {cls.task} goal value {token!r}; {cls.options()}")
            if len(fields) > 1:
                if any(token != cls.choices()[k][0] for k in fields):
                    raise UsageError(f"goal={text}: {token!r} is a value of {' and '.join(fields)}; {cls.options()}")
                continue
            k = fields[0]
            if chosen.get(k, token) != token:
                raise UsageError(f"goal={text}: two values of {k} ({chosen[k]}, {token}); {cls.options()}")
            chosen[k] = token
        return cls(**chosen)

    @classmethod
    def options(cls) -> str:
        """The valid values of the goal option, in one line."""
        fields = ", ".join(f"{k} {'|'.join(v)}" for k, v in cls.choices().items())
        example = GOAL_JOIN.join(v[-1] for v in cls.choices().values())
        return f"choose default, random or a {cls.task} goal: {fields} (values joined by '{GOAL_JOIN}', e.g. {example})"

    def scalars(self) -> tuple[float, ...]:
        """The goal's numbers, normalised to about 1 (a task's region as fractions of its path, a force or height
        relative to today's): the end of ``vector()``."""
        return ()

    def vector(self) -> np.ndarray:
        """(dim,) float32: a one-hot of each field's value, in field order, then ``scalars()``."""
        parts = [np.asarray(values) == getattr(self, k) for k, values in self.choices().items()]
        return np.concatenate([*parts, np.asarray(self.scalars(), dtype=float)]).astype(np.float32)

    @classmethod
    def vector_bounds(cls) -> tuple[np.ndarray, np.ndarray]:
        """Elementwise (low, high) of ``vector()`` over every goal: the ``goal`` observation's space."""
        vectors = np.stack([g.vector() for g in cls.every()])
        return vectors.min(axis=0), vectors.max(axis=0)


class GoalSetting:
    """The goal option of a task (``configs/task/*.yaml``: ``goal``): ``default`` (today's task, and the observation
    has no ``goal``), ``random`` (a goal per episode, drawn from the episode seed) or one named goal."""

    def __init__(self, goal_type: type[Goal], text: Any = "default"):
        text = "default" if text is None else str(text)
        self.goal_type = goal_type
        self.fixed: Goal | None = None
        if text not in GOAL_MODES:
            self.fixed = goal_type.parse(text)
        self.text = text if self.fixed is None else self.fixed.name
        self.conditioned = text != "default"
        self._rng = np.random.default_rng(GOAL_STREAM)

    def draw(self, seed: int | None) -> Goal:
        """The goal of the episode ``seed``: drawn, for ``random``, from the goal stream (the same goal for the same
        seed whatever came before; None: the stream's next), so that no physics draw changes."""
        if self.fixed is not None:
            return self.fixed
        if self.text == "default":
            return self.goal_type()
        if seed is not None:
            self._rng = np.random.default_rng([GOAL_STREAM, seed])
        goals = self.goal_type.every()
        return goals[int(self._rng.integers(len(goals)))]


class Task:
    """Base class: subclasses fill in the scene, the randomisation, the perturbations and the score."""

    name: str = "task"
    perturbation_kinds: tuple[str, ...] = ()
    max_seconds: float = 20.0
    noslip_iterations: int = 0
    # mj_step rate every runner of the task uses unless told otherwise (env, robot node, expert, operator).
    physics_hz: float = 500.0
    arms: tuple[ArmSetup, ...] = ()
    q_init: np.ndarray = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 0.3, 0.785])  # IK seed for resets
    # Scene camera (pos, xyaxes): front-left of the work area, looking at (0.55, 0, 0.12).
    scene_camera: tuple[tuple[float, float, float], tuple[float, ...]] = (
        (1.1, -0.55, 0.55),
        (0.707, 0.707, 0.0, -0.342, 0.342, 0.875),
    )
    # Looks (sim.looks): the part each geom plays in the scene's appearance ("floor", "table", "object"; the env's
    # floor is the table unless the task brings one), and where a visual-only distractor may stand: rectangles
    # (x0, x1, y0, y1, z of the supporting surface) in the scene camera's view, clear of the arms and the work.
    look_geoms: dict[str, tuple[str, ...]] = {"table": ("floor",)}
    distractor_spots: tuple[tuple[float, float, float, float, float], ...] = ()
    # World-frame (min, max) corners of the box the ``scene_points`` observation keeps (sensors.pointcloud): where
    # the work happens, tools and hands included, starting just above the floor or table the objects rest on.
    scene_points_box: tuple[tuple[float, float, float], tuple[float, float, float]] = (
        (0.3, -0.3, 0.005),
        (0.85, 0.3, 0.45),
    )

    goal_type: type[Goal] = Goal

    def __init__(self, perturbations: tuple[str, ...] | None = None, goal: str | None = None):
        self.goal_setting = GoalSetting(self.goal_type, goal)
        self.goal = self.goal_type()  # the episode's goal (``choose_goal``), which reset plans and scores for
        kinds = self.perturbation_kinds if perturbations is None else tuple(perturbations)
        unknown = [k for k in kinds if k not in self.perturbation_kinds]
        if unknown:
            raise UsageError(f"perturbations={list(kinds)}: no such {self.name} perturbation {', '.join(unknown)}; "
                             f"choose from {', '.join(self.perturbation_kinds)}")
        self.enabled_perturbations = kinds
        self.perturbation: Perturbation | None = None
        self.failure: str | None = None
        self.nominal: dict[str, Any] = {}

    # -- goal
    @property
    def goal_conditioned(self) -> bool:
        """True when a goal was configured (anything but ``default``): the env observes it as ``goal``."""
        return self.goal_setting.conditioned

    def choose_goal(self, seed: int | None) -> Goal:
        """Set the episode's goal (before ``reset``, which plans for it): see :meth:`GoalSetting.draw`."""
        self.goal = self.goal_setting.draw(seed)
        return self.goal

    def goal_report(self) -> dict[str, Any]:
        """The goal and the goal-relevant parts of the score, for ``info``."""
        return {"goal": self.goal.name, "goal_miss": self.goal_miss}

    @property
    def goal_miss(self) -> str | None:
        """Why the episode missed its goal though the task went fine (``success`` is then False), else None."""
        return None

    # -- scene
    def build(self, spec: mujoco.MjSpec) -> None:
        raise NotImplementedError

    def bind(self, model: mujoco.MjModel) -> None:
        raise NotImplementedError

    # -- episode
    def reset(self, env: ContactRichEnv, rng: np.random.Generator, perturb: bool) -> None:
        raise NotImplementedError

    def start_pose(self, arm: ArmSetup) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    scene_dim: int = 6

    def scene_features(self) -> np.ndarray:
        """(scene_dim,) what a one-shot object localisation reports at the start of the episode (the ``scene``
        observation): fixed for the episode, so perturbations after the start must be felt, not seen."""
        raise NotImplementedError

    def before_physics(self, env: ContactRichEnv) -> None:
        """Called every physics step: apply the scheduled perturbation."""

    def active_perturbation(self, env: ContactRichEnv) -> tuple[Perturbation, float] | None:
        """The scheduled perturbation and how far it has progressed (0..1], or None before it starts."""
        p = self.perturbation
        if p is None:
            return None
        a = p.progress(env.time)
        return (p, a) if a > 0.0 else None

    def update(self, env: ContactRichEnv) -> tuple[float, bool]:
        """Called every control step after physics; returns (reward, terminated)."""
        raise NotImplementedError

    @property
    def score(self) -> float:
        raise NotImplementedError

    @property
    def success(self) -> bool:
        raise NotImplementedError

    def sustained(self, env: ContactRichEnv, value: float | np.ndarray) -> float | np.ndarray:
        """``value`` averaged over the last ``FAIL_WINDOW`` s of control steps, so a one-tick impact
        spike breaks nothing; the window restarts with each episode."""
        n = max(int(round(FAIL_WINDOW * env.control_hz)), 1)
        if env.step_count <= 1:
            self._history: list = []
        self._history.append(value)
        del self._history[:-n]
        return np.mean(self._history, axis=0)

    def info(self, env: ContactRichEnv) -> dict[str, Any]:
        p = self.perturbation
        return {
            "task": self.name,
            "score": float(self.score),
            "success": bool(self.success),
            "failure": self.failure,
            "perturbation": p.kind if p else "none",
            "perturbation_time": p.time if p else None,
            "time": env.time,
            **self.goal_report(),
        }

    def schedule(
        self, rng: np.random.Generator, perturb: bool, window: tuple[float, float], make_params
    ) -> None:
        """Pick one enabled perturbation (uniformly) and a start time in ``window``."""
        self.perturbation = None
        if not perturb or not self.enabled_perturbations:
            return
        kind = self.enabled_perturbations[int(rng.integers(len(self.enabled_perturbations)))]
        t = float(rng.uniform(*window))
        self.perturbation = make_params(kind, t, rng)


def contact_normal_force(model: mujoco.MjModel, data: mujoco.MjData, geom_a: int, geoms_b: set[int]) -> float:
    """Total normal force between ``geom_a`` and any geom in ``geoms_b`` (N): the task's ground truth."""
    total = 0.0
    f6 = np.zeros(6)
    n = data.ncon
    if n == 0:
        return 0.0
    g1 = data.contact.geom1[:n]
    g2 = data.contact.geom2[:n]
    for i in np.flatnonzero((g1 == geom_a) | (g2 == geom_a)):
        other = int(g2[i]) if g1[i] == geom_a else int(g1[i])
        if other in geoms_b:
            mujoco.mj_contactForce(model, data, int(i), f6)
            total += f6[0]
    return total


def geom_id(model: mujoco.MjModel, name: str) -> int:
    i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name)
    if i < 0:
        raise KeyError(f"geom {name!r} not in model")
    return i


def body_id(model: mujoco.MjModel, name: str) -> int:
    i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
    if i < 0:
        raise KeyError(f"body {name!r} not in model")
    return i


def resize_geom(model: mujoco.MjModel, gid: int, size: np.ndarray) -> None:
    """Change a primitive geom's size at run time, keeping the collision bounds consistent.

    MuJoCo's broad phase reads ``geom_rbound`` and ``geom_aabb``; changing ``geom_size`` alone makes
    collisions silently disappear.
    """
    size = np.asarray(size, dtype=float)
    model.geom_size[gid][: len(size)] = size
    t = model.geom_type[gid]
    if t == mujoco.mjtGeom.mjGEOM_BOX:
        half = model.geom_size[gid].copy()
    elif t == mujoco.mjtGeom.mjGEOM_CYLINDER:
        r, h = model.geom_size[gid][:2]
        half = np.array([r, r, h])
    elif t == mujoco.mjtGeom.mjGEOM_CAPSULE:
        r, h = model.geom_size[gid][:2]
        half = np.array([r, r, h + r])
    elif t == mujoco.mjtGeom.mjGEOM_SPHERE:
        half = np.full(3, model.geom_size[gid][0])
    elif t == mujoco.mjtGeom.mjGEOM_ELLIPSOID:
        half = model.geom_size[gid].copy()
    else:
        raise ValueError(f"resize_geom supports box, cylinder, capsule, sphere and ellipsoid geoms, not type {int(t)}")
    model.geom_aabb[gid] = np.concatenate((np.zeros(3), half))
    model.geom_rbound[gid] = float(np.linalg.norm(half))


def place_geom(model: mujoco.MjModel, gid: int, pos, quat=None) -> None:
    """Move a geom within its body at run time.

    The compiler marks geoms that sit at their body's origin as "same frame" and the kinematics then
    ignore ``geom_pos``; clearing the flag makes the new placement take effect.
    """
    model.geom_pos[gid] = pos
    if quat is not None:
        model.geom_quat[gid] = quat
    if hasattr(model, "geom_sameframe"):
        model.geom_sameframe[gid] = 0
