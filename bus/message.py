"""Typed multipart messages: a small msgpack header followed by raw array buffers.

Wire layout (one ZeroMQ multipart message)::

    frame 0      topic, UTF-8 bytes (PUB/SUB filters on its prefix)
    frame 1      header, msgpack map:
                   v      int    schema version (SCHEMA_VERSION)
                   topic  str    same text as frame 0
                   t      float  sender's monotonic stamp, seconds (``time.monotonic()`` or a lockstep clock)
                   seq    int    per-topic sequence number, >= 0
                   bufs   list   one {"name": str, "dtype": str, "shape": [int, ...]} per array frame
                   meta   map    str -> None | bool | int | float | str
    frame 2..    one C-contiguous little-endian buffer per entry of ``bufs``, in order

Why this shape: the header is tiny and language-neutral, the arrays travel as raw bytes (no per-element
encoding, zero-copy on both ends for large buffers) and nothing on the wire can run code (no pickle).
``decode`` trusts nothing: every field is checked and anything malformed raises ``MessageError`` whose
``kind`` is one of ``REJECT_KINDS``, so a subscriber can count and drop bad input without crashing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1

# Canonical ``np.dtype(...).str`` spellings; big-endian and object/str/void dtypes are refused.
ALLOWED_DTYPES = frozenset(
    {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"}
)

DEFAULT_MAX_FRAME_BYTES = 32 * 1024 * 1024  # one camera frame pair or a point cloud fits; a stray GB does not
MAX_HEADER_BYTES = 64 * 1024
MAX_TOPIC_BYTES = 255
MAX_BUFFERS = 64
MAX_NDIM = 32  # numpy's own limit
MAX_META_ITEMS = 64

# Stable categories of rejection, used as keys of the subscribers' ``rejects`` counters.
REJECT_KINDS = ("frames", "size", "header", "version", "topic", "dtype", "shape", "layout", "meta")

_NP_DTYPES = {name: np.dtype(name) for name in ALLOWED_DTYPES}
_HEADER_KEYS = frozenset({"v", "topic", "t", "seq", "bufs", "meta"})
_BUF_KEYS = frozenset({"name", "dtype", "shape"})

MetaValue = None | bool | int | float | str
Frame = Any  # bytes, memoryview, zmq.Frame or anything else exposing the buffer protocol


class MessageError(ValueError):
    """A message that cannot be encoded or was received malformed.

    ``kind`` is a short stable category (one of ``REJECT_KINDS``) for counting; ``reason`` says what was
    wrong and what was expected.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


@dataclass(slots=True)
class Message:
    """One decoded message.

    Attributes:
        topic: stream name, e.g. ``"robot/tactile"``.
        stamp: sender's clock when the data was taken, seconds (monotonic or lockstep time).
        seq: per-topic sequence number assigned by the sender; gaps mean drops.
        arrays: named arrays. After ``decode`` they are read-only views into the received frames
            (no copy); call ``.copy()`` to modify or to keep one beyond the message's life cheaply.
        meta: small flat dict of scalars and strings.
    """

    topic: str
    stamp: float
    seq: int = 0
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, MetaValue] = field(default_factory=dict)


def encode(msg: Message, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> list[Frame]:
    """Frames for ``socket.send_multipart(frames, copy=False)``.

    Array frames are the arrays themselves (no copy here; pyzmq copies those under its copy threshold
    and sends larger ones zero-copy, so do not write into a published array until it has gone out).
    Raises ``MessageError`` for anything ``decode`` would refuse, so bad data fails at the sender.
    """
    topic_bytes = _check_topic(msg.topic)
    bufs = []
    frames: list[Frame] = [topic_bytes, b""]
    if len(msg.arrays) > MAX_BUFFERS:
        raise MessageError("frames", f"{len(msg.arrays)} arrays, at most {MAX_BUFFERS} allowed")
    for name, arr in msg.arrays.items():
        if not isinstance(name, str) or not name:
            raise MessageError("header", f"array name {name!r} must be a non-empty str")
        if not isinstance(arr, np.ndarray):
            raise MessageError("dtype", f"array {name!r} is {type(arr).__name__}, expected np.ndarray")
        dtype = arr.dtype.str
        if dtype not in ALLOWED_DTYPES:
            raise MessageError("dtype", f"array {name!r} has dtype {dtype}, expected one of {_allowed()}")
        if not arr.flags.c_contiguous:
            raise MessageError(
                "layout", f"array {name!r} is not C-contiguous; pass np.ascontiguousarray(...)"
            )
        if arr.nbytes > max_frame_bytes:
            raise MessageError("size", f"array {name!r} is {arr.nbytes} bytes, limit {max_frame_bytes}")
        bufs.append({"name": name, "dtype": dtype, "shape": list(arr.shape)})
        frames.append(arr)
    header = {
        "v": SCHEMA_VERSION,
        "topic": msg.topic,
        "t": float(msg.stamp),
        "seq": int(msg.seq),
        "bufs": bufs,
        "meta": _clean_meta(msg.meta),
    }
    if not math.isfinite(header["t"]) or header["seq"] < 0:
        raise MessageError("header", f"stamp {msg.stamp!r} must be finite and seq {msg.seq!r} >= 0")
    try:
        frames[1] = msgpack.packb(header, use_bin_type=True)
    except (OverflowError, ValueError, TypeError) as exc:  # e.g. an int beyond 64 bits
        raise MessageError("header", f"header of {msg.topic!r} cannot be packed: {exc}") from exc
    if len(frames[1]) > MAX_HEADER_BYTES:
        raise MessageError("size", f"header is {len(frames[1])} bytes, limit {MAX_HEADER_BYTES}; shrink meta")
    return frames


def decode(frames: Sequence[Frame], *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Message:
    """Validate received frames and view the array buffers without copying.

    Raises ``MessageError`` (and nothing else) on any malformed input.
    """
    if len(frames) < 2:
        raise MessageError("frames", f"{len(frames)} frame(s), expected topic + header + buffers")
    if len(frames) > 2 + MAX_BUFFERS:
        raise MessageError("frames", f"{len(frames)} frames, at most {2 + MAX_BUFFERS} allowed")
    views = [_view(f) for f in frames]
    for i, view in enumerate(views):
        if view.nbytes > max_frame_bytes:
            raise MessageError("size", f"frame {i} is {view.nbytes} bytes, limit {max_frame_bytes}")
    if views[1].nbytes > MAX_HEADER_BYTES:
        raise MessageError("size", f"header frame is {views[1].nbytes} bytes, limit {MAX_HEADER_BYTES}")

    header = _unpack_header(views[1])
    topic = _check_header_fields(header)
    if views[0] != topic.encode():
        raise MessageError(
            "topic", f"topic frame {bytes(views[0][:64])!r} differs from header topic {topic!r}"
        )
    specs = header["bufs"]
    if len(views) != 2 + len(specs):
        raise MessageError("frames", f"{len(views)} frames but header lists {len(specs)} buffers")

    arrays: dict[str, np.ndarray] = {}
    for spec, view in zip(specs, views[2:], strict=True):
        name, dtype, shape = _check_buf_spec(spec)
        if name in arrays:
            raise MessageError("header", f"array name {name!r} repeated")
        expected = math.prod(shape) * dtype.itemsize
        if view.nbytes != expected:
            raise MessageError(
                "shape", f"array {name!r}: {view.nbytes} bytes do not fit shape {shape} of {dtype.str}"
                f" ({expected} bytes)"
            )
        arr = np.frombuffer(view, dtype=dtype).reshape(shape)
        arr.flags.writeable = False
        arrays[name] = arr
    meta = _check_meta(header["meta"])
    return Message(topic=topic, stamp=header["t"], seq=header["seq"], arrays=arrays, meta=meta)


def _allowed() -> str:
    return ", ".join(sorted(ALLOWED_DTYPES))


def _view(frame: Frame) -> memoryview:
    try:
        view = memoryview(frame)
    except TypeError as exc:
        raise MessageError("frames", f"frame of type {type(frame).__name__} exposes no buffer") from exc
    if view.ndim == 1 and view.itemsize == 1:
        return view
    if view.nbytes == 0:
        return memoryview(b"")
    if not view.c_contiguous:
        raise MessageError("layout", f"frame of type {type(frame).__name__} is not contiguous")
    return view.cast("B")


def _check_topic(topic: object) -> bytes:
    if not isinstance(topic, str) or not topic:
        raise MessageError("topic", f"topic {topic!r} must be a non-empty str")
    raw = topic.encode()
    if len(raw) > MAX_TOPIC_BYTES:
        raise MessageError("topic", f"topic is {len(raw)} bytes, at most {MAX_TOPIC_BYTES}")
    return raw


def _unpack_header(view: memoryview) -> dict:
    try:
        header = msgpack.unpackb(
            view,
            raw=False,
            strict_map_key=True,
            max_bin_len=0,
            max_ext_len=0,
            max_str_len=MAX_HEADER_BYTES,
            max_array_len=MAX_BUFFERS + MAX_NDIM,
            max_map_len=MAX_META_ITEMS,
        )
    except Exception as exc:  # msgpack raises several unrelated types on hostile input
        raise MessageError("header", f"not a msgpack document ({type(exc).__name__}: {exc})") from exc
    if not isinstance(header, dict):
        raise MessageError("header", f"header is a {type(header).__name__}, expected a map")
    return header


def _is_int(x: object) -> bool:
    return type(x) is int  # msgpack yields exact ints; excludes bool


def _check_header_fields(header: dict) -> str:
    """Check the header's fixed fields; returns the topic."""
    version = header.get("v")
    if version != SCHEMA_VERSION or not _is_int(version):
        raise MessageError("version", f"schema version {version!r}, expected {SCHEMA_VERSION}")
    keys = set(header)
    if keys != _HEADER_KEYS:
        raise MessageError(
            "header", f"keys {sorted(map(str, keys))}, expected {sorted(_HEADER_KEYS)}"
        )
    topic = header["topic"]
    if not isinstance(topic, str) or not topic or len(topic.encode()) > MAX_TOPIC_BYTES:
        raise MessageError("topic", f"header topic {topic!r:.80} must be a non-empty str")
    stamp = header["t"]
    if not isinstance(stamp, float) or not math.isfinite(stamp):
        raise MessageError("header", f"stamp t={stamp!r:.40} must be a finite float")
    seq = header["seq"]
    if not _is_int(seq) or seq < 0:
        raise MessageError("header", f"seq={seq!r:.40} must be an int >= 0")
    if not isinstance(header["bufs"], list):
        raise MessageError("header", f"bufs is {type(header['bufs']).__name__}, expected a list")
    if not isinstance(header["meta"], dict):
        raise MessageError("meta", f"meta is {type(header['meta']).__name__}, expected a map")
    return topic


def _check_buf_spec(spec: object) -> tuple[str, np.dtype, tuple[int, ...]]:
    if not isinstance(spec, dict) or set(spec) != _BUF_KEYS:
        raise MessageError("header", f"buffer spec {spec!r:.80} must be a map with keys {sorted(_BUF_KEYS)}")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or not name:
        raise MessageError("header", f"buffer name {name!r:.80} must be a non-empty str")
    np_dtype = _NP_DTYPES.get(dtype) if isinstance(dtype, str) else None
    if np_dtype is None:
        raise MessageError("dtype", f"array {name!r}: dtype {dtype!r:.40}, expected one of {_allowed()}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise MessageError(
            "shape", f"array {name!r}: shape {shape!r:.80} must be a list of <= {MAX_NDIM} ints"
        )
    for n in shape:
        if type(n) is not int or n < 0:
            raise MessageError("shape", f"array {name!r}: shape {shape!r:.80} must hold non-negative ints")
    return name, np_dtype, tuple(shape)


def _check_meta(meta: dict) -> dict[str, MetaValue]:
    for key, value in meta.items():
        if not isinstance(key, str):
            raise MessageError("meta", f"meta key {key!r:.40} must be a str")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise MessageError("meta", f"meta[{key!r}] is {type(value).__name__}, expected a scalar or str")
    return meta


def _clean_meta(meta: Mapping[str, Any]) -> dict[str, MetaValue]:
    """Meta as plain python scalars (numpy scalars unwrapped), refusing anything nested."""
    if len(meta) > MAX_META_ITEMS:
        raise MessageError("meta", f"{len(meta)} meta items, at most {MAX_META_ITEMS}")
    clean: dict[str, MetaValue] = {}
    for key, value in meta.items():
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(key, str):
            raise MessageError("meta", f"meta key {key!r} must be a str")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise MessageError("meta", f"meta[{key!r}] is {type(value).__name__}, expected a scalar or str")
        clean[key] = value
    return clean
