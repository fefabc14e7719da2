"""Import a LeRobotDataset v3.0 into our recording format, so ``rdp.train`` can learn from LeRobot datasets.

``python -m dataset import --format lerobot SRC OUT [--require a,b]``

Every LeRobot episode becomes one committed episode directory (``dataset.format``), every feature a stream at the
dataset's fps, stamped ``t_k = frame_index / fps`` (after checking the ``timestamp`` column agrees within LeRobot's
own tolerance, 1e-4 s); cameras are decoded from the episode's span of its mp4 (imageio's ffmpeg: H.264, AV1, ...),
or from PNG bytes for ``image`` features. Which stream a feature becomes:

* an export of ours carries ``meta/slowfast_streams.json`` (``dataset.lerobot``): each recorded stream is cut
  back out of its columns with its recorded dtype and shape, so export -> import gives the streams ``build``
  would make at the export's fps (float64 streams pass through LeRobot's float32 columns);
* any other feature by name: ``action`` -> ``action``, ``observation.images.<cam>`` -> ``<cam>``,
  ``observation.<x>`` -> ``<x>``, others keep their key (lower-case, ``[a-z0-9_]``); ``observation.state``
  splits into ``<name>`` streams when its ``names`` read ``<name>_0, <name>_1, ...``, else becomes ``state``.
  The flat per-arm (per-pad) streams rdp reads get their arm axis back (``tcp_pos`` of width 3 A -> (A, 3),
  ``marker_offset`` of width 2 R C P -> (P, R, C, 2): ``PER_ARM_SHAPE``).
  Text features and depth videos are left out and listed under ``skipped``.

By default the result must carry the streams ``rdp.train`` reads (``RDP_TRAINING_STREAMS``); an import that
lacks one is refused, naming what is missing and what each missing stream is (``--require ''`` imports whatever
is there). The output is written under a temporary name and appears by one rename: a failure leaves nothing.
"""

from __future__ import annotations

import io
import math
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bus.message import ALLOWED_DTYPES
from dataset.durable import staged_dir, write_file_durably
from dataset.features import FEATURE_STREAMS
from dataset.format import (
    INPROGRESS_PREFIX,
    DatasetError,
    check_stream_name,
    chunk_name,
    describe_stream,
    encode_chunk,
    ensure_dataset_root,
    episode_meta,
    finalize_episode,
    read_json_object,
)
from dataset.lerobot import (
    ACTION_KEY,
    CODEBASE_VERSION,
    IMAGE_PREFIX,
    INDEX_FEATURES,
    OBS_PREFIX,
    STATE_KEY,
    STREAMS_FILE,
    STREAMS_FORMAT,
    TRAINING_RATE_HZ,
)
from sensors.types import MARKER_GRID

# What rdp.train loads from a recorded dataset (rdp.data.REQUIRED_STREAMS, a test keeps the two equal): the action
# and the raw streams its features are computed from (dataset.features), and what each one is, for the refusal.
RDP_TRAINING_STREAMS = tuple(sorted(("action", *FEATURE_STREAMS)))
STREAM_HINTS = {
    "action": "the commanded [x, y, z, rotation vector (3), grip] per arm, (7 A,)",
    "gripper_width": "the gripper opening per arm, (A,)",
    "marker_offset": "each tactile pad's marker field: (P, R, C, 2) marker displacements; the tactile embedding"
                     " rdp reads is computed from it when the dataset is loaded",
    "tcp_pos": "the tool-centre-point position per arm in the base frame, (A, 3); joint angles alone would need"
               " forward kinematics, which this importer does not do",
    "tcp_quat": "the tool-centre-point orientation per arm as a quaternion (w, x, y, z), (A, 4)",
    "wrench": "the wrist force/torque per arm, (A, 6)",
}
# A flat feature of these names is per arm (per pad for marker_offset and tactile_emb): each holds this shape.
PER_ARM_SHAPE = {"tcp_pos": (3,), "tcp_quat": (4,), "wrench": (6,), "marker_offset": (*MARKER_GRID, 2),
                 "tactile_emb": (15,)}
TIMESTAMP_TOLERANCE_S = 1e-4  # LeRobotDataset's default tolerance_s
CHUNK_BYTES = 16 * 1024 * 1024  # one stream's chunk files stay below this (camera streams split)
_STATE_NAME_RE = re.compile(r"^([a-z][a-z0-9_]*)_(\d+)$")


@dataclass(frozen=True)
class _Source:
    """Where one stream comes from: ``columns`` [a, b) of a low-dim feature, or a camera feature's frames."""

    stream: str
    feature: str
    kind: str  # "column", "video" or "image"
    dtype: str  # numpy dtype.str of the stream
    shape: tuple[int, ...] | None  # per sample; None for cameras (taken from the decoded frames)
    columns: tuple[int, int] | None = None


def import_lerobot(src: Path, out: Path, *, require: Sequence[str] | None = None) -> dict:
    """Convert the LeRobotDataset v3.0 at ``src`` into a new recorded dataset at ``out``; returns a summary.

    ``require``: streams the result must have (default ``RDP_TRAINING_STREAMS``). Refuses (``DatasetError``):
    ``out`` existing; not a v3.0 dataset; a required stream missing; frames whose ``frame_index`` or
    ``timestamp`` do not follow ``k / fps``; a video shorter than its episodes say.
    """
    src, out = Path(src), Path(out)
    if out.exists():
        raise DatasetError(f"{out} already exists; choose a new output path")
    info = _read_info(src)
    fps = int(info["fps"])
    sources, skipped = plan_streams(src, info)
    required = RDP_TRAINING_STREAMS if require is None else tuple(require)
    missing = [n for n in required if n not in {s.stream for s in sources}]
    if missing:
        raise DatasetError(_missing_message(src, info, sources, missing, default=require is None))
    rows = _episode_rows(src)
    if not rows:
        raise DatasetError(f"{src}: no episodes in meta/episodes")
    frames = 0
    shapes: dict[str, tuple[int, ...]] = {}
    with staged_dir(out, "write imported dataset", "importing") as tmp, _VideoFrames() as videos:
        ensure_dataset_root(tmp)
        data = _DataFiles(src, info["data_path"], [s.feature for s in sources if s.kind != "video"])
        for row in rows:
            arrays = _episode_arrays(src, info, row, sources, data, videos)
            for name, values in arrays.items():
                if shapes.setdefault(name, values.shape[1:]) != values.shape[1:]:
                    raise DatasetError(f"{src}: episode {row['episode_index']}: {name} frames are {values.shape[1:]},"
                                       f" earlier episodes' {shapes[name]}")
            _write_episode(tmp, src, row, arrays, fps)
            frames += int(row["length"])
    notes = [f"{key} left out: {why}" for key, why in skipped.items()]
    if fps % TRAINING_RATE_HZ:
        notes.append(f"the dataset is at {fps} fps: rdp.train's {TRAINING_RATE_HZ} Hz must divide the action rate, so"
                     f" train with rate_hz set to a divisor of {fps}")
    first = {s.stream: s for s in sources}
    return {"format": "slowfast-teleop-dataset", "source": str(src), "out": str(out), "fps": fps,
            "episodes": len(rows), "frames": frames,
            "streams": {n: {"feature": first[n].feature, "dtype": first[n].dtype, "shape": list(shape)}
                        for n, shape in shapes.items()},
            "skipped": skipped, "notes": notes}


# ----------------------------------------------------------------------------------------------- planning


def plan_streams(src: Path, info: dict) -> tuple[list[_Source], dict[str, str]]:
    """The stream each feature becomes (our stream map first, then names), and the features left out, with why."""
    features = info["features"]
    sources: list[_Source] = []
    covered: set[str] = set()
    map_file = src / STREAMS_FILE
    if map_file.exists():
        stream_map = read_json_object(map_file)
        if stream_map.get("format") != STREAMS_FORMAT:
            raise DatasetError(f"{map_file}: format {stream_map.get('format')!r}, expected {STREAMS_FORMAT!r}")
        for name, entry in stream_map["streams"].items():
            feature = entry["feature"]
            if feature not in features:
                raise DatasetError(f"{map_file}: stream {name!r} comes from feature {feature!r}, which info.json does"
                                   f" not declare (edited after export?); remove {STREAMS_FILE} to import by name")
            kind = "video" if features[feature]["dtype"] == "video" else "column"
            columns = tuple(entry["columns"]) if entry["columns"] is not None else None
            sources.append(_Source(name, feature, kind, entry["dtype"], tuple(entry["shape"]), columns))
            covered.add(feature)
    skipped: dict[str, str] = {}
    for key, ft in features.items():
        if key in covered or key in INDEX_FEATURES:
            continue
        found = _by_name(key, ft)
        if isinstance(found, str):
            skipped[key] = found
        else:
            sources.extend(found)
    names = [s.stream for s in sources]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise DatasetError(f"{src}: features {[s.feature for s in sources if s.stream in clashes]} all become"
                           f" streams named {clashes}; rename one in info.json")
    return sources, skipped


def _by_name(key: str, ft: dict) -> list[_Source] | str:
    """Sources for one feature chosen by its name, or why it is left out."""
    dtype = ft["dtype"]
    if dtype in ("video", "image"):
        if (ft.get("info") or {}).get("is_depth_map") or (ft.get("info") or {}).get("video.is_depth_map"):
            return "depth map (not imported)"
        name = _stream_name(key.removeprefix(IMAGE_PREFIX).removeprefix(OBS_PREFIX))
        return [_Source(name, key, dtype, "|u1", None)]
    try:
        np_dtype = np.dtype(dtype).str
    except TypeError:
        return f"dtype {dtype!r} (text and other non-numeric features are not streams)"
    if np_dtype not in ALLOWED_DTYPES:
        return f"dtype {dtype!r} cannot be stored in a stream"
    shape = tuple(int(s) for s in ft["shape"])
    width = math.prod(shape)
    names = ft.get("names")
    if key == STATE_KEY:
        parts = _split_state(names, width)
        if parts:
            return [_Source(n, key, "column", np_dtype, _per_arm(n, b - a), (a, b)) for n, (a, b) in parts.items()]
    name = {STATE_KEY: "state", ACTION_KEY: "action"}.get(key) or _stream_name(key.removeprefix(OBS_PREFIX))
    if isinstance(names, dict) and isinstance(names.get("shape"), list) and math.prod(names["shape"]) == width:
        shape = tuple(int(s) for s in names["shape"])
    elif len(shape) == 1:
        shape = _per_arm(name, width)
    return [_Source(name, key, "column", np_dtype, shape, (0, width))]


def _per_arm(stream: str, width: int) -> tuple[int, ...]:
    """``tcp_pos`` of width 3 A as (A, 3), as rdp.data reads it (arms first); other streams stay (width,)."""
    per = PER_ARM_SHAPE.get(stream)
    size = math.prod(per) if per else 0
    return (width // size, *per) if per and width % size == 0 else (width,)


def _split_state(names: object, width: int) -> dict[str, tuple[int, int]]:
    """``observation.state`` names ``tcp_pos_0, tcp_pos_1, ..., gripper_width_0`` -> column ranges per stream."""
    if not (isinstance(names, list) and len(names) == width and all(isinstance(n, str) for n in names)):
        return {}
    parts: dict[str, tuple[int, int]] = {}
    for column, label in enumerate(names):
        m = _STATE_NAME_RE.match(label)
        if not m:
            return {}
        stream, i = m.group(1), int(m.group(2))
        start = parts.get(stream, (column, column))[0]
        if column - start != i or (stream in parts and parts[stream][1] != column):
            return {}  # not a run 0, 1, 2, ... of one name
        parts[stream] = (start, column + 1)
    return parts


def _stream_name(label: str) -> str:
    name = re.sub(r"[^a-z0-9_]", "_", label.lower())[:64]
    if not name[:1].isalpha():
        name = ("f_" + name)[:64]
    if name in INDEX_FEATURES:
        name = ("lerobot_" + name)[:64]
    check_stream_name(name)
    return name


def _missing_message(src: Path, info: dict, sources: list[_Source], missing: list[str], default: bool) -> str:
    who = "rdp.train needs" if default else "were required (--require)"
    lines = [f"{src}: lacks streams {missing} that {who}; its features {sorted(info['features'])} import as"
             f" streams {sorted(s.stream for s in sources)}"]
    lines += [f"{n} is {STREAM_HINTS[n]}" for n in missing if n in STREAM_HINTS]
    lines.append("pass --require a,b (or --require '' ) to import what is there")
    return "; ".join(lines)


# ----------------------------------------------------------------------------------------------- reading



def _read_info(src: Path) -> dict:
    path = src / "meta" / "info.json"
    if not path.exists():
        raise DatasetError(f"{src}: not a LeRobot dataset (no meta/info.json)")
    info = read_json_object(path)
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise DatasetError(f"{path}: codebase_version {version!r}; this importer reads {CODEBASE_VERSION!r} (convert"
                           " older datasets with lerobot's convert_dataset_v21_to_v30 first)")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise DatasetError(f"{path}: no {key!r}")
    if not (isinstance(info["fps"], int) and info["fps"] >= 1):
        raise DatasetError(f"{path}: fps {info['fps']!r} is not a positive integer")
    return info


def _episode_rows(src: Path) -> list[dict]:
    """Every row of ``meta/episodes`` without its ``stats/`` columns, in episode order."""
    rows: list[dict] = []
    for path in sorted((src / "meta" / "episodes").glob("*/*.parquet")):
        names = pq.read_schema(path).names
        rows += pq.read_table(path, columns=[c for c in names if not c.startswith("stats/")]).to_pylist()
    return sorted(rows, key=lambda r: r["episode_index"])


class _DataFiles:
    """The columns we need of one data file at a time (episodes are stored in file order)."""

    def __init__(self, src: Path, template: str, features: list[str]) -> None:
        self.src, self.template = src, template
        self.columns = list(dict.fromkeys([*features, "episode_index", "frame_index", "timestamp"]))
        self.path: Path | None = None
        self.table: pa.Table | None = None

    def episode(self, row: dict) -> pa.Table:
        path = self.src / self.template.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        if path != self.path:
            try:
                self.table, self.path = pq.read_table(path, columns=self.columns), path
            except (OSError, pa.ArrowInvalid, KeyError) as e:
                raise DatasetError(f"{path}: cannot read columns {self.columns} ({e})") from e
        return self.table.filter(pc.equal(self.table["episode_index"], row["episode_index"]))


class _VideoFrames:
    """Sequential decoding of each video file: episodes are read in order, so a file is decoded about once."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.reader = None
        self.frames: Iterator[np.ndarray] | None = None
        self.position = 0

    def __enter__(self) -> _VideoFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        self.reader = self.frames = self.path = None

    def read(self, path: Path, first: int, count: int, fps: int) -> np.ndarray:
        """Frames ``first .. first + count - 1`` of ``path`` as (count, H, W, 3) uint8."""
        if path != self.path or first < self.position:
            self.close()
            if not path.exists():
                raise DatasetError(f"{path}: missing video")
            self.reader = imageio.get_reader(path, format="FFMPEG")
            rate = float(self.reader.get_meta_data().get("fps") or fps)
            if abs(rate - fps) > 1e-3 * fps:
                raise DatasetError(f"{path}: video at {rate:g} fps, the dataset at {fps}; frames cannot be matched")
            self.path, self.frames, self.position = path, self.reader.iter_data(), 0
        out = []
        for _ in range(first + count - self.position):
            frame = next(self.frames, None)
            if frame is None:
                raise DatasetError(f"{path}: ends at frame {self.position}, but an episode needs frames"
                                   f" {first}..{first + count - 1}")
            if self.position >= first:
                out.append(np.asarray(frame, dtype=np.uint8))
            self.position += 1
        return np.stack(out)


def _episode_arrays(src: Path, info: dict, row: dict, sources: list[_Source], data: _DataFiles,
                    videos: _VideoFrames) -> dict[str, np.ndarray]:
    """Every stream of one episode, (length, ...) each, in frame order."""
    k, n, fps = row["episode_index"], int(row["length"]), int(info["fps"])
    table = data.episode(row)
    order = np.argsort(table["frame_index"].to_numpy(), kind="stable")
    table = table.take(pa.array(order))
    frame_index = table["frame_index"].to_numpy()
    if table.num_rows != n or not np.array_equal(frame_index, np.arange(n)):
        raise DatasetError(f"{src}: episode {k} has {table.num_rows} rows (frame_index {frame_index[:3]}...), its"
                           f" meta/episodes row says {n} frames 0..{n - 1}")
    drift = np.abs(table["timestamp"].to_numpy().astype(np.float64) - frame_index / fps)
    if drift.size and drift.max() > TIMESTAMP_TOLERANCE_S:
        bad = int(np.argmax(drift > TIMESTAMP_TOLERANCE_S))  # the first frame off the grid
        raise DatasetError(f"{src}: episode {k} frame {bad}: timestamp {table['timestamp'][bad]} is not"
                           f" {bad} / {fps} (within {TIMESTAMP_TOLERANCE_S} s); frames must be at one fps")
    arrays: dict[str, np.ndarray] = {}
    for s in sources:
        if s.kind == "video":
            first = round(float(row[f"videos/{s.feature}/from_timestamp"]) * fps)
            where = {"chunk_index": row[f"videos/{s.feature}/chunk_index"],
                     "file_index": row[f"videos/{s.feature}/file_index"]}
            path = src / info["video_path"].format(video_key=s.feature, **where)
            arrays[s.stream] = videos.read(path, first, n, fps)
        elif s.kind == "image":
            arrays[s.stream] = np.stack([_decode_image(cell, src, s.feature) for cell in table[s.feature].to_pylist()])
        else:
            values = _numeric(table[s.feature], n, s.feature)[:, s.columns[0]:s.columns[1]]
            arrays[s.stream] = values.reshape(n, *s.shape).astype(np.dtype(s.dtype))
    return arrays


def _numeric(column: pa.ChunkedArray, n: int, feature: str) -> np.ndarray:
    """A scalar, fixed-size-list or nested-list column as (n, width)."""
    values = column.combine_chunks()
    while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type) \
            or pa.types.is_large_list(values.type):
        values = pc.list_flatten(values)
    flat = values.to_numpy(zero_copy_only=False)
    if n == 0 or flat.size % n:
        raise DatasetError(f"feature {feature!r}: {flat.size} values for {n} frames")
    return flat.reshape(n, -1)


def _decode_image(cell: dict | None, src: Path, feature: str) -> np.ndarray:
    """An ``image`` feature's cell: PNG/JPEG bytes embedded in the parquet (LeRobot embeds them when saving)."""
    if not cell or not cell.get("bytes"):
        raise DatasetError(f"{src}: feature {feature!r} has a frame without embedded image bytes")
    image = np.asarray(imageio.imread(io.BytesIO(cell["bytes"])))
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise DatasetError(f"{src}: feature {feature!r} holds {image.dtype} {image.shape} images; expected RGB uint8")
    return image


# ----------------------------------------------------------------------------------------------- writing


def _write_episode(root: Path, src: Path, row: dict, arrays: dict[str, np.ndarray], fps: int) -> Path:
    """One committed episode, written with the recorder's own steps (durable chunks, meta.json, one rename)."""
    n = int(row["length"])
    t = np.arange(n, dtype=np.float64) / fps
    work = root / f"{INPROGRESS_PREFIX}{uuid.uuid4().hex}"
    os.mkdir(work)
    streams, files = {}, {}
    for name, values in arrays.items():
        step = max(1, CHUNK_BYTES // max(1, values[:1].nbytes))
        chunks, times = [], []
        for seq, start in enumerate(range(0, n, step)):
            chunks.append(chunk_name(name, seq))
            times.append(t[start:start + step])
            chunk = encode_chunk(times[-1], values[start:start + step])
            files[chunks[-1]] = write_file_durably(work / chunks[-1], chunk)
        streams[name] = describe_stream(values.dtype.str, values.shape[1:], times, chunks)
    tasks = [str(task) for task in row.get("tasks") or []]
    begin = {"task": tasks[0] if tasks else None, "seed": row.get("slowfast/seed"), "started_unix": None,
             "user": {"lerobot": {"source": str(src), "episode_index": row["episode_index"], "tasks": tasks,
                                  **({"exported_from": row["slowfast/source"]} if row.get("slowfast/source") else {})}}}
    success = row.get("slowfast/success")
    meta = episode_meta(begin, streams, files, success=success if isinstance(success, bool) else None,
                        salvaged=bool(row.get("slowfast/salvaged")))
    return finalize_episode(root, work, meta)
