"""Export a recorded dataset to the LeRobotDataset v3.0 layout, so LeRobot users can load our demonstrations.

``python -m dataset export DIR --format lerobot --out OUT [--fps 25] [--streams a,b] [--state a,b]
[--action action]``::

    OUT/
      meta/info.json                               codebase_version "v3.0", fps, features, totals, path templates
      meta/stats.json                              per feature min/max/mean/std/count/q01/q10/q50/q90/q99
      meta/tasks.parquet                           task (the pandas index) -> task_index
      meta/episodes/chunk-000/file-000.parquet     one row per episode: length, tasks, where its rows and frames
                                                   are, and its own statistics as ``stats/<feature>/<stat>``
      meta/slowfast_streams.json                   which recorded stream is which columns (what ``import`` reads)
      data/chunk-000/file-000.parquet              one row per frame, every episode (frame_index, episode_index, ...)
      videos/<camera key>/chunk-000/file-000.mp4   every episode's frames of one camera, back to back (H.264)

LeRobot stores every column at one integer rate, and its ``delta_timestamps`` must be multiples of ``1 / fps``, so
the rate is a choice, not a measurement: the default is ``TRAINING_RATE_HZ`` (25), the rate ``rdp.train`` resamples
demonstrations to (``configs/train.yaml``), so a LeRobot policy sees the steps ours trains on. Each episode is
resampled onto ``t_k = t0 + k / fps`` by zero-order hold (``dataset.format.common_clock``, the rule ``build``
uses: the latest sample not after ``t_k``); streams recorded slower than ``fps`` (10 Hz cameras) repeat their last
sample and are listed under ``held_streams`` in the summary. Columns:

* ``observation.state``: the ``--state`` streams (default ``tcp_pos, tcp_quat, gripper_width``), flattened and
  concatenated, float32; ``action``: the action stream, float32;
* ``observation.<name>``: every other low-dimensional stream (wrench, marker_offset, tactile_emb, ...) flattened
  to 1-D float32, its recorded shape kept in the feature's ``names`` as ``{"shape": [...]}``;
* ``observation.images.<camera>``: every uint8 (H, W, 3) stream, as video;
* ``timestamp`` (k / fps, float32), ``frame_index``, ``episode_index``, ``index`` (global row), ``task_index``.

``--streams`` chooses the recorded streams that go in besides state and action (which always do); by default every
stream that can be a column does. A stream with one sample in an episode (``outcome_score``, which older
``teleop.collect`` recordings wrote at the end) is episode metadata, not a time series, and image streams other than
RGB have no video form: by default they are left out and named under ``skipped_streams``; chosen, they are refused.

Schema points that LeRobot's loader (``lerobot.datasets``, 0.6.1) depends on, checked against its source:

* a feature of shape ``[1]`` is a plain scalar column (``feature_utils.get_hf_features_from_features`` maps
  ``shape == (1,)`` to ``datasets.Value``, and ``dataset_writer.save_episode`` reshapes such values to ``(N,)``);
  wider 1-D features are fixed-size lists of the declared length;
* per-episode statistics (``compute_stats.compute_episode_stats``) of every feature, index columns included:
  ``min, max, mean, std`` and the quantiles ``q01, q10, q50, q90, q99`` shaped like one frame of a vector feature
  (``(1,)`` for a scalar, ``(D,)`` for a vector), ``count`` = ``[frames]``; for a camera, per channel on 0..1,
  shaped ``(3, 1, 1)``. They are flattened into the episodes table as ``stats/<feature>/<stat>`` columns
  (``dataset_metadata.save_episode``), which LeRobot's split/delete/merge tools re-aggregate;
* ``stats.json`` is the aggregate of the per-episode statistics exactly as ``compute_stats.aggregate_stats`` forms
  it (count-weighted mean, pooled variance, count-weighted quantiles), so it matches what those tools recompute.

Our quantiles are exact (``numpy.quantile``, linear interpolation; LeRobot estimates them from a 5000-bin
histogram) and camera statistics use every frame (LeRobot samples up to ~100 frames per episode). One data file
and one video file per camera hold all episodes (LeRobot splits files at 100/200 MB when *it* records; readers
follow each episode's ``data/file_index`` and ``videos/<key>/file_index``, so one file is valid). The export is
written under a temporary name and appears by one rename: a failure leaves nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dataset.durable import staged_dir
from dataset.format import (
    DatasetError,
    common_clock,
    is_image_stream,
    list_episodes,
    list_in_progress,
    load_stream,
    load_times,
    measured_rate_hz,
    read_meta,
)
from dataset.viz import camera_streams

CODEBASE_VERSION = "v3.0"
# The rate rdp.train resamples demonstrations to (configs/train.yaml `rate_hz`, rdp.train.TrainConfig); teleop
# sits below rdp, so the number is repeated here and a test keeps the two equal.
TRAINING_RATE_HZ = 25
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
STREAMS_FILE = "meta/slowfast_streams.json"
STREAMS_FORMAT = "slowfast-lerobot-streams"
DEFAULT_STATE = ("tcp_pos", "tcp_quat", "gripper_width")
STATE_KEY = "observation.state"
ACTION_KEY = "action"
OBS_PREFIX = "observation."
IMAGE_PREFIX = "observation.images."
VIDEO_CODEC = ("libx264", "h264")  # (ffmpeg encoder, name in info.json)
ROBOT_TYPE = "franka_panda_sim"
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}  # LeRobot's DEFAULT_QUANTILES


def export_lerobot(
    root: Path,
    out: Path,
    *,
    fps: int = TRAINING_RATE_HZ,
    streams: Sequence[str] | None = None,
    state: Sequence[str] | None = None,
    action: str = "action",
) -> dict:
    """Write ``out`` as a LeRobotDataset v3.0 built from the committed episodes of ``root``; returns a summary.

    Refuses (``DatasetError``): no committed episodes; ``out`` existing; an unknown or missing stream; episodes
    whose streams differ in name, dtype or shape; a chosen stream with fewer than two samples in an episode; a
    non-positive fps; camera images of odd size (H.264 4:2:0) or other than RGB.
    """
    root, out = Path(root), Path(out)
    if out.exists():
        raise DatasetError(f"{out} already exists; choose a new output path")
    if isinstance(fps, bool) or not (isinstance(fps, int) and fps >= 1):
        raise DatasetError(f"--fps must be a positive integer (LeRobot stores one integer rate), got {fps}")
    episodes = list_episodes(root)
    if not episodes:
        pending = len(list_in_progress(root))
        raise DatasetError(f"{root}: no committed episodes" + (f" ({pending} in progress: run `recover`)" if pending
                                                                 else ""))
    metas = [read_meta(ep) for ep in episodes]
    layout = _Layout.plan(episodes, metas, streams, state, action)
    with staged_dir(out, "write LeRobot export", "exporting") as tmp:
        summary = _write(tmp, episodes, metas, layout, fps)
    return summary | {"out": str(out)}


class _Layout:
    """Which recorded stream becomes which LeRobot feature, and the dtype/shape every episode must share."""

    def __init__(self, state: list[str], action: str, extra: list[str], cameras: list[str], specs: dict,
                 skipped: dict[str, str]) -> None:
        self.state, self.action, self.extra, self.cameras = state, action, extra, cameras
        self.specs, self.skipped = specs, skipped

    @classmethod
    def plan(cls, episodes: list[Path], metas: list[dict], chosen: Sequence[str] | None,
             state: Sequence[str] | None, action: str) -> _Layout:
        recorded = metas[0]["streams"]
        unknown = [n for n in [*(chosen or []), *(state or []), action] if n not in recorded]
        if unknown:
            raise DatasetError(f"streams {unknown} not recorded; {episodes[0].name} has {sorted(recorded)}"
                               " (choose with --streams a,b, --state a,b and --action NAME)")
        unusable: dict[str, str] = {}  # stream -> why it cannot be a LeRobot column
        for ep, meta in zip(episodes, metas, strict=True):
            for n, spec in meta["streams"].items():
                if spec["num_samples"] < 2:
                    unusable[n] = (f"{spec['num_samples']} sample(s) in {ep.name}: episode metadata, not a time series"
                                   " at one fps")
        rgb = set(camera_streams(metas[0]))
        for n, spec in recorded.items():
            if is_image_stream(spec) and n not in rgb:
                unusable[n] = f"{spec['dtype']} {spec['shape']} images: only RGB (H, W, 3) uint8 ones become videos"
        pool = list(chosen) if chosen is not None else [n for n in recorded if n not in unusable]
        state = list(state) if state else [n for n in DEFAULT_STATE if n in recorded and n not in unusable]
        if not state:
            raise DatasetError(f"no state streams: none of {list(DEFAULT_STATE)} is recorded; choose with --state a,b")
        selected = list(dict.fromkeys([*state, action, *pool]))
        refused = [f"{n!r} ({unusable[n]})" for n in selected if n in unusable]
        if refused:
            raise DatasetError(f"streams {', '.join(refused)} cannot be exported; leave them out (--streams)")
        cameras = [n for n in selected if n in rgb]
        for cam in cameras:
            h, w = recorded[cam]["shape"][:2]
            if h % 2 or w % 2:
                raise DatasetError(f"camera stream {cam!r} is {h}x{w}; H.264 (yuv420p) needs even sizes")
        used = {*state, action, *cameras}
        extra = sorted(n for n in selected if n not in used)
        specs = {n: (recorded[n]["dtype"], tuple(recorded[n]["shape"])) for n in [*state, action, *extra, *cameras]}
        skipped = {n: why for n, why in unusable.items() if n not in selected}
        layout = cls(state, action, extra, cameras, specs, skipped)
        for ep, meta in zip(episodes, metas, strict=True):
            layout.check(ep.name, meta)
        return layout

    @property
    def streams(self) -> list[str]:
        return list(self.specs)

    def width(self, name: str) -> int:
        return int(np.prod(self.specs[name][1], dtype=np.int64))

    def check(self, where: str, meta: dict) -> None:
        for name, spec in self.specs.items():
            found = meta["streams"].get(name)
            if found is None or (found["dtype"], tuple(found["shape"])) != spec:
                got = None if found is None else (found["dtype"], tuple(found["shape"]))
                raise DatasetError(f"{where}: stream {name!r} is {got}, the first episode's is {spec}; "
                                   "export episodes recorded with the same streams (or leave it out: --streams)")

    def lowdim_features(self) -> dict[str, list[str]]:
        """LeRobot feature -> the recorded streams concatenated into it, in column order."""
        return {STATE_KEY: self.state, ACTION_KEY: [self.action], **{OBS_PREFIX + n: [n] for n in self.extra}}

    def features(self, fps: int) -> dict[str, dict]:
        state_names = [f"{n}_{i}" for n in self.state for i in range(self.width(n))]
        feats: dict[str, dict] = {
            STATE_KEY: {"dtype": "float32", "shape": [len(state_names)], "names": state_names},
            ACTION_KEY: {"dtype": "float32", "shape": [self.width(self.action)],
                         "names": [f"{self.action}_{i}" for i in range(self.width(self.action))]},
        }
        for name in self.extra:
            feats[OBS_PREFIX + name] = {"dtype": "float32", "shape": [self.width(name)],
                                        "names": {"shape": list(self.specs[name][1])}}
        for cam in self.cameras:
            h, w, c = self.specs[cam][1]
            feats[IMAGE_PREFIX + cam] = {
                "dtype": "video", "shape": [h, w, c], "names": ["height", "width", "channels"],
                "info": {"video.height": h, "video.width": w, "video.codec": VIDEO_CODEC[1],
                         "video.pix_fmt": "yuv420p", "video.fps": fps, "video.channels": c, "has_audio": False,
                         "is_depth_map": False},
            }
        feats["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for name in INDEX_FEATURES[1:]:
            feats[name] = {"dtype": "int64", "shape": [1], "names": None}
        return feats

    def stream_map(self) -> dict[str, dict]:
        """``meta/slowfast_streams.json``'s ``streams``: enough to cut every recorded stream back out exactly."""
        entries: dict[str, dict] = {}
        for feature, names in self.lowdim_features().items():
            start = 0
            for n in names:
                entries[n] = {"feature": feature, "columns": [start, start + self.width(n)],
                              "dtype": self.specs[n][0], "shape": list(self.specs[n][1])}
                start += self.width(n)
        for cam in self.cameras:
            entries[cam] = {"feature": IMAGE_PREFIX + cam, "columns": None, "dtype": self.specs[cam][0],
                            "shape": list(self.specs[cam][1])}
        return entries


def _write(tmp: Path, episodes: list[Path], metas: list[dict], layout: _Layout, fps: int) -> dict:
    features = layout.features(fps)
    lowdim = layout.lowdim_features()
    tasks: dict[str, int] = {}
    columns: dict[str, list[np.ndarray]] = {name: [] for name in [*lowdim, *INDEX_FEATURES]}
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
            task = str(meta.get("task"))
            frame_index = np.arange(n_frames, dtype=np.int64)
            episode = {name: np.concatenate([values[n].reshape(n_frames, -1) for n in names], axis=1)
                       .astype(np.float32) for name, names in lowdim.items()}
            episode |= {"timestamp": (frame_index / fps).astype(np.float32), "frame_index": frame_index,
                        "episode_index": np.full(n_frames, k, np.int64), "index": total + frame_index,
                        "task_index": np.full(n_frames, tasks.setdefault(task, len(tasks)), np.int64)}
            episode = {name: _as_declared(v, features[name]["shape"]) for name, v in episode.items()}
            stats = {name: episode_stats(v) for name, v in episode.items()}
            for name, v in episode.items():
                columns[name].append(v)
            row = {"episode_index": k, "tasks": [task], "length": n_frames,
                   "data/chunk_index": 0, "data/file_index": 0,
                   "dataset_from_index": total, "dataset_to_index": total + n_frames}
            for cam in layout.cameras:
                frames = values[cam]  # (n_frames, H, W, 3) uint8, already held onto the clock
                for frame in frames:
                    writers[cam].append_data(frame)
                key = IMAGE_PREFIX + cam
                stats[key] = image_stats(frames)
                row |= {f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                        f"videos/{key}/from_timestamp": total / fps,
                        f"videos/{key}/to_timestamp": (total + n_frames) / fps}
            row |= {f"stats/{name}/{stat}": value.tolist() for name, s in stats.items() for stat, value in s.items()}
            row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                    "slowfast/source": ep.name, "slowfast/seed": meta.get("seed"),
                    "slowfast/success": meta.get("success"), "slowfast/salvaged": bool(meta.get("salvaged"))}
            rows.append((row, stats))
            total += n_frames
    finally:
        for writer in writers.values():
            writer.close()

    _write_parquet(tmp / DATA_PATH.format(chunk_index=0, file_index=0),
                   pa.table({name: _column(np.concatenate(parts)) for name, parts in columns.items()}),
                   row_groups=[row["length"] for row, _ in rows])
    _write_parquet(tmp / EPISODES_PATH.format(chunk_index=0, file_index=0), pa.Table.from_pylist([r for r, _ in rows]))
    _write_parquet(tmp / "meta" / "tasks.parquet", _tasks_table(tasks))
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
    stats = aggregate_stats([s for _, s in rows])
    _write_json(tmp / "meta" / "info.json", info)
    _write_json(tmp / "meta" / "stats.json", {name: {k: v.tolist() for k, v in s.items()} for name, s in stats.items()})
    _write_json(tmp / STREAMS_FILE, {
        "format": STREAMS_FORMAT, "version": 1, "fps": fps,
        "resampling": "zero-order hold on t_k = t0 + k / fps (latest sample with t <= t_k)",
        "streams": layout.stream_map(),
    })
    return {"format": "lerobot", "codebase_version": CODEBASE_VERSION, "fps": fps, "total_episodes": len(episodes),
            "total_frames": total, "tasks": list(tasks), "features": list(features),
            "held_streams": {n: round(r, 3) for n, r in sorted(held.items())}, "skipped_streams": layout.skipped}


# ----------------------------------------------------------------------------------------------- statistics


def episode_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of one low-dim column over an episode, shaped as LeRobot keeps them: (N,) -> (1,), (N, D) -> (D,).

    ``count`` is ``[N]``; quantiles are exact (linear interpolation between order statistics).
    """
    v = values.reshape(values.shape[0], -1).astype(np.float64)
    stats = {"min": v.min(0), "max": v.max(0), "mean": v.mean(0), "std": v.std(0),
             "count": np.array([v.shape[0]], np.int64)}
    stats |= dict(zip(QUANTILES, np.quantile(v, list(QUANTILES.values()), axis=0), strict=True))
    return stats


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of (N, H, W, C) uint8 frames on 0..1, each shaped (C, 1, 1); ``count`` = ``[N]``.

    Counted from a 256-bin histogram per channel, so exact quantiles cost no sort of N * H * W values.
    """
    channels = frames.shape[-1]
    hist = np.stack([np.bincount(frames[..., c].reshape(-1), minlength=256) for c in range(channels)])  # (C, 256)
    levels = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum(1, keepdims=True).astype(np.float64)  # (C, 1)
    mean = (hist * levels).sum(1) / n[:, 0]
    var = (hist * (levels[None] - mean[:, None]) ** 2).sum(1) / n[:, 0]
    first = np.argmax(hist > 0, axis=1)
    last = 255 - np.argmax(hist[:, ::-1] > 0, axis=1)
    stats = {"min": levels[first], "max": levels[last], "mean": mean, "std": np.sqrt(var)}
    cumulative = np.cumsum(hist, axis=1)  # sorted position p holds the first level whose cumulative count > p
    for key, q in QUANTILES.items():
        pos = q * (n[:, 0] - 1)
        lo = np.array([np.searchsorted(cumulative[c], np.floor(pos[c]), side="right") for c in range(channels)])
        hi = np.array([np.searchsorted(cumulative[c], np.ceil(pos[c]), side="right") for c in range(channels)])
        stats[key] = levels[lo] + (pos - np.floor(pos)) * (levels[hi] - levels[lo])
    stats = {k: v.reshape(channels, 1, 1) for k, v in stats.items()}
    return stats | {"count": np.array([frames.shape[0]], np.int64)}


def aggregate_stats(per_episode: Sequence[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Dataset statistics from per-episode ones, formed as LeRobot's ``aggregate_stats`` forms them: min of minima,
    count-weighted mean, pooled variance, count-weighted mean of each quantile (an estimate: quantiles do not
    pool exactly; LeRobot's own tools recompute ``stats.json`` this way after a split or merge)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in per_episode[0]:
        parts = [s[name] for s in per_episode]
        counts = np.stack([p["count"] for p in parts]).astype(np.float64)  # (E, 1)
        means = np.stack([p["mean"] for p in parts])
        w = counts.reshape(-1, *([1] * (means.ndim - 1)))
        total = counts.sum()
        mean = (means * w).sum(0) / total
        var = ((np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2) * w).sum(0) / total
        out[name] = {"min": np.min(np.stack([p["min"] for p in parts]), 0),
                     "max": np.max(np.stack([p["max"] for p in parts]), 0),
                     "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)], np.int64)}
        out[name] |= {q: (np.stack([p[q] for p in parts]) * w).sum(0) / total for q in QUANTILES}
    return out


# ----------------------------------------------------------------------------------------------- files


def _as_declared(values: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A shape-[1] feature is a scalar per frame, (N,); wider ones are (N, D)."""
    return values.reshape(-1) if list(shape) == [1] else values.reshape(values.shape[0], -1)


def _column(values: np.ndarray) -> pa.Array:
    """(N,) as a plain column, (N, D) as a fixed-size list of D (what ``datasets`` writes for ``List(length=D)``)."""
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
