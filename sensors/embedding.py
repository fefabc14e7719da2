"""Tactile PCA embedding: a marker field (7 x 9 x 2 offsets) -> 15 numbers, as in RDP.

Fitted on a *press dataset* generated in MuJoCo (see :func:`generate_press_dataset`): indenters of
several shapes and sizes pressed into a gel pad at varied forces, then dragged to load it in shear.
Saved as ``.npz`` (plain arrays; loaded with ``allow_pickle=False``) plus a JSON side-car, and
loaded by name from ``sensors/embeddings/``.

    python -m sensors.embedding fit --name default --episodes 400
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bus.cli import ArgumentParser, UsageError, command
from sensors.tactile import GelPad, GelPadSpec
from sensors.types import MarkerField

EMBEDDING_DIR = Path(__file__).parent / "embeddings"
DEFAULT_DIM = 15
FORMAT_VERSION = 1


@dataclass
class TactileEmbedding:
    """Linear map ``z = (x - mean) @ components.T / scale``; x = flattened offsets (R*C*2,)."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (K, D)
    scale: np.ndarray  # (K,) sqrt of explained variance, so embeddings are ~unit variance
    explained_variance_ratio: np.ndarray  # (K,)
    grid: tuple[int, int]
    _load_cache: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def encode(self, offsets: np.ndarray | MarkerField) -> np.ndarray:
        """(..., R, C, 2) offsets (or a MarkerField) -> (..., K) embedding."""
        x = offsets.offset if isinstance(offsets, MarkerField) else np.asarray(offsets)
        r, c = self.grid
        if x.shape[-3:] != (r, c, 2):
            raise ValueError(f"offsets must end with shape ({r}, {c}, 2) for this embedding, got {x.shape}")
        flat = x.reshape(*x.shape[:-3], r * c * 2)
        return ((flat - self.mean) @ self.components.T) / self.scale

    def pad_load(self, z: np.ndarray) -> np.ndarray:
        """(..., K) embedding -> (..., 3) load of the pad read off its marker field: the mean marker displacement
        (x, y: follows the shear traction) and the mean divergence of the displacement field (index units: the gel
        bulges outwards under normal pressure, so it grows with the normal force). Both are linear in the offsets,
        so this is one (K, 3) map of the embedding: a physical summary for a consumer that needs force, not shape."""
        matrix, bias = self._load_map()
        return np.asarray(z) @ matrix + bias

    def _load_map(self) -> tuple[np.ndarray, np.ndarray]:
        if self._load_cache is None:
            r, c = self.grid
            basis = np.eye(r * c * 2).reshape(-1, r, c, 2)  # the functional applied to every offset coordinate
            ux, uy = basis[..., 0], basis[..., 1]
            div = np.gradient(ux, axis=2) + np.gradient(uy, axis=1)
            functional = np.stack([ux.mean(axis=(1, 2)), uy.mean(axis=(1, 2)), div.mean(axis=(1, 2))], axis=1)
            # z -> offsets is flat = (z * scale) @ components + mean; a linear functional F of the offsets is then
            # z @ (scale[:, None] * components @ F) + mean @ F.
            self._load_cache = ((self.scale[:, None] * self.components) @ functional, self.mean @ functional)
        return self._load_cache

    def decode(self, z: np.ndarray) -> np.ndarray:
        """(..., K) -> (..., R, C, 2) reconstructed offsets."""
        flat = (np.asarray(z) * self.scale) @ self.components + self.mean
        return flat.reshape(*flat.shape[:-1], *self.grid, 2)

    def save(self, path: Path, meta: dict | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            mean=self.mean,
            components=self.components,
            scale=self.scale,
            explained_variance_ratio=self.explained_variance_ratio,
            grid=np.array(self.grid),
            format_version=np.array(FORMAT_VERSION),
        )
        os.replace(tmp, path)
        side = {"format_version": FORMAT_VERSION, "dim": self.dim, "grid": list(self.grid), **(meta or {})}
        path.with_suffix(".json").write_text(json.dumps(side, indent=2))

    @classmethod
    def load(cls, name_or_path: str | Path) -> TactileEmbedding:
        """Load by name (``sensors/embeddings/<name>.npz``) or by path; clear errors on bad files."""
        p = Path(name_or_path)
        if p.suffix != ".npz":
            p = EMBEDDING_DIR / f"{name_or_path}.npz"
        if not p.is_file():
            known = sorted(x.stem for x in EMBEDDING_DIR.glob("*.npz"))
            raise FileNotFoundError(f"tactile embedding {str(name_or_path)!r} not found at {p}; known names: {known}")
        if p.read_bytes()[:4] != b"PK\x03\x04":  # an .npz is a zip archive
            raise UsageError(f"{p} is not a valid tactile embedding file (not an .npz archive)")
        try:
            with np.load(p, allow_pickle=False) as z:
                version = int(z["format_version"])
                if version != FORMAT_VERSION:
                    raise UsageError(f"{p}: format version {version}, this code reads {FORMAT_VERSION}")
                return cls(
                    mean=z["mean"],
                    components=z["components"],
                    scale=z["scale"],
                    explained_variance_ratio=z["explained_variance_ratio"],
                    grid=tuple(int(v) for v in z["grid"]),
                )
        except (KeyError, OSError, EOFError) as exc:
            raise UsageError(f"{p} is not a valid tactile embedding file ({exc})") from exc


def fit_pca(x: np.ndarray, dim: int = DEFAULT_DIM, grid: tuple[int, int] = (7, 9)) -> TactileEmbedding:
    """PCA by SVD on (N, D) samples."""
    if x.ndim != 2 or x.shape[0] <= dim:
        raise ValueError(f"need (N, D) samples with N > {dim}, got shape {x.shape}")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / (x.shape[0] - 1)
    return TactileEmbedding(
        mean=mean,
        components=vt[:dim],
        scale=np.sqrt(np.maximum(var[:dim], 1e-30)),
        explained_variance_ratio=var[:dim] / var.sum(),
        grid=grid,
    )


def generate_press_dataset(
    episodes: int = 400, seed: int = 0, spec: GelPadSpec | None = None, progress: bool = True
) -> np.ndarray:
    """Press and drag indenters on a gel pad in MuJoCo; returns (N, R*C*2) marker offsets.

    The pad is a fixed gel box facing up; the indenter (sphere, capsule, box or cylinder of random
    size) hangs on three position-controlled slide joints. Each episode presses to a random force,
    then drags in a random direction (shear), reading the pad along the way.
    """
    import mujoco

    from sim.sensing import ContactSensing, PadBinding

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
    from sim.tasks.base import resize_geom

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


@command("sensors.embedding")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m sensors.embedding", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="generate the press dataset and fit the PCA embedding")
    f.add_argument("--name", default="default")
    f.add_argument("--episodes", type=int, default=400)
    f.add_argument("--dim", type=int, default=DEFAULT_DIM)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", type=Path, default=None, help="file path (default: sensors/embeddings/<name>.npz)")
    args = ap.parse_args(argv)
    if args.episodes < 1 or args.dim < 1:
        raise UsageError(f"--episodes {args.episodes} and --dim {args.dim} must be >= 1")
    x = generate_press_dataset(args.episodes, args.seed)
    emb = fit_pca(x, args.dim)
    path = args.out or EMBEDDING_DIR / f"{args.name}.npz"
    recon = emb.decode(emb.encode(x.reshape(-1, 7, 9, 2))).reshape(len(x), -1)
    rel_err = float(np.linalg.norm(recon - x) / np.linalg.norm(x - x.mean(axis=0)))
    meta = {
        "samples": int(len(x)),
        "episodes": args.episodes,
        "seed": args.seed,
        "explained_variance": float(emb.explained_variance_ratio.sum()),
        "relative_reconstruction_error": rel_err,
        "command": f"python -m sensors.embedding fit --name {args.name} --episodes {args.episodes} --seed {args.seed}",
    }
    emb.save(path, meta)
    print(json.dumps({"path": str(path), **meta}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
