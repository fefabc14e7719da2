"""Export a recorded dataset to the LeRobotDataset v3.0 layout, so LeRobot users can load our demonstrations.

``python -m teleop.dataset export DIR --format lerobot --out OUT [--fps N] [--state a,b] [--action action]``::

    OUT/
      meta/info.json                               codebase_version "v3.0", fps, features, totals, path templates
      meta/stats.json                              per feature min/max/mean/std/count (images: per channel, 0..1)
      meta/tasks.parquet                           task (the pandas index) -> task_index
      meta/episodes/chunk-000/file-000.parquet     one row per episode: length, tasks, where its rows and frames are
      data/chunk-000/file-000.parquet              one row per frame, every episode (frame_index, episode_index, ...)
      videos/<camera key>/chunk-000/file-000.mp4   every episode's frames of one camera, back to back (H.264)

LeRobot stores every column at one rate, so each episode is resampled onto ``t_k = t0 + k / fps`` by zero-order
hold (``teleop.dataset.common_clock``, the rule ``build`` uses: the latest sample not after ``t_k``). The default
fps is the action stream's native rate; streams recorded slower (cameras at 10 Hz under 50 Hz actions) repeat
their last sample and are listed under ``held_streams`` in the summary. Columns:

* ``observation.state``: the ``--state`` streams (default ``tcp_pos, tcp_quat, gripper_width``), flattened and
  concatenated, float32; ``action``: the action stream, float32;
* ``observation.<name>``: every other low-dimensional stream (wrench, marker_offset, tactile_emb, ...),
  flattened to 1-D float32, its recorded shape kept in the feature's ``names`` as ``{"shape": [...]}``;
* ``observation.images.<camera>``: every uint8 (H, W, 3) stream, as video;
* ``timestamp`` (k / fps, float32), ``frame_index``, ``episode_index``, ``index`` (global row), ``task_index``.

One data file and one video file per camera hold all episodes (LeRobot splits files at 100/200 MB when *it*
records; readers follow each episode's ``data/file_index`` and ``videos/<key>/file_index``, so one file is
valid). The export is written under a temporary name and appears by one rename: a failure leaves nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from teleop.dataset import (
    DatasetError,
    common_clock,
    list_episodes,
    list_in_progress,
    load_stream,
    load_times,
    measured_rate_hz,
    read_meta,
)
from teleop.durable import staged_dir
from teleop.viz import camera_streams

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_STATE = ("tcp_pos", "tcp_quat", "gripper_width")
IMAGE_PREFIX = "observation.images."
VIDEO_CODEC = ("libx264", "h264")  # (ffmpeg encoder, name in info.json)
ROBOT_TYPE = "franka_panda_sim"
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def export_lerobot(
    root: Path, out: Path, *, fps: int | None = None, state: Sequence[str] | None = None, action: str = "action"
) -> dict:
    """Write ``out`` as a LeRobotDataset v3.0 built from the committed episodes of ``root``; returns a summary.

    Refuses (``DatasetError``): no committed episodes; ``out`` existing; a missing state/action stream; episodes
    whose streams differ in name, dtype or shape; a non-positive fps; camera images of odd size (H.264 4:2:0).
    """
    root, out = Path(root), Path(out)
    if out.exists():
        raise DatasetError(f"{out} already exists; choose a new output path")
    episodes = list_episodes(root)
    if not episodes:
        pending = len(list_in_progress(root))
        raise DatasetError(f"{root}: no committed episodes" + (f" ({pending} in progress: run `recover`)" if pending
                                                                 else ""))
    metas = [read_meta(ep) for ep in episodes]
    layout = _Layout.plan(metas[0], state, action)
    for ep, meta in zip(episodes, metas, strict=True):
        layout.check(ep.name, meta)
    if fps is None:
        rates = [measured_rate_hz(load_times(ep, action, m)) for ep, m in zip(episodes, metas, strict=True)]
        known = [r for r in rates if r]
        if not known:
            raise DatasetError(f"{root}: cannot measure the {action!r} rate (fewer than 2 samples); pass --fps")
        fps = int(round(float(np.median(known))))
    if not (isinstance(fps, int) and fps >= 1):
        raise DatasetError(f"--fps must be a positive integer (LeRobot stores one integer rate), got {fps}")

    with staged_dir(out, "write LeRobot export", "exporting") as tmp:
        summary = _write(tmp, episodes, metas, layout, fps)
    return summary | {"out": str(out)}


class _Layout:
    """Which recorded stream becomes which LeRobot feature, and the shapes every episode must share."""

    def __init__(self, state: list[str], action: str, extra: list[str], cameras: list[str], specs: dict) -> None:
        self.state, self.action, self.extra, self.cameras, self.specs = state, action, extra, cameras, specs

    @classmethod
    def plan(cls, meta: dict, state: Sequence[str] | None, action: str) -> _Layout:
        streams = meta["streams"]
        state = list(state) if state else [n for n in DEFAULT_STATE if n in streams]
        missing = [n for n in [*state, action] if n not in streams]
        if missing or not state:
            raise DatasetError(
                f"streams {missing or '(no state)'} not recorded; the dataset has {sorted(streams)}"
                " (choose with --state a,b and --action NAME)"
            )
        cameras = camera_streams(meta)
        for cam in cameras:
            h, w = streams[cam]["shape"][:2]
            if h % 2 or w % 2:
                raise DatasetError(f"camera stream {cam!r} is {h}x{w}; H.264 (yuv420p) needs even sizes")
        used = {*state, action, *cameras}
        extra = sorted(n for n in streams if n not in used)
        specs = {n: (streams[n]["dtype"], tuple(streams[n]["shape"])) for n in [*state, action, *extra, *cameras]}
        return cls(state, action, extra, cameras, specs)

    @property
    def streams(self) -> list[str]:
        return list(self.specs)

    def check(self, where: str, meta: dict) -> None:
        for name, spec in self.specs.items():
            found = meta["streams"].get(name)
            if found is None or (found["dtype"], tuple(found["shape"])) != spec:
                got = None if found is None else (found["dtype"], tuple(found["shape"]))
                raise DatasetError(f"{where}: stream {name!r} is {got}, the first episode's is {spec}; "
                                   "export episodes recorded with the same streams")

    def features(self, fps: int) -> dict[str, dict]:
        def width(name: str) -> int:
            return int(np.prod(self.specs[name][1], dtype=np.int64))

        state_names = [f"{n}_{i}" for n in self.state for i in range(width(n))]
        feats: dict[str, dict] = {
            "observation.state": {"dtype": "float32", "shape": [len(state_names)], "names": state_names},
            "action": {"dtype": "float32", "shape": [width(self.action)],
                       "names": [f"{self.action}_{i}" for i in range(width(self.action))]},
        }
        for name in self.extra:
            feats[f"observation.{name}"] = {"dtype": "float32", "shape": [width(name)],
                                            "names": {"shape": list(self.specs[name][1])}}
        for cam in self.cameras:
            h, w, c = self.specs[cam][1]
            feats[IMAGE_PREFIX + cam] = {
                "dtype": "video", "shape": [h, w, c], "names": ["height", "width", "channels"],
                "info": {"video.height": h, "video.width": w, "video.codec": VIDEO_CODEC[1],
                         "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                         "video.channels": c, "has_audio": False},
            }
        feats["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for name in INDEX_FEATURES[1:]:
            feats[name] = {"dtype": "int64", "shape": [1], "names": None}
        return feats


def _write(tmp: Path, episodes: list[Path], metas: list[dict], layout: _Layout, fps: int) -> dict:
    tasks: dict[str, int] = {}
    columns: dict[str, list[np.ndarray]] = {"observation.state": [], "action": [],
                                            **{f"observation.{n}": [] for n in layout.extra}}
    index_cols: dict[str, list[np.ndarray]] = {k: [] for k in INDEX_FEATURES}
    image_stats = {cam: _ChannelStats() for cam in layout.cameras}
    writers = {cam: _video_writer(tmp / VIDEO_PATH.format(video_key=IMAGE_PREFIX + cam, chunk_index=0, file_index=0),
                                  fps) for cam in layout.cameras}
    held: dict[str, float] = {}
    rows: list[dict] = []
    total = 0
    try:
        for k, (ep, meta) in enumerate(zip(episodes, metas, strict=True)):
            times = {n: load_times(ep, n, meta) for n in layout.streams}
            for n, t in times.items():
                rate = measured_rate_hz(t)
                if rate is not None and rate < fps * 0.99:
                    held[n] = min(held.get(n, rate), rate)
            clock, idx = common_clock(times, float(fps), ep.name)
            n_frames = int(clock.shape[0])
            values = {n: load_stream(ep, n, meta)[1][idx[n]] for n in layout.streams}
            columns["observation.state"].append(
                np.concatenate([values[n].reshape(n_frames, -1) for n in layout.state], axis=1).astype(np.float32))
            columns["action"].append(values[layout.action].reshape(n_frames, -1).astype(np.float32))
            for n in layout.extra:
                columns[f"observation.{n}"].append(values[n].reshape(n_frames, -1).astype(np.float32))
            task = str(meta.get("task"))
            task_index = tasks.setdefault(task, len(tasks))
            frame_index = np.arange(n_frames, dtype=np.int64)
            index_cols["timestamp"].append((frame_index / fps).astype(np.float32))
            index_cols["frame_index"].append(frame_index)
            index_cols["episode_index"].append(np.full(n_frames, k, np.int64))
            index_cols["index"].append(total + frame_index)
            index_cols["task_index"].append(np.full(n_frames, task_index, np.int64))
            row = {"episode_index": k, "tasks": [task], "length": n_frames,
                   "data/chunk_index": 0, "data/file_index": 0,
                   "dataset_from_index": total, "dataset_to_index": total + n_frames}
            for cam in layout.cameras:
                frames = values[cam]  # (n_frames, H, W, 3) uint8, already held onto the clock
                for frame in frames:
                    writers[cam].append_data(frame)
                image_stats[cam].add(frames)
                key = IMAGE_PREFIX + cam
                row |= {f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                        f"videos/{key}/from_timestamp": total / fps,
                        f"videos/{key}/to_timestamp": (total + n_frames) / fps}
            row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                    "slowfast/source": ep.name, "slowfast/seed": meta.get("seed"),
                    "slowfast/success": meta.get("success"), "slowfast/salvaged": bool(meta.get("salvaged"))}
            rows.append(row)
            total += n_frames
    finally:
        for writer in writers.values():
            writer.close()

    data = {name: np.concatenate(parts) for name, parts in (columns | index_cols).items()}
    _write_parquet(tmp / DATA_PATH.format(chunk_index=0, file_index=0),
                   pa.table({name: _column(values) for name, values in data.items()}),
                   row_groups=[row["length"] for row in rows])
    _write_parquet(tmp / EPISODES_PATH.format(chunk_index=0, file_index=0), pa.Table.from_pylist(rows))
    _write_parquet(tmp / "meta" / "tasks.parquet", _tasks_table(tasks))
    features = layout.features(fps)
    stats = {name: _stats(values) for name, values in data.items()}
    stats |= {IMAGE_PREFIX + cam: s.result() for cam, s in image_stats.items()}
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": ROBOT_TYPE,
        "total_episodes": len(episodes),
        "total_frames": total,
        "total_tasks": len(tasks),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if layout.cameras else None,
        "features": features,
    }
    _write_json(tmp / "meta" / "info.json", info)
    _write_json(tmp / "meta" / "stats.json", stats)
    return {"format": "lerobot", "codebase_version": CODEBASE_VERSION, "fps": fps, "total_episodes": len(episodes),
            "total_frames": total, "tasks": list(tasks), "features": list(features),
            "held_streams": {n: round(r, 3) for n, r in sorted(held.items())}}


def _column(values: np.ndarray) -> pa.Array:
    """1-D arrays as plain columns, (N, D) as fixed-size lists (HF ``datasets`` reads them as sequences)."""
    if values.ndim == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _tasks_table(tasks: dict[str, int]) -> pa.Table:
    """``tasks.parquet`` as pandas writes a frame indexed by ``task`` (what LeRobot's ``load_tasks`` reads)."""
    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()), "task": pa.array(list(tasks))})
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
                     "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _stats(values: np.ndarray) -> dict:
    v = values.reshape(values.shape[0], -1).astype(np.float64)
    return {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
            "std": v.std(0).tolist(), "count": [int(v.shape[0])]}


class _ChannelStats:
    """Per-channel statistics of uint8 images scaled to 0..1, shaped (C, 1, 1) as LeRobot keeps them."""

    def __init__(self) -> None:
        self.n, self.total, self.squares = 0, 0.0, 0.0
        self.low, self.high = None, None

    def add(self, frames: np.ndarray) -> None:
        x = frames.reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
        self.n += x.shape[0]
        self.total = self.total + x.sum(0)
        self.squares = self.squares + (x * x).sum(0)
        low, high = x.min(0), x.max(0)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)

    def result(self) -> dict:
        mean = self.total / self.n
        std = np.sqrt(np.maximum(self.squares / self.n - mean * mean, 0.0))

        def shaped(a: np.ndarray) -> list:
            return a.reshape(-1, 1, 1).tolist()

        return {"min": shaped(self.low), "max": shaped(self.high), "mean": shaped(mean), "std": shaped(std),
                "count": [self.n]}


def _video_writer(path: Path, fps: int):  # noqa: ANN202 - imageio's writer type is private
    path.parent.mkdir(parents=True, exist_ok=True)
    # -g 2: a key frame every 2 frames, so a reader seeking to any episode's first frame decodes little.
    return imageio.get_writer(path, fps=fps, codec=VIDEO_CODEC[0], pixelformat="yuv420p", macro_block_size=1,
                              quality=None, ffmpeg_params=["-crf", "18", "-g", "2"], ffmpeg_log_level="error")


def _write_parquet(path: Path, table: pa.Table, row_groups: Sequence[int] = ()) -> None:
    """One file; with ``row_groups`` (rows per group, e.g. per episode) a reader can fetch one episode alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, table.schema, compression="snappy") as writer:
        start = 0
        for rows in row_groups or [table.num_rows]:
            writer.write_table(table.slice(start, rows), row_group_size=max(rows, 1))
            start += rows


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
