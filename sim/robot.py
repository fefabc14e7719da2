"""Franka Panda arms for our scenes, built from the MJCF that ``gymnasium-robotics`` installs.

The kinematic chain, masses and meshes come from the package on disk (Apache-2.0, Franka Kitchen
assets); nothing is downloaded. We supply our own defaults: torque-controlled joints with light
damping (the operational-space controller in :mod:`sim.controller` does the rest), the small
collision meshes reused as visuals (llvmpipe renders them ~10x faster than the detailed ones), and
collisions switched off on the arm links so only the hand, fingers and tools touch the world.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

ARM_JOINTS = tuple(f"robot:panda0_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("robot:panda0_finger_joint1", "robot:panda0_finger_joint2")
TORQUE_LIMITS = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])
FINGER_FORCE_LIMIT = 70.0
# The hand's flange is 0.107 m past link7; fingertips end ~0.25 m past it.
FLANGE_OFFSET = 0.107


def panda_asset_dir() -> Path:
    """Folder of the Panda MJCF inside the installed gymnasium-robotics package."""
    # find_spec locates the package without importing it (its import registers ~100 envs).
    spec = importlib.util.find_spec("gymnasium_robotics")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "gymnasium-robotics is not installed; it ships the Franka Panda model we use "
            "(pip install gymnasium-robotics==1.4.2)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "envs" / "assets" / "kitchen_franka" / "franka_assets"
    if not (root / "chain.xml").is_file():
        raise RuntimeError(f"Panda model not found at {root}: is gymnasium-robotics==1.4.2 installed?")
    return root


def _arm_xml() -> str:
    root = panda_asset_dir()
    col = root / "meshes" / "collision"
    meshes = "\n".join(
        f'<mesh name="{name}_{kind}" file="{col / (name + ".stl")}"/>'
        for name in ["link0", "link1", "link2", "link3", "link4", "link5", "link6", "link7", "hand"]
        for kind in ("col", "viz")
    )
    finger = col / "finger.stl"
    chain = (root / "chain.xml").read_text()
    chain = chain[chain.index("<mujocoinclude>") + len("<mujocoinclude>") : chain.rindex("</mujocoinclude>")]
    return f"""
<mujoco model="panda">
  <compiler angle="radian" autolimits="true"/>
  <asset>
    {meshes}
    <mesh name="finger_col" file="{finger}" scale="1.75 1.0 1.75"/>
    <mesh name="finger_viz" file="{finger}" scale="1.75 1.0 1.75"/>
  </asset>
  <default>
    <default class="panda">
      <joint pos="0 0 0" axis="0 0 1" limited="true" armature="0.1"/>
      <default class="panda_viz">
        <geom contype="0" conaffinity="0" group="1" type="mesh" rgba=".93 .93 .92 1" mass="0"/>
      </default>
      <default class="panda_col">
        <geom contype="0" conaffinity="0" group="3" type="mesh" rgba=".5 .6 .7 1"/>
      </default>
      <default class="panda_arm"><joint damping="1.0"/></default>
      <default class="panda_forearm"><joint damping="0.5"/></default>
      <default class="panda_finger">
        <joint damping="5" armature="0.05"/>
        <geom friction="1 0.005 0.0001" contype="1" conaffinity="1" condim="4" group="3"
              rgba="0.5 0.6 0.7 1"/>
      </default>
    </default>
  </default>
  <worldbody>
    {chain}
  </worldbody>
</mujoco>
"""


def load_arm_spec() -> mujoco.MjSpec:
    """A fresh MjSpec of one Panda (base body ``panda0_link0``)."""
    return mujoco.MjSpec.from_string(_arm_xml())


@dataclass
class ArmIndex:
    """Addresses of one arm inside a compiled model (so the hot loop does no name look-ups)."""

    prefix: str
    qpos: np.ndarray  # (7,) qpos addresses of the arm joints
    dof: np.ndarray  # (7,) dof addresses of the arm joints
    finger_qpos: np.ndarray  # (2,)
    finger_dof: np.ndarray  # (2,)
    arm_act: np.ndarray  # (7,) actuator ids (motors)
    finger_act: np.ndarray  # (2,) actuator ids (motors)
    tcp_site: int
    base_body: int

    @classmethod
    def build(cls, model: mujoco.MjModel, prefix: str, tcp_site: str) -> ArmIndex:
        def jid(name: str) -> int:
            i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, prefix + name)
            if i < 0:
                raise KeyError(f"joint {prefix + name!r} not in model")
            return i

        def aid(name: str) -> int:
            i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, name)
            if i < 0:
                raise KeyError(f"actuator {name!r} not in model")
            return i

        arm = [jid(n) for n in ARM_JOINTS]
        fing = [jid(n) for n in FINGER_JOINTS]
        site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, tcp_site)
        if site < 0:
            raise KeyError(f"TCP site {tcp_site!r} not in model")
        return cls(
            prefix=prefix,
            qpos=np.array([model.jnt_qposadr[j] for j in arm]),
            dof=np.array([model.jnt_dofadr[j] for j in arm]),
            finger_qpos=np.array([model.jnt_qposadr[j] for j in fing]),
            finger_dof=np.array([model.jnt_dofadr[j] for j in fing]),
            arm_act=np.array([aid(f"{prefix}tau{i}") for i in range(7)]),
            finger_act=np.array([aid(f"{prefix}finger{i}") for i in range(2)]),
            tcp_site=site,
            base_body=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, prefix + "panda0_link0"),
        )


def add_arm(
    spec: mujoco.MjSpec,
    prefix: str,
    base_pos: tuple[float, float, float],
    base_yaw: float = 0.0,
) -> tuple[mujoco.MjsBody, mujoco.MjsBody]:
    """Attach one Panda to ``spec`` and add torque motors for it.

    Returns (hand body = link7, left finger body) so callers can mount tools and pads.
    """
    arm = load_arm_spec()
    frame = spec.worldbody.add_frame(
        pos=list(base_pos), quat=[np.cos(base_yaw / 2), 0.0, 0.0, np.sin(base_yaw / 2)]
    )
    frame.attach_body(arm.body("panda0_link0"), prefix, "")
    for i, (name, lim) in enumerate(zip(ARM_JOINTS, TORQUE_LIMITS, strict=True)):
        spec.add_actuator(
            name=f"{prefix}tau{i}",
            target=prefix + name,
            trntype=mujoco.mjtTrn.mjTRN_JOINT,
            ctrlrange=[-lim, lim],
            forcerange=[-lim, lim],
            ctrllimited=1,
            forcelimited=1,
        )
    for i, name in enumerate(FINGER_JOINTS):
        spec.add_actuator(
            name=f"{prefix}finger{i}",
            target=prefix + name,
            trntype=mujoco.mjtTrn.mjTRN_JOINT,
            ctrlrange=[-FINGER_FORCE_LIMIT, FINGER_FORCE_LIMIT],
            ctrllimited=1,
        )
    return spec.body(prefix + "panda0_link7"), spec.body(prefix + "panda0_leftfinger")
