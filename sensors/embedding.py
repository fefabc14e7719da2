"""Tactile PCA embedding: a marker field (R x C x 2 offsets, ``MARKER_GRID``) -> 15 numbers, as in RDP.

Fitted (``fit_pca``) on a *press dataset* generated in MuJoCo (``sim.press_dataset``, which also holds the
command that fits and saves one): indenters of several shapes and sizes pressed into a gel pad at varied forces,
then dragged to load it in shear. Saved as ``.npz`` (plain arrays; loaded with ``allow_pickle=False``) plus a JSON
side-car, and loaded by name from ``sensors/embeddings/``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bus.cli import UsageError
from bus.resources import package_dir
from sensors.types import MARKER_GRID, MarkerField

EMBEDDING_DIR = package_dir("sensors") / "embeddings"
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


def fit_pca(x: np.ndarray, dim: int = DEFAULT_DIM, grid: tuple[int, int] = MARKER_GRID) -> TactileEmbedding:
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
