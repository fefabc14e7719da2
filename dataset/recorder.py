"""Crash-safe, mixed-rate episode recorder (writes the format described in ``dataset.format``).

Why it is built this way: an operator's demonstration is the most expensive data we have, so samples are
never held only in memory for long. Each stream is buffered and flushed as a chunk file (tmp, fsync,
rename, then one directory fsync per flush) at least every ``flush_interval_s`` of wall time or of
recorded time, or when the buffers exceed ``max_buffer_bytes``. A killed process therefore loses at most
the last interval of the episode in progress; finished episodes are never rewritten. The in-progress
directory is ``flock``-ed by the recording process so ``recover`` can tell a crashed episode from a live
one (the kernel drops the lock when the process dies, SIGKILL included).

Flushing happens inside ``append`` on the caller's thread: run the recorder in its own process (it
subscribes to the bus, see DESIGN.md) so an fsync stall never delays a control loop.

Usage::

    rec = EpisodeRecorder("data/wipe")
    rec.begin(EpisodeMeta(task="wipe", seed=3))
    rec.append("wrench", t, wrench)          # (6,) float64 at 200 Hz, its own timestamps
    rec.append("scene_rgb", t_cam, rgb)      # (96, 96, 3) uint8 at 10 Hz
    path = rec.commit(success=True, outcome={"score": 0.9})   # -> data/wipe/episode_000000
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bus.message import ALLOWED_DTYPES
from dataset.durable import RecorderError, fsync_dir, hint_for, write_file_durably
from dataset.format import (
    BEGIN_FILE,
    INPROGRESS_PREFIX,
    check_stream_name,
    chunk_name,
    describe_stream,
    encode_chunk,
    ensure_dataset_root,
    episode_meta,
    finalize_episode,
)

__all__ = ["EpisodeMeta", "EpisodeRecorder", "RecorderError"]


@dataclass(frozen=True)
class EpisodeMeta:
    """What is known about an episode when it starts; ``user`` holds extra JSON-serialisable keys."""

    task: str
    seed: int | None = None
    user: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, meta: EpisodeMeta | Mapping[str, Any]) -> EpisodeMeta:
        """Accept a plain mapping too: ``task``, ``seed``, everything else goes to ``user``."""
        if isinstance(meta, EpisodeMeta):
            return meta
        if "task" not in meta or not isinstance(meta["task"], str):
            raise ValueError(f"episode meta needs a str 'task', got {dict(meta)!r}")
        rest = {k: v for k, v in meta.items() if k not in ("task", "seed", "user")}
        return cls(task=meta["task"], seed=meta.get("seed"), user={**meta.get("user", {}), **rest})


@dataclass
class _StreamBuffer:
    """Samples of one stream not yet flushed, plus what ``commit`` needs to describe the stream."""

    dtype: str
    shape: tuple[int, ...]
    last_t: float = -math.inf
    times: list[float] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    seq: int = 0
    chunks: list[str] = field(default_factory=list)
    t_chunks: list[np.ndarray] = field(default_factory=list)


class EpisodeRecorder:
    """Records episodes of named streams, each at its own rate, into a dataset directory.

    Args:
        root: dataset directory (created if missing).
        flush_interval_s: longest time (wall clock or recorded time, whichever passes first) that a sample
            waits in memory before it is durable on disk.
        max_buffer_bytes: flush earlier when this much is buffered (camera streams).
        clock: wall clock used for the flush deadline (injectable for tests).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        flush_interval_s: float = 0.5,
        max_buffer_bytes: int = 16 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s}")
        self.root = Path(root)
        self.flush_interval_s = float(flush_interval_s)
        self.max_buffer_bytes = int(max_buffer_bytes)
        self._clock = clock
        self._work: Path | None = None
        self._lock_fd: int | None = None
        self._begin: dict[str, Any] = {}
        self._streams: dict[str, _StreamBuffer] = {}
        self._files: dict[str, str] = {}
        self._buffered_bytes = 0
        self._next_flush_wall = math.inf
        self._next_flush_t = math.inf

    # -------------------------------------------------------------------------------------- lifecycle

    @property
    def recording(self) -> bool:
        """True between ``begin`` and ``commit``/``abort``."""
        return self._work is not None

    @property
    def work_dir(self) -> Path | None:
        """The ``.inprogress-<uuid>`` directory of the current episode."""
        return self._work

    def begin(self, meta: EpisodeMeta | Mapping[str, Any]) -> Path:
        """Start an episode: create and lock its in-progress directory and durably record ``meta``."""
        if self._work is not None:
            raise RuntimeError(f"begin while episode {self._work.name} is recording; commit or abort it first")
        m = EpisodeMeta.coerce(meta)
        begin = {"task": m.task, "seed": m.seed, "user": dict(m.user), "started_unix": time.time()}
        work = self.root / f"{INPROGRESS_PREFIX}{uuid.uuid4().hex}"
        try:
            ensure_dataset_root(self.root)
            os.mkdir(work)
        except OSError as e:
            raise RecorderError("create episode directory", e.filename or work, e, hint_for(e)) from e
        try:
            self._lock_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            write_file_durably(work / BEGIN_FILE, _json(begin))
            fsync_dir(work)
            fsync_dir(self.root)
        except (OSError, TypeError, ValueError) as e:
            self._release_lock()
            shutil.rmtree(work, ignore_errors=True)
            if isinstance(e, OSError):
                raise RecorderError("start episode in", e.filename or work, e, hint_for(e)) from e
            raise ValueError(f"episode meta is not JSON-serialisable: {e}") from e
        self._work = work
        self._begin = begin
        self._streams = {}
        self._files = {}
        self._buffered_bytes = 0
        self._next_flush_wall = self._clock() + self.flush_interval_s
        self._next_flush_t = math.inf
        return work

    def append(self, stream: str, t: float, value: Any) -> None:
        """Add one sample of ``stream`` taken at ``t`` (seconds, strictly increasing per stream).

        The first sample fixes the stream's dtype and shape. A sample that disagrees, or whose timestamp
        does not advance, raises ``ValueError`` naming the stream, the expectation and what was given; it
        is dropped and the episode goes on. ``RecorderError`` means the sample was kept but the periodic
        flush failed (disk full, ...); the flush is retried one interval later.
        """
        if self._work is None:
            raise RuntimeError("append before begin")
        arr = np.asarray(value)
        buf = self._streams.get(stream)
        if buf is None:
            check_stream_name(stream)
            if arr.dtype.str not in ALLOWED_DTYPES:
                raise ValueError(f"stream {stream!r}: dtype {arr.dtype} not storable; expected one of "
                                 f"{sorted(ALLOWED_DTYPES)}")
        elif arr.dtype.str != buf.dtype or arr.shape != buf.shape:
            raise ValueError(f"stream {stream!r}: expected dtype {buf.dtype} shape {buf.shape}, "
                             f"got dtype {arr.dtype.str} shape {arr.shape}; sample dropped")
        t = float(t)
        last = buf.last_t if buf is not None else -math.inf
        if not math.isfinite(t) or t <= last:
            raise ValueError(f"stream {stream!r}: expected a finite timestamp > {last}, got {t}; sample dropped")
        if buf is None:
            buf = self._streams[stream] = _StreamBuffer(dtype=arr.dtype.str, shape=arr.shape)
        buf.last_t = t
        buf.times.append(t)
        buf.values.append(np.array(arr, copy=True))
        self._buffered_bytes += arr.nbytes + 8
        if self._next_flush_t == math.inf:
            self._next_flush_t = t + self.flush_interval_s
        if (
            t >= self._next_flush_t
            or self._buffered_bytes >= self.max_buffer_bytes
            or self._clock() >= self._next_flush_wall
        ):
            self.flush()

    def flush(self) -> None:
        """Make every buffered sample durable now: one chunk file per stream, then one directory fsync."""
        if self._work is None:
            raise RuntimeError("flush before begin")
        self._next_flush_wall = self._clock() + self.flush_interval_s
        self._next_flush_t = math.inf
        wrote = False
        for name, buf in self._streams.items():
            if not buf.times:
                continue
            t = np.array(buf.times, dtype=np.float64)
            fname = chunk_name(name, buf.seq)
            try:
                digest = write_file_durably(self._work / fname, encode_chunk(t, np.stack(buf.values)))
            except OSError as e:
                raise RecorderError("write chunk", e.filename or self._work / fname, e, hint_for(e)) from e
            wrote = True
            self._files[fname] = digest
            buf.chunks.append(fname)
            buf.t_chunks.append(t)
            buf.seq += 1
            self._buffered_bytes -= sum(v.nbytes + 8 for v in buf.values)
            buf.times = []
            buf.values = []
        if wrote:
            try:
                fsync_dir(self._work)
            except OSError as e:
                raise RecorderError("fsync episode directory", self._work, e, hint_for(e)) from e

    def commit(self, success: bool | None = None, outcome: Mapping[str, Any] | None = None) -> Path:
        """Finish the episode: flush, write ``meta.json`` with checksums, rename to ``episode_XXXXXX``.

        ``outcome``: episode-level values known only at the end (score, failure, end time, ...), kept as
        ``meta["outcome"]``. They are not streams: a one-sample stream has no time span, and a reader that
        resamples every stream onto their common span would find it empty.

        On ``RecorderError`` the episode stays in progress (nothing is lost); retry ``commit`` once the
        cause is fixed, or ``abort``.
        """
        if self._work is None:
            raise RuntimeError("commit before begin")
        if success is not None and not isinstance(success, bool):
            raise ValueError(f"success must be True, False or None, got {success!r}")
        outcome = dict(outcome or {})
        try:
            _json(outcome)
        except (TypeError, ValueError) as e:
            raise ValueError(f"episode outcome is not JSON-serialisable: {e}") from e
        self.flush()
        streams = {n: describe_stream(b.dtype, b.shape, b.t_chunks, b.chunks) for n, b in self._streams.items()}
        meta = episode_meta(self._begin, streams, self._files, success=success, salvaged=False)
        if outcome:
            meta["outcome"] = outcome
        final = finalize_episode(self.root, self._work, meta)
        self._reset()
        return final

    def abort(self) -> None:
        """Discard the episode in progress (the operator's choice; crashes keep data for ``recover``)."""
        if self._work is None:
            return
        work = self._work
        self._reset()
        try:
            shutil.rmtree(work)
            fsync_dir(self.root)
        except OSError as e:
            raise RecorderError("remove aborted episode", e.filename or work, e, hint_for(e)) from e

    def close(self) -> None:
        """Stop without deciding: flush what is buffered and leave the episode for ``recover``."""
        if self._work is None:
            return
        try:
            self.flush()
        finally:
            self._reset()

    def __enter__(self) -> EpisodeRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------- helpers

    def _reset(self) -> None:
        self._release_lock()
        self._work = None
        self._streams = {}
        self._files = {}
        self._buffered_bytes = 0

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode()
