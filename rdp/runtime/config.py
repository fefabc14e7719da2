"""Typed runtime configuration: ``configs/runtime/default.yaml`` composed with hydra overrides (``bus.config``).

The launcher and every node it starts load the same file with the same overrides (plus the addresses the
launcher learnt from the ready lines), so one command line configures the whole process graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bus.cli import choose
from bus.config import compose
from bus.resources import config_dir

CONFIG_PATH = config_dir() / "runtime" / "default.yaml"
MODES = ("realtime", "lockstep")
HOLDS = ("pose", "silence")
HANDOVERS = ("latest", "rtc")  # as rdp.inference.HANDOVERS (not imported: this module stays torch-free)
# Children the launcher can restart: they connect to addresses that outlive them (the fast node binds the chunk
# socket, the robot node or relay the observations), so a new process with the same arguments finds them again.
# Those binding an address, and the robot node (a restart would be a new robot), stop the run when they die.
RESTARTABLE = ("slow",)
DEFAULT_CAMERA_HZ = 10.0  # the robot node's camera rate for a video when no policy reads cameras


@dataclass
class SlowConfig:
    replan_every: int = 8
    num_inference_steps: int | None = None
    handover_steps: int = 0
    handover: str = "latest"
    noise_seed: int = 0
    noise_scale: float | None = None  # None: the run's (rdp.api.deploy_noise_scale)
    heartbeat_hz: float = 10.0
    torch_threads: int = 1
    nice: int = 10
    max_image_age_s: float = 0.25  # an image policy refuses an observation whose held frame is older than this
    image_timeout_s: float = 2.0  # ... and exits (exit 2, one line) after this long without a usable frame


@dataclass
class FastConfig:
    cmd_hz: float = 250.0
    phase_lead_ms: float | None = 2.0
    rt_priority: int = 50
    spin_ms: float | None = None
    prewarm_ms: float | None = 2.0
    hold: str = "pose"
    lockstep_wait_s: float = 30.0
    start_timeout_s: float = 120.0
    torch_threads: int = 1


@dataclass
class RestartPolicy:
    """What the launcher does when one child dies mid-run (``restart.<child>`` in the config)."""

    max_restarts: int = 5  # restarts allowed within window_s; the next death inside it stops the run
    window_s: float = 60.0
    initial_delay_s: float = 0.1  # back-off before the first restart in a window; doubles per restart in it
    max_delay_s: float = 5.0
    standby: bool = True  # keep a warm spare running beside the child; a death promotes it (no start-up time)

    def check(self, name: str) -> None:
        if self.max_restarts < 0 or not self.window_s > 0:
            raise ValueError(f"restart.{name}: max_restarts={self.max_restarts} must be >= 0 and "
                             f"window_s={self.window_s} > 0")
        if not 0 <= self.initial_delay_s <= self.max_delay_s:
            raise ValueError(f"restart.{name}: need 0 <= initial_delay_s ({self.initial_delay_s}) <= max_delay_s "
                             f"({self.max_delay_s})")


@dataclass
class RobotOverrides:
    """The robot node's settings a run chooses; null camera settings follow the policy (``rdp.run.robot_settings``)."""

    watchdog_ms: float = 50.0
    cameras: bool | None = None  # None: on when the policy reads cameras or the run records a video
    camera_hz: float | None = None  # None: the run's image_hz (an image policy), else DEFAULT_CAMERA_HZ
    image_size: int | None = None  # None: the run's camera size (an image policy), else the robot node's default
    looks: str = "none"  # sim.looks: none | train | heldout (per-episode lighting, paint, distractor; robot: mujoco)
    press_guard_n: float = 0.0  # N: the robot node's press guard (sim.press_guard); 0 = off

    def __post_init__(self) -> None:
        if not 0 <= self.press_guard_n < math.inf:
            raise ValueError(f"robot.press_guard_n={self.press_guard_n}: expected a wrist force limit >= 0 N (0 = off)")


@dataclass
class PlanChoiceConfig:
    """How a world-model planner chooses among a slow policy's plans (``world_model.task_plan.PlanChooser`` and its
    planner node): shared by the runtime's ``planning.*`` and ``world_model.task_plan eval``."""

    candidates: int = 4  # the policy's own plan and candidates - 1 samples at proposal_noise
    proposal_noise: float = 1.0
    frames_ahead: int = 8  # camera frames imagined per candidate
    score_frames: int = 2  # imagined end frames the progress head averages
    margin: float = 0.0  # a sample replaces the policy's own plan only if it scores more than this higher
    lora_rank: int = 8
    lora_lr: float = 1e-3
    lora_steps: int = 1
    camera: str = "wrist_rgb"
    camera_hz: float = 10.0

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.frames_ahead < 1 or self.score_frames < 1 or not self.margin >= 0:
            raise ValueError("need candidates, frames_ahead, score_frames >= 1 and margin >= 0")
        if not self.camera_hz > 0:
            raise ValueError(f"camera_hz={self.camera_hz} must be > 0")


@dataclass
class PlanningConfig(PlanChoiceConfig):
    """World-model planning above the slow policy (``world_model.runtime``): a planner node beside the slow node
    chooses every plan among the policy's own and samples of it by imagining each with a world model. Off by
    default."""

    enabled: bool = False
    run: str = ""  # world model; empty: the shipped checkpoints/world_model/<task>
    scorer: str = ""  # progress head; empty: the shipped checkpoints/world_model/<task>_progress
    memory: bool = True  # TEMP-LoRA episodic memory of the camera frames seen
    early: bool | None = None  # send the policy's own plan before the planner decides; None: in realtime
    timeout_s: float = 10.0  # a planner request unanswered this long: the slow node plans alone ...
    retry_s: float = 5.0  # ... and asks the planner again after this long
    threads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("timeout_s", "retry_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"planning.{name}={getattr(self, name)} must be > 0")


@dataclass
class Addresses:
    obs: str | None = None
    robot_pub: str | None = None
    robot_cmd: str | None = None
    robot_tick: str | None = None
    chunk: str = "tcp://127.0.0.1:*"
    planner: str | None = None  # the planner node's (planning.enabled; the launcher starts it)


@dataclass
class SecureConfig:
    enabled: bool = False
    keys: str | None = None
    slow_source: str | None = None
    allow: list[str] = field(default_factory=list)


@dataclass
class RuntimeConfig:
    """One run of the slow-fast stack; see ``configs/runtime/default.yaml`` for what each key means."""

    checkpoint: str | None = None  # None: the shipped checkpoints/<task>/<policy>
    policy: str = "rdp"  # which shipped run a null checkpoint means (rdp, rdp_wrench)
    task: str = "wipe"
    mode: str = "realtime"
    episodes: int = 1
    seed: int = 0
    perturb: bool = True
    goal: str = "default"  # the task's goal option (configs/task): default | random | a goal, e.g. left-gentle
    max_episode_s: float | None = None
    out: str | None = None
    video: bool = True
    stats_hz: float = 2.0
    slow: SlowConfig = field(default_factory=SlowConfig)
    fast: FastConfig = field(default_factory=FastConfig)
    robot: RobotOverrides = field(default_factory=RobotOverrides)
    addresses: Addresses = field(default_factory=Addresses)
    secure: SecureConfig = field(default_factory=SecureConfig)
    planning: PlanningConfig = field(default_factory=PlanningConfig)
    restart: dict[str, RestartPolicy] = field(default_factory=lambda: {"slow": RestartPolicy()})

    def __post_init__(self) -> None:
        from sim.registry import TASKS

        choose("task", self.task, TASKS, "task")
        from sim.registry import goal_option

        goal_option(self.task, self.goal)  # a bad goal fails here, in one line
        if self.checkpoint is None:
            from rdp.inference import shipped_run

            self.checkpoint = str(shipped_run(self.task, self.policy))
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}, expected one of {MODES}")
        if self.slow.handover not in HANDOVERS:
            raise ValueError(f"slow.handover={self.slow.handover!r}, expected one of {HANDOVERS}")
        if self.fast.hold not in HOLDS:
            raise ValueError(f"fast.hold={self.fast.hold!r}, expected one of {HOLDS}")
        if self.episodes < 1 or self.seed < 0:
            raise ValueError(f"episodes={self.episodes} must be >= 1 and seed={self.seed} >= 0")
        if self.slow.replan_every < 1 or self.slow.handover_steps < 0:
            raise ValueError(f"slow.replan_every={self.slow.replan_every} must be >= 1 and "
                             f"slow.handover_steps={self.slow.handover_steps} >= 0")
        if not 0 <= self.fast.rt_priority <= 99:
            raise ValueError(f"fast.rt_priority={self.fast.rt_priority} must be in [0, 99] (0: ordinary scheduling)")
        if not 0 <= self.slow.nice <= 19:
            raise ValueError(f"slow.nice={self.slow.nice} must be in [0, 19] (0: the launcher's own priority)")
        for name, value in (("fast.cmd_hz", self.fast.cmd_hz), ("stats_hz", self.stats_hz),
                            ("slow.heartbeat_hz", self.slow.heartbeat_hz),
                            ("slow.max_image_age_s", self.slow.max_image_age_s),
                            ("slow.image_timeout_s", self.slow.image_timeout_s)):
            if not value > 0:
                raise ValueError(f"{name}={value} must be > 0")
        period_ms = 1e3 / self.fast.cmd_hz
        for name, value, null in (("phase_lead_ms", self.fast.phase_lead_ms, "off"),
                                  ("spin_ms", self.fast.spin_ms, "auto"), ("prewarm_ms", self.fast.prewarm_ms, "off")):
            if value is not None and not 0 <= value < period_ms:
                raise ValueError(f"fast.{name}={value} must be in [0, one command period {period_ms} ms) or null "
                                 f"({null})")
        if self.robot.camera_hz is not None and not self.robot.camera_hz > 0:
            raise ValueError(f"robot.camera_hz={self.robot.camera_hz} must be > 0 or null (the policy's)")
        if self.robot.image_size is not None and not self.robot.image_size >= 1:
            raise ValueError(f"robot.image_size={self.robot.image_size} must be >= 1 or null (the policy's)")
        if self.max_episode_s is not None and not self.max_episode_s > 0:
            raise ValueError(f"max_episode_s={self.max_episode_s} must be > 0 or null")
        if self.secure.enabled and not self.secure.keys:
            raise ValueError("secure.enabled=true needs secure.keys=DIR (make one: python -m rdp.runtime.curve DIR)")
        for name, policy in self.restart.items():
            if name not in RESTARTABLE:
                raise ValueError(f"restart.{name}: only {list(RESTARTABLE)} can be restarted (a child that binds an "
                                 "address others connect to, or the robot node, stops the run when it dies)")
            policy.check(name)
        if self.secure.enabled and self.mode == "lockstep":
            raise ValueError("secure (a remote slow node) runs in realtime mode only; lockstep is a single-host mode")


def load_config(overrides: Sequence[str] = (), path: Path = CONFIG_PATH, doc: str | None = None) -> RuntimeConfig:
    """``path`` composed with hydra overrides into a checked :class:`RuntimeConfig`; ``doc`` is what ``--help``
    prints above the yaml (default: this module's docstring)."""
    return compose(RuntimeConfig, path, overrides, "runtime", "task=wipe checkpoint=RUN", doc=doc)
