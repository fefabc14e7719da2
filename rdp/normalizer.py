"""Per-key affine normalisation that lives inside a policy and travels with its checkpoint.

Each key (an observation such as ``proprio``, or the policy's target, ``action`` / ``latent``) has a per-dimension
affine map ``y = x * scale + offset`` fitted from data, in one of two modes:

* ``minmax``  -- [min, max] -> [-1, 1] (Diffusion Policy's choice for bounded actions and low-dim observations).
* ``meanstd`` -- zero mean, unit standard deviation (suits unbounded, roughly Gaussian data such as VAE latents).

Constant dimensions: a dimension whose range (minmax) or standard deviation (meanstd) is below ``eps`` would
divide by ~0 and turn sensor noise at run time into huge inputs. Such a dimension is only *centred*, never scaled
(``scale = 1``): its constant value maps to 0 and deviations pass through unchanged. ``fit`` returns the indices
of such dimensions so a data pipeline can warn about them.

Nearly constant dimensions (``min_range``): a tool held at one orientation through every demonstration spans a
range of ~1e-4 in its rotation features, above ``eps`` but so narrow that a 0.1 degree deviation at run time maps to
~20 normalised units, far outside anything the network saw (measured: this sent peel policies' plans astray). With
``min_range`` a dimension is scaled as if it spanned at least that much (minmax) or had at least half that standard
deviation (meanstd), so small deviations stay small; wide dimensions are unaffected.

The statistics are non-persistent buffers, so they follow ``.to(device)`` but stay out of the owner's
``state_dict``; ``arrays()`` / ``load_arrays()`` exchange them as ``{"<key>.scale": (D,), "<key>.offset": (D,)}``,
which is the ``normalizer`` mapping of ``rdp.checkpoint.save_checkpoint`` / ``Checkpoint.normalizer``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from torch import nn

from rdp.checkpoint import CheckpointError

NormMode = Literal["minmax", "meanstd"]
FIELDS = ("scale", "offset")


class _KeyStats(nn.Module):
    """scale, offset (D,) for one key; identity until fitted."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(dim), persistent=False)
        self.register_buffer("offset", torch.zeros(dim), persistent=False)


class Normalizer(nn.Module):
    """Per-key ``(..., D)`` <-> ``(..., D)`` affine maps, declared with their dims, then fitted or loaded."""

    def __init__(self, dims: Mapping[str, int], eps: float = 1e-4) -> None:
        super().__init__()
        for key, dim in dims.items():
            if not key.isidentifier():
                raise ValueError(f"normaliser key must be a Python identifier (no dots), got {key!r}")
            if dim < 1:
                raise ValueError(f"normaliser key {key!r}: dim must be >= 1, got {dim}")
        self.dims = dict(dims)
        self.eps = eps
        self.stats = nn.ModuleDict({key: _KeyStats(dim) for key, dim in self.dims.items()})
        self._fitted: set[str] = set()

    # ----------------------------------------------------------------------------------------------- fitting

    def fit(self, key: str, data: np.ndarray | torch.Tensor, mode: NormMode = "minmax",
            min_range: float = 0.0) -> list[int]:
        """Fit key's map from data (..., D), every leading axis counting as samples; return the constant dims.
        ``min_range``: the narrowest range (minmax; meanstd: twice the smallest std) a dimension is scaled by."""
        if not (min_range >= 0 and np.isfinite(min_range)):
            raise ValueError(f"normaliser fit {key!r}: min_range must be a finite number >= 0, got {min_range}")
        dim = self._dim(key)
        x = np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data, dtype=np.float64)
        if x.ndim < 1 or x.shape[-1] != dim or x.size == 0:
            raise ValueError(f"normaliser fit {key!r}: expected data of shape (..., {dim}), got {x.shape}")
        x = x.reshape(-1, dim)
        if not np.isfinite(x).all():
            raise ValueError(f"normaliser fit {key!r}: data contains NaN or inf")
        if mode == "minmax":  # [lo, hi] -> [-1, 1]: scale 2 / range
            lo, hi = x.min(axis=0), x.max(axis=0)
            spread, centre, width, floor = hi - lo, (hi + lo) / 2, 2.0, min_range
        elif mode == "meanstd":  # unit std: scale 1 / std
            spread, centre, width, floor = x.std(axis=0), x.mean(axis=0), 1.0, min_range / 2
        else:
            raise ValueError(f"normaliser fit {key!r}: mode must be 'minmax' or 'meanstd', got {mode!r}")
        constant = spread < self.eps
        spread = np.maximum(spread, floor)
        flat = spread < self.eps  # still constant after the floor: centre only
        scale = np.where(flat, 1.0, width / np.where(flat, 1.0, spread))
        stats = self.stats[key]
        stats.scale.copy_(torch.as_tensor(scale, dtype=stats.scale.dtype))
        stats.offset.copy_(torch.as_tensor(-centre * scale, dtype=stats.offset.dtype))
        self._fitted.add(key)
        return np.flatnonzero(constant).tolist()

    @property
    def fitted(self) -> bool:
        return self._fitted == set(self.dims)

    # ----------------------------------------------------------------------------------------------- applying

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """(..., D) raw -> (..., D) normalised."""
        stats = self._stats(key, x)
        return x * stats.scale + stats.offset

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        """(..., D) normalised -> (..., D) raw."""
        stats = self._stats(key, y)
        return (y - stats.offset) / stats.scale

    # ----------------------------------------------------------------------------------------------- persistence

    def arrays(self) -> dict[str, torch.Tensor]:
        """{"<key>.scale", "<key>.offset"} for every key; refuses to export an unfitted normaliser."""
        missing = sorted(set(self.dims) - self._fitted)
        if missing:
            raise RuntimeError(f"normaliser keys {missing} were never fitted; call fit() (or load_arrays()) first")
        return {f"{key}.{field}": getattr(self.stats[key], field).detach().clone() for key in self.dims
                for field in FIELDS}

    def load_arrays(self, arrays: Mapping[str, torch.Tensor]) -> None:
        """Inverse of ``arrays()``. Every declared key must be present with shape (D,); nothing changes on error."""
        expected = {f"{key}.{field}": (dim,) for key, dim in self.dims.items() for field in FIELDS}
        missing, unexpected = sorted(expected.keys() - arrays.keys()), sorted(arrays.keys() - expected.keys())
        if missing or unexpected:
            raise CheckpointError(f"normaliser arrays: missing {missing}, unexpected {unexpected}")
        for name, shape in expected.items():
            if tuple(arrays[name].shape) != shape:
                raise CheckpointError(f"checkpoint has normalizer.{name} {list(arrays[name].shape)}, "
                                      f"model expects {list(shape)}")
        for name in expected:
            key, field = name.split(".")
            target = getattr(self.stats[key], field)
            target.copy_(torch.as_tensor(arrays[name]).to(target))
        self._fitted = set(self.dims)

    # ----------------------------------------------------------------------------------------------- helpers

    def _dim(self, key: str) -> int:
        if key not in self.dims:
            raise KeyError(f"normaliser has no key {key!r}; known keys: {sorted(self.dims)}")
        return self.dims[key]

    def _stats(self, key: str, x: torch.Tensor | None = None) -> _KeyStats:
        dim = self._dim(key)
        if key not in self._fitted:
            raise RuntimeError(f"normaliser key {key!r} was never fitted; call fit() (or load_arrays()) first")
        if x is not None and (x.dim() < 1 or x.shape[-1] != dim):
            raise ValueError(f"normalise {key!r}: expected shape (..., {dim}), got {tuple(x.shape)}")
        return self.stats[key]
