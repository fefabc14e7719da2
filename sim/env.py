"""Gymnasium environment shared by every contact-rich task.

One class serves all tasks (N tasks + M policies -> O(N + M) code): a :class:`~sim.tasks.base.Task`
adds its objects to the scene, randomises them, schedules perturbations and scores the episode; this
environment owns the arms, the impedance controllers, the sensing and the action/observation contract.

Action, per arm (A arms): ``[x, y, z, rx, ry, rz, grip]`` -- TCP position target (m, world), TCP
orientation target as an axis-angle vector (rad, world) and gripper width (m). Shape (7 * A,).

``step`` is ``apply`` (targets -> controllers), ``advance`` (physics steps with the controllers and the task's
perturbations, one pad/wrist read, task scoring at each control step) and ``read_into`` (the sensor reading in the
robot node's published layout, :class:`sim.robot_interface.Reading`), cast to the float32 observation. The robot
node drives the same three through :class:`sim.mujoco_robot.MujocoRobot`, one 250 Hz tick per ``advance``, so
evaluation and the node step, score and sense with one piece of code.

``press_guard_n`` > 0 puts the force-limited press (:class:`sim.press_guard.PressGuard`, the teleop node's assist)
between the commanded targets and the controllers, whoever commands: ``advance`` runs in guard periods of
``guard_steps`` physics steps (250 Hz), each setting the guarded targets, stepping, reading the pads and the wrist
once and updating the guard from that wrench. ``step`` and the robot node's 250 Hz ticks then read and guard at the
same instants, so both give the same physics for the same commands.
"""

from __future__ import annotations

from math import inf
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import mujoco
import numpy as np

from sensors.camera import intrinsics_from_fovy
from sensors.tactile import GelPadSpec
from sim.controller import CartesianImpedanceController, ImpedanceGains
from sim.kinematics import solve_ik_robust
from sim.looks import FILL_LIGHT, KEY_LIGHT, SCENE_CAMERA_JITTER, WRIST_CAMERA_JITTER, scene_looks
from sim.press_guard import PressGuard, PressGuardConfig, guard_steps
from sim.robot import ArmIndex, add_arm
from sim.robot_interface import Reading, TaskStep
from sim.sensing import ContactSensing, bind_pad
from sim.tasks.base import Task
from spatial.rotations import mat_to_rotvec, rotvec_to_mat

if TYPE_CHECKING:
    import open3d as o3d

    from sensors.pointcloud import WorkspaceSampler

ACTION_DIM_PER_ARM = 7
FINGER_PAD = GelPadSpec(half_size=(0.008, 0.011))
TOOL_PAD_MARGIN = 0.002
GEL_SOLREF = [0.04, 1.0]
GEL_SOLIMP = [0.5, 0.95, 0.004, 0.5, 2.0]
SCENE_CAMERA = "scene_cam"  # the fixed camera on the scene
WRIST_CAMERA = "wrist_cam"  # on each arm's hand (prefixed with the arm's prefix), aimed at the tool face


class ContactRichEnv(gym.Env):
    """A contact-rich manipulation task with Panda arms that feel touch and force."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(
        self,
        task: Task,
        perturb: bool = True,
        cameras: bool = False,
        image_size: int = 96,
        render_mode: str | None = None,
        render_size: int = 240,
        control_hz: float = 50.0,
        physics_hz: float | None = None,
        wrench_noise: float = 0.2,
        point_cloud: bool = False,
        point_cloud_points: int = 512,
        point_cloud_voxel: float = 0.005,
        looks: str = "none",
        press_guard_n: float = 0.0,
        camera_hz: float | None = None,
    ):
        if physics_hz is None:
            physics_hz = float(task.physics_hz)
        if physics_hz < 500:
            raise ValueError(f"physics_hz must be >= 500 for stable contact, got {physics_hz}")
        substeps = physics_hz / control_hz
        if abs(substeps - round(substeps)) > 1e-9 or substeps < 1:
            raise ValueError(f"physics_hz ({physics_hz}) must be a multiple of control_hz ({control_hz})")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        is_number = isinstance(press_guard_n, (int, float)) and not isinstance(press_guard_n, bool)
        if not (is_number and 0 <= press_guard_n < inf):
            raise ValueError(f"press_guard_n={press_guard_n!r}: expected a wrist force limit >= 0 N (0 = off)")
        if press_guard_n > 0 and round(substeps) % guard_steps(physics_hz):
            raise ValueError(f"press_guard_n={press_guard_n}: the guard's period of {guard_steps(physics_hz)} physics "
                             f"steps must divide the {round(substeps)} of a control step (physics_hz / control_hz)")
        self.task = task
        self.perturb = perturb
        self.cameras = cameras
        self.image_size = image_size
        # point_cloud: the scene camera's depth at image_size as a fixed-size cloud in the task's scene_points_box
        self.scene_points_sampler: WorkspaceSampler | None = None
        self._cloud_settings = (point_cloud_points, point_cloud_voxel)
        if point_cloud:
            self.scene_points_sampler = self._points_sampler()
        # camera_hz: render the cameras (and the depth cloud) at this rate only, from each episode's first
        # observation; the observations between hold the last frames, as a real camera's would. None: every step.
        self.camera_every = 1
        if camera_hz is not None:
            ratio = control_hz / camera_hz if camera_hz > 0 else 0.0
            if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
                raise ValueError(f"camera_hz={camera_hz} must divide the control rate {control_hz} Hz")
            self.camera_every = int(round(ratio))
        self._held: dict[str, np.ndarray] = {}
        self.render_mode = render_mode
        self.render_size = render_size
        self.control_hz = control_hz
        self.physics_hz = physics_hz
        self.substeps = int(round(substeps))
        # Per-episode lighting, paint, camera offsets and a distractor (sim.looks); None: the one fixed look.
        jitter = {SCENE_CAMERA: SCENE_CAMERA_JITTER}
        jitter.update({arm.prefix + WRIST_CAMERA: WRIST_CAMERA_JITTER for arm in task.arms})
        self.looks = scene_looks(looks, task, jitter)
        self._build(physics_hz)
        self.sensing = ContactSensing(
            self.model,
            self.pads,
            [self._subtree_geoms(a.base_body, hand_only=True) for a in self.arms],
            [a.tcp_site for a in self.arms],
            wrench_noise=wrench_noise,
        )
        self.controllers = [CartesianImpedanceController(self.model, a, ImpedanceGains()) for a in self.arms]
        self.guard = PressGuard(PressGuardConfig(press_force_n=float(press_guard_n)))
        self.guard_steps = guard_steps(physics_hz)
        self._commanded: np.ndarray | None = None  # (A, 7) the newest target, before the guard (guard on)
        self._tcp_quat = np.zeros((len(self.arms), 4))
        self._guard_max_m = 0.0  # the largest retraction this episode (m)
        self._guard_periods = 0  # guard periods this episode with a retraction
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self.action_space = self._make_action_space()
        self.observation_space = self._make_observation_space()
        self._np_random, _ = gym.utils.seeding.np_random(None)
        self.last_fields: list = []
        self.last_wrench = np.zeros((len(self.arms), 6))
        self.step_count = 0  # control steps since the reset
        self.physics_steps = 0  # physics steps since the reset
        self._reading = self.new_reading()

    # ----------------------------------------------------------------- scene
    def _build(self, physics_hz: float) -> None:
        spec = mujoco.MjSpec()
        spec.option.timestep = 1.0 / physics_hz
        spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
        spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
        spec.option.impratio = 1.0  # 10 made heavy squeezed boxes numerically unstable
        spec.option.noslip_iterations = self.task.noslip_iterations
        spec.visual.quality.shadowsize = 0
        spec.visual.quality.offsamples = 0
        spec.visual.global_.offwidth = max(self.render_size, self.image_size)
        spec.visual.global_.offheight = max(self.render_size, self.image_size)
        spec.stat.extent = 1.5
        spec.worldbody.add_light(name=KEY_LIGHT, pos=[0.4, 0, 2.0], dir=[0, 0, -1], castshadow=False)
        spec.worldbody.add_light(
            name=FILL_LIGHT, pos=[1.5, -1.0, 1.5], dir=[-1, 0.6, -1], castshadow=False, diffuse=[0.4] * 3
        )
        spec.worldbody.add_geom(
            name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[2, 2, 0.05], rgba=[0.35, 0.36, 0.38, 1]
        )
        self.pad_names: list[str] = []
        pad_specs: list[tuple[str, str, str, GelPadSpec]] = []
        for arm in self.task.arms:
            hand, _ = add_arm(spec, arm.prefix, arm.base_pos, arm.base_yaw)
            tool = arm.tool
            body = hand.add_body(name=arm.prefix + "tool", pos=[0, 0, tool.mount_z], quat=tool.mount_quat())
            hx, hy, hz = tool.half_size
            body.add_geom(
                name=arm.prefix + "tool_body",
                type=mujoco.mjtGeom.mjGEOM_BOX,
                size=[hx, hy, hz],
                pos=[0, 0, hz],
                rgba=list(tool.rgba),
                mass=tool.mass,
                contype=0,
                conaffinity=0,
            )
            body.add_geom(
                name=arm.prefix + "tool_pad",
                type=mujoco.mjtGeom.mjGEOM_BOX,
                size=[hx, hy, TOOL_PAD_MARGIN],
                pos=[0, 0, 2 * hz + TOOL_PAD_MARGIN],
                rgba=[0.9, 0.9, 0.95, 1],
                mass=0.005,
                friction=[tool.friction, 0.005, 0.0001],
                # A gel is soft: ~3 mm of compression at 10 N, so contact never chatters.
                solref=GEL_SOLREF,
                solimp=list(tool.gel_solimp or GEL_SOLIMP),
                condim=4,
            )
            z_face = 2 * hz + 2 * TOOL_PAD_MARGIN
            body.add_site(name=arm.prefix + "tcp", pos=[0, 0, z_face], size=[0.005, 0, 0])
            # Wrist camera on the hand, beside the flange, always aimed at the tool face.
            cam = hand.add_camera(name=arm.prefix + WRIST_CAMERA, pos=[0.11, 0.0, 0.12], fovy=70)
            cam.mode = mujoco.mjtCamLight.mjCAMLIGHT_TARGETBODY
            cam.targetbody = arm.prefix + "tool"
            pad_specs.append(
                (arm.prefix + "tool", arm.prefix + "tool_pad", arm.prefix + "tcp", GelPadSpec(half_size=(hx, hy)))
            )
            for side, sign in (("leftfinger", 1.0), ("rightfinger", -1.0)):
                fb = spec.body(arm.prefix + "panda0_" + side)
                fb.add_geom(
                    name=f"{arm.prefix}{side}_pad",
                    type=mujoco.mjtGeom.mjGEOM_BOX,
                    size=[0.008, 0.0015, 0.011],
                    pos=[0, sign * 0.0035, 0.075],
                    rgba=[0.9, 0.9, 0.95, 1],
                    condim=4,
                    solref=GEL_SOLREF,
                    solimp=GEL_SOLIMP,
                )
                q = np.sqrt(0.5)
                fb.add_site(name=f"{arm.prefix}{side}_pad_site", pos=[0, sign * 0.002, 0.075], quat=[q, sign * q, 0, 0])
                pad_specs.append(
                    (f"{arm.prefix}{side}", f"{arm.prefix}{side}_pad", f"{arm.prefix}{side}_pad_site", FINGER_PAD)
                )
        cam_pos, cam_axes = self.task.scene_camera
        spec.worldbody.add_camera(name=SCENE_CAMERA, pos=list(cam_pos), xyaxes=list(cam_axes))
        self.task.build(spec)
        if self.looks is not None:
            self.looks.build(spec)  # last: no body or geom of the scene changes its index
        self.spec = spec
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        self.arms = [ArmIndex.build(self.model, a.prefix, a.prefix + "tcp") for a in self.task.arms]
        self.pads = [bind_pad(self.model, n, g, s, ps) for n, g, s, ps in pad_specs]
        self.pad_names = [p.name for p in self.pads]
        self.task.bind(self.model)
        if self.looks is not None:
            self.looks.bind(self.model)

    def _subtree_geoms(self, base_body: int, hand_only: bool) -> np.ndarray:
        """Geoms of the hand subtree (link7 and below) of the arm rooted at ``base_body``."""
        m = self.model
        link7 = base_body + 7  # bodies are numbered depth-first: link0..link7 then fingers and tool
        bodies = [b for b in range(m.nbody) if _is_descendant(m, b, link7)] if hand_only else []
        return np.array([g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies])

    # ---------------------------------------------------------------- spaces
    def _make_action_space(self) -> gym.spaces.Box:
        lo, hi = [], []
        for arm in self.task.arms:
            wlo, whi = arm.workspace
            lo += [*wlo, -np.pi, -np.pi, -np.pi, 0.0]
            hi += [*whi, np.pi, np.pi, np.pi, 0.08]
        return gym.spaces.Box(np.array(lo, np.float32), np.array(hi, np.float32), dtype=np.float32)

    def _make_observation_space(self) -> gym.spaces.Dict:
        a, p = len(self.arms), len(self.pads)
        f32 = np.float32
        inf = np.inf
        spaces = {
            "tcp_pos": gym.spaces.Box(-inf, inf, (a, 3), f32),
            "tcp_quat": gym.spaces.Box(-1.0, 1.0, (a, 4), f32),
            "joint_pos": gym.spaces.Box(-inf, inf, (a, 7), f32),
            "joint_vel": gym.spaces.Box(-inf, inf, (a, 7), f32),
            "gripper_width": gym.spaces.Box(0.0, 0.1, (a,), f32),
            "wrench": gym.spaces.Box(-inf, inf, (a, 6), f32),
            "marker_offset": gym.spaces.Box(-inf, inf, (p, FINGER_PAD.rows, FINGER_PAD.cols, 2), f32),
            "marker_depth": gym.spaces.Box(0.0, inf, (p, *FINGER_PAD.depth_shape), f32),
            "marker_slip": gym.spaces.Box(-inf, inf, (p, 2), f32),
            "scene": gym.spaces.Box(-inf, inf, (self.task.scene_dim,), f32),
        }
        if self.task.goal_conditioned:
            spaces["goal"] = gym.spaces.Box(*self.task.goal_type.vector_bounds(), dtype=f32)
        if self.cameras:
            s = self.image_size
            spaces["scene_rgb"] = gym.spaces.Box(0, 255, (s, s, 3), np.uint8)
            spaces["wrist_rgb"] = gym.spaces.Box(0, 255, (s, s, 3), np.uint8)
        if self.scene_points_sampler is not None:
            cfg = self.scene_points_sampler.cfg
            shape = (cfg.num_points, 3)  # every point lies in the box
            spaces["scene_points"] = gym.spaces.Box(
                np.broadcast_to(np.float32(cfg.box_min), shape), np.broadcast_to(np.float32(cfg.box_max), shape),
                shape, f32,
            )
        return gym.spaces.Dict(spaces)

    # ------------------------------------------------------------------- API
    @property
    def time(self) -> float:
        return float(self.data.time)

    @property
    def camera_names(self) -> dict[str, str]:
        """{image key: camera}: the observation's ``scene_rgb`` / ``wrist_rgb`` (the first arm's wrist), which the
        robot node publishes on ``image`` too."""
        return {"scene_rgb": SCENE_CAMERA, "wrist_rgb": self.task.arms[0].prefix + WRIST_CAMERA}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        mujoco.mj_resetData(self.model, self.data)
        self.task.choose_goal(seed)  # its own random stream: the physics draws as with a fixed goal
        self.task.reset(self, rng, perturb=self.perturb)
        if self.looks is not None:
            self.looks.reset(self.model, seed)  # its own random stream: the physics draws as with looks off
        for arm, setup in zip(self.arms, self.task.arms, strict=True):
            pos, rot = self.task.start_pose(setup)
            solve_ik_robust(self.model, self.data, arm, pos, rot, self.task.q_init)
            self.data.qpos[arm.finger_qpos] = 0.02
        mujoco.mj_forward(self.model, self.data)
        for c in self.controllers:
            c.reset(self.data)
        self.guard.reset(len(self.arms))
        self._commanded, self._guard_max_m, self._guard_periods = None, 0.0, 0
        self.step_count = 0
        self.physics_steps = 0
        self._held = {}
        self.last_fields, self.last_wrench = self.sensing.read(self.data, rng)
        return self._observation(), self.info()

    def info(self) -> dict[str, Any]:
        """The task's info; with the press guard on also ``guard_retract_m``, the largest retraction this episode
        (m), and ``guard_active_s``, the sim time it held one (s)."""
        info = self.task.info(self)
        if self.guard.enabled:
            info["guard_retract_m"] = self._guard_max_m
            info["guard_active_s"] = self._guard_periods * self.guard_steps / self.physics_hz
        return info

    def check_action(self, action: Any) -> np.ndarray:
        """Validate an action before anything reaches the physics; raise ValueError naming the problem."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(
                f"action has shape {a.shape}, expected {self.action_space.shape} "
                f"({len(self.arms)} arm(s) x [x, y, z, rx, ry, rz, grip])"
            )
        bad = ~np.isfinite(a)
        if bad.any():
            raise ValueError(f"action contains NaN/inf at indices {np.flatnonzero(bad).tolist()}: {a.tolist()}")
        return a

    def step(self, action):
        a = self.check_action(action)
        lo, hi = self.action_space.low.astype(np.float64), self.action_space.high.astype(np.float64)
        a = np.clip(a, lo, hi)  # workspace limits
        self.apply(a.reshape(len(self.arms), ACTION_DIM_PER_ARM))
        scored = self.advance(self.substeps)
        assert scored is not None  # a whole control step always ends in the task's scoring
        return self._observation(), scored.reward, scored.terminated, scored.truncated, self.info()

    # -------------------------------------------------- stepping, shared with the robot node (sim.mujoco_robot)
    def apply(self, target: np.ndarray) -> None:
        """(A, 7) float64 ``[x, y, z, rx, ry, rz, grip]`` targets -> the controllers (which bound the reference
        speed), through the press guard when it is on. Unchecked: ``step`` checks and clips first, the robot node
        validates every command itself."""
        if self.guard.enabled:
            self._commanded = np.array(target, dtype=np.float64)
            target = self.guard.apply(self._commanded)
        self._set_targets(target)

    def _set_targets(self, target: np.ndarray) -> None:
        for i, c in enumerate(self.controllers):
            u = target[i]
            c.set_target(u[:3], rotvec_to_mat(u[3:6]), u[6], self.task.arms[i].grip_force)

    def advance(self, steps: int) -> TaskStep | None:
        """Run ``steps`` physics steps (the task's perturbation and the controllers before each), then read the
        pads and the wrist once (``last_fields``, ``last_wrench``; the wrench noise draws from ``np_random``).
        When the last step ends a control step (every ``substeps``), the task scores it (``Task.update``) and the
        verdict is returned; else None. ``steps`` may not run past the end of the current control step, so the
        task scores exactly once per control step whoever steps: ``step`` (a whole control step) or the robot
        node (one tick of ``publish_every`` steps at a time). With the press guard on, ``steps`` is a whole number
        of guard periods, each reading the wrist once (:meth:`_guarded_period`; the pads at the end), so either
        caller reads the wrist at the same instants."""
        left = self.substeps - self.physics_steps % self.substeps
        if not (type(steps) is int and 1 <= steps <= left):
            raise ValueError(
                f"steps={steps!r}, expected an int in 1..{left} (the physics steps left in this control step)"
            )
        if self.guard.enabled:
            if steps % self.guard_steps:
                raise ValueError(f"steps={steps}: with the press guard on, a multiple of its period of "
                                 f"{self.guard_steps} physics steps")
            periods = steps // self.guard_steps
            for k in range(periods):
                self._guarded_period(read_pads=k == periods - 1)
        else:
            self._physics(steps)
            self.last_fields, self.last_wrench = self.sensing.read(self.data, self.np_random)
        if steps < left:
            return None
        self.step_count += 1
        reward, terminated = self.task.update(self)
        truncated = self.time >= self.task.max_seconds and not terminated
        return TaskStep(float(reward), bool(terminated), bool(truncated))

    def _physics(self, steps: int) -> None:
        """``steps`` physics steps, the task's perturbation and the controllers before each."""
        dt = self.model.opt.timestep
        for _ in range(steps):
            self.task.before_physics(self)
            for c in self.controllers:
                c.compute(self.data, dt)
            mujoco.mj_step(self.model, self.data)
        self.physics_steps += steps

    def _guarded_period(self, read_pads: bool) -> None:
        """One guard period: the commanded targets backed off by the guard's retraction, ``guard_steps`` physics
        steps, one wrist read (and the pads' when ``read_pads``: the last period of an ``advance``; the same noise
        draws either way), and the guard updated from that wrench and the TCP axes."""
        if self._commanded is not None:  # nothing commanded since the reset: the controllers hold the start pose
            self._set_targets(self.guard.apply(self._commanded))
        self._physics(self.guard_steps)
        if read_pads:
            self.last_fields, self.last_wrench = self.sensing.read(self.data, self.np_random)
        else:
            self.last_wrench = self.sensing.read_wrench(self.data, self.np_random)
        for i, arm in enumerate(self.arms):
            mujoco.mju_mat2Quat(self._tcp_quat[i], self.data.site_xmat[arm.tcp_site])
        self.guard.on_state(self._tcp_quat)
        self.guard.on_wrench(self.last_wrench, self.time)
        retraction = self.guard.retraction()
        if retraction > 0:
            self._guard_periods += 1
            self._guard_max_m = max(self._guard_max_m, retraction)

    def new_reading(self) -> Reading:
        """Buffers for :meth:`read_into` in the published layout; with a ``goal`` when the task's goals vary."""
        goal_dim = len(self.task.goal.vector()) if self.task.goal_conditioned else 0
        return Reading.allocate(len(self.arms), len(self.pads), self.task.scene_dim, FINGER_PAD.depth_shape, goal_dim)

    def read_into(self, reading: Reading) -> Reading:
        """Fill ``reading`` (float64 state and wrench, float32 tactile: the robot node's published layout) from the
        physics state and the last pad/wrist read; returns it. The one observation builder: ``step``'s float32
        observation is this reading cast."""
        d = self.data
        s, t = reading.state, reading.tactile
        for i, arm in enumerate(self.arms):
            s["tcp_pos"][i] = d.site_xpos[arm.tcp_site]
            mujoco.mju_mat2Quat(s["tcp_quat"][i], d.site_xmat[arm.tcp_site])
            s["joint_pos"][i] = d.qpos[arm.qpos]
            s["joint_vel"][i] = d.qvel[arm.dof]
            s["gripper_width"][i] = d.qpos[arm.finger_qpos].sum()
        s["scene"][:] = self.task.scene_features()
        if "goal" in s:
            s["goal"][:] = self.task.goal.vector()
        for k, f in enumerate(self.last_fields):
            t["marker_offset"][k] = f.offset
            t["marker_depth"][k] = _resize_depth(f.depth)
            t["marker_slip"][k] = f.slip
        reading.wrench["wrench"][:] = self.last_wrench
        return reading

    def _observation(self) -> dict[str, np.ndarray]:
        r = self.read_into(self._reading)
        s, t, f32 = r.state, r.tactile, np.float32
        obs = {
            "tcp_pos": s["tcp_pos"].astype(f32),
            "tcp_quat": s["tcp_quat"].astype(f32),
            "joint_pos": s["joint_pos"].astype(f32),
            "joint_vel": s["joint_vel"].astype(f32),
            "gripper_width": s["gripper_width"].astype(f32),
            "wrench": r.wrench["wrench"].astype(f32),
            "marker_offset": t["marker_offset"].astype(f32),
            "marker_depth": t["marker_depth"].astype(f32),
            "marker_slip": t["marker_slip"].astype(f32),
            "scene": s["scene"].copy(),
        }
        if "goal" in s:
            obs["goal"] = s["goal"].copy()
        if self.step_count % self.camera_every == 0 or not self._held:
            self._held = {}
            if self.cameras:
                for key, camera in self.camera_names.items():
                    self._held[key] = self.render_camera(camera, self.image_size)
            if self.scene_points_sampler is not None:
                self._held["scene_points"] = self.scene_points_now()
        obs.update(self._held)
        return obs

    def _points_sampler(self) -> WorkspaceSampler:
        from sensors.pointcloud import PointCloudConfig, WorkspaceSampler  # open3d takes ~1 s to import

        lo, hi = self.task.scene_points_box
        points, voxel = self._cloud_settings
        return WorkspaceSampler(PointCloudConfig(lo, hi, num_points=points, voxel_size=voxel))

    def scene_points_now(self) -> np.ndarray:
        """The ``scene_points`` observation of the scene as it is now (what ``point_cloud=True`` adds to every
        observation; a recorder takes it at the camera rate only): (n, 3) float32."""
        if self.scene_points_sampler is None:
            self.scene_points_sampler = self._points_sampler()
        cloud = self.camera_cloud(SCENE_CAMERA, self.image_size, self.scene_points_sampler.cfg.max_depth)
        return self.scene_points_sampler.sample(cloud)

    def tcp_pose(self, arm: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.arms[arm].tcp_site
        return self.data.site_xpos[s].copy(), self.data.site_xmat[s].reshape(3, 3).copy()

    def hold_action(self) -> np.ndarray:
        """An action that holds every arm where it is (used by safety stops)."""
        out = []
        for i in range(len(self.arms)):
            p, r = self.tcp_pose(i)
            out += [*p, *mat_to_rotvec(r), float(self.data.qpos[self.arms[i].finger_qpos].sum())]
        return np.array(out)

    def _renderer(self, size: int) -> mujoco.Renderer:
        key = (size, size)
        if key not in self._renderers:
            self._renderers[key] = mujoco.Renderer(self.model, size, size)
        return self._renderers[key]

    def render_camera(self, camera: str, size: int) -> np.ndarray:
        """(size, size, 3) uint8 RGB image from ``camera``."""
        r = self._renderer(size)
        r.update_scene(self.data, camera)
        return r.render()

    def render_depth(self, camera: str, size: int) -> np.ndarray:
        """(size, size) metric depth image from ``camera`` (m)."""
        return render_depth(self._renderer(size), self.data, camera)

    def point_cloud(self, camera: str, size: int = 96, stride: int = 1, max_depth: float = 5.0) -> np.ndarray:
        """(N, 3) float64 world-frame points seen by ``camera``: every ``stride``-th pixel of its (size, size) depth
        image nearer than ``max_depth`` m, uncropped (the ``scene_points`` observation is this, sampled)."""
        return np.asarray(self.camera_cloud(camera, size, max_depth, stride).points)

    def camera_cloud(
        self, camera: str, size: int = 96, max_depth: float = 5.0, stride: int = 1, colors: bool = False
    ) -> o3d.geometry.PointCloud:
        """open3d world-frame cloud of ``camera``'s (size, size) depth image (``sensors.pointcloud.camera_cloud``),
        coloured from its RGB image when ``colors``."""
        rgb = self.render_camera(camera, size) if colors else None
        return depth_cloud(self.model, self.data, self._renderer(size), camera, max_depth, rgb, stride)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self.render_camera(SCENE_CAMERA, self.render_size)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


def _is_descendant(model: mujoco.MjModel, body: int, ancestor: int) -> bool:
    while body > 0:
        if body == ancestor:
            return True
        body = int(model.body_parentid[body])
    return ancestor == 0


def _resize_depth(depth: np.ndarray) -> np.ndarray:
    shape = FINGER_PAD.depth_shape
    if depth.shape == shape:
        return depth
    raise ValueError(f"pad depth map has shape {depth.shape}, expected {shape}")


def render_depth(renderer: mujoco.Renderer, data: mujoco.MjData, camera: str) -> np.ndarray:
    """(size, size) metric depth image (m) of ``camera`` in the state ``data``, by ``renderer`` (of that size)."""
    renderer.enable_depth_rendering()
    try:
        renderer.update_scene(data, camera)
        return renderer.render().copy()
    finally:
        renderer.disable_depth_rendering()


def depth_cloud(model: mujoco.MjModel, data: mujoco.MjData, renderer: mujoco.Renderer, camera: str,
                max_depth: float = 5.0, rgb: np.ndarray | None = None, stride: int = 1) -> o3d.geometry.PointCloud:
    """open3d world-frame cloud of ``camera``'s depth image in the state ``data`` (``sensors.pointcloud.camera_cloud``;
    the env's ``camera_cloud`` and the robot node's camera thread, which renders a copy of the state, share it)."""
    from sensors.pointcloud import camera_cloud  # open3d takes ~1 s to import: only cloud users pay it

    cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cid < 0:
        names = [model.camera(i).name for i in range(model.ncam)]
        raise KeyError(f"camera {camera!r} not in the scene; cameras: {names}")
    k = intrinsics_from_fovy(float(model.cam_fovy[cid]), renderer.width, renderer.height)
    depth = render_depth(renderer, data, camera)
    pos, rot = data.cam_xpos[cid], data.cam_xmat[cid].reshape(3, 3)
    return camera_cloud(depth, k, pos, rot, max_depth=max_depth, rgb=rgb, stride=stride)
