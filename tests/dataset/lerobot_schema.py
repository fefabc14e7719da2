"""A reader of LeRobotDataset v3.0 that follows LeRobot's documented schema, written apart from ``dataset.lerobot``
so the tests do not check the exporter against itself (``make check-lerobot`` asks the real ``lerobot`` package).

What it holds a dataset to (LeRobot 0.6.1, ``lerobot/datasets``):

* ``meta/info.json``: the ``DatasetInfo`` fields, ``codebase_version`` "v3.0", an integer fps, the five default
  features (``timestamp`` float32, ``frame_index`` / ``episode_index`` / ``index`` / ``task_index`` int64, all
  shape [1]), totals that match the files;
* data parquet: one column per non-video feature, of its dtype; a shape-[1] feature is a plain scalar column
  (``datasets.Value``), a shape-[D] feature a list of exactly D values per row, 2-D and up nested lists;
  ``index`` runs 0..N-1, each episode's rows are contiguous with ``frame_index`` 0..L-1 and ``timestamp`` L / fps;
* ``meta/episodes``: per episode its tasks, length, row range, data file, and per camera its video file and
  ``[from_timestamp, to_timestamp)``; ``stats/<feature>/<stat>`` columns for every feature and every stat
  (min, max, mean, std, count, q01, q10, q50, q90, q99): shape (1,) for scalars, (D,) for vectors, (C, 1, 1)
  on 0..1 for cameras, count ``[length]``, ordered min <= q01 <= ... <= q99 <= max;
* ``meta/stats.json``: the same stats for every feature; ``meta/tasks.parquet``: a pandas frame indexed by task;
* videos: each episode's span holds exactly ``length`` frames at ``fps``, aligned to 1 / fps, inside its file;
* ``delta_timestamps``: each delta a multiple of 1 / fps within ``tolerance_s`` (``check_delta_timestamps``).

``read_lerobot(root)`` checks all of that (``SchemaError`` names the file, feature and rule) and returns the data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DEFAULT_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                    "task_index": "int64"}
INFO_KEYS = ("codebase_version", "fps", "features", "total_episodes", "total_frames", "total_tasks", "chunks_size",
             "data_files_size_in_mb", "video_files_size_in_mb", "data_path", "video_path", "robot_type", "splits")
QUANTILE_KEYS = ("q01", "q10", "q50", "q90", "q99")
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)
TOLERANCE_S = 1e-4  # LeRobotDataset's default tolerance_s


class SchemaError(AssertionError):
    """The dataset breaks a rule of the v3.0 schema; the message says which."""


@dataclass
class LeRobotView:
    """What a v3.0 dataset holds, as numpy: ``data[feature]`` (N,) or (N, *shape), episode rows, stats, tasks."""

    root: Path
    info: dict
    data: dict[str, np.ndarray]
    episodes: list[dict]
    stats: dict[str, dict[str, np.ndarray]]
    tasks: dict[str, int]
    episode_stats: list[dict[str, dict[str, np.ndarray]]] = field(default_factory=list)

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.info["features"].items() if f["dtype"] == "video"]

    def rows(self, episode: int) -> slice:
        ep = self.episodes[episode]
        return slice(ep["dataset_from_index"], ep["dataset_to_index"])

    def episode_frames(self, key: str, episode: int) -> np.ndarray:
        """The decoded frames of one camera over one episode, (length, H, W, C) uint8."""
        ep = self.episodes[episode]
        first = round(ep[f"videos/{key}/from_timestamp"] * self.fps)
        return _decode(self._video_path(key, ep))[first:first + ep["length"]]

    def _video_path(self, key: str, ep: Mapping) -> Path:
        return self.root / self.info["video_path"].format(video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"],
                                                          file_index=ep[f"videos/{key}/file_index"])


def check_delta_timestamps(delta_timestamps: Mapping[str, Sequence[float]], fps: int,
                           tolerance_s: float = TOLERANCE_S) -> dict[str, list[int]]:
    """LeRobot's rule: every delta is a multiple of 1 / fps within ``tolerance_s``; returns the frame offsets."""
    bad = {key: [d for d in deltas if abs(d * fps - round(d * fps)) / fps > tolerance_s]
           for key, deltas in delta_timestamps.items()}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        raise ValueError(f"delta_timestamps {bad} are not multiples of 1/{fps} s within {tolerance_s} s")
    return {key: [round(d * fps) for d in deltas] for key, deltas in delta_timestamps.items()}


def read_lerobot(root: Path) -> LeRobotView:
    """Read and check a v3.0 dataset (``SchemaError`` on the first rule broken)."""
    root = Path(root)
    info = _load_json(root / "meta" / "info.json")
    _require(set(INFO_KEYS) <= set(info), f"info.json lacks {sorted(set(INFO_KEYS) - set(info))}")
    _require(set(info) <= set(INFO_KEYS) | {"tools"}, f"info.json has keys LeRobot ignores with a warning:"
             f" {sorted(set(info) - set(INFO_KEYS))}")
    _require(info["codebase_version"] == "v3.0", f"codebase_version {info['codebase_version']!r}")
    fps = info["fps"]
    _require(isinstance(fps, int) and fps > 0, f"fps {fps!r} is not a positive integer")
    features = info["features"]
    for name, dtype in DEFAULT_FEATURES.items():
        _require(features.get(name, {}).get("dtype") == dtype and features[name]["shape"] == [1],
                 f"default feature {name}: {features.get(name)}, expected {dtype} shape [1]")

    data = _read_data(root, info)
    n = info["total_frames"]
    _require(np.array_equal(data["index"], np.arange(n)), "index is not 0..total_frames-1")
    episodes = _read_episodes(root)
    _require(len(episodes) == info["total_episodes"], f"{len(episodes)} episode rows, info says"
             f" {info['total_episodes']}")
    view = LeRobotView(root, info, data, episodes, {}, _read_tasks(root, info))
    for k, ep in enumerate(episodes):
        _check_episode(view, k, ep)
    view.episode_stats = [_episode_stats(view, ep) for ep in episodes]
    view.stats = _read_stats(root, features)
    return view


# ----------------------------------------------------------------------------------------------- parts


def _require(condition: object, message: str) -> None:
    if not condition:
        raise SchemaError(message)


def _load_json(path: Path) -> dict:
    _require(path.exists(), f"{path} missing")
    return json.loads(path.read_text())


def _read_data(root: Path, info: dict) -> dict[str, np.ndarray]:
    files = sorted((root / "data").glob("*/*.parquet"))
    _require(files, f"{root}/data holds no parquet file")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    expected = [k for k, f in info["features"].items() if f["dtype"] not in ("video",)]
    _require(sorted(table.column_names) == sorted(expected),
             f"data columns {sorted(table.column_names)}, features say {sorted(expected)}")
    data = {}
    for name in expected:
        feature = info["features"][name]
        data[name] = _column(name, table[name].combine_chunks(), feature["dtype"], list(feature["shape"]))
    return data


def _column(name: str, column: pa.Array, dtype: str, shape: list[int]) -> np.ndarray:
    """A column as numpy, checking it has the declared layout: scalar for [1], lists of the declared lengths."""
    n = len(column)
    if shape == [1]:
        _require(not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)),
                 f"{name}: shape [1] must be a scalar column, found {column.type}")
        values = column.to_numpy(zero_copy_only=False)
    else:
        values = column
        for depth, size in enumerate(shape):
            _require(pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type),
                     f"{name}: shape {shape} needs a list at depth {depth}, found {values.type}")
            lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
            _require(np.all(lengths == size), f"{name}: rows of {set(lengths.tolist())} values at depth {depth},"
                     f" declared {size}")
            values = pc.list_flatten(values)
        values = values.to_numpy(zero_copy_only=False).reshape(n, *shape)
    _require(values.dtype == np.dtype(dtype), f"{name}: stored as {values.dtype}, declared {dtype}")
    return values


def _read_episodes(root: Path) -> list[dict]:
    files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    _require(files, "meta/episodes holds no parquet file")
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: r["episode_index"])


def _read_tasks(root: Path, info: dict) -> dict[str, int]:
    table = pq.read_table(root / "meta" / "tasks.parquet")
    pandas_meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    _require(pandas_meta.get("index_columns") == ["task"], "tasks.parquet is not a frame indexed by task")
    tasks = {row["task"]: row["task_index"] for row in table.to_pylist()}
    _require(sorted(tasks.values()) == list(range(info["total_tasks"])), f"task indices {tasks}")
    return tasks


def _check_episode(view: LeRobotView, k: int, ep: dict) -> None:
    info, fps = view.info, view.fps
    for key in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index", "meta/episodes/chunk_index", "meta/episodes/file_index"):
        _require(key in ep, f"episode {k} row lacks {key}")
    _require(ep["episode_index"] == k, f"episode rows are not 0..E-1 (row {k} is {ep['episode_index']})")
    rows, length = view.rows(k), ep["length"]
    _require(rows.stop - rows.start == length, f"episode {k}: rows {rows} for length {length}")
    _require(k == 0 or rows.start == view.episodes[k - 1]["dataset_to_index"], f"episode {k} not contiguous")
    data_file = view.root / info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                                     file_index=ep["data/file_index"])
    _require(data_file.exists(), f"episode {k}: data file {data_file} missing")
    _require(np.all(view.data["episode_index"][rows] == k), f"episode {k}: rows of other episodes in its range")
    _require(np.array_equal(view.data["frame_index"][rows], np.arange(length)), f"episode {k}: frame_index")
    drift = np.abs(view.data["timestamp"][rows] - np.arange(length) / fps)
    _require(drift.max(initial=0) <= TOLERANCE_S, f"episode {k}: timestamps off k / fps by {drift.max()}")
    task_names = {v: t for t, v in view.tasks.items()}
    _require({task_names[i] for i in view.data["task_index"][rows]} <= set(ep["tasks"]), f"episode {k}: tasks")
    for key in view.video_keys:
        path = view._video_path(key, ep)
        _require(path.exists(), f"episode {k}: {path} missing")
        start, stop = ep[f"videos/{key}/from_timestamp"], ep[f"videos/{key}/to_timestamp"]
        _require(abs(start * fps - round(start * fps)) <= TOLERANCE_S * fps, f"episode {k} {key}: from_timestamp"
                 f" {start} not on the 1/{fps} grid")
        _require(round((stop - start) * fps) == length, f"episode {k} {key}: [{start}, {stop}) holds"
                 f" {(stop - start) * fps:g} frames, length {length}")
        frames = _decode(path)
        _require(round(stop * fps) <= len(frames), f"episode {k} {key}: ends at frame {round(stop * fps)}, the"
                 f" file has {len(frames)}")
        h, w, c = view.info["features"][key]["shape"]
        _require(frames.shape[1:] == (h, w, c), f"{key}: frames {frames.shape[1:]}, declared {(h, w, c)}")


def _stat_shape(feature: dict) -> tuple[int, ...]:
    if feature["dtype"] in ("video", "image"):
        return (feature["shape"][-1], 1, 1)
    return (math.prod(feature["shape"]),) if len(feature["shape"]) == 1 else tuple(feature["shape"])


def _check_stats(where: str, stats: Mapping[str, object], feature: dict, count: int | None) -> dict[str, np.ndarray]:
    _require(set(STAT_KEYS) <= set(stats), f"{where}: lacks stats {sorted(set(STAT_KEYS) - set(stats))}")
    out = {k: np.asarray(stats[k], dtype=np.float64) for k in STAT_KEYS}
    _require(out["count"].shape == (1,) and (count is None or out["count"][0] == count),
             f"{where}: count {out['count']}, expected [{count}]")
    shape = _stat_shape(feature)
    for key in STAT_KEYS[:4] + QUANTILE_KEYS:
        _require(out[key].shape == shape, f"{where}/{key}: shape {out[key].shape}, expected {shape}")
    order = [out["min"], *(out[q] for q in QUANTILE_KEYS), out["max"]]
    _require(all(np.all(a <= b + 1e-9) for a, b in zip(order, order[1:], strict=False)),
             f"{where}: not min <= q01 <= ... <= q99 <= max")
    _require(np.all(out["min"] - 1e-9 <= out["mean"]) and np.all(out["mean"] <= out["max"] + 1e-9), f"{where}: mean")
    if feature["dtype"] == "video":
        _require(np.all(out["min"] >= 0) and np.all(out["max"] <= 1), f"{where}: camera stats not on 0..1")
    return out


def _episode_stats(view: LeRobotView, ep: dict) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for name, feature in view.info["features"].items():
        cells = {s: ep.get(f"stats/{name}/{s}") for s in STAT_KEYS}
        _require(all(v is not None for v in cells.values()), f"episode {ep['episode_index']}: meta/episodes lacks"
                 f" stats/{name}/<stat> columns {[s for s, v in cells.items() if v is None]}")
        out[name] = _check_stats(f"episode {ep['episode_index']} stats/{name}", cells, feature, ep["length"])
    return out


def _read_stats(root: Path, features: dict) -> dict[str, dict[str, np.ndarray]]:
    stats = _load_json(root / "meta" / "stats.json")
    _require(set(stats) == set(features), f"stats.json features {sorted(stats)}, info.json {sorted(features)}")
    return {name: _check_stats(f"stats.json {name}", stats[name], features[name], None) for name in features}


_VIDEO_CACHE: dict[tuple[Path, float], np.ndarray] = {}


def _decode(path: Path) -> np.ndarray:
    key = (path, path.stat().st_mtime)
    if key not in _VIDEO_CACHE:
        with imageio.get_reader(path) as reader:
            _VIDEO_CACHE[key] = np.stack(list(reader.iter_data()))
    return _VIDEO_CACHE[key]
