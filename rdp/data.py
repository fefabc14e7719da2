"""Training windows for the slow-fast policy, from recorded demonstrations.

Source: a ``python -m dataset build`` output (``OUT/dataset.json`` + one ``.npz`` per episode, one clock at
``rate_hz``), or a raw recorded dataset, which is built here into memory (through a temporary directory) with the
low-dim streams only. The training rate must be the built rate, and for a raw dataset must divide the native rate of
the ``action`` stream: 25 Hz from the 50 Hz control loop keeps every 2nd step (zero-order hold on ``t0 + k / 25``).

Glossary: ``N`` windows, ``To`` observation steps (2), ``T`` action horizon (32 steps at the training rate: 1.28 s
at 25 Hz), ``A`` arms, ``P`` tactile pads. A window ending at step ``i`` of an episode holds

* obs: steps ``i - To + 1 .. i`` of each low-dim key, (N, To, Dk); steps before the episode repeat step 0;
* action: steps ``i .. i + T - 1``, (N, T, Da); steps after the episode repeat its last action (Diffusion Policy's
  padding convention), so the policy learns to hold still at the end;
* cond: the tactile embedding at the same steps as the action, (N, T, P * 15) -- what the fast decoder reads at
  each tick (the action at step ``t`` was commanded having felt the pads at ``t``).

Low-dim keys (features of one step, computed here from the recorded raw streams by ``dataset.features
.lowdim_features``, the function the runtime applies to live observations; a recorded ``tactile_emb`` stream is
ignored): ``proprio`` per arm [tcp position (3), tcp rotation 6-D (6), gripper width (1)] -> (10 A,); ``tactile``
the pads' PCA embeddings of their marker fields, flattened (P * 15,); ``tactile_load`` each pad's load (3 P,);
``wrench`` per arm (6,) -> (6 A,); ``scene`` the one-shot object localisation at reset (task-defined, e.g. path
start + end points, or box centre + half-size); ``proprio_scene`` ``proprio`` with each TCP position taken relative
to the scene anchor (the scene's first 3 numbers: the path start or the box centre), so the observation does not
change when the whole scene is translated. Absolute positions
identify a demonstration (every episode starts somewhere else), which lets a policy memorise demonstrations instead
of reacting to where the tool is relative to the object; the relative form removes that shortcut.

Image keys (``image_keys``, e.g. ``wrist_rgb``) are recorded camera streams, slower than the training rate (10 Hz
cameras, 25 Hz steps). Each training step takes the latest frame at or before it (zero-order hold, never a future
frame: ``dataset.format.build_training_set`` holds image streams and still refuses low-dim streams that are too
slow), so a frame repeats for 2-3 steps exactly as it does for a live policy between camera frames
(``rdp.inference`` holds the live frame the same way). The build's clock ends at the earliest last sample, so an
episode loses the < 1 camera period after its last frame. Images stay uint8 (S, H, W, 3) in memory, optionally
area-resized once at load (``resize_images``, also applied to live frames); windows carry (N, To, H, W, 3) uint8 and
the trainer converts per batch.

Action representation: the environment takes per arm ``[x, y, z, rotvec (3), grip]``. A rotation vector jumps
from ``+pi`` to ``-pi`` around its axis, and our tools point down (rotation angle ~pi), so the learning target is
per arm ``[x, y, z, r6 (6), grip]`` (10 numbers) with ``r6`` the first two columns of the rotation matrix,
continuous everywhere (Zhou et al. 2019); ``rot6d_to_rotvec`` maps a prediction back (Gram-Schmidt, then the
matrix's rotation vector) for execution.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bus.cli import UsageError, one_line
from dataset.features import FEATURE_STREAMS, OPTIONAL_FEATURE_STREAMS, lowdim_features
from dataset.format import (
    BUILT_FORMAT_NAME,
    DATASET_FILE,
    FORMAT_NAME,
    DatasetError,
    build_training_set,
    is_image_stream,
    list_episodes,
    load_times,
    load_training_episode,
    measured_rate_hz,
    read_meta,
)
from sensors.embedding import TactileEmbedding
from spatial.rotations import matrix_to_rot6d, matrix_to_rotvec, rot6d_to_matrix, rotvec_to_matrix

if TYPE_CHECKING:
    from rdp.perception import SceneEstimator

ENV_ACTION_DIM = 7  # per arm: x, y, z, rx, ry, rz, grip
ACTION_DIM = 10  # per arm: x, y, z, r6 (6), grip
LOWDIM_KEYS = ("proprio", "tactile", "wrench", "scene", "proprio_scene", "scene_seen", "proprio_scene_seen")
OPTIONAL_STREAMS = OPTIONAL_FEATURE_STREAMS  # loaded when recorded: the one-shot object localisation at reset
REQUIRED_STREAMS = tuple(sorted(("action", *FEATURE_STREAMS)))  # the raw streams the features and actions need
# The action label, first recorded one wins: ``applied_target`` (A, 7) is the target the robot's controllers took at
# each node tick (teleop.collect records it; the teleop node's ``action`` commands are events at the operator's
# timing, not a rate), ``action`` (7 A,) the command per control step (teleop.record_expert, LeRobot imports).
ACTION_STREAMS = ("applied_target", "action")


def action_stream(streams: Mapping[str, Any]) -> str | None:
    """Which stream of ``streams`` (names -> anything) holds the action label; None when none does."""
    return next((s for s in ACTION_STREAMS if s in streams), None)


def _missing_streams(streams: Mapping[str, Any]) -> list[str]:
    missing = [s for s in FEATURE_STREAMS if s not in streams]
    return sorted(missing + (["action"] if action_stream(streams) is None else []))


class DataError(UsageError):
    """A dataset cannot be used for training; the message names the input and what was expected (a bad input:
    exit 2 on the command line, ``bus.cli``)."""


# ----------------------------------------------------------------------------------------------- actions


def env_to_policy_action(action: np.ndarray) -> np.ndarray:
    """(..., 7 A) env actions [xyz, rotvec, grip] per arm -> (..., 10 A) [xyz, r6, grip] per arm."""
    a = np.asarray(action, dtype=np.float64)
    arms = _arms(a.shape[-1], ENV_ACTION_DIM, "env action")
    a = a.reshape(*a.shape[:-1], arms, ENV_ACTION_DIM)
    r6 = matrix_to_rot6d(rotvec_to_matrix(a[..., 3:6]))
    out = np.concatenate([a[..., :3], r6, a[..., 6:]], axis=-1)
    return out.reshape(*out.shape[:-2], arms * ACTION_DIM)


def policy_to_env_action(action: np.ndarray) -> np.ndarray:
    """(..., 10 A) -> (..., 7 A): the inverse of ``env_to_policy_action`` (rotation re-orthonormalised)."""
    a = np.asarray(action, dtype=np.float64)
    arms = _arms(a.shape[-1], ACTION_DIM, "policy action")
    a = a.reshape(*a.shape[:-1], arms, ACTION_DIM)
    rv = matrix_to_rotvec(rot6d_to_matrix(a[..., 3:9]))
    out = np.concatenate([a[..., :3], rv, a[..., 9:]], axis=-1)
    return out.reshape(*out.shape[:-2], arms * ENV_ACTION_DIM)


# ----------------------------------------------------------------------------------------------- action frames

ACTION_FRAMES = ("absolute", "relative")


def shift_positions(action: np.ndarray, anchor_proprio: np.ndarray, sign: float) -> np.ndarray:
    """Add ``sign`` x the TCP positions of ``anchor_proprio`` (..., 10 A) to the positions of ``action``
    (..., T, 10 A): ``sign=-1`` makes absolute actions relative to the pose the chunk was planned from (what the
    policy learns with ``action_frame: relative``), ``sign=+1`` maps them back for execution. Rotations and the
    gripper stay absolute."""
    a = np.array(action, dtype=np.float32, copy=True)
    arms = _arms(a.shape[-1], ACTION_DIM, "policy action")
    anchor = np.asarray(anchor_proprio, dtype=np.float32).reshape(*np.shape(anchor_proprio)[:-1], arms, ACTION_DIM)
    view = a.reshape(*a.shape[:-1], arms, ACTION_DIM)
    view[..., :3] += sign * anchor[..., None, :, :3]
    return a


COND_PARTS = ("tactile", "tactile_load", "wrench", "tcp_rel", "goal")


def cond_parts(cond_key: str) -> tuple[str, ...]:
    """``"tactile"`` or ``"tactile+tcp_rel"`` -> its parts, checked: what the fast decoder reads every tick.
    ``tcp_rel`` is each arm's TCP position relative to the pose the chunk was planned from (3 A,); ``tactile_load``
    each pad's load read off its marker field (3 P,; ``lowdim_features``); ``goal`` the episode's goal (G,; in every
    state reading of a goal-conditioned episode), so the decoder knows e.g. how hard it may squeeze."""
    parts = tuple(cond_key.split("+"))
    bad = [p for p in parts if p not in COND_PARTS]
    if bad or len(set(parts)) != len(parts):
        raise ValueError(f"cond_key {cond_key!r}: parts must be distinct names from {COND_PARTS} joined by '+'")
    return parts


def cond_inputs(cond_key: str) -> list[str]:
    """The per-step features ``cond_features`` reads for ``cond_key`` (``tcp_rel`` comes from ``proprio``)."""
    return list(dict.fromkeys("proprio" if p == "tcp_rel" else p for p in cond_parts(cond_key)))


def cond_features(features: Mapping[str, np.ndarray], anchor_proprio: np.ndarray, cond_key: str) -> np.ndarray:
    """Per-step features {proprio, tactile, wrench} (..., Dk) and the chunk's anchor proprio (broadcastable to
    (..., 10 A)) -> the decoder's conditioning (..., Dc), float32 (parts concatenated in ``cond_key`` order)."""
    out = []
    for part in cond_parts(cond_key):
        if part == "tcp_rel":
            proprio = np.asarray(features["proprio"])
            arms = _arms(proprio.shape[-1], ACTION_DIM, "proprio")
            here = proprio.reshape(*proprio.shape[:-1], arms, ACTION_DIM)[..., :3]
            anchor = np.asarray(anchor_proprio)
            anchor = anchor.reshape(*anchor.shape[:-1], arms, ACTION_DIM)[..., :3]
            out.append((here - anchor).reshape(*here.shape[:-2], 3 * arms))
        else:
            out.append(np.asarray(features[part]))
    return np.concatenate(out, axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------------------------- loading


@dataclass
class Episodes:
    """Training-rate arrays of every episode, concatenated: each (S, ...) with S the total number of steps."""

    rate_hz: float
    features: dict[str, np.ndarray]  # proprio / tactile / wrench (S, Dk)
    action: np.ndarray  # (S, 10 A) policy representation
    starts: np.ndarray  # (E,) first step of each episode
    lengths: np.ndarray  # (E,)
    task: str
    num_arms: int
    num_pads: int
    source: str
    images: dict[str, np.ndarray] = field(default_factory=dict)  # image key -> (S, H, W, 3) uint8, held frames
    image_hz: dict[str, float] = field(default_factory=dict)  # image key -> native camera rate (Hz)
    camera_size: dict[str, tuple[int, int]] = field(default_factory=dict)  # image key -> recorded (H, W)


def load_episodes(
    path: str | Path, rate_hz: float, image_keys: Sequence[str] = (), image_size: int | None = None,
    embedding: TactileEmbedding | str = "default", perception: SceneEstimator | None = None,
) -> Episodes:
    """Load a built training set (its rate must equal ``rate_hz``) or build a raw recorded dataset at ``rate_hz``.
    ``image_keys``: camera streams to load as held uint8 frames, area-resized to ``image_size`` squared (None: as
    recorded); ``embedding``: the tactile embedding (or its name) the ``tactile`` features are computed with;
    ``perception``: a scene estimator (``rdp.perception``): every episode gets ``scene_seen`` (and
    ``proprio_scene_seen``), its estimate from the episode's first scene-camera frame, and loses the simulator's
    ``scene``."""
    path = Path(path)
    image_keys = tuple(image_keys)
    if not isinstance(embedding, TactileEmbedding):
        embedding = TactileEmbedding.load(embedding)
    if image_size is not None and image_size < 8:
        raise DataError(f"image_size must be >= 8 pixels or null, got {image_size}")
    if not (rate_hz > 0 and math.isfinite(rate_hz)):
        raise DataError(f"training rate must be a positive number of Hz, got {rate_hz}")
    info_file = path / DATASET_FILE
    if not info_file.is_file():
        raise DataError(f"{path}: not a dataset (no {DATASET_FILE}); expected a recorded dataset "
                        f"(python -m teleop.record_expert) or a built one (python -m dataset build)")
    try:
        info = json.loads(info_file.read_text())
    except (ValueError, OSError) as e:
        raise DataError(f"{info_file}: unreadable ({one_line(e)})") from e
    fmt = info.get("format") if isinstance(info, dict) else None
    if fmt == BUILT_FORMAT_NAME:
        return _load_built(path, info, rate_hz, image_keys=image_keys, image_size=image_size, embedding=embedding,
                           perception=perception)
    if fmt == FORMAT_NAME:
        cameras = (*image_keys, *([perception.cfg.reads] if perception is not None else []))
        _check_raw(path, rate_hz, image_keys)
        with tempfile.TemporaryDirectory(prefix="rdp-build-") as tmp:
            built = Path(tmp) / "built"
            try:
                recorded = read_meta(list_episodes(path)[0])["streams"]
                optional = tuple(s for s in OPTIONAL_STREAMS if s in recorded)
                streams = (*FEATURE_STREAMS, action_stream(recorded), *optional, *dict.fromkeys(cameras))
                build_training_set(path, rate_hz, built, streams=streams)
            except DatasetError as e:
                raise DataError(f"{path}: cannot build a training set at {rate_hz:g} Hz: {e}") from e
            return _load_built(built, json.loads((built / DATASET_FILE).read_text()), rate_hz, source=str(path),
                               image_keys=image_keys, image_size=image_size, embedding=embedding,
                               perception=perception)
    raise DataError(f"{info_file}: unknown format {fmt!r}; expected {FORMAT_NAME!r} or {BUILT_FORMAT_NAME!r}")


def _check_raw(path: Path, rate_hz: float, image_keys: Sequence[str] = ()) -> None:
    """Refuse an empty dataset, a training rate the action stream's native rate is not a multiple of, or image keys
    that are not recorded camera streams."""
    episodes = list_episodes(path)
    if not episodes:
        raise DataError(f"{path}: empty dataset, no committed episodes (record some with python -m "
                        f"teleop.record_expert, or run python -m dataset recover after a crash)")
    meta = read_meta(episodes[0])
    missing = _missing_streams(meta["streams"])
    if missing:
        raise DataError(f"{episodes[0]}: lacks streams {missing}; training needs {list(REQUIRED_STREAMS)} (or "
                        f"applied_target for the action)")
    _check_image_streams(episodes[0], meta["streams"], image_keys)
    source = action_stream(meta["streams"])
    if source == "applied_target":
        # A target holds until the next one replaces it (the controllers track it), so the one in force at each
        # training step is the right label whatever the operator's pace (4 ms apart, or 12 ms when it is slower).
        return
    native = measured_rate_hz(load_times(episodes[0], source, meta))
    if native is None:
        raise DataError(f"{episodes[0]}: the {source} stream has fewer than 2 samples; cannot tell its rate")
    ratio = native / rate_hz
    if ratio < 1 - 1e-6 or abs(ratio - round(ratio)) > 1e-3:
        raise DataError(
            f"{path}: actions ({source}) were recorded at {native:.4g} Hz; the training rate {rate_hz:g} Hz must "
            f"divide it (e.g. {native / 2:g} or {native:g} Hz) so every training step is a recorded command"
        )


def _check_image_streams(where: Path, streams: Mapping[str, Any], image_keys: Sequence[str]) -> None:
    """Every image key must be a recorded uint8 (H, W, 3) camera stream."""
    cameras = sorted(n for n, s in streams.items() if is_image_stream(s))
    for key in image_keys:
        if key not in streams:
            raise DataError(f"{where}: lacks image stream {key!r} (camera streams recorded: {cameras}); record with "
                            f"python -m teleop.record_expert ... cameras=true")
        if not is_image_stream(streams[key]) or list(streams[key]["shape"])[-1] != 3:
            raise DataError(f"{where}: stream {key!r} is {streams[key].get('dtype')} {streams[key].get('shape')}, "
                            f"not an RGB image stream (uint8 (H, W, 3)); camera streams: {cameras}")


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) area-averaging matrix: output pixel i averages the input interval it covers, partial pixels
    weighted by their overlap (exact for any ratio; 96 -> 48 is a 2x2 box mean)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resize_images(images: np.ndarray, size: int | None) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., size, size, 3) uint8 by area averaging (rounded); ``None`` or the same size
    returns the input. One function for training data and live frames, so both see the same pixels."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(f"images: expected uint8 (..., H, W, 3), got {images.dtype} {images.shape}")
    h, w = images.shape[-3:-1]
    if size is None or (h, w) == (size, size):
        return images
    wy, wx = _area_weights(h, size), _area_weights(w, size)
    x = np.moveaxis(images.astype(np.float32), -1, -3)  # (..., 3, H, W): two small matrix products per channel
    out = np.moveaxis(wy.astype(np.float32) @ x @ wx.T.astype(np.float32), -3, -1)  # (..., size, size, 3)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _load_built(path: Path, info: dict, rate_hz: float, source: str | None = None, image_keys: Sequence[str] = (),
                image_size: int | None = None, embedding: TactileEmbedding | None = None,
                perception: SceneEstimator | None = None) -> Episodes:
    built_rate = float(info.get("rate_hz", float("nan")))
    if not math.isclose(built_rate, rate_hz, rel_tol=1e-9):
        raise DataError(f"{path}: built at {built_rate:g} Hz, but training was asked for {rate_hz:g} Hz; rebuild "
                        f"with python -m dataset build --rate {rate_hz:g} or set rate_hz={built_rate:g}")
    missing = _missing_streams(info.get("streams", {}))
    if missing:
        hint = (" (features are computed from raw streams when a dataset is loaded; rebuild with python -m dataset"
                " build --streams including marker_offset, or train from the raw dataset)"
                if "marker_offset" in missing else "")
        raise DataError(f"{path}: lacks streams {missing}; training needs {list(REQUIRED_STREAMS)}{hint}")
    if embedding is None:
        embedding = TactileEmbedding.load("default")
    entries = info.get("episodes", [])
    if not entries:
        raise DataError(f"{path}: empty training set, no episodes")
    entries = [e for e in entries if e.get("success") is not False]  # demonstrations that failed are not taught
    if not entries:
        raise DataError(f"{path}: every episode is marked failed (success=false); nothing to learn from")
    _check_image_streams(path, info["streams"], image_keys)
    if perception is not None and perception.cfg.reads not in info["streams"]:
        raise DataError(f"{path}: lacks the {perception.cfg.reads!r} stream the perception head reads; record with "
                        f"cameras=true (python -m teleop.record_expert ... cameras=true)")
    held_hz = info.get("held_streams", {})
    slow = [k for k in image_keys if k not in held_hz and not info["streams"][k].get("rate_hz")]
    if slow:
        raise DataError(f"{path}: the native rate of image streams {slow} is unknown (built before held_streams was "
                        f"recorded); rebuild with python -m dataset build or train from the raw dataset")
    tasks = sorted({str(e.get("task")) for e in entries})
    if len(tasks) != 1:
        raise DataError(f"{path}: episodes of several tasks {tasks}; train one task at a time")
    feats: dict[str, list[np.ndarray]] = {}
    images: dict[str, list[np.ndarray]] = {k: [] for k in image_keys}
    actions, lengths = [], []
    action_key = action_stream(info["streams"])
    with_goal = sum(e.get("goal_vector") is not None for e in entries)
    if 0 < with_goal < len(entries):
        raise DataError(f"{path}: {with_goal} of {len(entries)} episodes carry a goal; pool recordings made with "
                        f"the same goal option (task.goal), or none")
    for e in entries:
        arrays = load_training_episode(path / e["file"])
        action = arrays[action_key].reshape(arrays[action_key].shape[0], -1)
        if action.shape[0] < 1:
            raise DataError(f"{path / e['file']}: episode of zero length")
        if with_goal:  # the episode's goal, the same at every step (what the env observes as ``goal``)
            goal = np.asarray(e["goal_vector"], dtype=np.float32)
            if goal.ndim != 1 or not np.all(np.isfinite(goal)):
                raise DataError(f"{path / e['file']}: goal_vector {e['goal_vector']!r:.60}: expected a list of numbers")
            arrays["goal"] = np.broadcast_to(goal, (action.shape[0], goal.shape[0]))
        if perception is not None:  # the estimate from the first frame, as the planner makes it (rdp.api)
            seen = perception.estimate(arrays[perception.cfg.reads][0])
            arrays["scene_seen"] = np.broadcast_to(seen, (action.shape[0], seen.shape[0]))
            arrays.pop("scene", None)
        for k, v in lowdim_features(arrays, embedding).items():
            feats.setdefault(k, []).append(v)
        for k in image_keys:
            images[k].append(resize_images(arrays[k], image_size))
        actions.append(env_to_policy_action(action).astype(np.float32))
        lengths.append(action.shape[0])
    lengths_arr = np.array(lengths, dtype=np.int64)
    shapes = info["streams"]
    return Episodes(
        rate_hz=rate_hz,
        features={k: np.concatenate(v) for k, v in feats.items()},
        action=np.concatenate(actions),
        starts=np.concatenate([[0], np.cumsum(lengths_arr)[:-1]]).astype(np.int64),
        lengths=lengths_arr,
        task=tasks[0],
        num_arms=int(shapes["tcp_pos"]["shape"][0]),
        num_pads=int(shapes["marker_offset"]["shape"][0]),
        source=source or str(path),
        images={k: np.concatenate(v) for k, v in images.items()},
        image_hz={k: float(held_hz.get(k) or shapes[k].get("rate_hz") or rate_hz) for k in image_keys},
        camera_size={k: (int(shapes[k]["shape"][0]), int(shapes[k]["shape"][1])) for k in image_keys},
    )


# ----------------------------------------------------------------------------------------------- windows


@dataclass
class Windows:
    """Every training window of a set of episodes (one per step), as index arrays into ``Episodes``."""

    obs_index: np.ndarray  # (N, To) steps of the observation history
    action_index: np.ndarray  # (N, T) steps of the action chunk (and of its tactile conditioning)

    def __len__(self) -> int:
        return int(self.obs_index.shape[0])


def make_windows(episodes: Episodes, obs_steps: int = 2, horizon: int = 32) -> Windows:
    """One window per step of every episode; indices clamped to the episode (start/end padding by repetition)."""
    if obs_steps < 1 or horizon < 1:
        raise ValueError(f"obs_steps and horizon must be >= 1, got {obs_steps}, {horizon}")
    obs_idx, act_idx = [], []
    for start, n in zip(episodes.starts.tolist(), episodes.lengths.tolist(), strict=True):
        i = np.arange(n)[:, None]
        obs_idx.append(start + np.clip(i + np.arange(1 - obs_steps, 1), 0, n - 1))  # (n, To)
        act_idx.append(start + np.clip(i + np.arange(horizon), 0, n - 1))  # (n, T)
    return Windows(np.concatenate(obs_idx), np.concatenate(act_idx))


def gather(
    episodes: Episodes, windows: Windows, idx: np.ndarray | slice, obs_keys: Sequence[str], cond_key: str | None,
    action_frame: str = "absolute", image_keys: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """Windows ``idx`` -> {"obs": {key: (B, To, Dk)}, "action": (B, T, Da), "cond": (B, T, Dc) if cond_key}.
    ``action_frame="relative"``: action positions relative to the TCP at the window's last observation step.
    ``image_keys`` add {key: (B, To, H, W, 3) uint8} (held camera frames) to "obs"."""
    if action_frame not in ACTION_FRAMES:
        raise ValueError(f"action_frame must be one of {ACTION_FRAMES}, got {action_frame!r}")
    oi, ai = windows.obs_index[idx], windows.action_index[idx]
    action = episodes.action[ai]
    if action_frame == "relative":
        action = shift_positions(action, episodes.features["proprio"][oi[..., -1]], -1.0)
    out: dict = {"obs": {k: episodes.features[k][oi] for k in obs_keys}, "action": action}
    missing = [k for k in image_keys if k not in episodes.images]
    if missing:
        raise KeyError(f"image keys {missing} were not loaded (loaded: {sorted(episodes.images)}); pass them to "
                       f"load_episodes(image_keys=...)")
    out["obs"].update({k: episodes.images[k][oi] for k in image_keys})
    if cond_key is not None:
        steps = {k: episodes.features[k][ai] for k in cond_inputs(cond_key)}  # (B, T, Dk)
        out["cond"] = cond_features(steps, episodes.features["proprio"][oi[..., -1]][:, None], cond_key)
    return out


def _arms(dim: int, per_arm: int, what: str) -> int:
    arms, rem = divmod(dim, per_arm)
    if rem or arms < 1:
        raise ValueError(f"{what}: last dimension {dim} is not a multiple of {per_arm} (per arm)")
    return arms
