"""Video datasets for the world model: episodes of camera frames with the action that led into each frame.

    python -m world_model.data revisit out=data/wm-revisit episodes=400 seed=200000 [image_size=32] [jobs=1]
    python -m world_model.data recording data=RECORDING out=data/wm-wipe [camera=wrist_rgb] [image_size=32]

``recording`` turns a robot recording (``teleop.collect``, ``teleop.record_expert``, any recording in the dataset
format with a camera stream) into a video set: every frame of ``camera``, area-resized, with the action that led
into it: each arm's TCP displacement since the previous frame (3 per arm, m), each arm's gripper width (1 per arm,
m), and with ``touch`` each pad's load at the frame (3 per pad, ``dataset.features``). An episode's first frame
gets a zero displacement.

A ``VideoSet`` is one ``videos.npz`` (numpy arrays only, loaded with ``allow_pickle=False``) plus ``meta.json``:
frames (N, S, S, 3) uint8 and actions (N, Da) float32 of all episodes back to back, ``starts`` (E + 1,) the episode
boundaries, ``seeds`` (E,), and for revisit episodes ``pairs`` (P, 3) = (episode, first-visit frame, return frame)
of identical camera poses, episode-relative. Written to a temporary name and renamed, so a stopped run leaves
either the old set or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bus.cli import UsageError, command
from bus.config import compose, split_verb

if TYPE_CHECKING:
    from sensors.embedding import TactileEmbedding

FILE = "videos.npz"


@dataclass
class VideoSet:
    frames: np.ndarray  # (N, S, S, 3) uint8
    actions: np.ndarray  # (N, Da) float32
    starts: np.ndarray  # (E + 1,) int64
    seeds: np.ndarray  # (E,) int64
    pairs: np.ndarray  # (P, 3) int64: episode, first-visit frame, return frame (episode-relative)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.frames)
        if self.frames.ndim != 4 or self.frames.shape[3] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"frames must be (N, S, S, 3) uint8, got {self.frames.shape} {self.frames.dtype}")
        if self.actions.ndim != 2 or len(self.actions) != n:
            raise ValueError(f"actions must be ({n}, Da), got {self.actions.shape}")
        if self.starts[0] != 0 or self.starts[-1] != n or np.any(np.diff(self.starts) < 1):
            raise ValueError(f"starts must rise from 0 to {n}, got {self.starts[:3]}..{self.starts[-2:]}")
        if len(self.seeds) != self.episodes:
            raise ValueError(f"{len(self.seeds)} seeds for {self.episodes} episodes")

    @property
    def episodes(self) -> int:
        return len(self.starts) - 1

    @property
    def image_size(self) -> int:
        return int(self.frames.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    def episode(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames (T, S, S, 3) and actions (T, Da) of episode ``e``."""
        a, b = self.starts[e], self.starts[e + 1]
        return self.frames[a:b], self.actions[a:b]

    def episode_pairs(self, e: int) -> np.ndarray:
        """(P, 2) first-visit / return frame pairs of episode ``e``."""
        return self.pairs[self.pairs[:, 0] == e, 1:]

    @classmethod
    def from_episodes(cls, frames: Sequence[np.ndarray], actions: Sequence[np.ndarray], seeds: Sequence[int],
                      pairs: np.ndarray, meta: dict) -> VideoSet:
        """Per-episode frames (T_e, S, S, 3) and actions (T_e, Da), back to back, with their boundaries."""
        lengths = [len(f) for f in frames]
        return cls(frames=np.concatenate(frames), actions=np.concatenate(actions),
                   starts=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   seeds=np.asarray(seeds, np.int64), pairs=np.asarray(pairs, np.int64).reshape(-1, 3), meta=meta)

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{FILE}.tmp.npz"
        np.savez(tmp, frames=self.frames, actions=self.actions, starts=self.starts, seeds=self.seeds,
                 pairs=self.pairs)
        os.replace(tmp, out / FILE)
        (out / "meta.json").write_text(json.dumps({**self.meta, "episodes": self.episodes,
                                                   "frames": len(self.frames)}, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> VideoSet:
        path = Path(path)
        file = path / FILE if path.is_dir() else path
        if not file.exists():
            raise FileNotFoundError(f"{file}: no video set (make one: python -m world_model.data revisit out=DIR)")
        with np.load(file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("frames", "actions", "starts", "seeds", "pairs")}
        meta_file = file.parent / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        return cls(**arrays, meta=meta)

    def windows(self, length: int) -> np.ndarray:
        """(W,) global start indices of every window of ``length`` frames inside one episode."""
        out = [np.arange(a, b - length + 1) for a, b in zip(self.starts[:-1], self.starts[1:], strict=True)
               if b - a >= length]
        if not out:
            raise ValueError(f"no episode has {length} frames (longest {int(np.diff(self.starts).max())})")
        return np.concatenate(out)


def revisit_set(cfg: RevisitDataConfig, progress: bool = True) -> VideoSet:
    """Render ``cfg.episodes`` revisit episodes from ``cfg.seed`` on."""
    from tqdm import tqdm

    from world_model.revisit import RevisitConfig, render_episode

    rcfg = RevisitConfig(image_size=cfg.image_size)
    episodes = [render_episode(rcfg, cfg.seed + i)
                for i in tqdm(range(cfg.episodes), desc="revisit episodes", unit="ep", disable=not progress)]
    pairs = [np.column_stack([np.full(len(ep.pairs), e), ep.pairs]) for e, ep in enumerate(episodes)]
    return VideoSet.from_episodes([ep.frames for ep in episodes], [ep.actions for ep in episodes],
                                  [ep.seed for ep in episodes], np.concatenate(pairs),
                                  meta={"kind": "revisit", "revisit": asdict(rcfg), "seed": cfg.seed,
                                        "command": f"python -m world_model.data revisit out={cfg.out} "
                                                   f"episodes={cfg.episodes} seed={cfg.seed} "
                                                   f"image_size={cfg.image_size}"})


@dataclass
class RevisitDataConfig:
    """``configs/world_model/data.yaml``."""

    out: str = ""
    episodes: int = 200
    seed: int = 200000
    image_size: int = 32

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.image_size < 8:
            raise ValueError(f"episodes must be >= 1 and image_size >= 8, got {self.episodes}, {self.image_size}")


@dataclass
class RecordingDataConfig:
    """``configs/world_model/recording.yaml``."""

    data: str = ""
    out: str = ""
    camera: str = "wrist_rgb"
    image_size: int = 32
    touch: bool = True
    gripper: bool = True  # false: leave the gripper width out of the actions (a task that never grips)
    successful_only: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")


def _held(times: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Index of each stream's latest sample at or before every time in ``at`` (zero-order hold; never a later one;
    the first sample for a time before it)."""
    return np.clip(np.searchsorted(times, at, side="right") - 1, 0, None)


def recording_episode(episode: Path, meta: dict, camera: str, image_size: int,
                      embedding: TactileEmbedding | None, gripper: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One recorded episode (its ``meta.json`` read) -> frames (T, S, S, 3) uint8 and actions (T, 4 A [+ 3 P])
    float32 (module docstring; 3 A without the ``gripper``); each pad's load is added when an ``embedding`` is
    given. Frames stamped before the
    first robot state are dropped; raises ``DatasetError`` naming a missing stream."""
    from dataset.format import DatasetError, load_stream
    from rdp.data import resize_images

    needed = [camera, "tcp_pos", "gripper_width"] + (["marker_offset"] if embedding is not None else [])
    missing = [n for n in needed if n not in meta["streams"]]
    if missing:
        cams = sorted(n for n in meta["streams"] if n.endswith("_rgb"))
        raise DatasetError(f"{episode}: no stream {missing} (camera streams here: {cams}; record with cameras=true"
                           f"{', or touch=false' if missing == ['marker_offset'] else ''})")
    t_frame, frames = load_stream(episode, camera, meta)
    t_pos, pos = load_stream(episode, "tcp_pos", meta)
    t_grip, grip = load_stream(episode, "gripper_width", meta)
    keep = t_frame >= max(t_pos[0], t_grip[0]) if len(t_pos) and len(t_grip) else np.zeros(len(t_frame), bool)
    t_frame, frames = t_frame[keep], frames[keep]
    n = len(t_frame)
    here = pos[_held(t_pos, t_frame)].reshape(n, -1)
    parts = [np.diff(here, axis=0, prepend=here[:1])]
    if gripper:
        parts.append(grip[_held(t_grip, t_frame)].reshape(n, -1))
    if embedding is not None:
        t_mark, marks = load_stream(episode, "marker_offset", meta)
        parts.append(embedding.pad_load(embedding.encode(marks[_held(t_mark, t_frame)])).reshape(n, -1))
    return resize_images(frames, image_size), np.concatenate(parts, axis=1).astype(np.float32)


def recording_set(cfg: RecordingDataConfig, progress: bool = True) -> VideoSet:
    """Every (successful, with ``successful_only``) committed episode of ``cfg.data`` as a video set; episodes with
    fewer than two frames are skipped (and counted in ``meta``)."""
    from tqdm import tqdm

    from dataset.format import DatasetError, list_episodes, read_meta
    from sensors.embedding import TactileEmbedding

    embedding = TactileEmbedding.load("default") if cfg.touch else None  # once, not per episode
    root = Path(cfg.data)
    episodes = list_episodes(root) if root.is_dir() else []
    if not episodes:
        raise DatasetError(f"{root}: no committed episodes (a recording folder: teleop.collect out=DIR)")
    frames, actions, seeds, skipped = [], [], [], 0
    for episode in tqdm(episodes, desc="episodes", unit="ep", disable=not progress):
        meta = read_meta(episode)
        if cfg.successful_only and not meta.get("success"):
            continue
        f, a = recording_episode(episode, meta, cfg.camera, cfg.image_size, embedding, cfg.gripper)
        if len(f) < 2:
            skipped += 1
            continue
        frames.append(f)
        actions.append(a)
        seeds.append(int(meta.get("seed") if meta.get("seed") is not None else -1))
    if not frames:
        raise DatasetError(f"{root}: no episode with two or more {cfg.camera} frames"
                           + (" that succeeded" if cfg.successful_only else ""))
    return VideoSet.from_episodes(frames, actions, seeds, np.zeros((0, 3), np.int64),
                                  meta={"kind": "recording", "source": str(root), "camera": cfg.camera,
                                        "touch": cfg.touch, "gripper": cfg.gripper,
                                        "successful_only": cfg.successful_only,
                                        "skipped_short": skipped,
                                        "action_layout": "per arm tcp displacement (3)"
                                                         + (", per arm gripper width (1)" if cfg.gripper else "")
                                                         + (", per pad load (3)" if cfg.touch else ""),
                                        "command": f"python -m world_model.data recording data={cfg.data} "
                                                   f"out={cfg.out} camera={cfg.camera} image_size={cfg.image_size} "
                                                   f"touch={str(cfg.touch).lower()} "
                                                   f"gripper={str(cfg.gripper).lower()}"})


@command("world_model.data")
def main(argv: Sequence[str] | None = None) -> int:
    verb, rest = split_verb(list(sys.argv[1:] if argv is None else argv), ["revisit", "recording"],
                            "world_model.data", "revisit out=DIR episodes=200", __doc__)
    if verb == "recording":
        rcfg = compose(RecordingDataConfig, "world_model/recording", rest, "world-model data",
                       "recording data=RECORDING out=DIR")
        if not rcfg.data or not rcfg.out:
            raise UsageError("data=RECORDING and out=DIR are required")
        videos = recording_set(rcfg, progress=rcfg.progress)
        videos.save(Path(rcfg.out))
        print(json.dumps({"out": rcfg.out, "episodes": videos.episodes, "frames": len(videos.frames),
                          "action_dim": videos.action_dim, "skipped_short": videos.meta["skipped_short"]}))
        return 0
    cfg = compose(RevisitDataConfig, "world_model/data", rest, "world-model data", "out=DIR episodes=200")
    if not cfg.out:
        raise UsageError("out=DIR is required")
    videos = revisit_set(cfg)
    videos.save(Path(cfg.out))
    print(json.dumps({"out": cfg.out, "episodes": videos.episodes, "frames": len(videos.frames),
                      "revisit_pairs": len(videos.pairs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
