"""A scene video file: the frames one camera sent during an episode, with their times, in one ``.npz``.

``rdp.run`` writes the first episode's scene camera as ``episode0.npz`` beside its mp4; ``grounding.run`` reads it
(``video=RUN/episode0.npz``) to ground an instruction in what the robot saw. Arrays only (read with
``allow_pickle=False``): ``frames`` (T, H, W, 3) uint8, ``times`` (T,) float64 seconds since the episode's reset,
rising, and ``meta``, a JSON string with ``format``, ``duration`` (s) and what the writer knows (task, seed,
camera). Written under a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

VIDEO_FORMAT = "slowfast-scene-video/1"


class VideoError(ValueError):
    """A scene video file that is missing, damaged or of another kind."""


def write_scene_video(path: str | os.PathLike[str], frames: Sequence[np.ndarray], times: Sequence[float],
                      duration: float | None = None, **meta: Any) -> Path:
    """Write ``frames`` taken at ``times`` (s since the reset) to ``path``; ``duration`` defaults to the last time."""
    path = Path(path)
    arr = np.stack([np.asarray(f) for f in frames]) if len(frames) else np.zeros((0, 1, 1, 3), np.uint8)
    t = np.asarray(times, dtype=np.float64)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or t.shape != (len(arr),):
        raise VideoError(f"scene video: frames {arr.shape} {arr.dtype} and times {t.shape}: expected (T, H, W, 3) "
                         "uint8 and (T,)")
    header = {"format": VIDEO_FORMAT, "duration": float(t[-1] if duration is None and len(t) else duration or 0.0),
              **meta}
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, frames=arr, times=t, meta=np.array(json.dumps(header)))
    os.replace(tmp, path)
    return path


def is_scene_video(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a scene video file (by its meta's format); False for anything else."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "meta" in z.files and json.loads(str(z["meta"])).get("format") == VIDEO_FORMAT
    except (OSError, ValueError, zipfile.BadZipFile, AttributeError):
        return False


def read_scene_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, Mapping[str, Any]]:
    """(frames, times, meta) of a scene video file, checked; a damaged or foreign file is a ``VideoError``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            frames, times, meta = z["frames"], z["times"], json.loads(str(z["meta"]))
    except FileNotFoundError:
        raise
    except (KeyError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise VideoError(f"{path}: not a readable scene video ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != VIDEO_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise VideoError(f"{path}: not a scene video (meta format {found!r}, expected {VIDEO_FORMAT!r})")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or times.shape != (len(frames),) \
            or np.any(np.diff(times) <= 0):
        raise VideoError(f"{path}: frames {frames.shape} {frames.dtype}, times {times.shape}: expected (T, H, W, 3) "
                         "uint8 and rising times (T,)")
    return frames, times, meta
