"""Checkpoints without pickle: ``model.safetensors`` (weights + normaliser arrays) and ``config.json``.

A checkpoint is a directory::

    ckpt/
      config.json         {"format": ..., "model": "<class name>", "config": {...}}   readable, hand-editable
      model.safetensors   model state_dict under its own keys, normaliser arrays under "normalizer."

The safetensors header carries a SHA-256 of every tensor's name, dtype, shape and bytes, so a flipped byte in the
payload is caught at load time (safetensors itself only checks the header and the sizes). Each file is written
to a temporary name, fsynced and renamed into place, so a crash leaves either the old file or the new one, never
half of one. The weights are renamed first and the config last; ``load`` checks both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

FORMAT = "slowfast-checkpoint-v1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
NORMALIZER_PREFIX = "normalizer."


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used: corrupt, truncated, or not matching the model."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What ``load_checkpoint`` returns besides filling the model: the stored config and normaliser arrays."""

    model_name: str
    config: dict[str, Any]
    normalizer: dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------- saving


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    config: Any,
    normalizer: Mapping[str, torch.Tensor | np.ndarray] | None = None,
) -> Path:
    """Write model weights, config (a dataclass or a JSON-able dict) and optional normaliser arrays to directory."""
    directory = Path(directory)
    config_dict = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    tensors = {name: _to_cpu_tensor(value) for name, value in model.state_dict().items()}
    for name in tensors:
        if name.startswith(NORMALIZER_PREFIX):
            raise ValueError(f"model state_dict key {name!r} collides with the normaliser prefix {NORMALIZER_PREFIX!r}")
    for name, value in (normalizer or {}).items():
        tensors[NORMALIZER_PREFIX + name] = _to_cpu_tensor(torch.as_tensor(value))

    weights = safetensors.torch.save(tensors, metadata={"format": FORMAT, "sha256": _digest(tensors)})
    header = {"format": FORMAT, "model": type(model).__name__, "config": config_dict}
    config_bytes = (json.dumps(header, indent=2, sort_keys=True) + "\n").encode()  # fail here, before any write
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(directory / WEIGHTS_FILE, weights)
    _atomic_write(directory / CONFIG_FILE, config_bytes)
    return directory


def _to_cpu_tensor(value: torch.Tensor) -> torch.Tensor:
    # clone: safetensors refuses tensors that share storage (tied weights, views).
    return value.detach().to("cpu").contiguous().clone()


def _atomic_write(path: Path, data: bytes) -> None:
    """tmp file in the same directory -> write -> fsync -> rename over path -> fsync the directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------- loading


def load_config(directory: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """(model class name, config dict) from directory/config.json, e.g. to build the model before ``load``."""
    path = Path(directory) / CONFIG_FILE
    _require_file(path)
    try:
        header = json.loads(path.read_text())
        if header.get("format") != FORMAT:
            raise CheckpointError(f"{path}: unknown format {header.get('format')!r}, expected {FORMAT!r}")
        return str(header["model"]), dict(header["config"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"corrupt or truncated checkpoint: {path}") from e


def load_checkpoint(directory: str | os.PathLike[str], model: nn.Module) -> Checkpoint:
    """Fill model's parameters and buffers from directory, in place; return the stored config and normaliser.

    Every key must match in name and shape; dtypes are converted to the model's by ``load_state_dict``.
    """
    model_name, config = load_config(directory)
    tensors = _read_weights(Path(directory) / WEIGHTS_FILE)
    normalizer = {k[len(NORMALIZER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(NORMALIZER_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(NORMALIZER_PREFIX)}

    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory} does not match {type(model).__name__}: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise CheckpointError(
                f"checkpoint has {name} {list(value.shape)}, model expects {list(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=True)
    return Checkpoint(model_name=model_name, config=config, normalizer=normalizer)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint file not found: {path} (a checkpoint directory holds {WEIGHTS_FILE} and {CONFIG_FILE})"
        )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    _require_file(path)
    data = path.read_bytes()
    try:
        tensors = safetensors.torch.load(data)
        metadata = _read_metadata(data)
    except Exception as e:  # safetensors raises its own error types (and sometimes others) on bad bytes
        raise CheckpointError(f"corrupt or truncated checkpoint: {path}") from e
    if metadata.get("format") != FORMAT or metadata.get("sha256") != _digest(tensors):
        raise CheckpointError(f"corrupt or truncated checkpoint: {path} (checksum mismatch)")
    return tensors


def _read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's __metadata__: 8-byte little-endian header length, then a JSON header."""
    header_len = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8 : 8 + header_len]).get("__metadata__") or {})
