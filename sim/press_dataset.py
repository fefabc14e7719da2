"""The press dataset the tactile embedding (``sensors.embedding.TactileEmbedding``) is fitted on: indenters of
several shapes and sizes pressed into a MuJoCo gel pad at varied forces, then dragged to load it in shear, read
through the simulator's contact sensing (``sim.sensing``). It lives in ``sim`` because it needs the simulator;
``sensors`` keeps the embedding itself, which the robot, the recorder and the policies use without MuJoCo.

    python -m sim.press_dataset fit [name=default] [episodes=400] [dim=15] [seed=0] [out=FILE]

The first argument is the command (``fit``); the rest are hydra overrides of ``configs/sim/press_dataset.yaml``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bus.cli import UsageError, command
from bus.config import compose, split_verb
from sensors.embedding import DEFAULT_DIM, EMBEDDING_DIR, fit_pca
from sensors.tactile import GelPad, GelPadSpec
from sim.sensing import ContactSensing, PadBinding
from sim.tasks.base import resize_geom

COMMANDS = ("fit",)


@dataclass
class FitConfig:
    """``configs/sim/press_dataset.yaml``."""

    name: str = "default"
    episodes: int = 400
    dim: int = DEFAULT_DIM
    seed: int = 0
    out: str | None = None  # None: sensors/embeddings/<name>.npz

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.dim < 1:
            raise UsageError(f"episodes={self.episodes} and dim={self.dim} must be >= 1")


def generate_press_dataset(
    episodes: int = 400, seed: int = 0, spec: GelPadSpec | None = None, progress: bool = True
) -> np.ndarray:
    """Press and drag indenters on a gel pad in MuJoCo; returns (N, R*C*2) marker offsets.

    The pad is a fixed gel box facing up; the indenter (sphere, capsule, box or cylinder of random
    size) hangs on three position-controlled slide joints. Each episode presses to a random force,
    then drags in a random direction (shear), reading the pad along the way.
    """
    import mujoco

    spec = spec or GelPadSpec()
    hx, hy = spec.half_size
    shapes = ("sphere", "capsule", "box", "cylinder")
    xml = f"""
<mujoco>
  <option timestep="0.002" cone="elliptic" impratio="10" integrator="implicitfast"/>
  <worldbody>
    <geom name="pad" type="box" size="{hx} {hy} 0.002" pos="0 0 -0.002" solref="0.04 1"
          solimp="0.5 0.95 0.004 0.5 2" friction="0.9 0.005 0.0001" condim="4"/>
    <site name="pad_site" pos="0 0 0"/>
    <body name="indenter" pos="0 0 0">
      <joint name="x" type="slide" axis="1 0 0" damping="20"/>
      <joint name="y" type="slide" axis="0 1 0" damping="20"/>
      <joint name="z" type="slide" axis="0 0 1" damping="20"/>
      {"".join(f'<geom name="{s}" type="{s}" size="0.005 0.005 0.005" mass="0.05" condim="4"/>' for s in shapes)}
    </body>
  </worldbody>
  <actuator>
    <position joint="x" kp="3000"/><position joint="y" kp="3000"/><position joint="z" kp="3000"/>
  </actuator>
</mujoco>"""
    model = mujoco.MjModel.from_xml_string(xml)
    data = mujoco.MjData(model)
    gid = {s: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, s) for s in shapes}
    pad_geom = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "pad")
    pad = PadBinding("pad", pad_geom, mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "pad_site"), GelPad(spec))
    sensing = ContactSensing(model, [pad], [np.array([pad_geom])], [pad.site])
    rng = np.random.default_rng(seed)
    out = []
    it = range(episodes)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="press dataset", file=sys.stderr, unit="ep")
    for _ in it:
        shape = shapes[int(rng.integers(len(shapes)))]
        for s, g in gid.items():
            on = s == shape
            model.geom_contype[g] = model.geom_conaffinity[g] = 1 if on else 0
            model.geom_rgba[g][3] = 1.0 if on else 0.0
        r = rng.uniform(0.003, 0.012)
        size = {"sphere": [r], "capsule": [r, rng.uniform(0.003, 0.01)], "box": [r, rng.uniform(0.003, 0.01), 0.005],
                "cylinder": [r, 0.005]}[shape]
        resize_geom(model, gid[shape], size)
        q = np.zeros(4)
        mujoco.mju_axisAngle2Quat(q, rng.normal(size=3) / 1.0 + 1e-9, rng.uniform(0, np.pi))
        model.geom_quat[gid[shape]] = q
        mujoco.mj_resetData(model, data)
        x0, y0 = rng.uniform(-0.6, 0.6) * hx, rng.uniform(-0.6, 0.6) * hy
        data.qpos[:3] = [x0, y0, 0.03]
        force = rng.uniform(1.0, 35.0)
        drag = rng.normal(size=2)
        drag *= rng.uniform(0.0, 0.006) / max(np.linalg.norm(drag), 1e-9)
        # The actuators pull the indenter 'force / kp' below the pad surface: ~force newtons of press.
        # The indenter's lowest point sits 'reach' below its centre; aim 'force / kp' past the surface.
        reach = float(np.max(np.abs(size)))
        depth_cmd = reach - force / 3000.0
        for step in range(150):
            a = min(step / 60.0, 1.0)
            b = float(np.clip((step - 70) / 60.0, 0.0, 1.0))
            data.ctrl[:] = [x0 + b * drag[0], y0 + b * drag[1], 0.02 * (1 - a) + a * depth_cmd]
            mujoco.mj_step(model, data)
            if step >= 60 and step % 15 == 0:
                fields, _ = sensing.read(data)
                if fields[0].normal_force > 0.2:
                    out.append(fields[0].offset.reshape(-1).copy())
    if not out:
        raise RuntimeError("press dataset is empty: no indenter touched the pad")
    return np.array(out)


@command("sim.press_dataset")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sim.press_dataset fit [key=value ...]``; see the module docstring."""
    _, rest = split_verb(sys.argv[1:] if argv is None else argv, COMMANDS, "sim.press_dataset",
                         "python -m sim.press_dataset fit", __doc__)
    cfg = _configure(rest)
    x = generate_press_dataset(cfg.episodes, cfg.seed)
    emb = fit_pca(x, cfg.dim)
    path = Path(cfg.out) if cfg.out else EMBEDDING_DIR / f"{cfg.name}.npz"
    recon = emb.decode(emb.encode(x.reshape(-1, *emb.grid, 2))).reshape(len(x), -1)
    rel_err = float(np.linalg.norm(recon - x) / np.linalg.norm(x - x.mean(axis=0)))
    meta = {
        "samples": int(len(x)),
        "episodes": cfg.episodes,
        "seed": cfg.seed,
        "explained_variance": float(emb.explained_variance_ratio.sum()),
        "relative_reconstruction_error": rel_err,
        "command": f"python -m sim.press_dataset fit name={cfg.name} episodes={cfg.episodes} seed={cfg.seed}",
    }
    emb.save(path, meta)
    print(json.dumps({"path": str(path), **meta}))
    return 0


def _configure(argv: Sequence[str]) -> FitConfig:
    return compose(FitConfig, "sim/press_dataset", argv, "press dataset", "episodes=400 seed=0", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
