"""Checkpoints without pickle: ``model.safetensors`` (weights + normaliser arrays) and ``config.json``.

A checkpoint is a directory::

    ckpt/
      config.json         {"format": ..., "model": "<class name>", "config": {...}}   readable, hand-editable
      model.safetensors   model state_dict under its own keys, normaliser arrays under "normalizer."

The safetensors header carries a SHA-256 of every tensor's name, dtype, shape and bytes, so a flipped byte in the
payload is caught at load time (safetensors itself only checks the header and the sizes). Each file is written
to a temporary name, fsynced and renamed into place, so a crash leaves either the old file or the new one, never
half of one. The weights are renamed first and the config last; ``load`` checks both.

A *training run* (``python -m rdp.train ... out=RUN``, the shipped ``checkpoints/<task>/<policy>``) is a directory
of such checkpoints (``policy/``, for rdp ``tokenizer/``) plus ``run.json``: what the policy was trained on (task,
rates, observation keys and sizes, horizon, action size). ``load_run_info`` checks ``run.json`` against
``RUN_FIELDS`` (required keys, types, values) and ``check_run_against_weights`` checks it against the configs the
weights were loaded with, so a hand-edited or mismatched ``run.json`` fails on load with the file and the field
named instead of running with sizes its weights do not have. ``python -m rdp.checkpoint RUN_OR_CHECKPOINT ...``
runs every check and prints one JSON line per directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from bus.cli import UsageError, command
from bus.config import compose

FORMAT = "slowfast-checkpoint-v1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
NORMALIZER_PREFIX = "normalizer."


class CheckpointError(UsageError):
    """A checkpoint exists but cannot be used: corrupt, truncated, or not matching the model (a bad input file:
    exit 2 on the command line, see ``bus.cli``)."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What ``load_checkpoint`` returns besides filling the model: the stored config and normaliser arrays."""

    model_name: str
    config: dict[str, Any]
    normalizer: dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------- saving


def config_from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    """A config dataclass from its ``dataclasses.asdict`` after a JSON round trip (top-level lists back to tuples);
    unknown keys raise ``ValueError`` naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


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


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Optimizer state without pickle: tensors to optimizer.safetensors, the rest (param groups) to JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in sd["state"].items():
        for k, v in entries.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars[f"{pid}.{k}"] = v
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(directory / "optimizer.safetensors"))
    (directory / "optimizer.json").write_text(json.dumps({"param_groups": sd["param_groups"], "scalars": scalars}))


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Fill ``optimizer`` from what ``save_optimizer`` wrote to ``directory``."""
    try:
        tensors = safetensors.torch.load_file(str(directory / "optimizer.safetensors"))
        meta = json.loads((directory / "optimizer.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{directory}: unreadable optimizer state ({e})") from e
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --------------------------------------------------------------------------------------------------- loading


def load_config(directory: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """(model class name, config dict) from directory/config.json, e.g. to build the model before ``load``."""
    path = Path(directory) / CONFIG_FILE
    _require_file(path)
    try:
        header = _parse_json(path)
    except CheckpointError as e:
        raise CheckpointError(f"corrupt or truncated checkpoint: {e}") from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {header.get('format')!r}, expected {FORMAT!r}")
    if not isinstance(header.get("model"), str) or not isinstance(header.get("config"), dict):
        raise CheckpointError(f"corrupt or truncated checkpoint: {path}: needs \"model\" (a class name) and "
                              f"\"config\" (a mapping), has {sorted(header)}")
    return header["model"], dict(header["config"])


def read_json(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The JSON object in ``path``. Missing: ``FileNotFoundError`` naming the path and ``what`` belongs there;
    not JSON (truncated, damaged): ``CheckpointError`` naming the file, line and column; not an object: the same."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; {what}")
    return _parse_json(path)


def _parse_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg}); the file is "
                              "truncated or damaged") from e
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not a text file (byte {e.start} is not UTF-8); the file is damaged") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found a {type(obj).__name__}")
    return obj


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


# --------------------------------------------------------------------------------------------------- training runs

RUN_FILE = "run.json"
RUN_FORMAT = "slowfast-rdp-run-v1"
RUN_LAYOUT = ("a training run (python -m rdp.train ... out=RUN) holds run.json, policy/ and its method's parts (rdp: "
              "tokenizer/)")


def _methods() -> tuple[str, ...]:
    from rdp.api import method_names

    return method_names()


def _method(name: str) -> Any:
    from rdp.api import get_method

    return get_method(name)


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _list_of(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(ok(x) for x in v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _or_null(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


# run.json: field -> (check, what it must be, required). Optional fields are written only by some runs (image
# policies) or are notes for people (data, training, action_representation).
RUN_FIELDS: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "format": (lambda v: v == RUN_FORMAT, repr(RUN_FORMAT), True),
    "task": (_is_str, "a task name", True),
    "method": (lambda v: isinstance(v, str) and v in _methods(), "a registered method (rdp.methods)", True),
    "rate_hz": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                "a number of Hz > 0", True),
    "obs_steps": (_int_at_least(1), "an integer >= 1: observation steps To", True),
    "horizon": (_int_at_least(1), "an integer >= 1: action steps per chunk T", True),
    "obs_keys": (lambda v: _list_of(_is_str)(v) and len(v) > 0, "a non-empty list of observation names", True),
    "obs_dims": (_list_of(_int_at_least(1)), "a list of integers >= 1, one per obs_keys entry", True),
    "cond_key": (_or_null(_is_str), "an observation name or null", True),
    "action_dim": (_int_at_least(1), "an integer >= 1: action size Da", True),
    "num_arms": (_int_at_least(1), "an integer >= 1", True),
    "num_pads": (_int_at_least(0), "an integer >= 0", True),
    "tactile_embedding": (_is_str, "an embedding name: sensors/embeddings/<name>.npz", True),
    "tokenizer": (lambda v: v is None or isinstance(v, dict), "a mapping of tokenizer sizes, or null (dp)", True),
    "action_frame": (lambda v: v in ("relative", "absolute"), "'relative' or 'absolute'", False),
    "image_keys": (_list_of(_is_str), "a list of camera stream names", False),
    "image_size": (_or_null(_int_at_least(1)), "an integer >= 1 or null", False),
    "camera_size": (lambda v: isinstance(v, dict), "a mapping camera -> [height, width]", False),
    "image_hz": (lambda v: isinstance(v, dict), "a mapping camera -> Hz", False),
    "perception": (lambda v: isinstance(v, dict) and isinstance(v.get("camera"), str),
                   "a mapping with the camera the perception head reads (rdp.perception)", False),
    "inference": (lambda v: isinstance(v, dict) and isinstance(v.get("noise_scale"), (int, float))
                  and not isinstance(v.get("noise_scale"), bool) and math.isfinite(v["noise_scale"])
                  and v["noise_scale"] >= 0,
                  "a mapping with noise_scale >= 0 (python -m rdp.temperature)", False),
}


def load_run_info(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``directory/run.json``, checked against ``RUN_FIELDS``; every error names the file and the field."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory; {RUN_LAYOUT}")
    path = root / RUN_FILE
    run = read_json(path, f"{RUN_LAYOUT} (run.json: what the policy was trained on)")
    for name, (ok, what, required) in RUN_FIELDS.items():
        if name not in run:
            if required:
                raise CheckpointError(f"{path}: missing field {name!r} ({what})")
            continue
        if not ok(run[name]):
            raise CheckpointError(f"{path}: {name} is {json.dumps(run[name])}, expected {what}")
    if len(run["obs_dims"]) != len(run["obs_keys"]):
        raise CheckpointError(f"{path}: obs_dims {run['obs_dims']} and obs_keys {run['obs_keys']} differ in length")
    method = run["method"]
    if "tokenizer" in _method(method).parts:
        tok = run["tokenizer"] or {}
        for name in ("latent_steps", "latent_channels"):
            if not _int_at_least(1)(tok.get(name)):
                raise CheckpointError(f"{path}: tokenizer.{name} is {json.dumps(tok.get(name))}, expected an integer "
                                      f">= 1 (method {method} needs the tokenizer's sizes)")
        if run["cond_key"] is None:
            raise CheckpointError(f"{path}: cond_key is null, but method {method} decodes with a conditioning key")
    for camera_field in ("camera_size", "image_hz"):
        absent = sorted(set(run.get("image_keys", ())) - set(run.get(camera_field, {})))
        if absent:
            raise CheckpointError(f"{path}: {camera_field} has no entry for image_keys {absent}")
    return run


def check_run_against_weights(directory: str | os.PathLike[str], run: Mapping[str, Any], policy_cfg: Any,
                              tokenizer_cfg: Any | None = None) -> None:
    """``run.json`` against the configs the run's weights were loaded with (``policy/`` and, for a method with a
    tokenizer, ``tokenizer/``; ``load_checkpoint`` has checked those against every tensor's name and shape), so the
    sizes the adapter takes from ``run.json`` (horizon, action size, observation keys and dims, latent shape) are the
    weights' sizes. ``policy_cfg``: a ``DiffusionPolicyConfig``; ``tokenizer_cfg``: a ``TokenizerConfig``."""
    from rdp.api import get_method

    path = Path(directory) / RUN_FILE
    target = get_method(run["method"]).target
    if policy_cfg.target != target:
        raise CheckpointError(f"{path}: method is {run['method']!r}, but the policy in policy/ predicts "
                              f"{policy_cfg.target} chunks, not {target} chunks")
    # (run.json field, its value there, what the weights say, whose weights)
    expected: list[tuple[str, Any, Any, str]] = [
        ("obs_steps", run["obs_steps"], policy_cfg.obs_steps, "policy"),
        ("obs_keys", run["obs_keys"], list(policy_cfg.lowdim_keys), "policy"),
        ("obs_dims", run["obs_dims"], list(policy_cfg.lowdim_dims), "policy"),
        ("image_keys", run.get("image_keys", []), list(policy_cfg.image_keys), "policy"),
    ]
    if target == "latent":
        tok = run["tokenizer"]
        expected += [("tokenizer.latent_steps", tok["latent_steps"], policy_cfg.latent_steps, "policy"),
                     ("tokenizer.latent_channels", tok["latent_channels"], policy_cfg.latent_channels, "policy")]
    else:
        expected += [("horizon", run["horizon"], policy_cfg.horizon, "policy"),
                     ("action_dim", run["action_dim"], policy_cfg.action_dim, "policy")]
    _check_expected(path, expected)
    if tokenizer_cfg is not None:
        check_tokenizer_against_run(directory, run, tokenizer_cfg)


def check_tokenizer_against_run(directory: str | os.PathLike[str], run: Mapping[str, Any], tokenizer_cfg: Any) -> None:
    """``run.json`` against the tokenizer's weights (``tokenizer/``): horizon, action size, latent shape."""
    tok = run["tokenizer"]
    _check_expected(Path(directory) / RUN_FILE, [
        ("horizon", run["horizon"], tokenizer_cfg.horizon, "tokenizer"),
        ("action_dim", run["action_dim"], tokenizer_cfg.action_dim, "tokenizer"),
        ("tokenizer.latent_steps", tok["latent_steps"], tokenizer_cfg.latent_steps, "tokenizer"),
        ("tokenizer.latent_channels", tok["latent_channels"], tokenizer_cfg.latent_channels, "tokenizer"),
    ])


def _check_expected(path: Path, expected: list[tuple[str, Any, Any, str]]) -> None:
    for name, got, want, whose in expected:
        if got != want:
            raise CheckpointError(f"{path}: {name} is {json.dumps(got)} but the {whose}'s weights ({whose}/) were "
                                  f"trained for {json.dumps(want)}")


# --------------------------------------------------------------------------------------------------- CLI


@dataclasses.dataclass
class CheckConfig:
    """``configs/rdp/checkpoint.yaml``: the directories ``python -m rdp.checkpoint`` checks."""

    runs: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.runs:
            raise UsageError("give the run or checkpoint directories to check: python -m rdp.checkpoint DIR [DIR ...]")


@command("rdp.checkpoint")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rdp.checkpoint DIR ...``: check training runs (run.json, weights, both against each other) or
    single checkpoints (config.json + model.safetensors); one JSON line per directory, exit 2 on the first bad one."""
    cfg = compose(CheckConfig, "rdp/checkpoint", list(sys.argv[1:] if argv is None else argv), "checkpoint check",
                  "runs=[RUN,RUN]", positional=("runs",))
    for arg in cfg.runs:
        root = Path(arg)
        if (root / RUN_FILE).exists() or not (root / CONFIG_FILE).exists():
            from rdp.inference import load_run

            run, slow, tokenizer = load_run(root)
            summary = {"run": str(root), "ok": True, **{k: run[k] for k in ("task", "method", "horizon", "action_dim",
                                                                             "obs_keys", "obs_dims")}}
        else:
            model_name, config = load_config(root)
            tensors = _read_weights(root / WEIGHTS_FILE)
            summary = {"checkpoint": str(root), "ok": True, "model": model_name, "tensors": len(tensors)}
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
