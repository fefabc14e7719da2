"""Episode dataset format (schema 1): writing, reading, ``verify``, ``recover``, ``build`` and merging recordings
(``merge_recordings``: the shards of a sweep into one). The command-line tools (``python -m dataset
{info,verify,recover,build,viz,export,import}``) are in ``dataset.cli``.

On disk (one directory per dataset)::

    DATASET/
      dataset.json                      {"format": "slowfast-teleop-dataset", "schema_version": 1}
      episode_000000/                   one committed episode (the name appears only after a complete commit)
        meta.json                       episode metadata, see below
        tcp_pose.000000.npz             chunk 0 of stream "tcp_pose": members ``t`` (n,) float64, ``value`` (n, ...)
        tcp_pose.000001.npz             chunk 1 ...
        wrench.000000.npz
        ...
      .inprogress-<uuid>/               an episode being recorded (or left by a crash: run ``recover``)
        begin.json                      the metadata given to ``begin`` (task, seed, ...)
        <stream>.<seq>.npz              chunks flushed so far; ``*.tmp`` = a write that never finished

Every stream keeps its native rate: each chunk carries its own float64 timestamps (seconds, the recording
clock, strictly increasing within a stream) next to the values, and nothing is resampled until ``build``.
``meta.json`` holds ``schema_version``, ``task``, ``seed``, ``success`` (``null`` when unknown),
``salvaged``, any extra user keys under ``user``, ``outcome`` (episode-level values known at the end: score,
failure, end time; older recordings kept the score as a one-sample ``outcome_score`` stream), ``duration_s``,
per stream ``{dtype, shape, rate_hz
(1 / median sample interval), num_samples, t_first, t_last, chunks}``, and ``files``: sha256 of every chunk.

Why ``.npz`` chunk files and not zarr: crash safety comes from the write protocol, not the container, and
with our own files every step of it is explicit and tested. Each chunk is written under ``*.tmp``, fsynced,
then renamed, so a chunk file is either complete or absent; the directory is fsynced after each flush. zarr
(v2 and v3) writes chunk files in place without fsync and rewrites the array's ``zarr.json`` on every
resize, so a kill between the two leaves an array whose metadata disagrees with its chunks, and the
library offers no hook to fsync. A committed episode appears only by an atomic ``rename`` of a directory
whose files and ``meta.json`` are already durable (followed by an fsync of the dataset directory), so a
reader sees either the whole episode or none of it, and a crash can cost only the episode in progress,
minus what was flushed, which ``recover`` keeps. The zip container of ``.npz`` adds a CRC per member, so a
chunk torn by the file system (power loss without the fsync ordering honoured) is detected on load.
No pickle anywhere: every load uses ``allow_pickle=False`` and object dtypes are refused at record time.

``build`` turns the mixed-rate episodes into training arrays on one clock (zero-order hold, no look-ahead):
``OUT/episode_XXXXXX.npz`` with ``timestamp`` (N,) and one (N, ...) array per stream, plus ``OUT/dataset.json``.
Camera streams (``is_camera_stream``: images, uint8 (H, W, C), and depth clouds, float32 ``*_points`` (N, 3)) may be
slower than the clock -- each step then repeats the
latest frame at or before it, as a live policy would see it -- and are listed with their native rates under
``held_streams``; a low-dim stream more than 2x slower than the clock is refused as mis-rated.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import math
import os
import re
import shutil
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bus.cli import UsageError
from dataset.durable import (
    TMP_SUFFIX,
    RecorderError,
    fsync_dir,
    hint_for,
    sha256_file,
    staged_dir,
    write_file_durably,
)

SCHEMA_VERSION = 1
FORMAT_NAME = "slowfast-teleop-dataset"
BUILT_FORMAT_NAME = "slowfast-teleop-training-set"
DATASET_FILE = "dataset.json"
META_FILE = "meta.json"
BEGIN_FILE = "begin.json"
EPISODE_PREFIX = "episode_"
INPROGRESS_PREFIX = ".inprogress-"
CLOCK_KEY = "timestamp"  # key of the common clock in built files; no stream may take this name
STREAM_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_EPISODE_RE = re.compile(r"^episode_(\d{6,})$")
_CHUNK_RE = re.compile(r"^([a-z][a-z0-9_]{0,63})\.(\d{6})\.npz$")


class DatasetError(UsageError):
    """A dataset that cannot be read or converted as asked; the message says which file or stream and why (a bad
    input: exit 2 on the command line, ``bus.cli``)."""


# ----------------------------------------------------------------------------------------------- naming


def check_stream_name(name: str) -> None:
    """Stream names become file names, so they are restricted to ``[a-z][a-z0-9_]*``."""
    if not isinstance(name, str) or not STREAM_NAME_RE.match(name) or name == CLOCK_KEY:
        raise ValueError(
            f"stream name {name!r}: expected lower-case [a-z][a-z0-9_]* of at most 64 characters, not {CLOCK_KEY!r}"
        )


def chunk_name(stream: str, seq: int) -> str:
    """File name of chunk ``seq`` of ``stream`` (sorts in order)."""
    return f"{stream}.{seq:06d}.npz"


def parse_chunk_name(name: str) -> tuple[str, int] | None:
    """``(stream, seq)`` for a chunk file name, ``None`` for anything else."""
    m = _CHUNK_RE.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def episode_index(path: Path) -> int | None:
    """Index of a committed episode directory name, ``None`` for other names."""
    m = _EPISODE_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_episodes(root: Path) -> list[Path]:
    """Committed episodes, in index order (in-progress and temporary directories are not listed)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    eps = [p for p in root.iterdir() if p.is_dir() and episode_index(p) is not None]
    return sorted(eps, key=lambda p: episode_index(p) or 0)


def list_in_progress(root: Path) -> list[Path]:
    """Episodes being recorded, or left behind by a crash."""
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: not a directory")
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and p.name.startswith(INPROGRESS_PREFIX))


# ----------------------------------------------------------------------------------------------- chunks


def encode_chunk(t: np.ndarray, values: np.ndarray) -> bytes:
    """One chunk as ``.npz`` bytes (uncompressed zip with a CRC per member)."""
    buf = io.BytesIO()
    np.savez(buf, t=np.ascontiguousarray(t, dtype=np.float64), value=np.ascontiguousarray(values))
    return buf.getvalue()


def decode_chunk(path: Path, *, times_only: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``(t, values)`` of one chunk file; raises ``DatasetError`` naming the file when it is torn or malformed."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if set(z.files) != {"t", "value"}:
                raise DatasetError(f"{path}: members {sorted(z.files)}, expected ['t', 'value']")
            t = z["t"]
            values = None if times_only else z["value"]
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DatasetError(f"{path}: unreadable chunk ({type(e).__name__}: {e})") from e
    if t.dtype != np.float64 or t.ndim != 1:
        raise DatasetError(f"{path}: timestamps are {t.dtype} {t.shape}, expected float64 (n,)")
    if values is not None and values.shape[:1] != t.shape:
        raise DatasetError(f"{path}: {values.shape[0]} values for {t.shape[0]} timestamps")
    return t, values


def measured_rate_hz(t: np.ndarray) -> float | None:
    """Native rate of a stream: 1 / median interval (robust to an operator's pause); ``None`` below 2 samples."""
    if t.shape[0] < 2:
        return None
    dt = float(np.median(np.diff(t)))
    return 1.0 / dt if dt > 0 else None


def describe_stream(dtype: str, shape: Sequence[int], t_chunks: Sequence[np.ndarray], chunks: Sequence[str]) -> dict:
    """The ``meta.json`` entry of one stream, measured from its timestamps."""
    t = np.concatenate(t_chunks) if t_chunks else np.zeros(0)
    rate = measured_rate_hz(t)
    return {
        "dtype": dtype,
        "shape": [int(s) for s in shape],
        "rate_hz": rate,
        "num_samples": int(t.shape[0]),
        "t_first": float(t[0]) if t.size else None,
        "t_last": float(t[-1]) if t.size else None,
        "chunks": list(chunks),
    }


# ----------------------------------------------------------------------------------------------- commit


def ensure_dataset_root(root: Path) -> None:
    """Create the dataset directory and its ``dataset.json`` (schema marker) if missing."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / DATASET_FILE
    if marker.exists():
        found = read_json_object(marker)
        if found.get("schema_version", 0) > SCHEMA_VERSION:
            raise DatasetError(f"{marker}: schema_version {found.get('schema_version')} is newer than {SCHEMA_VERSION}")
        return
    write_file_durably(marker, _json_bytes({"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION}))
    fsync_dir(root)


def episode_meta(
    begin_meta: Mapping[str, Any],
    streams: Mapping[str, dict],
    files: Mapping[str, str],
    *,
    success: bool | None,
    salvaged: bool,
    notes: Sequence[str] = (),
) -> dict:
    """The full ``meta.json`` object of an episode about to be committed."""
    firsts = [s["t_first"] for s in streams.values() if s["t_first"] is not None]
    lasts = [s["t_last"] for s in streams.values() if s["t_last"] is not None]
    meta = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "task": begin_meta.get("task"),
        "seed": begin_meta.get("seed"),
        "success": success,
        "salvaged": salvaged,
        "user": dict(begin_meta.get("user", {})),
        "started_unix": begin_meta.get("started_unix"),
        "committed_unix": time.time(),
        "duration_s": (max(lasts) - min(firsts)) if firsts else 0.0,
        "streams": dict(streams),
        "files": dict(files),
    }
    if notes:
        meta["notes"] = list(notes)
    return meta


def finalize_episode(root: Path, work_dir: Path, meta: dict) -> Path:
    """Make an in-progress directory a committed episode: durable ``meta.json``, then an atomic rename.

    The directory's chunks must already be durable. Order: write ``meta.json`` (tmp, fsync, rename), drop
    ``begin.json``, fsync the episode directory, rename it to the next free ``episode_XXXXXX`` and fsync
    the dataset directory. A crash before the last rename leaves an in-progress directory that ``recover``
    completes; a crash after it leaves a complete episode. Rename never replaces a non-empty directory, so
    two recorders racing for one index cannot overwrite each other: the loser takes the next index.
    """
    meta_path = work_dir / META_FILE
    try:
        write_file_durably(meta_path, _json_bytes(meta))
        begin = work_dir / BEGIN_FILE
        if begin.exists():
            begin.unlink()
        fsync_dir(work_dir)
    except OSError as e:
        raise RecorderError("write episode metadata", getattr(e, "filename", None) or meta_path, e, hint_for(e)) from e
    try:
        indices = [episode_index(p) for p in root.iterdir() if episode_index(p) is not None]
    except OSError as e:
        raise RecorderError("list dataset directory", root, e, hint_for(e)) from e
    index = max(indices, default=-1) + 1
    for _ in range(1000):
        final = root / f"{EPISODE_PREFIX}{index:06d}"
        try:
            os.rename(work_dir, final)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another writer took this index
                index += 1
                continue
            raise RecorderError("commit episode to", final, e, hint_for(e)) from e
        try:
            fsync_dir(root)
        except OSError as e:
            raise RecorderError("fsync dataset directory", root, e, hint_for(e)) from e
        return final
    raise RecorderError("find a free episode index in", root)


# ----------------------------------------------------------------------------------------------- reading


def read_meta(episode: Path) -> dict:
    """``meta.json`` of a committed episode, refusing schema versions this code does not know."""
    meta = read_json_object(episode / META_FILE)
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(f"{episode / META_FILE}: schema_version {version!r}, this code reads {SCHEMA_VERSION}")
    _check_meta(episode / META_FILE, meta)
    return meta


# meta.json fields every reader indexes (what ``episode_meta`` / ``describe_stream`` write), and their types.
_META_FIELDS = {"task": (str, type(None)), "streams": (dict,), "files": (dict,)}
_STREAM_FIELDS = {"dtype": (str,), "shape": (list,), "num_samples": (int,), "chunks": (list,),
                  "rate_hz": (int, float, type(None)), "t_first": (int, float, type(None)),
                  "t_last": (int, float, type(None))}


def _check_meta(path: Path, meta: dict) -> None:
    """A damaged or hand-edited ``meta.json`` fails here, naming the file and the field, not later as a KeyError."""
    for name, types in _META_FIELDS.items():
        if not isinstance(meta.get(name, ...), types):
            got = "missing" if name not in meta else f"a {type(meta[name]).__name__}"
            raise DatasetError(f"{path}: field {name!r} is {got}, expected {' or '.join(t.__name__ for t in types)}"
                               "; the file is damaged (run `verify`)")
    for stream, spec in meta["streams"].items():
        if not isinstance(spec, dict):
            raise DatasetError(f"{path}: streams.{stream} is a {type(spec).__name__}, expected a mapping")
        for name, types in _STREAM_FIELDS.items():
            if not isinstance(spec.get(name, ...), types) or isinstance(spec.get(name), bool):
                got = "missing" if name not in spec else f"a {type(spec[name]).__name__}"
                raise DatasetError(f"{path}: streams.{stream}.{name} is {got}, expected "
                                   f"{' or '.join(t.__name__ for t in types)}; the file is damaged (run `verify`)")


def load_stream(episode: Path, name: str, meta: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(t (n,), values (n, ...))`` of one stream of a committed episode, at its native rate."""
    meta = meta if meta is not None else read_meta(episode)
    if name not in meta["streams"]:
        raise DatasetError(f"{episode}: no stream {name!r}; has {sorted(meta['streams'])}")
    spec = meta["streams"][name]
    ts, vs = [], []
    for chunk in spec["chunks"]:
        t, v = decode_chunk(episode / chunk)
        ts.append(t)
        vs.append(v)
    if not ts:
        return np.zeros(0), np.zeros((0, *spec["shape"]), dtype=np.dtype(spec["dtype"]))
    return np.concatenate(ts), np.concatenate(vs)


def load_times(episode: Path, name: str, meta: dict) -> np.ndarray:
    """Timestamps of one stream only (the values are not read)."""
    ts = [decode_chunk(episode / c, times_only=True)[0] for c in meta["streams"][name]["chunks"]]
    return np.concatenate(ts) if ts else np.zeros(0)


# ----------------------------------------------------------------------------------------------- info


def dataset_info(root: Path) -> dict:
    """Summary of a dataset: episodes, streams (measured rate, dtype, shape), total seconds, in-progress count."""
    root = Path(root)
    episodes = list_episodes(root)
    streams: dict[str, dict] = {}
    rates: dict[str, list[float]] = {}
    seconds = 0.0
    salvaged = successes = 0
    for ep in episodes:
        meta = read_meta(ep)
        seconds += float(meta.get("duration_s") or 0.0)
        salvaged += bool(meta.get("salvaged"))
        successes += meta.get("success") is True
        for name, spec in meta["streams"].items():
            entry = streams.setdefault(name, {"dtype": spec["dtype"], "shape": spec["shape"], "samples": 0})
            entry["samples"] += spec["num_samples"]
            if (entry["dtype"], entry["shape"]) != (spec["dtype"], spec["shape"]):
                entry["inconsistent"] = True
            if spec.get("rate_hz"):
                rates.setdefault(name, []).append(spec["rate_hz"])
    for name, entry in streams.items():
        entry["rate_hz"] = round(float(np.median(rates[name])), 3) if name in rates else None
    return {
        "dataset": str(root),
        "schema_version": SCHEMA_VERSION,
        "episodes": len(episodes),
        "successes": successes,
        "salvaged": salvaged,
        "in_progress": len(list_in_progress(root)),
        "seconds": round(seconds, 6),
        "streams": {k: {"rate_hz": v["rate_hz"], "dtype": v["dtype"], "shape": v["shape"], **_flags(v)}
                    for k, v in sorted(streams.items())},
    }


def _flags(entry: dict) -> dict:
    return {"samples": entry["samples"], **({"inconsistent": True} if entry.get("inconsistent") else {})}


# ----------------------------------------------------------------------------------------------- verify


def verify_dataset(root: Path) -> tuple[list[str], list[str]]:
    """Recompute every listed checksum. Returns ``(problems, warnings)``; problems mean damaged episodes."""
    problems: list[str] = []
    warnings: list[str] = []
    for ep in list_episodes(root):
        try:
            meta = read_meta(ep)
        except DatasetError as e:
            problems.append(str(e))
            continue
        for name, digest in meta["files"].items():
            path = ep / name
            if not path.exists():
                problems.append(f"{path}: missing")
            elif sha256_file(path) != digest:
                problems.append(f"{path}: sha256 mismatch")
        listed = set(meta["files"]) | {META_FILE}
        for extra in sorted(p.name for p in ep.iterdir() if p.name not in listed):
            warnings.append(f"{ep / extra}: not listed in {META_FILE}")
    return problems, warnings


# ----------------------------------------------------------------------------------------------- recover


@dataclass
class SalvageReport:
    """What ``recover`` did with one in-progress directory."""

    source: str
    outcome: str  # "salvaged", "empty-removed", "live-skipped"
    episode: str | None
    kept: dict[str, int]  # stream -> samples kept
    dropped: list[str]  # "file: reason"


def recover_dataset(root: Path) -> list[SalvageReport]:
    """Salvage every crashed ``.inprogress-*`` directory into a committed episode flagged ``salvaged``.

    Only complete chunks are kept: per stream, chunks are taken in sequence until the first one that is
    missing, torn (unreadable, CRC error), inconsistent in dtype/shape, or not later in time than its
    predecessor; that one and any after it are dropped and reported. Directories still locked by a live
    recorder are skipped. A directory with nothing flushed is removed.
    """
    root = Path(root)
    reports = []
    for work in list_in_progress(root):
        fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                reports.append(SalvageReport(work.name, "live-skipped", None, {}, []))
                continue
            reports.append(_salvage(root, work))
        finally:
            os.close(fd)
    return reports


def _salvage(root: Path, work: Path) -> SalvageReport:
    dropped: list[str] = []
    for tmp in sorted(work.glob(f"*{TMP_SUFFIX}")):
        dropped.append(f"{tmp.name}: unfinished write (temporary file)")
        tmp.unlink()
    old_meta = _read_json_or_none(work / META_FILE) or {}
    begin = old_meta or _read_json_or_none(work / BEGIN_FILE) or {}
    if not begin:
        dropped.append(f"{BEGIN_FILE}: missing or unreadable; task and seed unknown")
    by_stream: dict[str, list[tuple[int, Path]]] = {}
    for p in work.iterdir():
        parsed = parse_chunk_name(p.name)
        if parsed:
            by_stream.setdefault(parsed[0], []).append((parsed[1], p))
    streams: dict[str, dict] = {}
    files: dict[str, str] = {}
    kept: dict[str, int] = {}
    for name, chunks in sorted(by_stream.items()):
        chunks.sort()
        t_chunks: list[np.ndarray] = []
        names: list[str] = []
        spec: tuple[str, tuple[int, ...]] | None = None
        for i, (seq, path) in enumerate(chunks):
            reason = None
            if seq != i:
                reason = f"chunk {i} is missing"
            else:
                try:
                    t, v = decode_chunk(path)
                    assert v is not None
                    this = (v.dtype.str, v.shape[1:])
                    if spec is not None and this != spec:
                        reason = f"dtype/shape {this} differs from earlier chunks {spec}"
                    elif t.size == 0 or np.any(np.diff(t) <= 0) or (t_chunks and t[0] <= t_chunks[-1][-1]):
                        reason = "timestamps empty or not strictly increasing"
                except DatasetError as e:
                    reason = f"torn or unreadable ({e.__cause__ or e})"
            if reason:
                for _, bad in chunks[i:]:
                    dropped.append(f"{bad.name}: {reason if bad == path else 'after a dropped chunk'}")
                    bad.unlink()
                break
            spec = this
            t_chunks.append(t)
            names.append(path.name)
            files[path.name] = sha256_file(path)
        if spec is not None:
            streams[name] = describe_stream(spec[0], spec[1], t_chunks, names)
            kept[name] = streams[name]["num_samples"]
    if not streams:
        shutil.rmtree(work)
        fsync_dir(root)
        return SalvageReport(work.name, "empty-removed", None, {}, dropped)
    success = old_meta.get("success") if old_meta else None
    notes = ["commit was interrupted after metadata was written"] if old_meta else []
    meta = episode_meta(begin, streams, files, success=success, salvaged=True, notes=notes + dropped)
    final = finalize_episode(root, work, meta)
    return SalvageReport(work.name, "salvaged", final.name, kept, dropped)


# ----------------------------------------------------------------------------------------------- build


def is_image_stream(stream: Mapping[str, Any]) -> bool:
    """A camera stream (its ``meta.json`` entry): uint8 values of shape (H, W, C), C in 1, 3, 4. Cameras run slower
    than the control loop by design (10-30 Hz beside 50+ Hz), so ``build`` holds their frames instead of refusing."""
    shape = list(stream.get("shape", []))
    try:
        uint8 = np.dtype(stream.get("dtype")) == np.uint8
    except TypeError:
        return False
    return uint8 and len(shape) == 3 and shape[-1] in (1, 3, 4)


def is_camera_stream(name: str, stream: Mapping[str, Any]) -> bool:
    """A stream the cameras make at their rate, which ``build`` holds: an image (``is_image_stream``) or a depth
    point cloud (``*_points``: float32 (N, 3), e.g. ``scene_points`` of ``teleop.record_expert point_cloud=true``)."""
    if is_image_stream(stream):
        return True
    shape = list(stream.get("shape", []))
    try:
        f32 = np.dtype(stream.get("dtype")) == np.float32
    except TypeError:
        return False
    return name.endswith("_points") and f32 and len(shape) == 2 and shape[1] == 3


def series_streams(meta: Mapping[str, Any]) -> list[str]:
    """The streams of an episode that are time series (at least two samples), sorted. A one-sample stream is an
    episode-level value (``outcome_score`` of older teleop recordings): it has no span to resample, and on a
    common clock it would leave none."""
    return sorted(n for n, s in meta["streams"].items() if int(s.get("num_samples") or 0) >= 2)


def common_clock(
    times: Mapping[str, np.ndarray], rate_hz: float, where: str
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The clock ``t_k = t0 + k / rate_hz`` over the span every stream covers, and per stream the index of the
    sample held at each tick (its latest sample with ``t <= t_k``: zero-order hold, never a future sample).

    ``t0`` is the latest first sample (every stream has a value to hold), the clock ends at the earliest last
    sample (no stream is held past its end). Raises ``DatasetError`` naming ``where`` when the span is empty.
    """
    if any(t.size == 0 for t in times.values()):
        raise DatasetError(f"{where}: episode of zero length (a stream has no samples)")
    t0 = max(float(t[0]) for t in times.values())
    t_end = min(float(t[-1]) for t in times.values())
    if not t_end > t0:
        late = max(times, key=lambda n: float(times[n][0]))
        early = min(times, key=lambda n: float(times[n][-1]))
        raise DatasetError(f"{where}: episode of zero length (streams share no time span: {late!r} starts at {t0},"
                           f" {early!r} ends at {t_end}; a stream stamped outside its episode, as the clutch stream"
                           " of older teleop recordings, can be left out with --streams)")
    n_steps = int(math.floor((t_end - t0) * rate_hz)) + 1
    clock = t0 + np.arange(n_steps + 1) / rate_hz  # one extra, trimmed below, to absorb float rounding
    clock = clock[clock <= t_end]
    return clock, {n: np.searchsorted(t, clock, side="right") - 1 for n, t in times.items()}


def pooled_episodes(roots: Sequence[Path]) -> list[Path]:
    """The committed episodes of several recordings pooled in the order given, each recording's in index order.
    Refuses no recording, one named twice (its episodes would count twice) and one without committed episodes."""
    if not roots:
        raise DatasetError("no dataset given")
    if len({Path(r).resolve() for r in roots}) < len(roots):
        raise DatasetError(f"a dataset is named twice in {[str(r) for r in roots]}; its episodes would count twice")
    episodes: list[Path] = []
    for r in roots:
        found = list_episodes(r)
        if not found:
            pending = len(list_in_progress(r))
            extra = f" ({pending} in progress: run `recover` first)" if pending else ""
            raise DatasetError(f"{r}: empty dataset, no committed episodes{extra}")
        episodes += found
    return episodes


def merge_recordings(roots: Sequence[Path], out: Path) -> list[Path]:
    """Pool the committed episodes of several recordings (``pooled_episodes``: e.g. the seed shards of one sweep, in
    seed order) into one new recording ``out``, numbered afresh; returns its episodes.

    ``out`` (new, or an empty directory) appears by one rename once every episode is complete in it, so a failure
    leaves no partial recording. Files are hard-linked (the sources stay as they are; no second copy of the data on
    disk), or copied and fsynced where the file system cannot link."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} already exists and is not an empty directory; choose a new output path")
    episodes = pooled_episodes([Path(r) for r in roots])
    for ep in episodes:
        read_meta(ep)  # a damaged episode or another schema is refused before anything is written
    with staged_dir(out, "merge recordings into", "merging") as tmp:
        ensure_dataset_root(tmp)
        for k, ep in enumerate(episodes):
            dst = tmp / f"{EPISODE_PREFIX}{k:06d}"
            shutil.copytree(ep, dst, copy_function=_link_or_copy)
            fsync_dir(dst)
    return [out / f"{EPISODE_PREFIX}{k:06d}" for k in range(len(episodes))]


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(src, dst)
        fd = os.open(dst, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def build_training_set(root: Path | Sequence[Path], rate_hz: float, out: Path, streams: Sequence[str] | None = None
                       ) -> dict:
    """Resample every episode onto one clock at ``rate_hz`` (zero-order hold) and write ``out``.

    ``root``: one recorded dataset, or several (e.g. two collection runs with different seeds) whose committed
    episodes are pooled in the order given; with several, the built files are numbered afresh
    (``episode_000000.npz`` ...) and each entry's ``source`` names the recording it came from.

    Clock of an episode: ``t_k = t0 + k / rate_hz`` for ``t0`` = the latest first sample over the streams (so
    every stream has a sample to hold) up to the earliest last sample (so no stream is held past its end).
    Each stream's value at ``t_k`` is its latest sample with ``t <= t_k``: what a policy running live would
    have seen, never a future sample. Everything is checked before anything is written, and ``out`` appears
    by one rename, so a refusal or a crash leaves no partial training set.

    Refuses (``DatasetError``): no committed episodes; episodes with different streams (choose ``streams``);
    a low-dim stream whose native rate is below ``rate_hz / 2`` (mis-rated: most steps would repeat a stale
    value); an episode whose common span is zero; ``out`` already existing. Image streams (``is_image_stream``)
    are exempt from the rate check: a 10 Hz camera at a 25 Hz clock repeats each frame for 2-3 steps, exactly
    what a live policy sees between frames; the summary lists them with their native rate (first episode) under
    ``held_streams``.
    """
    roots = [Path(r) for r in ([root] if isinstance(root, (str, Path)) else root)]
    out = Path(out)
    if not (rate_hz > 0 and math.isfinite(rate_hz)):
        raise DatasetError(f"--rate must be a positive number of Hz, got {rate_hz}")
    if out.exists():
        raise DatasetError(f"{out} already exists; choose a new output path")
    episodes = pooled_episodes(roots)
    pooled = len(roots) > 1
    metas = [read_meta(ep) for ep in episodes]
    names = sorted(streams) if streams else series_streams(metas[0])
    if not names:
        raise DatasetError(f"{episodes[0]}: episode of zero length (no streams)")
    plans = []
    held: dict[str, float] = {}  # image stream -> native rate (Hz), measured on the first episode that has one
    for ep, meta in zip(episodes, metas, strict=True):
        missing = [n for n in names if n not in meta["streams"]]
        if missing:
            raise DatasetError(f"{ep.name}: lacks streams {missing}; pass --streams to choose a common set")
        if not streams and not series_streams(meta):
            raise DatasetError(f"{ep.name}: episode of zero length (no stream has two samples)")
        if not streams and series_streams(meta) != names:
            raise DatasetError(
                f"{ep.name}: streams {series_streams(meta)} differ from {episodes[0].name}'s {names};"
                " pass --streams to choose a common set"
            )
        times = {n: load_times(ep, n, meta) for n in names}
        for n, t in times.items():
            native = measured_rate_hz(t)
            if is_camera_stream(n, meta["streams"][n]):
                if native is not None and n not in held:
                    held[n] = native
                continue
            if native is not None and native < rate_hz / 2:
                raise DatasetError(
                    f"{ep.name}: stream {n!r} is mis-rated: native {native:.3g} Hz is more than 2x below the"
                    f" requested {rate_hz:g} Hz; build at <= {2 * native:.3g} Hz or drop the stream"
                )
        clock, idx = common_clock(times, rate_hz, ep.name)
        plans.append((ep, meta, clock, idx))

    with staged_dir(out, "write training set", "building") as tmp:
        entries = []
        for k, (ep, meta, clock, idx) in enumerate(plans):
            arrays = {CLOCK_KEY: clock}
            for n in names:
                _, values = load_stream(ep, n, meta)
                arrays[n] = values[idx[n]]
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            file = f"episode_{k:06d}.npz" if pooled else f"{ep.name}.npz"
            write_file_durably(tmp / file, buf.getbuffer())
            entry = {"file": file, "source": f"{ep.parent.name}/{ep.name}" if pooled else ep.name,
                     "num_steps": int(clock.shape[0]),
                     "success": meta.get("success"), "salvaged": meta.get("salvaged"), "task": meta.get("task")}
            user = meta["user"] if isinstance(meta.get("user"), dict) else {}
            if user.get("goal_vector") is not None:  # what a goal-conditioned policy observes (dataset.features)
                entry.update(goal=user.get("goal"), goal_vector=user["goal_vector"])
            entries.append(entry)
        summary = {
            "format": BUILT_FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "rate_hz": rate_hz,
            "resampling": "zero-order hold on t_k = t0 + k / rate_hz (latest sample with t <= t_k)",
            "source": [str(r.resolve()) for r in roots] if pooled else str(roots[0].resolve()),
            "streams": {n: {"dtype": metas[0]["streams"][n]["dtype"], "shape": metas[0]["streams"][n]["shape"]}
                        for n in names},
            "held_streams": {n: r for n, r in sorted(held.items()) if r < rate_hz},
            "episodes": entries,
            "num_steps": sum(e["num_steps"] for e in entries),
        }
        write_file_durably(tmp / DATASET_FILE, _json_bytes(summary))
    return summary


def load_training_episode(path: Path) -> dict[str, np.ndarray]:
    """Arrays of one built episode: ``timestamp`` (N,) and one (N, ...) per stream."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------------------------- json


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode()


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object; anything else (missing, unreadable, not an object) is a DatasetError."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable ({e})") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return obj


def _read_json_or_none(path: Path) -> dict | None:
    try:
        return read_json_object(path)
    except DatasetError:
        return None

